"""The genome of a token-mixing layer: a few discrete design choices that the offline
proposer mutates and recombines and that ``templates/layer.py.j2`` renders into code.

Every rendered layer carries its genome as a module-level literal,

    ASIARCH_GENOME = {"update": "delta", "feature_map": "silu", ...}

so the genome of a stored candidate is read back with :func:`genome_from_code`, which
parses the source with ``ast`` and never executes it.

Genomes are canonical by construction: genes a layer ignores (the feature map of
softmax attention, beta outside the delta rule) are set to fixed values, so two
equivalent layers are equal and share a :meth:`LayerGenome.key`. Combinations that
cannot train stably (a delta rule on unnormalised keys, sum-normalising features
that can be negative) raise ``ValueError``.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from asiarch.job.source import parse as parse_source

__all__ = [
    "GENES", "GENE_DOCS", "LayerGenome", "PRESETS", "GENOME_VARIABLE",
    "active_genes", "genome_from_code",
]

#: The module-level variable of a rendered layer that holds its genome.
GENOME_VARIABLE = "ASIARCH_GENOME"

#: Each gene and its allowed values, in the order the genome is written.
GENES: dict[str, tuple] = {
    "update": ("delta", "linear", "ssd", "softmax"),
    "feature_map": ("identity", "silu", "elu1", "relu"),
    "qk_norm": ("l2", "none", "sum"),
    "decay": ("none", "fixed", "data"),
    "beta": ("sigmoid", "one"),
    "short_conv": (0, 2, 4),
    "output_gate": ("none", "swish", "sigmoid"),
    "output_norm": ("rms", "none"),
    "expand_v": (1, 2),
}

#: What each gene controls (for docs, prompts and error messages).
GENE_DOCS: dict[str, str] = {
    "update": "how the memory is written and read: 'delta' (delta rule, S_t = a_t S_{t-1} + "
              "beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T), 'linear' (additive, S_t = a_t S_{t-1} + "
              "k_t v_t^T), 'ssd' (Mamba2's state space duality: S_t = exp(dt_t A) S_{t-1} + dt_t k_t v_t^T, "
              "o_t = q_t^T S_t + D v_t, with q, k as Mamba2's C, B and a step size dt_t per head) or "
              "'softmax' (causal softmax attention, no recurrent state)",
    "feature_map": "nonlinearity on q and k after the projection (and short conv): 'identity', "
                   "'silu', 'elu1' (elu(x) + 1, positive) or 'relu'",
    "qk_norm": "normalisation of q and k over the feature dim: 'l2' (unit norm), 'none', or "
               "'sum' (divide by the sum of the features; positive feature maps only)",
    "decay": "per-head forgetting of the state: 'none', 'fixed' (RetNet, g_h = log(1 - 2^(-5-h))) "
             "or 'data' (Mamba2 / Gated DeltaNet, g = -softplus(x W_a + b) * exp(A_log))",
    "beta": "write strength of the delta rule: 'sigmoid' (per head and step, from a linear "
            "projection) or 'one' (constant 1)",
    "short_conv": "kernel size of the causal depthwise convolution on q, k and v (0 = none); "
                  "v gets a SiLU after it, q and k get the feature map",
    "output_gate": "gate on the mixer output from a projection of the input: 'none', 'swish' "
                   "(o * silu(x W_g)) or 'sigmoid' (o * sigmoid(x W_g))",
    "output_norm": "per-head RMSNorm with a learnable weight on the output, before the gate: "
                   "'rms' or 'none'",
    "expand_v": "value head dim as a multiple of the key head dim: 1 or 2",
}

# Genes a layer ignores, by update rule, and the value they are canonicalised to.
_IGNORED: dict[str, dict[str, object]] = {
    "delta": {},
    "linear": {"beta": "one"},
    "ssd": {"beta": "one", "decay": "data"},
    "softmax": {"feature_map": "identity", "qk_norm": "none", "decay": "none", "beta": "one"},
}
_POSITIVE_MAPS = ("elu1", "relu")


def active_genes(update: str) -> tuple[str, ...]:
    """The genes that change the layer for a given update rule (the others are fixed)."""
    return tuple(g for g in GENES if g not in _IGNORED[update])


def _check_value(gene: str, value) -> None:
    values = GENES[gene]
    # type check: True == 1 and 1.0 == 1, but neither is a valid short_conv or expand_v
    if not any(type(value) is type(v) and value == v for v in values):
        raise ValueError(
            f"gene {gene!r} has invalid value {value!r}; valid values: "
            f"{', '.join(repr(v) for v in values)}"
        )


@dataclass(frozen=True)
class LayerGenome:
    """A token-mixing layer as a set of genes (see ``GENES`` and ``GENE_DOCS``).

    The defaults are DeltaNet as in flash-linear-attention (``PRESETS['deltanet']``).
    Construction canonicalises ignored genes and raises ``ValueError`` for a bad
    value or an unstable combination.
    """

    update: str = "delta"        #: 'delta' | 'linear' | 'softmax'
    feature_map: str = "silu"    #: 'identity' | 'silu' | 'elu1' | 'relu' (on q and k)
    qk_norm: str = "l2"          #: 'l2' | 'none' | 'sum'
    decay: str = "none"          #: 'none' | 'fixed' | 'data'
    beta: str = "sigmoid"        #: 'sigmoid' | 'one' (delta rule only)
    short_conv: int = 4          #: 0 | 2 | 4 (causal depthwise conv kernel size)
    output_gate: str = "none"    #: 'none' | 'swish' | 'sigmoid'
    output_norm: str = "rms"     #: 'rms' | 'none'
    expand_v: int = 1            #: 1 | 2

    def __post_init__(self) -> None:
        for gene in GENES:
            _check_value(gene, getattr(self, gene))
        for gene, value in _IGNORED[self.update].items():
            object.__setattr__(self, gene, value)
        if self.qk_norm == "sum" and self.feature_map not in _POSITIVE_MAPS:
            raise ValueError(
                f"qk_norm='sum' needs a non-negative feature map ({', '.join(map(repr, _POSITIVE_MAPS))}), "
                f"not {self.feature_map!r}: the sum could be near zero and the division blow up"
            )
        if self.update == "delta" and self.qk_norm == "none":
            raise ValueError(
                "update='delta' needs normalised keys (qk_norm 'l2' or 'sum'): the delta rule "
                "diverges once beta * |k|^2 > 2"
            )
        if self.update == "linear" and self.decay == "none" and self.output_norm == "none":
            raise ValueError(
                "update='linear' with decay='none' has a state that grows with t; "
                "set output_norm='rms' or a decay"
            )

    # -- serialisation ------------------------------------------------------------

    def to_dict(self) -> dict:
        """The genes, in ``GENES`` order (plain str / int values)."""
        return {gene: getattr(self, gene) for gene in GENES}

    @classmethod
    def from_dict(cls, data: dict) -> "LayerGenome":
        """Build a genome from a dict of genes; missing genes take the defaults.

        Raises ``ValueError`` naming an unknown gene, a bad value (with the valid
        ones) or an unstable combination.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a genome is a dict of genes, not {type(data).__name__}")
        unknown = sorted(str(k) for k in data if k not in GENES)
        if unknown:
            raise ValueError(f"unknown gene(s) {', '.join(unknown)}; valid genes: {', '.join(GENES)}")
        return cls(**data)

    def key(self) -> str:
        """A stable short identity (sha1 prefix of the canonical genes) used for novelty."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:10]

    def replace(self, **genes) -> "LayerGenome":
        """A copy with some genes changed (validated and canonicalised again)."""
        return dataclasses.replace(self, **genes)

    def describe(self) -> str:
        """A short human description, e.g. 'delta rule; silu features, L2-normalised q/k; ...'."""
        update = {"delta": "delta rule", "linear": "linear attention", "ssd": "Mamba2 SSD",
                  "softmax": "softmax attention"}[self.update]
        parts = [update]
        if self.update != "softmax":
            norm = {"l2": "L2-normalised", "sum": "sum-normalised", "none": "unnormalised"}[self.qk_norm]
            parts.append(f"{self.feature_map} features, {norm} q/k")
            parts.append({"none": "no decay", "fixed": "fixed per-head decay",
                          "data": "data-dependent decay"}[self.decay])
        if self.update == "delta":
            parts.append("sigmoid beta" if self.beta == "sigmoid" else "beta = 1")
        parts.append(f"short conv {self.short_conv}" if self.short_conv else "no short conv")
        out = []
        if self.output_norm == "rms":
            out.append("RMSNorm")
        if self.output_gate != "none":
            out.append(f"{self.output_gate} gate")
        parts.append(" + ".join(out) + " output" if out else "plain output")
        if self.expand_v != 1:
            parts.append(f"value dim x{self.expand_v}")
        return "; ".join(parts)


#: Baselines as genomes (rendered by ``asiarch.propose.offline.baseline_sources``).
PRESETS: dict[str, LayerGenome] = {
    # causal softmax attention (the quality reference at short context)
    "softmax": LayerGenome(update="softmax", short_conv=0, output_norm="none"),
    # Katharopoulos et al. 2020: elu+1 features; the sum norm keeps writes bounded
    "linear": LayerGenome(update="linear", feature_map="elu1", qk_norm="sum", decay="none",
                          short_conv=0, output_norm="rms"),
    # RetNet (Sun et al. 2023): fixed multi-scale decay, normed and swish-gated output
    "retnet": LayerGenome(update="linear", feature_map="identity", qk_norm="none", decay="fixed",
                          short_conv=0, output_norm="rms", output_gate="swish", expand_v=2),
    # GLA with a scalar per-head data-dependent gate (as Mamba2 / fla's simple GLA)
    "gla": LayerGenome(update="linear", feature_map="identity", qk_norm="none", decay="data",
                       short_conv=0, output_norm="rms", output_gate="swish"),
    # Mamba2 (Dao & Gu 2024) as a mixer: SSD with per-head B and C, SiLU'd short conv on x, B, C,
    # D skip, gated RMSNorm output; value dim x2 as Mamba2's expand = 2
    "mamba2": LayerGenome(update="ssd", feature_map="silu", qk_norm="none", short_conv=4,
                          output_gate="swish", output_norm="rms", expand_v=2),
    # fla's DeltaNet defaults
    "deltanet": LayerGenome(update="delta", feature_map="silu", qk_norm="l2", decay="none",
                            beta="sigmoid", short_conv=4, output_gate="none", output_norm="rms"),
    # fla's GatedDeltaNet (Yang et al. 2024), with expand_v = 1
    "gated_deltanet": LayerGenome(update="delta", feature_map="silu", qk_norm="l2", decay="data",
                                  beta="sigmoid", short_conv=4, output_gate="swish", output_norm="rms"),
}


def genome_from_code(source: str) -> LayerGenome | None:
    """The genome declared in a layer's source, or None when there is none.

    Looks for a module-level ``ASIARCH_GENOME = {...}`` and reads it with
    ``ast.literal_eval``; the code is parsed, never executed. Returns None when the
    source does not parse, has no such assignment, or the literal is not a valid
    genome.
    """
    try:
        tree = parse_source(source)
    except (SyntaxError, ValueError):
        return None
    literal = None  # the last module-level assignment wins, as when the module runs
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == GENOME_VARIABLE for t in targets):
            literal = value
    if literal is None:
        return None
    try:
        return LayerGenome.from_dict(ast.literal_eval(literal))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
