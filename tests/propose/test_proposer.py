"""The LLM-free proposer and the layer template: every rendering is a working, causal
candidate, genomes round-trip through code, and proposals are deterministic and novel.

Regenerate the golden baselines after an intended template change with
    ASIARCH_UPDATE_GOLDEN=1 pytest tests/test_proposer.py
"""

import ast
import itertools
import os
import py_compile
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from asiarch.propose.genome import GENES, PRESETS, LayerGenome, genome_from_code
from asiarch.job.candidate import build_layer, call_layer, load_layer_class
from asiarch.job.static_check import format_findings, static_check
from asiarch.propose.offline import (OfflineProposer, ProposalError, baseline_sources, genome_keys,
                              genome_name, render_layer)

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
ALLOWED_IMPORTS = ("torch", "math", "typing", "functools", "einops", "fla", "asiarch.job.ops")


def sample(id, name, code, fitness=None):
    return SimpleNamespace(id=id, name=name, code=code, fitness=fitness)


def all_valid_genomes():
    out = set()
    for values in itertools.product(*GENES.values()):
        try:
            out.add(LayerGenome(**dict(zip(GENES, values))))
        except ValueError:
            pass
    return out


def check_layer(code, tmp_path, class_name="DeltaNet", hidden=32, heads=2):
    """Compile, static-check, load, build, run forward/backward and check causality."""
    path = tmp_path / "layer.py"
    path.write_text(code, encoding="utf-8")
    py_compile.compile(str(path), doraise=True)
    findings = static_check(code)
    assert not findings, format_findings(findings)
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mods = [node.module]
        else:
            continue
        for mod in mods:
            assert any(mod == a or mod.startswith(a + ".") for a in ALLOWED_IMPORTS), mod

    cls = load_layer_class(code, class_name)
    torch.manual_seed(0)
    layer = build_layer(cls, hidden_size=hidden, num_heads=heads)
    x = torch.randn(3, 17, hidden, requires_grad=True)
    y = call_layer(layer, x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    for n, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n

    with torch.no_grad():
        x2 = x.detach().clone()
        x2[:, 10:] = torch.randn(3, 7, hidden) * 3
        y1, y2 = call_layer(layer, x.detach()), call_layer(layer, x2)
    torch.testing.assert_close(y2[:, :10], y1[:, :10], atol=1e-5, rtol=0)
    assert not torch.allclose(y2[:, 10:], y1[:, 10:])
    return layer


# ----------------------------------------------------------------------------------
# genomes


def test_presets_are_valid_and_distinct():
    assert len({g.key() for g in PRESETS.values()}) == len(PRESETS)
    assert LayerGenome() == PRESETS["deltanet"]
    for g in PRESETS.values():
        assert LayerGenome.from_dict(g.to_dict()) == g
        assert list(g.to_dict()) == list(GENES)
        assert g.describe()


def test_equivalent_genomes_share_a_key():
    a = LayerGenome(update="softmax", feature_map="silu", qk_norm="l2", decay="data", beta="sigmoid")
    b = LayerGenome(update="softmax", feature_map="relu", qk_norm="none", decay="fixed", beta="one")
    assert a == b and a.key() == b.key()
    assert a.to_dict()["feature_map"] == "identity" and a.to_dict()["decay"] == "none"
    # beta only matters to the delta rule
    lin = dict(update="linear", feature_map="elu1", qk_norm="sum")
    assert LayerGenome(**lin, beta="sigmoid").key() == LayerGenome(**lin, beta="one").key()
    assert LayerGenome(beta="sigmoid").key() != LayerGenome(beta="one").key()


@pytest.mark.parametrize("genes, message", [
    (dict(feature_map="silu", qk_norm="sum"), "non-negative feature map"),
    (dict(feature_map="identity", qk_norm="sum", update="linear"), "non-negative feature map"),
    (dict(update="delta", qk_norm="none"), "normalised keys"),
    (dict(update="linear", decay="none", output_norm="none"), "grows with t"),
])
def test_unstable_combinations_are_rejected(genes, message):
    with pytest.raises(ValueError, match=message):
        LayerGenome(**genes)


def test_from_dict_names_the_bad_gene_and_valid_values():
    with pytest.raises(ValueError, match=r"'decay'.*'sometimes'.*'none', 'fixed', 'data'"):
        LayerGenome.from_dict({"decay": "sometimes"})
    with pytest.raises(ValueError, match=r"unknown gene\(s\) colour; valid genes: update, "):
        LayerGenome.from_dict({"colour": "red"})
    with pytest.raises(ValueError, match="'expand_v'"):
        LayerGenome.from_dict({"expand_v": True})  # True == 1, but not a valid value
    with pytest.raises(ValueError, match="'short_conv'"):
        LayerGenome.from_dict({"short_conv": 4.0})
    assert LayerGenome.from_dict({"decay": "data"}) == PRESETS["deltanet"].replace(decay="data")


def test_genome_from_code_reads_the_literal_without_running_the_code():
    g = PRESETS["gla"]
    code = f"raise SystemExit('never run')\nASIARCH_GENOME = {g.to_dict()!r}\n"
    assert genome_from_code(code) == g
    assert genome_from_code(f"ASIARCH_GENOME: dict = {g.to_dict()!r}\n") == g
    # the last assignment wins, as when the module runs
    code2 = code + f"ASIARCH_GENOME = {PRESETS['retnet'].to_dict()!r}\n"
    assert genome_from_code(code2) == PRESETS["retnet"]
    for bad in [
        "import torch\n",                                       # absent
        "def f(:\n",                                            # does not parse
        "ASIARCH_GENOME = dict(update='delta')\n",              # not a literal
        "ASIARCH_GENOME = {'update': 'recurrent'}\n",           # bad value
        "ASIARCH_GENOME = ['delta']\n",                         # not a dict
        "def f():\n    ASIARCH_GENOME = {'update': 'linear'}\n",  # not module level
        "x = 1\0\n",                                            # null byte
    ]:
        assert genome_from_code(bad) is None, bad


# ----------------------------------------------------------------------------------
# rendering


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_renders_a_working_causal_layer(name, tmp_path):
    code = baseline_sources([name])[name]
    assert genome_from_code(code) == PRESETS[name]
    check_layer(code, tmp_path)


def test_rendering_uses_only_the_ops_and_imports_it_needs():
    src = baseline_sources(PRESETS)
    assert "from asiarch.job.ops import chunk_delta_rule\n" in src["deltanet"]
    assert "from asiarch.job.ops import chunk_linear_attn\n" in src["retnet"]
    assert "from asiarch.job.ops import causal_softmax_attn\n" in src["softmax"]
    assert "import math" in src["gated_deltanet"] and "import math" not in src["deltanet"]
    assert "_short_conv" not in src["softmax"] and "b_proj" not in src["linear"]
    assert "g_proj" not in src["deltanet"] and "a_proj" in src["gated_deltanet"]
    for code in src.values():
        assert max(len(line) for line in code.splitlines()) <= 100
        assert code.endswith("\n") and not code.endswith("\n\n")


def test_class_name_alias_and_error_messages(tmp_path):
    code = render_layer(PRESETS["linear"], name="lin", class_name="Mixer")
    cls = check_layer(code, tmp_path, class_name="Mixer").__class__
    assert cls(d_model=24, num_heads=3).hidden_size == 24
    with pytest.raises(AssertionError, match=r"hidden_size \(30\) must be divisible by num_heads \(4\)"):
        cls(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="class_name"):
        render_layer(PRESETS["linear"], name="x", class_name="not a name")
    layer = cls(hidden_size=8, num_heads=2)
    x = torch.randn(1, 5, 8)
    assert layer(x, attention_mask=torch.ones(1, 5))[0].shape == x.shape
    with pytest.raises(ValueError, match="padding"):
        layer(x, attention_mask=torch.tensor([[0, 1, 1, 1, 1]]))


def test_docstring_text_is_escaped(tmp_path):
    nasty = 'ends with a quote" and """triple quotes""" and a \\ backslash \x00 \\N{bad}'
    code = render_layer(PRESETS["deltanet"], name='x"""y', motivation=nasty)
    compile(code, "layer.py", "exec")
    assert genome_from_code(code) == PRESETS["deltanet"]
    assert ast.get_docstring(ast.parse(code)).startswith('x"""y')


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet", "mamba2"])
def test_golden_baselines(name):
    code = baseline_sources([name])[name]
    path = GOLDEN / f"layer_{name}.py"
    if os.environ.get("ASIARCH_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(code.encode("utf-8"))
    assert path.exists(), f"{path} is missing; create it with ASIARCH_UPDATE_GOLDEN=1 pytest {__file__}"
    assert path.read_bytes() == code.encode("utf-8"), (
        f"rendering of {name!r} differs from {path}; if the template change is intended, "
        f"regenerate with ASIARCH_UPDATE_GOLDEN=1 pytest {__file__}"
    )


# ----------------------------------------------------------------------------------
# proposing


def evolve(seed, rounds, rng_seed=0):
    """A tiny search loop: population of baselines, parents and references drawn at random."""
    population = [sample(i, n, c, fitness=0.5) for i, (n, c) in enumerate(baseline_sources(PRESETS).items())]
    seen = genome_keys(s.code for s in population)
    proposer, rng, proposals = OfflineProposer(seed), random.Random(rng_seed), []
    for r in range(rounds):
        parent = rng.choice(population)
        refs = rng.sample([s for s in population if s is not parent], 2)
        p = proposer.propose(parent, refs, seen_keys=seen, rng_key=r)
        assert p.genome.key() not in seen
        seen.add(p.genome.key())
        proposals.append((parent, refs, p))
        population.append(sample(len(population), p.name, p.code, fitness=rng.random()))
    return proposals


def test_proposals_render_working_layers(tmp_path):
    proposals = evolve(seed=7, rounds=25)
    operators = {p.operator for _, _, p in proposals}
    assert {"mutate", "crossover"} <= {op.split("+")[0] for op in operators}
    for parent, refs, p in proposals:
        assert genome_from_code(p.code) == p.genome
        assert p.name == genome_name(p.genome) and p.name.endswith(p.genome.key()[:4])
        assert p.name.replace("_", "").isalnum() and p.name.islower()
        assert p.parent_id == parent.id and f"'{parent.name}'" in p.motivation
        assert set(p.reference_ids) <= {r.id for r in refs}
        if p.operator.startswith("crossover"):
            (ref,) = [r for r in refs if r.id == p.reference_ids[0]]
            assert f"'{ref.name}'" in p.motivation
        assert 2 <= p.motivation.count(". ") + 1 <= 4, p.motivation
        check_layer(p.code, tmp_path)


def test_same_seed_same_proposals_other_seed_other_proposals():
    a = [p.code for _, _, p in evolve(seed=1, rounds=6)]
    assert a == [p.code for _, _, p in evolve(seed=1, rounds=6)]
    assert a != [p.code for _, _, p in evolve(seed=2, rounds=6)]
    parent = sample(3, "deltanet", baseline_sources()["deltanet"], 0.5)
    proposer = OfflineProposer(0)
    assert len({proposer.propose(parent, rng_key=k).code for k in range(6)}) > 1


def test_seen_keys_are_respected_until_exhausted():
    parent = sample(1, "deltanet", baseline_sources()["deltanet"], 0.5)
    everything = {g.key() for g in all_valid_genomes()}
    proposer = OfflineProposer(3)
    for k in range(10):
        almost = everything - {proposer.propose(parent, rng_key=k).genome.key()}
        # with a single unseen genome left, the proposer finds it or gives up clearly
        try:
            assert proposer.propose(parent, rng_key=k, seen_keys=almost).genome.key() not in almost
        except ProposalError:
            pass
    with pytest.raises(ProposalError, match="no new genome in 50 draws from parent 'deltanet' \\(#1"):
        proposer.propose(parent, rng_key=0, seen_keys=everything)


def test_parent_without_genome_stands_in_as_deltanet(tmp_path):
    foreign = "import torch\n\nclass DeltaNet(torch.nn.Module):\n    pass\n"
    p = OfflineProposer(5).propose(sample(9, "asi_arch_layer", foreign, None), rng_key="x")
    assert "declares no genome, so the DeltaNet preset stood in" in p.motivation
    assert "not yet scored" in p.motivation
    assert p.genome != PRESETS["deltanet"] and p.operator == "mutate"
