"""The LLM-free Researcher: a seeded proposer that writes real layer code.

It reads the genome of a parent (and of references) from their code, mutates one or
two genes or recombines the parent with a reference, and renders the child genome
with ``templates/layer.py.j2`` into a self-contained candidate file. It is the default
when no LLM is configured and the baseline that LLM search is compared against. The
project's baselines are renderings of the preset genomes (:func:`baseline_sources`).

Everything here is pure and deterministic: the same seed, inputs and ``rng_key`` give
the same proposal, byte for byte.
"""

from __future__ import annotations

import json
import keyword
import random
import re
import textwrap
from dataclasses import dataclass, field
from typing import Iterable, Protocol


from asiarch.job.contract import DEFAULT_CLASS_NAME
from asiarch.propose.genome import GENES, PRESETS, LayerGenome, active_genes, genome_from_code
from asiarch.dispatch.render import render_template

__all__ = [
    "Proposal", "ProposalError", "OfflineProposer", "render_layer", "baseline_sources",
    "genome_name", "genome_keys", "PRESET_MOTIVATIONS", "TEMPLATE_NAME",
]

TEMPLATE_NAME = "layer.py.j2"
_DOC_WIDTH = 88

#: One-paragraph motivations of the baselines (the docstrings of their renderings).
PRESET_MOTIVATIONS: dict[str, str] = {
    "softmax": (
        "Causal softmax attention: exact pairwise token mixing at a cost quadratic in "
        "sequence length. The quality reference for the recurrent layers at short context."
    ),
    "linear": (
        "Linear attention (Katharopoulos et al., 2020) with elu+1 features: an additive "
        "matrix-valued state read by the query, linear in sequence length. The simplest "
        "recurrent baseline."
    ),
    "retnet": (
        "Retention (RetNet, Sun et al., 2023): linear attention whose state decays at a "
        "fixed rate per head, giving each head its own memory horizon, with a normalised, "
        "swish-gated output."
    ),
    "gla": (
        "Gated linear attention with a data-dependent scalar forget gate per head (as in "
        "Mamba2 and flash-linear-attention's simple GLA), with a normalised, swish-gated output."
    ),
    "mamba2": (
        "Mamba2 (Dao & Gu, 2024) as a token mixer: a selective state space whose writes are "
        "scaled by a learned step size per head and token and whose state decays by exp(dt A), "
        "computed in its chunked state-space-duality form, with a D skip path, short "
        "convolutions and a gated RMSNorm output."
    ),
    "deltanet": (
        "DeltaNet (Schlag et al., 2021; Yang et al., 2024) with flash-linear-attention's "
        "defaults: the delta rule writes each value as a correction of what its key already "
        "retrieves, with SiLU features, L2-normalised q/k, a learned write strength and short "
        "convolutions. ASI-Arch's baseline."
    ),
    "gated_deltanet": (
        "Gated DeltaNet (Yang et al., 2024): the delta rule with Mamba2's data-dependent "
        "decay, so the state can both overwrite single associations and forget wholesale; "
        "RMSNorm and a swish output gate as in flash-linear-attention."
    ),
}

# Why a gene's new value might help: the reason given in a proposal's motivation.
_REASONS: dict[str, dict[object, str]] = {
    "update": {
        "delta": "the delta rule overwrites stale associations instead of piling them up, which sharpens recall",
        "linear": "a purely additive state is cheaper and easier to optimise than the delta rule",
        "ssd": "Mamba2's selective state space scales each write by a learned step size and adds a skip path",
        "softmax": "exact softmax attention recalls any earlier token, at quadratic cost",
    },
    "feature_map": {
        "identity": "linear q and k keep signed similarities",
        "silu": "SiLU features gate smoothly while keeping small negative responses",
        "elu1": "elu+1 features are positive, a kernel-like similarity that never cancels",
        "relu": "sparse ReLU features can reduce interference between keys",
    },
    "qk_norm": {
        "l2": "unit-norm q and k bound every write and read",
        "none": "unnormalised q and k let their magnitude carry confidence",
        "sum": "sum-normalised features make each write a bounded mixture",
    },
    "decay": {
        "none": "without decay an association lasts until it is overwritten",
        "fixed": "a fixed multi-scale decay gives each head its own memory horizon, as in RetNet",
        "data": "a data-dependent gate lets each head forget on context switches, as in Mamba2",
    },
    "beta": {
        "sigmoid": "a learned per-token write strength decides how much each token overwrites",
        "one": "full-strength writes make each update an exact correction and save a projection",
    },
    "short_conv": {
        0: "dropping the short convolutions saves parameters and latency",
        2: "a width-2 causal convolution mixes each token with its predecessor before the memory",
        4: "a width-4 causal convolution captures local n-gram patterns the memory handles poorly",
    },
    "output_gate": {
        "none": "dropping the output gate simplifies the layer",
        "swish": "a SiLU output gate lets the input modulate what the memory returns",
        "sigmoid": "a sigmoid output gate can suppress retrieval channel by channel",
    },
    "output_norm": {
        "rms": "a per-head RMSNorm keeps the output scale stable",
        "none": "removing the output norm keeps magnitude information",
    },
    "expand_v": {
        1: "a narrower value dimension saves parameters and state memory",
        2: "a wider value dimension enlarges the state's memory capacity",
    },
}

# Short tokens for names, per gene value.
_TOKENS: dict[str, dict[object, str]] = {
    "update": {"delta": "delta", "linear": "linear", "ssd": "ssd", "softmax": "softmax"},
    "feature_map": {"identity": "idfeat", "silu": "silu", "elu1": "elu1", "relu": "relu"},
    "qk_norm": {"l2": "l2", "none": "nonorm", "sum": "sumnorm"},
    "decay": {"none": "nodecay", "fixed": "fixdecay", "data": "datadecay"},
    "beta": {"sigmoid": "sigbeta", "one": "beta1"},
    "short_conv": {0: "noconv", 2: "conv2", 4: "conv4"},
    "output_gate": {"none": "nogate", "swish": "swishgate", "sigmoid": "siggate"},
    "output_norm": {"rms": "rmsnorm", "none": "nooutnorm"},
    "expand_v": {1: "v1", 2: "v2"},
}

# Values for the genes an update rule switches on when a mutation changes the rule.
_UPDATE_DEFAULTS = {"delta": PRESETS["deltanet"], "linear": PRESETS["linear"], "ssd": PRESETS["mamba2"],
                    "softmax": PRESETS["softmax"]}


class ProposalError(Exception):
    """No proposal could be made; the message says why and what to do."""


class Sample(Protocol):
    """What the proposer reads of a parent or reference (e.g. a stored candidate)."""

    id: int
    name: str
    code: str
    fitness: float | None


@dataclass
class Proposal:
    """A proposed candidate: what the Researcher hands to the Engineer."""

    name: str
    motivation: str
    code: str
    genome: LayerGenome
    operator: str  #: 'mutate', 'crossover' or 'crossover+mutate'
    parent_id: int | None
    reference_ids: list[int] = field(default_factory=list)  #: references whose genes were used


# ----------------------------------------------------------------------------------
# rendering


def _docstring_text(text: str, *, wrap: bool) -> str:
    """Text safe inside a triple-quoted docstring, optionally wrapped paragraph by paragraph."""
    text = "".join(ch if ch.isprintable() or ch == "\n" else " " for ch in text)
    text = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if not wrap:
        return " ".join(text.split())
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    return "\n\n".join(textwrap.fill(" ".join(p.split()), _DOC_WIDTH) for p in paragraphs)


def render_layer(genome: LayerGenome, *, name: str, motivation: str = "",
                 class_name: str = DEFAULT_CLASS_NAME) -> str:
    """The source of a candidate layer file for ``genome`` (pure; see templates/layer.py.j2).

    ``name`` and ``motivation`` go into the module docstring (escaped, wrapped);
    ``class_name`` names the layer class.
    """
    if not (class_name.isidentifier() and not keyword.iskeyword(class_name)):
        raise ValueError(f"class_name {class_name!r} is not a valid Python class name")
    ops = {"delta": "chunk_delta_rule", "linear": "chunk_linear_attn", "ssd": "chunk_ssd",
           "softmax": "causal_softmax_attn"}
    description = genome.describe()
    class_doc = textwrap.fill(description[:1].upper() + description[1:] + ".", _DOC_WIDTH,
                              initial_indent=" " * 7, subsequent_indent=" " * 4)
    return render_template(
        TEMPLATE_NAME,
        layer_name=_docstring_text(name, wrap=False) or "unnamed layer",
        motivation=_docstring_text(motivation, wrap=True) or "(no motivation given)",
        genome_doc=textwrap.fill(f"Genome: {description}.", _DOC_WIDTH),
        class_doc=class_doc[7:],
        class_name=class_name,
        g=genome,
        # str and int genes as JSON, which is also a valid Python literal
        genome={json.dumps(gene): json.dumps(value) for gene, value in genome.to_dict().items()},
        ops=[ops[genome.update]],
        uses_math=genome.decay == "data",
    )


def baseline_sources(names: Iterable[str] = ("deltanet", "gated_deltanet"),
                     class_name: str = DEFAULT_CLASS_NAME) -> dict[str, str]:
    """The baselines' code: ``{preset name: rendering of PRESETS[name]}``."""
    out = {}
    for n in names:
        if n not in PRESETS:
            raise ValueError(f"unknown baseline {n!r}; presets: {', '.join(PRESETS)}")
        out[n] = render_layer(PRESETS[n], name=n, motivation=PRESET_MOTIVATIONS[n], class_name=class_name)
    return out


def genome_keys(codes: Iterable[str]) -> set[str]:
    """The genome keys of the layers among ``codes`` that declare a genome (for novelty)."""
    return {g.key() for g in map(genome_from_code, codes) if g is not None}


def genome_name(genome: LayerGenome) -> str:
    """A short snake_case name: the update rule, up to four genes where the genome differs
    from DeltaNet (with that update rule), and 4 characters of its key."""
    reference = LayerGenome.from_dict({**PRESETS["deltanet"].to_dict(), "update": genome.update})
    tokens = [_TOKENS["update"][genome.update]]
    tokens += [_TOKENS[gene][getattr(genome, gene)] for gene in active_genes(genome.update)
               if gene != "update" and getattr(genome, gene) != getattr(reference, gene)][:4]
    return "_".join(tokens + [genome.key()[:4]])


# ----------------------------------------------------------------------------------
# operators


def _with_gene(genome: LayerGenome, gene: str, value) -> LayerGenome:
    """``genome`` with one gene changed; a new update rule brings defaults for the genes
    it switches on. Raises ValueError for an unstable result."""
    changes = {gene: value}
    if gene == "update":
        defaults = _UPDATE_DEFAULTS[value]
        before = set(active_genes(genome.update))
        changes.update({g: getattr(defaults, g) for g in active_genes(value) if g not in before})
    return genome.replace(**changes)


def _mutate(genome: LayerGenome, rng: random.Random, n: int) -> tuple[LayerGenome, list[str]]:
    """Change ``n`` distinct active genes (each to a value giving a valid genome)."""
    changed: list[str] = []
    for _ in range(n):
        options: dict[str, list[LayerGenome]] = {}
        for gene in active_genes(genome.update):
            if gene in changed:
                continue
            for value in GENES[gene]:
                if value == getattr(genome, gene):
                    continue
                try:
                    child = _with_gene(genome, gene, value)
                except ValueError:
                    continue
                options.setdefault(gene, []).append(child)
        if not options:
            break
        gene = rng.choice(list(options))
        genome = rng.choice(options[gene])
        changed.append(gene)
    return genome, changed


def _crossover(parent: LayerGenome, other: LayerGenome, rng: random.Random) -> LayerGenome | None:
    """Uniform crossover: each gene that matters to ``other`` comes from it with probability
    1/2; all the others from ``parent``."""
    donated = set(active_genes(other.update))
    genes = {gene: getattr(other if gene in donated and rng.random() < 0.5 else parent, gene)
             for gene in GENES}
    try:
        return LayerGenome.from_dict(genes)
    except ValueError:
        return None


def _differences(before: LayerGenome, after: LayerGenome) -> list[str]:
    """The genes that matter for ``after`` and differ from ``before``."""
    return [g for g in active_genes(after.update) if getattr(before, g) != getattr(after, g)]


# ----------------------------------------------------------------------------------
# motivation


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _who(sample: Sample) -> str:
    fitness = "not yet scored" if sample.fitness is None else f"fitness {sample.fitness:.4g}"
    return f"'{sample.name}' (#{sample.id}, {fitness})"


def _change(gene: str, before: LayerGenome, after: LayerGenome) -> str:
    old, new = getattr(before, gene), getattr(after, gene)
    return f"{gene} {old} -> {new} ({_REASONS[gene][new]})"


def _motivation(parent: Sample, parent_genome: LayerGenome, child: LayerGenome, *,
                reference: Sample | None, after_crossover: LayerGenome | None,
                undeclared: list[str]) -> str:
    sentences = []
    if reference is None:
        changes = _differences(parent_genome, child)
        sentences.append(f"Mutates parent {_who(parent)}, keeping the rest of its genome "
                         f"({parent_genome.describe()}).")
        sentences.append("It changes " + "; ".join(_change(g, parent_genome, child) for g in changes) + ".")
    else:
        from_ref = _differences(parent_genome, after_crossover)
        sentences.append(f"Crossover of parent {_who(parent)} with reference {_who(reference)}: "
                         f"{_and(from_ref)} {'comes' if len(from_ref) == 1 else 'come'} from "
                         f"'{reference.name}', the other genes from '{parent.name}'.")
        sentences.append("From the reference: " + "; ".join(
            _change(g, parent_genome, after_crossover) for g in from_ref) + ".")
        mutated = _differences(after_crossover, child)
        if mutated:
            sentences.append("Then a small mutation: " + "; ".join(
                _change(g, after_crossover, child) for g in mutated) + ".")
    if undeclared:
        names, them = _and([f"'{n}'" for n in undeclared]), "it" if len(undeclared) == 1 else "them"
        sentences.append(f"The code of {names} declares no genome, so the DeltaNet preset stood in for {them}.")
    return " ".join(sentences)


# ----------------------------------------------------------------------------------
# the proposer


class OfflineProposer:
    """Seeded genome search over the layers in the store (no LLM).

    ``propose`` mutates one or two genes of the parent, or (when references are given,
    with probability ``crossover_rate``) takes each gene from the parent or from one
    reference and then, half of the time, mutates one more gene. A child equal to its
    parent or whose key is in ``seen_keys`` is drawn again, up to ``max_tries`` times.
    """

    def __init__(self, seed: int, *, class_name: str = DEFAULT_CLASS_NAME,
                 crossover_rate: float = 0.5, max_tries: int = 50, allow_quadratic: bool = False):
        self.seed = seed
        self.allow_quadratic = allow_quadratic  # softmax children only when quadratic layers are allowed
        self.class_name = class_name
        self.crossover_rate = crossover_rate
        self.max_tries = max_tries

    def propose(self, parent: Sample, references: Iterable[Sample] = (), *,
                seen_keys: set[str] | frozenset[str] = frozenset(),
                rng_key: int | str = 0) -> Proposal:
        """A new candidate derived from ``parent`` (and maybe one of ``references``).

        Deterministic in (seed, parent and references' code, seen_keys, rng_key).
        Raises ProposalError when every draw was already seen.
        """
        rng = random.Random(f"{self.seed}:{rng_key}")
        references = list(references)
        parent_genome = _genome_of(parent)
        for _ in range(self.max_tries):
            reference = after_crossover = None
            if references and rng.random() < self.crossover_rate:
                reference = rng.choice(references)
                after_crossover = _crossover(parent_genome, _genome_of(reference), rng)
                if after_crossover is None:
                    continue
                child, mutated = after_crossover, []
                if after_crossover == parent_genome or rng.random() < 0.5:
                    child, mutated = _mutate(after_crossover, rng, 1)
                operator = "crossover+mutate" if mutated else "crossover"
                if after_crossover == parent_genome:  # the reference added nothing
                    reference, after_crossover, operator = None, None, "mutate"
            else:
                child, _ = _mutate(parent_genome, rng, 1 if rng.random() < 0.6 else 2)
                operator = "mutate"
            if child == parent_genome or child.key() in seen_keys:
                continue
            if child.update == "softmax" and not self.allow_quadratic:
                continue
            used = [parent] + ([reference] if reference is not None else [])
            undeclared = [s.name for s in used if genome_from_code(s.code or "") is None]
            motivation = _motivation(parent, parent_genome, child, reference=reference,
                                     after_crossover=after_crossover, undeclared=undeclared)
            name = genome_name(child)
            return Proposal(
                name=name,
                motivation=motivation,
                code=render_layer(child, name=name, motivation=motivation, class_name=self.class_name),
                genome=child,
                operator=operator,
                parent_id=parent.id,
                reference_ids=[reference.id] if reference is not None else [],
            )
        raise ProposalError(
            f"no new genome in {self.max_tries} draws from parent {_who(parent)} "
            f"({len(seen_keys)} genome keys already seen): its neighbourhood is exhausted; "
            "sample another parent or pass other references"
        )


def _genome_of(sample: Sample) -> LayerGenome:
    """The genome declared in a sample's code, or the DeltaNet preset when it has none."""
    return genome_from_code(sample.code or "") or PRESETS["deltanet"]
