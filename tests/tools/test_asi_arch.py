"""ASI-Arch's published layers: importing them into an experiment (results, lineage,
idempotence, selection), and running a sample of them unmodified through the compat layer,
the pre-flight and the trainer. Skipped when ASI-Arch's data is not beside the repository."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from asiarch.tools.asi_arch import (ORIGIN, AsiArchError, import_layers, parse_parameters, read_architectures,
                              select_layers)
from asiarch.search.preflight import run_preflight
from asiarch.cli import main as cli_main
from asiarch.job import result as rf
from asiarch.job.candidate import build_layer, call_layer, code_sha256, load_layer_class
from asiarch.job.preflight import run_checks
from asiarch.store import Store

ASI_ARCH = Path(__file__).resolve().parents[3] / "shared" / "asi-arch"
ARCHITECTURES = ASI_ARCH / "architectures.json"
TREE = ASI_ARCH / "tree.json"

pytestmark = pytest.mark.skipif(not ARCHITECTURES.exists(), reason="ASI-Arch's published data is not beside the "
                                                                  "repository (../shared/asi-arch)")

# fp32-clean, and three that cast to bf16 inside their kernels (they run only under autocast)
SAMPLE = ["delta_net_hhmr", "delta_net_rmsgm", "delta_net_ssg_sparsemax_temp", "delta_net_cagf_rc_pf_hybrid"]
LEAKY = "delta_net_spectral_fusion"  # its FFT filter reads future tokens


@pytest.fixture(scope="module")
def layers():
    return read_architectures(ARCHITECTURES)


@pytest.fixture(scope="module")
def by_name(layers):
    return {l.name: l for l in layers}


def _store(root: Path) -> Store:
    return Store.open(root / "asiarch.db")


# ----------------------------------------------------------------------------------
# reading


def test_reads_every_layer_with_its_reported_results_as_numbers(layers, by_name):
    assert len(layers) == 80 and len({l.index for l in layers}) == 80
    hhmr = by_name["delta_net_hhmr"]
    assert (hhmr.index, hhmr.parent, hhmr.display_name) == (1735, 1544, "HybridGateFlow")
    assert hhmr.train["step"][:3] == [1, 100, 200] and hhmr.train["step"][-1] == 2000
    assert hhmr.train["loss"][0] == 11.026 and hhmr.final_train_loss == 3.3998
    assert hhmr.benchmarks["arc_challenge"] == 0.2355 and hhmr.benchmark_average == 0.3979
    assert hhmr.benchmarks["lam_ppl"] is None  # nan in the CSV
    assert parse_parameters(hhmr.parameters) == 495_730_000
    assert all("class DeltaNet" in l.code for l in layers)


def test_tree_given_as_the_input_is_refused_with_what_to_do(tmp_path, capsys):
    assert cli_main(["import-asi-arch", str(TREE), "--into", str(tmp_path / "exp")]) == 2
    assert "looks like tree.json" in capsys.readouterr().err


def test_selection_by_score_and_by_name(layers):
    top = select_layers(layers, top=5)
    best = sorted((l.score for l in layers), reverse=True)[:5]
    assert [l.score for l in top] == best
    assert [l.name for l in select_layers(layers, names=["delta_net_hhmr", "HybridGateFlow"])] == ["delta_net_hhmr"]
    with pytest.raises(AsiArchError, match="'delta_net_hmr'.*did you mean delta_net_hhmr"):
        select_layers(layers, names=["delta_net_hmr"])
    with pytest.raises(AsiArchError, match="at least 1"):
        select_layers(layers, top=0)


# ----------------------------------------------------------------------------------
# importing


def test_import_all_records_code_results_and_lineage_and_is_idempotent(tmp_path, capsys, layers):
    root = tmp_path / "exp"
    args = ["import-asi-arch", str(ARCHITECTURES), "--tree", str(TREE), "--into", str(root)]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "imported 80 of 80" in out and "19 linked to an imported parent" in out
    assert 'precision = "bf16"' in (root / "config.toml").read_text()  # a new experiment trains as ASI-Arch did

    store = _store(root)
    try:
        cands = store.candidates(origin=ORIGIN)
        assert len(cands) == 80 and {c.status for c in cands} == {"proposed"}
        by_index = {c.scores["asi_arch"]["index"]: c for c in cands}
        published = {l.index: l for l in layers}
        linked = 0
        for index, c in by_index.items():
            layer = published[index]
            record = c.scores["asi_arch"]
            assert c.code == layer.code and c.name == layer.name
            assert record["final_train_loss"] == layer.final_train_loss and record["score"] == layer.score
            assert record["parent_index"] == layer.parent and record["ancestors"][-1] == 1  # back to DeltaNet
            assert c.motivation.startswith(f"[Imported from ASI-Arch: #{index} {layer.name}")
            assert layer.motivation.strip() in c.motivation
            if layer.parent in by_index:
                assert c.parent_id == by_index[layer.parent].id
                linked += 1
            else:
                assert c.parent_id is None and f"ASI-Arch #{layer.parent}" in c.motivation
        assert linked == 19
    finally:
        store.close()

    assert cli_main(args) == 0  # again: nothing added twice
    assert "imported 0 of 80" in capsys.readouterr().out
    store = _store(root)
    try:
        assert len(store.candidates()) == 80
    finally:
        store.close()


def test_imports_in_parts_link_children_to_parents_imported_before(tmp_path, layers):
    store = _store(tmp_path)
    try:
        children = [l for l in layers if l.parent in {p.index for p in layers}]
        child = children[0]
        parent = next(l for l in layers if l.index == child.parent)
        first = import_layers(store, [parent])
        # training rewrites the parent's scores; the link still finds it
        store.set_scores(first.added[0][0], fitness=0.5, loss=1.0, score=0.5, scores={"metrics": {}},
                         num_params=1, status="done")
        second = import_layers(store, [child, parent])
        assert len(first.added) == 1 and len(second.added) == 1 and len(second.skipped) == 1
        (child_id, _), = second.added
        assert store.candidate(child_id).parent_id == first.added[0][0] and second.linked == 1
    finally:
        store.close()


def test_import_interrupted_before_recording_results_is_completed_by_the_next(tmp_path, by_name):
    layer = by_name["delta_net_hhmr"]
    store = _store(tmp_path)
    try:  # what an import killed between adding the candidate and recording its results leaves
        cid = store.add_candidate(name=layer.name, origin=ORIGIN, code=layer.code, code_sha256=code_sha256(layer.code))
        summary = import_layers(store, [layer])
        assert not summary.added and store.candidate(cid).scores["asi_arch"]["index"] == layer.index
    finally:
        store.close()


def test_existing_fp32_experiment_is_told_which_precision_the_layers_need(tmp_path, capsys):
    root = tmp_path / "exp"
    assert cli_main(["init", str(root)]) == 0
    assert cli_main(["import-asi-arch", str(ARCHITECTURES), "--into", str(root), "--names", "delta_net_rmsgm",
                     "--names", "delta_net_hhmr,delta_net_cagf"]) == 0
    out = capsys.readouterr().out
    assert "imported 3 of 3" in out and "warning: 2 of them cast to bf16" in out and "precision" in out


def test_cognition_fills_the_knowledge_base_with_the_layers(tmp_path, capsys):
    from asiarch.propose.llm.knowledge import stored_entries

    root = tmp_path / "e"
    assert cli_main(["import-asi-arch", str(ARCHITECTURES), "--into", str(root), "--top", "2", "--cognition",
                     str(ASI_ARCH / "cognition")]) == 0
    out = capsys.readouterr().out
    assert "imported 2 of 2" in out and "insights from" in out
    with Store.open_readonly(root / "asiarch.db") as store:
        entries = stored_entries(store, origin="cognition")
    assert len(entries) >= 100
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "paper.json").write_text("{not json")
    code = cli_main(["import-asi-arch", str(ARCHITECTURES), "--into", str(tmp_path / "f"), "--cognition", str(bad)])
    assert code == 2 and "--cognition" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()  # nothing written when the papers do not read


# ----------------------------------------------------------------------------------
# running them unmodified (compat layer on CPU)


@pytest.mark.parametrize("name", SAMPLE)
def test_published_layer_runs_forward_and_backward_on_cpu(by_name, name):
    cls = load_layer_class(by_name[name].code, filename=f"{name}.py", device="cpu")
    torch.manual_seed(0)
    layer = build_layer(cls, 64, 4)
    x = torch.randn(2, 64, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as ASI-Arch trained them
        y = call_layer(layer, x)
    assert y.shape == x.shape
    y.float().pow(2).mean().backward()
    grads = [p.grad for p in layer.parameters() if p.grad is not None]
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_leaky_published_layer_is_caught_by_the_causality_check(by_name):
    report = run_checks(by_name[LEAKY].code, autocast=True, complexity=False, filename=f"{LEAKY}.py")
    failed = [c for c in report["checks"] if not c["passed"]]
    assert failed[0]["name"] == "causality"  # (its parameter gain_p is also unused: finite_step fails too)
    figures = failed[0]["figures"]
    assert figures["first_leak_position"] == 0 and figures["max_leak"] > 10 * figures["tolerance"]
    assert "reads future tokens" in failed[0]["detail"]


def test_layer_that_casts_to_bf16_passes_the_sandboxed_preflight_only_under_autocast(by_name):
    code = by_name["delta_net_rmsgm"].code
    assert run_preflight(code, autocast=True, complexity=False).ok
    report = run_preflight(code, complexity=False)
    assert not report.ok and report.failed.name == "interface" and "BFloat16" in report.failed.detail


@pytest.mark.slow
def test_trainer_trains_a_published_layer_in_bf16_on_cpu(tmp_path, by_name):
    layer = tmp_path / "delta_net_rmsgm.py"
    layer.write_text(by_name["delta_net_rmsgm"].code)
    out = tmp_path / "result.h5"
    code = cli_main(["train", str(layer), "--out", str(out), "--steps", "6", "--hidden-size", "64", "--num-heads",
                     "4", "--nproc", "2", "--precision", "bf16"])
    rec = rf.read_result(out)
    assert code == 0 and rec.status == "ok", rec.error
    assert rec.config["precision"] == "bf16" and rec.steps_done == 6
    assert all(math.isfinite(x) for x in rec.curve.loss) and math.isfinite(rec.eval_loss)
