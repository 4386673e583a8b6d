"""Pre-flight checks: the static safety check, the battery (in-process), and the sandbox
(child processes). Each broken layer in tests/layers/ must fail for the right reason."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from asiarch.cli.check import check_command
from asiarch.search.preflight import (CheckResult, PreflightReport, Sandboxing, child_env, preflight_settings,
                                      run_preflight, run_sandboxed)
from asiarch.job.preflight import CHECK_NAMES, run_checks
from asiarch.job.static_check import ALLOWED_IMPORTS, Finding, static_check

LAYERS = Path(__file__).resolve().parents[1] / "layers"
ASI_ARCH = Path(__file__).resolve().parents[3] / "shared" / "asi-arch" / "architectures.json"
GOOD = ["good_plain", "good_asiarch_style", "good_zero_init", "good_stateful"]


def layer(name: str) -> str:
    return (LAYERS / f"{name}.py").read_text()


def first_failure(report: dict) -> dict:
    return next(c for c in report["checks"] if not c["passed"])


# ----------------------------------------------------------------------------------
# static check


@pytest.mark.parametrize("name, rule, words", [
    ("broken_syntax", "syntax", "parses"),
    ("broken_import_os", "import", "'os'"),
    ("broken_open_file", "builtin", "'open'"),
    ("broken_environ", "name", ".os"),
    ("broken_dunder_escape", "dunder", "__subclasses__"),
    ("broken_getattr_builtins", "getattr", "computed attribute name"),
])
def test_static_check_refuses_corpus_layer_for_the_right_rule(name, rule, words):
    findings = static_check(layer(name))
    assert findings, name
    hit = [f for f in findings if f.rule == rule]
    assert hit, findings
    assert words in hit[0].message
    assert hit[0].line > 0


def test_static_check_names_line_rule_and_what_to_do():
    (finding,) = static_check(layer("broken_open_file"))
    assert finding == Finding("builtin", 8, finding.message)
    assert "constructor arguments" in finding.message
    assert str(finding).startswith("line 8: [builtin]")


@pytest.mark.parametrize("snippet, rule", [
    ("import subprocess", "import"),
    ("from os import environ", "import"),
    ("import numpy as np", "import"),
    ("from . import sibling", "import"),
    ("import importlib", "import"),
    ("import torch.hub", "unsafe-api"),
    ("from torch.utils.cpp_extension import load", "unsafe-api"),
    ("from torch import save", "unsafe-api"),
    ("import torch as T\nT.load('w.pt')", "unsafe-api"),
    ("import torch\ntorch.save({}, 'f.pt')", "unsafe-api"),
    ("import torch\ntorch.ops.load_library('evil.so')", "unsafe-api"),
    ("import torch\ntorch.multiprocessing.spawn(f)", "unsafe-api"),
    ("x.numpy().tofile('f.bin')", "file-io"),
    ("eval('1 + 1')", "builtin"),
    ("run = exec", "builtin"),
    ("__import__('os')", "builtin"),
    ("globals()['x'] = 1", "builtin"),
    ("compile('1', 'f', 'eval')", "builtin"),
    ("g = getattr", "getattr"),
    ("getattr(x, name)", "getattr"),
    ("getattr(x, '__globals__')", "dunder"),  # a literal name is checked as the attribute would be
    ("setattr(x, '__class__', y)", "dunder"),
    ("f.__globals__['os']", "dunder"),
    ("self.__dict__.update(d)", "dunder"),
    ("x.__class__", "dunder"),
    ("'{0.__init__.__globals__}'.format(self)", "dunder"),
    ("import torch\ntorch.sys.modules", "name"),
    ("print(sys.argv)", "name"),
    ("t = torch\nt.load('w.pt')", "file-io"),
    ("import torch\nu = torch.utils\nu.cpp_extension.load_inline('m', '')", "file-io"),
    ("def g():\n    yield\ng().gi_frame.f_builtins", "introspection"),
    ("b['__import__']('os')", "dunder"),
    ("from typing import get_type_hints", "unsafe-api"),
    ("def f(x: \"__import__('os')\"): pass", "dunder"),
    ("import torch\ntorch._C._jit_pass_inline", "private"),
    ("import dataclasses\ndataclasses._create_fn('f', [], ['pass'])", "private"),
])
def test_static_check_refuses(snippet, rule):
    assert rule in {f.rule for f in static_check(snippet)}, static_check(snippet)


@pytest.mark.parametrize("snippet", [
    "from __future__ import annotations\nimport math\nfrom typing import Optional",
    "import torch\nimport torch.nn.functional as F\nfrom torch import nn",
    "from fla.modules import RMSNorm, ShortConvolution\nfrom fla.modules.l2norm import l2norm",
    "from transformers.processing_utils import Unpack\nfrom einops import rearrange",
    "from asiarch.job.ops import chunk_linear_attn",
    "class A:\n    def __init__(self):\n        super().__init__()\n        self.n = type(self).__name__",
    "class A:\n    def f(self):\n        getattr(self, 'proj')\n        hasattr(self, 'gate')\n        setattr(self, 'n', 1)",
    "def forward(ctx, input):\n    return input",
    "def f(x):\n    signal = x * 2\n    return signal",
    "__all__ = ['DeltaNet']\nclass A:\n    __constants__ = ['n']\n    def __repr__(self):\n        return 'A'",
    "import torch\n@torch.compile\ndef k(x):\n    return x",
    "class A:\n    def f(self, cache):\n        if hasattr(cache, '__getitem__'):\n            self._step += 1\n            self.load_state = 1",
    "def f():\n    'Escapes like \\d are the layer\\'s business, not a warning of ours.'",
])
def test_static_check_accepts(snippet):
    assert static_check(snippet) == []


def test_allowed_imports_cover_the_candidate_contract():
    for module in ("torch", "math", "einops", "fla", "asiarch.job.ops", "transformers.processing_utils"):
        assert module in ALLOWED_IMPORTS


@pytest.mark.skipif(not ASI_ARCH.exists(), reason="ASI-Arch's published layers are not beside the repository")
def test_static_check_accepts_every_published_asi_arch_layer():
    programs = [a["program"] for a in json.loads(ASI_ARCH.read_text())]
    refused = {i: static_check(p)[:2] for i, p in enumerate(programs) if static_check(p)}
    assert len(programs) == 80 and not refused


# ----------------------------------------------------------------------------------
# the battery, in-process


@pytest.mark.parametrize("name", GOOD)
def test_good_layers_pass_every_check(name):
    report = run_checks(layer(name), complexity=False)
    assert report["ok"], [c for c in report["checks"] if not c["passed"]]
    assert [c["name"] for c in report["checks"]] == list(CHECK_NAMES[:-1])
    assert report["skipped"] == []


@pytest.mark.parametrize("name, check, words", [
    ("leak_flip", "causality", "reads future tokens"),
    ("leak_mean", "causality", "position 0"),
    ("leak_conv", "causality", "when only inputs at positions >= "),  # a random position (issue 13)
    ("mix_batch", "batch_independence", "mixes samples"),
    ("wrong_shape", "interface", "[1, 64, 128]"),
    ("nan_output", "finite_step", "NaN"),
    ("unused_param", "finite_step", "forgotten_gate"),
    ("init_raises", "construct", "ValueError: hidden_size 64 is not a multiple of head_dim 7 at layer.py line 10"),
    ("broken_syntax", "static", "syntax"),
])
def test_broken_layer_fails_for_the_right_reason(name, check, words):
    report = run_checks(layer(name), complexity=False)
    assert not report["ok"]
    failed = first_failure(report)
    assert failed["name"] == check, failed
    assert words in failed["detail"]


def test_mixed_dtype_layer_runs_only_under_autocast_as_in_bf16_training():
    failed = first_failure(run_checks(layer("mixed_dtype"), complexity=False))
    assert failed["name"] == "interface" and "BFloat16" in failed["detail"] and "line 14" in failed["detail"]
    assert run_checks(layer("mixed_dtype"), complexity=False, autocast=True)["ok"]


def test_zero_gradient_is_reported_but_not_refused():
    source = layer("good_plain").replace("running * torch.sigmoid(self.gate(x))",
                                         "running * torch.sigmoid(self.gate(x)).clamp(min=2.0)")
    report = run_checks(source, complexity=False)
    check = next(c for c in report["checks"] if c["name"] == "finite_step")
    assert report["ok"] and check["figures"]["zero_grad"] == ["gate.weight", "gate.bias"]
    assert "all-zero gradient" in check["detail"]


def test_causality_reports_first_leak_and_size():
    failed = first_failure(run_checks(layer("leak_mean"), complexity=False))
    figures = failed["figures"]
    # the perturbation position is drawn at random (issue 13): the leak shows wherever it falls
    assert figures["first_leak_position"] == 0 and 1 <= figures["perturbed_from"] < figures["length"]
    assert figures["max_leak"] > 100 * figures["tolerance"]


def test_interface_failure_stops_the_run_and_says_what_was_skipped():
    report = run_checks(layer("wrong_shape"))
    assert [c["name"] for c in report["checks"]] == ["static", "load", "construct", "interface"]
    assert report["skipped"] == ["causality", "batch_independence", "finite_step", "params", "complexity"]


def test_missing_class_fails_load_with_the_classes_found():
    failed = first_failure(run_checks(layer("good_plain"), class_name="GatedNet", complexity=False))
    assert failed["name"] == "load" and "DeltaNet" in failed["detail"]


def test_param_limit():
    report = run_checks(layer("good_plain"), max_params=1000, complexity=False)
    failed = first_failure(report)
    assert failed["name"] == "params" and "8,640" in failed["detail"]
    assert failed["figures"]["params"] == 8640


def test_report_is_deterministic():
    a = run_checks(layer("good_asiarch_style"), complexity=False, seed=3)
    b = run_checks(layer("good_asiarch_style"), complexity=False, seed=3)
    assert a["checks"] == b["checks"]


def test_complexity_reports_exponent_and_refuses_quadratic_unless_allowed():
    good = run_checks(layer("good_plain"), complexity_lengths=(128, 512))
    assert good["ok"]
    assert "exponent" in good["checks"][-1]["figures"]
    source = layer("quadratic_loop")
    refused = run_checks(source, complexity_lengths=(256, 1024))
    failed = first_failure(refused)
    assert failed["name"] == "complexity" and failed["figures"]["exponent"] > 1.6, failed
    assert run_checks(source, complexity_lengths=(256, 1024), allow_quadratic=True)["ok"]


# ----------------------------------------------------------------------------------
# the sandbox: child processes


def test_good_layer_in_child_process_via_check_command(capsys):
    code = check_command(str(LAYERS / "good_plain.py"), as_json=True)
    out = capsys.readouterr().out
    report = PreflightReport.from_json(out)  # the layer's own print() did not corrupt stdout
    assert code == 0 and report.ok and report.reason == ""
    assert [c.name for c in report.checks] == list(CHECK_NAMES)
    assert report.elapsed_s < 20


def test_infinite_loop_is_killed_by_the_timeout():
    # 10 s: the child imports torch before its first check, which took over 6 s on a loaded 2-core machine
    report = run_preflight(layer("infinite_loop"), timeout_s=10)
    assert not report.ok
    assert report.checks[-1].name == "timeout"
    assert report.reason.startswith("timeout: ") and "'interface' check" in report.reason
    assert [c.name for c in report.checks[:3]] == ["static", "load", "construct"]  # what ran before
    assert report.elapsed_s < 14


def test_unbounded_allocation_is_stopped_by_the_memory_limit():
    report = run_preflight(layer("alloc_bomb"), memory_mb=2048, complexity=False)
    assert not report.ok
    assert "out of memory" in report.reason and "2048 MB" in report.reason


def test_static_failure_never_starts_a_child():
    report = run_preflight(layer("broken_import_os"), python="/nonexistent/python")
    assert [c.name for c in report.checks] == ["static"]
    assert report.reason.startswith("static: ") and "'os'" in report.reason


@pytest.mark.parametrize("script, words", [
    ("echo 'Traceback: boom' >&2; exit 3", "status 3"),
    ("kill -SEGV $$", "SIGSEGV"),
])
def test_a_child_that_dies_without_a_report_gives_a_crash_report(tmp_path, script, words):
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    report = run_preflight(layer("good_plain"), python=str(fake), timeout_s=10)
    assert not report.ok and report.checks[-1].name == "crash"
    assert words in report.reason
    if "boom" in script:
        assert "boom" in report.stderr_tail and "boom" in report.format_table()


def test_child_env_drops_secrets_and_pins_settings(monkeypatch, tmp_path):
    parent = {"PATH": "/usr/bin", "OPENAI_API_KEY": "sk-1", "GITHUB_TOKEN": "t", "DB_PASSWORD": "p",
              "AWS_SECRET_ACCESS_KEY": "s", "MY_LLM_CRED": "c", "SLURM_JOB_ID": "7", "PYTHONPATH": "/site"}
    env = child_env(parent, workdir=str(tmp_path), secret_env_names=["MY_LLM_CRED"])
    assert env["PATH"] == "/usr/bin" and env["HOME"] == str(tmp_path) and env["OMP_NUM_THREADS"] == "1"
    assert env["PYTHONPATH"].endswith("/site") and env["TORCHDYNAMO_DISABLE"] == "1"
    assert not {"OPENAI_API_KEY", "GITHUB_TOKEN", "DB_PASSWORD", "AWS_SECRET_ACCESS_KEY", "MY_LLM_CRED",
                "SLURM_JOB_ID"} & set(env)


def test_sandboxed_child_sees_no_secret_and_runs_under_limits(monkeypatch, tmp_path):
    monkeypatch.setenv("ASIARCH_TEST_API_KEY", "sk-secret")
    monkeypatch.setenv("ASIARCH_LLM_CREDENTIAL", "cred")
    probe = ("import json, os, resource, sys; print(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd(), "
             "'as': resource.getrlimit(resource.RLIMIT_AS)[0], 'stdin': sys.stdin.read()}))")
    env = child_env(workdir=str(tmp_path), secret_env_names=["ASIARCH_LLM_CREDENTIAL"])
    result = run_sandboxed([sys.executable, "-c", probe], cwd=str(tmp_path), env=env, timeout_s=20,
                           memory_mb=1024)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert "sk-secret" not in json.dumps(seen["env"]) and "cred" not in seen["env"].values()
    assert seen["cwd"] == str(tmp_path) and seen["as"] == 1024 << 20 and seen["stdin"] == ""


def test_report_round_trips_through_json():
    report = PreflightReport(False, [CheckResult("static", True, "fine."),
                                     CheckResult("causality", False, "leaks.", {"first_leak_position": 0})], 1.5)
    again = PreflightReport.from_json(report.to_json())
    assert again == report
    assert again.reason == "causality: leaks."
    assert "FAIL" in again.format_table()


def test_preflight_settings_are_the_experiments_training_settings():
    """One function gives the loop's pre-flight and `asiarch check --config` their settings: each is a
    keyword of run_preflight, taken from the config (the batch per rank, not the global batch)."""
    import inspect

    from asiarch.config import Config

    cfg = Config()
    cfg.train.seq_len, cfg.train.batch_size, cfg.train.nproc, cfg.train.precision = 48, 16, 2, "bf16"
    cfg.train.max_params, cfg.search.class_name, cfg.cluster.sandbox = 0, "MyMixer", "none"
    settings = preflight_settings(cfg)
    assert set(settings) <= set(inspect.signature(run_preflight).parameters)
    assert settings["seq_len"] == 48 and settings["batch_size"] == 8 and settings["precision"] == "bf16"
    assert settings["class_name"] == "MyMixer" and settings["max_params"] is None  # 0: no cap
    assert settings["secret_env_names"] == (cfg.llm.api_key_env,)
    assert settings["sandbox"] == Sandboxing("none", cfg.cluster.container_image, cfg.cluster.python)
    cfg.train.nproc = 32  # more ranks than samples: still one sample per rank
    assert preflight_settings(cfg)["batch_size"] == 1


def test_check_command_missing_file(capsys, tmp_path):
    assert check_command(str(tmp_path / "nope.py"), as_json=False) == 2
    assert "no such file" in capsys.readouterr().err


def test_check_command_prints_a_table(capsys):
    assert check_command(str(LAYERS / "broken_dunder_escape.py"), as_json=False) == 1
    out = capsys.readouterr().out
    assert "static" in out and "FAIL" in out and "__subclasses__" in out
