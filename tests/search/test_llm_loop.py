"""The loop with the LLM agents, end to end: real training jobs (torchrun, 2 gloo ranks) and a real
chat-completions server on loopback (tests/llm_server.py), scripted per agent model.

One search proposes three layers with the Researcher (one answer without code, re-asked; a 429
first), pre-flights them (one reads future tokens and the Engineer repairs it, after a 500), trains
them (one raises in training and the Engineer repairs it for a second attempt), and has the Analyst
explain each, its judge score entering the fitness. Copies of that experiment then meet the dollar
cap and the mixed proposer. The API key is in the head's environment throughout and must reach
only the Authorization header."""

from __future__ import annotations

import io
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from asiarch.cli.main import build_parser, demo_setup, main as cli_main
from asiarch.cli.console import Console
from asiarch.job.candidate import code_sha256
from asiarch.layout import ExperimentDir
from asiarch.propose.llm.agents import repairs
from asiarch.propose.llm.knowledge import stored_entries
from asiarch.search.budget import budget_reason
from asiarch.search.loop import Search
from asiarch.propose.offline import baseline_sources
from asiarch.analysis.report import write_report
from asiarch.analysis.show import show_text
from asiarch.store import Store
from tests.llm_server import FakeLLMServer, Step
from tests.search.test_loop import small_config

pytestmark = pytest.mark.slow

KEY_ENV = "ASIARCH_TEST_LLM_KEY"
SECRET = "sk-test-loop-5ecret-0123456789abcdef"
MODELS = {"researcher": "researcher-model", "novelty": "novelty-model", "engineer": "engineer-model",
          "analyst": "analyst-model"}
PRICE = 0.002  # dollars per answer: the server reports (100, 50) tokens, priced 10 and 20 $/M below

# The Researcher's layers: small edits of the DeltaNet baseline, each pre-flighted for real.
BASE = baseline_sources(("deltanet",))["deltanet"]
CALL = "o = chunk_delta_rule(q, k, v, beta)  # (B, H, T, Dv)"
FMAP = "q, k = F.silu(q), F.silu(k)  # feature map"
CONV = "conv_size = 4"
SHAPE = "B, T, _ = hidden_states.shape\n"
assert all(part in BASE for part in (CALL, FMAP, CONV, SHAPE))
LOOKS_AHEAD = BASE.replace(CALL, "o = chunk_delta_rule(q, k, v, beta).flip(2)  # (B, H, T, Dv)")  # non-causal
DECAY = BASE.replace(CALL, "g = -F.softplus(self.b_proj(hidden_states)).transpose(1, 2)  # (B, H, T)\n"
                           "        o = chunk_delta_rule(q, k, v, beta, g)  # (B, H, T, Dv)")
ELU = BASE.replace(FMAP, "q, k = F.elu(q) + 1.0, F.elu(k) + 1.0  # feature map: positive")
CONV2 = BASE.replace(CONV, "conv_size = 2")
# passes pre-flight (batches of 1, 2, 3 and 8) but raises on the training batch of 4 per rank
CONV2_RAISES = CONV2.replace(SHAPE, SHAPE + "        if B == 4:\n"
                                            "            raise RuntimeError('index out of range in my fancy gather')\n")
RELU = BASE.replace(FMAP, "q, k = F.relu(q), F.relu(k)  # feature map: sparse")

ANALYSIS = {"summary": "the edit kept recall close to deltanet",
            "analysis": "Loss and accuracy moved little against the parent; the change is neutral at this scale.",
            "lesson": {"title": "Small edits of the delta rule are neutral on short MQAR", "problem": "p",
                       "idea": "i", "when": "w", "how": "h"},
            "judge_score": 7}


def proposal(name: str, code: str, motivation: str = "") -> Step:
    return Step.json({"name": name, "motivation": motivation or f"Try {name.replace('_', ' ')} on the delta rule.",
                      "code": code})


def llm_config(url: str, name: str = "llm", **kw):
    cfg = small_config(name, candidates=3)
    cfg.search.round_size = 3
    cfg.search.max_attempts = 2
    cfg.search.proposer = "llm"
    llm = cfg.llm
    llm.base_url, llm.api_key_env, llm.model = url, KEY_ENV, "default-model"
    llm.researcher_model, llm.novelty_model = MODELS["researcher"], MODELS["novelty"]
    llm.engineer_model, llm.analyst_model = MODELS["engineer"], MODELS["analyst"]
    llm.backoff_s, llm.backoff_max_s, llm.timeout_s = 0.01, 0.05, 30.0
    llm.prices = [f"{m}=10/20" for m in MODELS.values()]
    cfg.fitness.judge_weight = 1.0
    for key, value in kw.items():
        section, _, field = key.partition("__")
        setattr(getattr(cfg, section), field, value)
    return cfg


def env_dumping_python(where: Path) -> Path:
    """The jobs' interpreter (kept in ``where``): appends the environment it was started with to
    job-env.txt in its working directory, the attempt directory, then runs this Python, so the test
    sees what each job saw. Not under bwrap: the sandbox binds the paths of the interpreter it is
    given, here this script's folder, not the virtualenv the script runs."""
    wrapper = where / "python-env-dump"
    wrapper.write_text(f"#!/bin/sh\nenv >> job-env.txt || exit 97\n"
                       f"exec {shlex.quote(sys.executable)} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


def run_search(root: Path, cfg, python: Path | None = None):
    out = io.StringIO()
    search = Search.open(ExperimentDir(root), cfg, console=Console(out), python=str(python) if python else None)
    try:
        summary = search.run()
    finally:
        search.close()
    return summary, out.getvalue()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    base = tmp_path_factory.mktemp("llm-loop")
    root = base / "exp"
    with pytest.MonkeyPatch.context() as mp, FakeLLMServer() as srv:
        mp.setenv(KEY_ENV, SECRET)
        srv.script(MODELS["researcher"],
                   Step.error(429, retry_after=0.01), proposal("delta_flip", LOOKS_AHEAD),
                   Step.json({"name": "elu_features", "motivation": "positive features, code to follow"}),
                   proposal("elu_features", ELU),
                   proposal("short_conv2", CONV2_RAISES))
        srv.default(MODELS["novelty"], Step.json({"novel": True, "reason": "a change not tried before"}))
        srv.script(MODELS["engineer"],
                   Step.error(500),
                   Step.json({"explanation": "drop the flip over time; forget with a decay instead",
                              "code": DECAY}),
                   Step.json({"explanation": "remove the batch-size guard that raised", "code": CONV2}))
        srv.default(MODELS["analyst"], Step.json(ANALYSIS))
        # no sandbox for this search, so that the jobs run the env-dumping interpreter and see exactly
        # what the scheduler passed them: the key must not reach a job even where no sandbox clears the
        # environment (the sandbox's own environment is tested in tests/search/test_sandbox.py)
        cfg = llm_config(srv.url, cluster__sandbox="none")
        t0 = time.time()
        summary, log = run_search(root, cfg, env_dumping_python(base))
    return SimpleNamespace(root=root, base=base, cfg=cfg, summary=summary, log=log, server=srv,
                           elapsed=time.time() - t0)


def new_candidates(store: Store) -> dict:
    return {c.name: c for c in store.candidates() if c.origin != "baseline"}


def test_llm_proposals_are_repaired_trained_and_analysed(finished):
    store = Store.open_readonly(finished.root / "asiarch.db")
    base = store.find_candidate("deltanet")
    cands = new_candidates(store)
    assert set(cands) == {"delta_flip", "elu_features", "short_conv2"}, finished.log
    for c in cands.values():
        # the steady schedule samples each parent when its proposal starts, from what is scored then
        # (asynchronous evolution): the reference baseline, or a candidate scored before it
        parent = store.candidate(c.parent_id)
        assert c.origin == "llm" and c.genome_key == "" and parent.status == "done" and parent.id < c.id
        assert parent.id == base.id or parent.origin == "llm"
        assert c.status == "done" and c.fitness is not None, (c.name, c.status, c.reason)
    assert finished.summary.trained == 3
    assert cands["elu_features"].code == ELU

    # the non-causal proposal: rejected by the pre-flight, repaired by the Engineer, then trained
    flip = cands["delta_flip"]
    assert flip.code == DECAY and flip.code_sha256 == code_sha256(DECAY)
    rows = repairs(store, flip.id)
    assert [(r["stage"], r["n"], r["outcome"]) for r in rows] == [("preflight", 1, "ok")]
    assert rows[0]["error"].startswith("causality") and ".flip(2)" in rows[0]["diff"]
    events = [e["message"] for e in store.conn.execute("SELECT message FROM events WHERE candidate_id = ?",
                                                        (flip.id,))]
    assert any("repaired by the Engineer" in m for m in events)
    assert "REPAIRED" in finished.log
    first = finished.server.requests_for(MODELS["engineer"])[0]["messages"][1]["content"]
    assert "causality" in first and "FAIL" in first  # the pre-flight table went along

    # the layer that raised in training: repaired from its traceback, trained again as attempt 2
    conv = cands["short_conv2"]
    attempts = store.attempts(conv.id)
    assert [(a.n, a.status) for a in attempts] == [(1, "failed"), (2, "ok")]
    assert attempts[0].code_sha256 == code_sha256(CONV2_RAISES) and attempts[1].code_sha256 == code_sha256(CONV2)
    assert conv.code == CONV2 and (finished.root / attempts[1].dir).parent.joinpath("layer.py").read_text() == CONV2
    job_repair = repairs(store, conv.id)
    assert [(r["stage"], r["outcome"]) for r in job_repair] == [("job", "ok")]
    assert "index out of range in my fancy gather" in job_repair[0]["error"]
    shown = show_text(store, ExperimentDir(finished.root), str(conv.id), code=False)
    assert "Events" in shown and "repaired by the Engineer (job" in shown  # the repair, in `asiarch show`
    html = write_report(ExperimentDir(finished.root), finished.root / "rep", plots=False).html.read_text()
    assert "repaired: repaired by the Engineer (job" in html  # and in the report
    asked = finished.server.requests_for(MODELS["engineer"])[-1]["messages"][1]["content"]
    assert "Traceback" in asked and "job state" in asked

    # the Analyst's report beside the offline one; its judge score is a fitness term
    for c in cands.values():
        authors = [a["author"] for a in store.analyses(c.id)]
        assert "offline" in authors and "llm:analyst-model" in authors
        assert c.scores["judge"] == 7.0
        assert c.scores["terms"]["judge"] == pytest.approx(6 / 9)
        assert c.fitness == pytest.approx(sum(c.scores["terms"].values()) / 3)
    assert store.analyses(base.id)[-1]["author"] == "offline"  # baselines are not sent to the Analyst
    learned = {e.key for e in stored_entries(store, origin="learned")}
    assert learned == {f"learned:c{c.id}" for c in cands.values()}
    store.close()


def test_faults_and_malformed_answers_are_survived_and_every_try_is_recorded(finished):
    store = Store.open_readonly(finished.root / "asiarch.db")
    calls = [dict(r) for r in store.conn.execute("SELECT agent, model, outcome, cost_usd FROM llm_calls ORDER BY id")]
    by_agent = lambda agent: [c["outcome"] for c in calls if c["agent"] == agent]  # noqa: E731
    assert by_agent("researcher")[:2] == ["http 429", "ok"]
    assert by_agent("researcher")[2:] == ["ok", "malformed: the answer has no code: give the complete file in "
                                                "\"code\" or in a ```python block", "ok", "ok"]
    assert by_agent("engineer") == ["http 500", "ok", "ok"]
    assert by_agent("analyst") == ["ok"] * 3 and by_agent("novelty") == ["ok"] * 3
    reasked = finished.server.requests_for(MODELS["researcher"])[3]["messages"][-1]["content"]
    assert "the answer has no code" in reasked
    # spend: every answer priced from llm.prices, failed tries free; `asiarch status` shows it
    answers = sum(1 for c in calls if c["outcome"] == "ok")
    assert all(c["model"] == MODELS[c["agent"]] for c in calls)
    assert store.llm_dollars() == pytest.approx(answers * PRICE)
    store.close()
    assert cli_main(["status", str(finished.root)]) == 0


def test_the_api_key_reaches_only_the_authorization_header(finished):
    reqs = finished.server.requests
    assert reqs and all(r["headers"].get("authorization") == f"Bearer {SECRET}" for r in reqs)
    assert all(SECRET not in json.dumps(r["body"]) for r in reqs)
    secret = SECRET.encode()
    files = [p for p in finished.root.rglob("*") if p.is_file()]
    assert any(p.name == "job.log" for p in files) and any(p.name == "asiarch.db" for p in files)
    leaked = [str(p) for p in files if secret in p.read_bytes()]
    assert not leaked
    # the jobs' own environment, as their interpreter saw it: one dump per attempt (the baseline, the 3
    # candidates, and the attempt that trains the repair)
    store = Store.open_readonly(finished.root / "asiarch.db")
    ran = sorted(finished.root / a.dir / "job-env.txt" for a in store.attempts())
    store.close()
    dumps = sorted(finished.root.glob("candidates/*/attempt-*/job-env.txt"))
    assert len(ran) == 5 and dumps == ran, (ran, dumps)
    env = "".join(p.read_text() for p in dumps)
    assert all(any(line.startswith("PATH=") for line in p.read_text().splitlines()) for p in dumps)
    assert SECRET not in env and f"{KEY_ENV}=" not in env


def test_the_dollar_cap_stops_llm_proposals_and_the_search(finished, tmp_path):
    root = tmp_path / "capped"
    shutil.copytree(finished.root, root)
    store = Store.open_readonly(root / "asiarch.db")
    spent = store.llm_dollars()
    store.close()
    with pytest.MonkeyPatch.context() as mp, FakeLLMServer() as srv:
        mp.setenv(KEY_ENV, SECRET)
        srv.script(MODELS["researcher"], proposal("relu_features", RELU), proposal("never_asked", ELU))
        srv.default(MODELS["novelty"], Step.json({"novel": True, "reason": "new"}))
        srv.default(MODELS["analyst"], Step.json(ANALYSIS))
        # room for one answer and a bit: the Researcher's answer and the novelty judge's, then nothing
        cfg = llm_config(srv.url, budget__candidates=6, search__round_size=2, budget__llm_dollars=spent + 1.5 * PRICE)
        summary, log = run_search(root, cfg)
    store = Store.open_readonly(root / "asiarch.db")
    cands = new_candidates(store)
    assert set(cands) == {"delta_flip", "elu_features", "short_conv2", "relu_features"}
    assert cands["relu_features"].status == "done" and summary.trained == 4  # of 6: the cap stopped the search
    assert [len(srv.requests_for(MODELS[a])) for a in ("researcher", "novelty", "analyst")] == [1, 1, 0]
    # what the Analyst learned in the first run is knowledge the next proposal's prompt reads
    asked = json.dumps(srv.requests_for(MODELS["researcher"])[0]["body"])
    assert "neutral on short MQAR" in asked and "the edit kept recall close to deltanet" in asked
    assert "no more LLM proposals" in log and "of LLM spent (budget.llm_dollars" in log and "; stopping" in log
    assert store.llm_dollars() == pytest.approx(spent + 2 * PRICE)
    rid = cands["relu_features"].id
    assert [a["author"] for a in store.analyses(rid)] == ["offline"]
    assert any("the Analyst gave no analysis" in e["message"] for e in store.events(50) if e["candidate_id"] == rid)
    store.close()


def test_mixed_proposer_shares_slots_and_falls_back_offline_when_the_budget_is_spent(finished, tmp_path):
    root = tmp_path / "mixed"
    shutil.copytree(finished.root, root)
    edits = [BASE.replace("eps=1e-6)", f"eps=1e-{e})") for e in (3, 4, 5, 7, 8, 9)]
    with pytest.MonkeyPatch.context() as mp, FakeLLMServer() as srv:
        mp.setenv(KEY_ENV, SECRET)
        srv.script(MODELS["researcher"], *[proposal(f"eps_{i}", code) for i, code in enumerate(edits)])
        srv.default(MODELS["novelty"], Step.json({"novel": True, "reason": "new"}))
        cfg = llm_config(srv.url, search__proposer="mixed", search__llm_fraction=0.5)
        search = Search.open(ExperimentDir(root), cfg, console=Console(io.StringIO()))
        props = search.proposals.propose_round(10, 6)
        search.close()
        origins = [c.origin for c in props]
        assert set(origins) == {"llm", "offline"}, origins
        assert origins.count("llm") == len(srv.requests_for(MODELS["researcher"]))
        assert all((c.genome_key == "") == (c.origin == "llm") for c in props)
        n = len(srv.requests)
        # the cap spent: every slot goes to the offline proposer and the search goes on
        cfg.budget.llm_dollars = PRICE
        out = io.StringIO()
        search = Search.open(ExperimentDir(root), cfg, console=Console(out))
        props = search.proposals.propose_round(11, 4)
        assert props and {c.origin for c in props} == {"offline"} and len(srv.requests) == n
        assert out.getvalue().count("the offline proposer takes the LLM's share") == 1
        assert budget_reason(cfg, search.spend()) is None
        search.close()


# ----------------------------------------------------------------------------- the command line


def test_demo_llm_flags_point_the_demo_at_an_endpoint(tmp_path):
    args = build_parser().parse_args(["demo", str(tmp_path / "d"), "--llm-url", "http://127.0.0.1:9/v1",
                                      "--llm-model", "qwen-coder"])
    root, cfg = demo_setup(args)
    assert (cfg.search.proposer, cfg.llm.base_url, cfg.llm.model) == ("llm", "http://127.0.0.1:9/v1", "qwen-coder")
    assert cfg.llm.api_key_env == "OPENAI_API_KEY"
    _, again = demo_setup(build_parser().parse_args(["demo", str(root)]))  # a resumed demo keeps it
    assert again == cfg
    _, plain = demo_setup(build_parser().parse_args(["demo", str(tmp_path / "plain")]))
    assert plain.search.proposer == "offline" and plain.llm.base_url == ""


def test_knowledge_import_fills_the_experiments_knowledge_base(tmp_path, capsys):
    cognition = tmp_path / "cognition"
    cognition.mkdir()
    insight = {"DESIGN_INSIGHT": "### DESIGN_INSIGHT_1: Delta rule with a forget gate",
               "BACKGROUND": "**Title**: Gated Delta Networks\n\nThe delta rule overwrites.",
               "ALGORITHMIC_INNOVATION": "Decay the state before each delta update.",
               "IMPLEMENTATION_GUIDANCE": "Pass g to chunk_delta_rule.",
               "EXPERIMENTAL_TRIGGER_PATTERNS": "Recall degrades on long contexts."}
    (cognition / "arxiv.org_abs_2412.06464.json").write_text(json.dumps([insight, insight]))
    exp = tmp_path / "exp"
    assert cli_main(["knowledge", "import", str(cognition), str(exp)]) == 2  # not an experiment yet
    assert cli_main(["init", str(exp)]) == 0
    assert cli_main(["knowledge", "import", str(cognition), str(exp)]) == 0
    assert "imported 2 insights from 1 papers" in capsys.readouterr().out
    store = Store.open_readonly(exp / "asiarch.db")
    entries = stored_entries(store, origin="cognition")
    assert [e.title for e in entries] == ["Delta rule with a forget gate"] * 2
    store.close()
    assert cli_main(["knowledge", "import", str(tmp_path / "missing"), str(exp)]) == 2
    (cognition / "bad.json").write_text("{not json")
    assert cli_main(["knowledge", "import", str(cognition), str(exp)]) == 2
    assert "bad.json: not a cognition file" in capsys.readouterr().err
