"""The agents through a real chat-completions server on loopback: Researcher (with the
novelty check), Engineer (with the real pre-flight), Analyst; prompts against golden files."""

from __future__ import annotations

import json

import pytest

from asiarch.search.preflight import run_preflight
from asiarch.job.candidate import code_sha256
from asiarch.propose.llm.agents import (CandidateView, Engineer, LayerRules, Novelty, Researcher,
                                candidate_view, record_analysis, render_analyst_prompt, render_engineer_prompt,
                                render_novelty_prompt, render_researcher_prompt, repairs)
from asiarch.propose.llm.client import BudgetExceeded, LLMClient, LLMSettings
from asiarch.propose.llm.knowledge import KnowledgeEntry, builtin_entries, knowledge_base, stored_entries
from asiarch.propose.llm.team import LLMAgents
from asiarch.propose.offline import ProposalError, baseline_sources
from asiarch.store import Store
from tests.conftest import check_golden
from tests.llm_server import Step, server  # noqa: F401  (server: the fixture)

KEY_ENV = "ASIARCH_TEST_LLM_KEY"
SECRET = "sk-test-agents-5ecret-0123456789"
MODELS = {"researcher": "researcher-model", "novelty": "novelty-model", "engineer": "engineer-model",
          "analyst": "analyst-model"}
SOURCES = baseline_sources(("deltanet", "gated_deltanet"))
GOOD = SOURCES["deltanet"]
CALL = "o = chunk_delta_rule(q, k, v, beta)  # (B, H, T, Dv)"
assert CALL in GOOD
BROKEN = GOOD.replace(CALL, "o = chunk_delta_rule(q, k, v, beta).flip(2)  # (B, H, T, Dv)")  # looks ahead
# a genuinely different layer: a data-dependent decay added to the delta rule
NEW = GOOD.replace(CALL, "g = -F.softplus(self.b_proj(hidden_states)).transpose(1, 2)  # (B, H, T)\n"
                         "        o = chunk_delta_rule(q, k, v, beta, g)  # (B, H, T, Dv)")


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "asiarch.db")
    for name, code in SOURCES.items():
        cid = s.add_candidate(name=name, origin="baseline", code=code, code_sha256=code_sha256(code),
                              status="checked", motivation=f"Baseline {name}.")
        s.set_scores(cid, fitness=0.5 if name == "deltanet" else 0.55, loss=0.32 if name == "deltanet" else 0.30,
                     score=0.91, scores={"tokens_per_s": 20000.0}, num_params=21540)
        s.add_analysis(cid, "offline", f"{name} summary line", f"{name} reached loss 0.3.")
    yield s
    s.close()


def client_for(server, store, **kw) -> LLMClient:
    return LLMClient(LLMSettings(base_url=server.url, api_key_env=KEY_ENV, models=MODELS, backoff_s=0.001,
                                 backoff_max_s=0.005, timeout_s=5.0, **kw), store, sleep=lambda s: None)


def proposal(name="delta_datadecay", motivation="Add a data-dependent decay to the delta rule so the state can "
                                                "forget on context switches.", code=NEW) -> str:
    return json.dumps({"name": name, "motivation": motivation, "code": code})


# ----------------------------------------------------------------------------- golden prompts


def _views():
    parent = CandidateView(id=1, name="deltanet", results="fitness 0.500, eval loss 0.3230", role="parent",
                           motivation="Baseline deltanet.", code="class DeltaNet:\n    pass\n",
                           analyses=[{"author": "offline", "summary": "fitness 0.500", "text": "the reference"}])
    ref = CandidateView(id=2, name="gated_deltanet", results="fitness 0.550, eval loss 0.3010", role="reference",
                        motivation="Baseline gated.", code="class DeltaNet:\n    gated = True\n")
    return parent, ref


def test_prompts_match_golden_files():
    parent, ref = _views()
    kb = [e for e in builtin_entries() if e.key == "deltanet"]
    msgs = render_researcher_prompt(parent, [ref], kb, LayerRules())
    check_golden("prompts/researcher.txt", msgs[0]["content"] + "\n=====\n" + msgs[1]["content"])
    msgs = render_engineer_prompt(name="deltanet_x", motivation="m", code="class DeltaNet:\n    pass\n",
                                  error="causality: output at t=3 changed", context="Slurm state FAILED",
                                  rules=LayerRules(allow_quadratic=True, max_params=1000))
    check_golden("prompts/engineer.txt", msgs[0]["content"] + "\n=====\n" + msgs[1]["content"])
    child = CandidateView(id=3, name="child", results="fitness 0.600", motivation="tries a gate")
    msgs = render_analyst_prompt(child, parent=parent, siblings=[ref], baselines=[parent], judge=True,
                                 diff="--- parent\n+++ child\n-a\n+b\n")
    check_golden("prompts/analyst.txt", msgs[0]["content"] + "\n=====\n" + msgs[1]["content"])
    dup = {"id": 1, "name": "deltanet", "similarity": 0.93, "motivation": "Baseline.", "code": "class DeltaNet: ..."}
    msgs = render_novelty_prompt("child", "tries a gate", "class DeltaNet: pass", [dup])
    check_golden("prompts/novelty.txt", msgs[0]["content"])


# ----------------------------------------------------------------------------- researcher


def test_researcher_proposes_from_the_parent_references_analyses_and_knowledge(server, store):
    server.script("researcher-model", Step.reply(proposal(name="Delta DataDecay!")))
    server.default("novelty-model", Step.json({"novel": True, "reason": "adds a decay"}))
    agents = LLMAgents(client_for(server, store), store, LayerRules())
    parent, ref = store.candidate(1), store.candidate(2)
    prop = agents.propose(parent, [ref])
    assert prop.name == "delta_data_decay" and prop.code == NEW and prop.operator == "llm"
    assert prop.genome is None and prop.parent_id == 1 and prop.reference_ids == [2]
    prompt = server.requests_for("researcher-model")[0]["messages"]
    system, user = prompt[0]["content"], prompt[1]["content"]
    assert "class DeltaNet(nn.Module)" in system and "chunk_delta_rule" in system and "Causal" in system
    assert "## The parent" in user and "#1 deltanet (parent)" in user and "#2 gated_deltanet (reference)" in user
    assert user.count("```python") == 2 and "deltanet summary line" in user and "fitness 0.500" in user
    assert "DeltaNet: the delta rule as a memory update" in user  # retrieved knowledge
    assert all(SECRET not in json.dumps(r["body"]) for r in server.requests)  # only in the Authorization header


def test_researcher_reasks_an_answer_without_code_and_takes_a_fenced_block(server, store):
    no_code = json.dumps({"name": "x", "motivation": "an idea without code"})
    fenced = json.dumps({"name": "x_fenced", "motivation": "the code below"}) + "\n```python\n" + NEW + "```\n"
    server.script("researcher-model", Step.reply(no_code), Step.reply(fenced))
    prop = Researcher(client_for(server, store)).propose(store.candidate(1), [])
    assert prop.name == "x_fenced" and prop.code == NEW
    assert "the answer has no code" in server.requests[1]["messages"][-1]["content"]


def test_researcher_reasks_code_that_breaks_the_static_rules(server, store):
    bad = NEW.replace("import torch\n", "import os\nimport torch\n", 1)
    server.script("researcher-model", Step.reply(proposal(code=bad)), Step.reply(proposal()))
    prop = Researcher(client_for(server, store)).propose(store.candidate(1), [])
    assert prop.code == NEW
    assert "import of 'os' is not allowed" in server.requests[1]["messages"][-1]["content"]


def test_a_near_duplicate_is_sent_back_with_the_duplicates_shown(server, store):
    server.script("researcher-model", Step.reply(proposal(name="same", code=GOOD)), Step.reply(proposal()))
    server.script("novelty-model", Step.json({"novel": True, "reason": "a new decay"}))
    client = client_for(server, store)
    prop = Researcher(client, novelty=Novelty(store, client, threshold=0.8)).propose(store.candidate(1), [])
    assert prop.name == "delta_datadecay"
    feedback = server.requests_for("researcher-model")[1]["messages"][-1]["content"]
    assert "too close" in feedback and "#1 deltanet (similarity 1.00)" in feedback
    # the second proposal is lexically close to the baselines, so the LLM judged it
    judged = server.requests_for("novelty-model")
    assert len(judged) == 1 and "delta_datadecay" in judged[0]["messages"][0]["content"]


def test_novelty_is_bounded(server, store):
    server.default("researcher-model", Step.reply(proposal(name="same", code=GOOD)))
    client = client_for(server, store)
    with pytest.raises(ProposalError, match="too close to earlier layers.*#1 deltanet"):
        Researcher(client, novelty=Novelty(store, client), novelty_retries=2).propose(store.candidate(1), [])
    assert len(server.requests_for("researcher-model")) == 3


def test_the_judge_can_reject_and_lexically_distant_code_needs_no_judge(server, store):
    server.script("novelty-model", Step.json({"novel": False, "reason": "only renames"}))
    client = client_for(server, store)
    verdict = Novelty(store, client, threshold=0.5).check("n", "Baseline deltanet.", NEW)
    assert not verdict.novel and verdict.reason == "only renames" and verdict.duplicates[0]["name"] == "deltanet"
    other = "import torch\n\nclass DeltaNet(torch.nn.Module):\n    def forward(self, x):\n        return x.cumsum(1)\n"
    verdict = Novelty(store, client, threshold=0.5).check("n", "a cumulative sum mixer", other)
    assert verdict.novel and len(server.requests) == 1


def test_researcher_failure_after_retries_is_a_proposal_error_and_the_cap_stops_it(server, store):
    server.default("researcher-model", Step.error(500))
    with pytest.raises(ProposalError, match="no usable proposal"):
        Researcher(client_for(server, store, max_retries=1)).propose(store.candidate(1), [])
    store.add_llm_call(agent="researcher", model="m", prompt_tokens=0, completion_tokens=0, cost_usd=5.0,
                       latency_s=0, outcome="ok")
    agents = LLMAgents(client_for(server, store, dollar_cap=5.0), store, LayerRules())
    assert agents.budget_spent() and agents.budget_left() == 0
    n = len(server.requests)
    with pytest.raises(BudgetExceeded):
        agents.propose(store.candidate(1), [])
    assert len(server.requests) == n


# ----------------------------------------------------------------------------- engineer


def test_engineer_repairs_a_preflight_failure_checked_by_the_real_preflight(server, store):
    report = run_preflight(BROKEN, seq_len=64, hidden_size=32, num_heads=2)
    assert not report.ok and report.reason.startswith("causality")
    server.script("engineer-model",
                  Step.json({"explanation": "nothing changed", "code": BROKEN}),  # unchanged: re-asked
                  Step.reply(json.dumps({"explanation": "removed the flip over time"}) + "\n```python\n" + GOOD
                             + "```"))
    cid = store.add_candidate(name="broken", origin="llm", code=BROKEN, code_sha256=code_sha256(BROKEN),
                              motivation="a delta rule")

    def check(code):
        return run_preflight(code, seq_len=64, hidden_size=32, num_heads=2).reason

    agents = LLMAgents(client_for(server, store), store, LayerRules())
    fix = agents.repair(store.candidate(cid), report.reason, stage="preflight", check=check)
    assert fix is not None and fix.code == GOOD and fix.explanation == "removed the flip over time"
    assert "-        o = chunk_delta_rule(q, k, v, beta).flip(2)" in fix.diff
    first = server.requests_for("engineer-model")[0]["messages"][1]["content"]
    assert "causality" in first and ".flip(2)" in first
    assert "unchanged" in server.requests_for("engineer-model")[1]["messages"][-1]["content"]
    rows = repairs(store, cid)
    assert [(r["stage"], r["n"], r["outcome"]) for r in rows] == [("preflight", 1, "ok")]
    assert rows[0]["error"].startswith("causality") and ".flip(2)" in rows[0]["diff"]


def test_engineer_sends_a_still_failing_repair_back_and_gives_up_when_bounded(server, store):
    v1 = GOOD.replace("eps=1e-6)", "eps=1e-5)", 1)
    v2 = GOOD.replace("eps=1e-6)", "eps=1e-4)", 1)
    v3 = GOOD.replace("eps=1e-6)", "eps=1e-3)", 1)
    server.script("engineer-model", *[Step.json({"explanation": f"try {i}", "code": c})
                                      for i, c in enumerate((v1, v2, v3))])
    failures = iter(["shape: wrong", "shape: still wrong", "shape: no"])
    eng = Engineer(client_for(server, store), max_attempts=3)
    assert eng.repair(BROKEN, "Traceback ...\nRuntimeError: boom", context="job log tail",
                      check=lambda code: next(failures)) is None
    assert [a.outcome for a in eng.last_attempts] == ["still failing: shape: wrong", "still failing: shape: still wrong",
                                                      "still failing: shape: no"]
    assert eng.last_attempts[1].error == "shape: wrong"
    assert "shape: wrong" in server.requests[1]["messages"][-1]["content"]
    assert "job log tail" in server.requests[0]["messages"][1]["content"]


def test_engineer_returns_none_when_the_llm_gives_no_code(server, store):
    server.default("engineer-model", Step.json({"explanation": "I cannot"}))
    eng = Engineer(client_for(server, store))
    assert eng.repair(BROKEN, "error") is None
    assert eng.last_attempts[0].outcome.startswith("no answer")


# ----------------------------------------------------------------------------- analyst


def test_analyst_writes_analysis_judge_score_and_a_lesson_used_later(server, store):
    cid = store.add_candidate(name="delta_datadecay", origin="llm", code=NEW, code_sha256=code_sha256(NEW),
                              parent_id=1, motivation="adds a decay")
    store.set_scores(cid, fitness=0.61, loss=0.29, score=0.93, scores={}, num_params=21600)
    answer = {"summary": "decay helps recall: fitness +0.11 over deltanet",
              "analysis": "The data-dependent decay lowered loss by 0.03.",
              "lesson": {"title": "Decay on the delta rule helps MQAR", "problem": "stale keys",
                         "idea": "forget with a gate", "when": "recall tasks", "how": "pass g to chunk_delta_rule"},
              "judge_score": 11}
    server.script("analyst-model", Step.json(answer), Step.json({**answer, "judge_score": 7}))
    agents = LLMAgents(client_for(server, store), store, LayerRules(), judge=True)
    analysis = agents.analyse(store.candidate(cid))
    assert analysis.judge_score == 7.0 and analysis.summary.startswith("decay helps")
    assert "judge_score" in server.requests[1]["messages"][-1]["content"]  # 11 was sent back
    user = server.requests[0]["messages"][1]["content"]
    assert "## Parent #1 deltanet" in user and "+        o = chunk_delta_rule(q, k, v, beta, g)" in user
    assert "gated_deltanet: fitness 0.550" in user
    assert store.analyses(cid)[-1]["author"] == "llm:analyst-model"
    learned = stored_entries(store, origin="learned")
    assert [e.key for e in learned] == [f"learned:c{cid}"]
    assert knowledge_base(store).search("decay delta rule MQAR recall", 1)[0].key == f"learned:c{cid}"
    # the next proposal from this candidate shows the analysis
    server.script("researcher-model", Step.reply(proposal(name="next", code=GOOD.replace("1e-6", "1e-7"))))
    server.default("novelty-model", Step.json({"novel": True, "reason": "ok"}))
    agents.propose(store.candidate(cid), [])
    prompt = server.requests_for("researcher-model")[0]["messages"][1]["content"]
    assert "decay helps recall" in prompt and "Decay on the delta rule helps MQAR" in prompt


def test_analyst_failure_leaves_the_offline_analysis(server, store):
    server.default("analyst-model", Step.reply("no json"))
    agents = LLMAgents(client_for(server, store), store, LayerRules())
    before = len(store.analyses(2))
    assert agents.analyse(store.candidate(2)) is None
    assert len(store.analyses(2)) == before


def test_record_analysis_without_a_lesson(store):
    from asiarch.propose.llm.agents import Analysis

    record_analysis(store, 1, Analysis("s", "t", None, None, "m"))
    assert store.analyses(1)[-1]["author"] == "llm:m" and stored_entries(store) == []


def test_candidate_view_of_an_untrained_candidate(store):
    cid = store.add_candidate(name="x", origin="llm", code="c", code_sha256="s")
    store.set_candidate_status(cid, "rejected", "causality: leak")
    assert candidate_view(store.candidate(cid)).results == "not trained (rejected: causality: leak)"
    assert isinstance(builtin_entries()[0], KnowledgeEntry)
