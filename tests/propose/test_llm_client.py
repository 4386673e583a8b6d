"""The LLM client against a real chat-completions server on loopback (tests/llm_server.py)."""

from __future__ import annotations

import json
import logging

import pytest

from asiarch.propose.llm.client import (BudgetExceeded, LLMClient, LLMError, LLMSettings, MalformedAnswer, extract_code,
                                extract_json, parse_prices)
from asiarch.store import Store
from tests.llm_server import Step, server  # noqa: F401  (server: the fixture)

KEY_ENV = "ASIARCH_TEST_LLM_KEY"
SECRET = "sk-test-5ecret-never-stored-0123456789"
MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "answer"}]


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "asiarch.db")
    yield s
    s.close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def settings(url: str, **kw) -> LLMSettings:
    base = dict(base_url=url, model="default-model", api_key_env=KEY_ENV, backoff_s=0.001, backoff_max_s=0.01,
                timeout_s=5.0, max_retries=4, models={"researcher": "researcher-model"})
    base.update(kw)
    return LLMSettings(**base)


def outcomes(store: Store) -> list[str]:
    return [r[0] for r in store.conn.execute("SELECT outcome FROM llm_calls ORDER BY id")]


def test_transient_faults_are_retried_with_backoff_and_recorded(server, store):
    server.script("researcher-model", Step.error(429, retry_after=0.005), Step.error(500), Step.raw("not json {"),
                  Step.empty(), Step.slow(1.0), Step.reply("hello"))
    sleeps = []
    client = LLMClient(settings(server.url, timeout_s=0.3, max_retries=5), store, sleep=sleeps.append)
    reply = client.chat("researcher", MSGS)
    assert reply.text == "hello" and reply.prompt_tokens == 100 and reply.completion_tokens == 50
    assert outcomes(store) == ["http 429", "http 500", outcomes(store)[2], "bad response (no choices)", "timeout", "ok"]
    assert outcomes(store)[2].startswith("bad response")
    assert len(sleeps) == 5
    assert sleeps[0] >= 0.005  # Retry-After honoured (up to backoff_max_s)
    for i, s in enumerate(sleeps[1:], 1):  # base * 2^i, capped, jitter in [50 %, 100 %]
        assert 0.5 * min(0.01, 0.001 * 2 ** i) <= s <= min(0.01, 0.001 * 2 ** i)
    agents = {r[0] for r in store.conn.execute("SELECT agent FROM llm_calls")}
    assert agents == {"researcher"}


def test_retries_are_bounded(server, store):
    server.default("researcher-model", Step.error(503))
    client = LLMClient(settings(server.url, max_retries=2), store, sleep=lambda s: None)
    with pytest.raises(LLMError, match="after 3 tries; last: http 503"):
        client.chat("researcher", MSGS)
    assert len(server.requests) == 3 and outcomes(store) == ["http 503"] * 3


def test_client_errors_are_not_retried_and_name_the_key_variable(server, store):
    server.script("researcher-model", Step.error(401))
    client = LLMClient(settings(server.url), store, sleep=lambda s: None)
    with pytest.raises(LLMError, match=f"http 401.*\\${KEY_ENV}") as info:
        client.chat("researcher", MSGS)
    assert SECRET not in str(info.value)
    assert len(server.requests) == 1


def test_json_schema_requested_and_dropped_when_the_server_refuses_it(server, store):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    server.script("researcher-model", Step.json({"a": 1}, reject_schema=True), Step.json({"a": 2}))
    client = LLMClient(settings(server.url), store, sleep=lambda s: None)
    assert client.ask_json("researcher", MSGS, schema=schema) == {"a": 1}
    assert client.ask_json("researcher", MSGS, schema=schema) == {"a": 2}
    formats = [r["body"].get("response_format") for r in server.requests]
    assert formats[0]["type"] == "json_schema" and formats[0]["json_schema"]["schema"] == schema
    assert formats[1:] == [None, None]  # remembered: no second refusal
    # a server that takes it keeps getting it
    server.script("other", Step.json({"a": 3}))
    client2 = LLMClient(settings(server.url, models={"analyst": "other"}), store)
    assert client2.ask_json("analyst", MSGS, schema=schema) == {"a": 3}
    assert server.requests[-1]["body"]["response_format"]["type"] == "json_schema"


def test_malformed_answers_are_sent_back_with_the_parse_error(server, store):
    server.script("researcher-model", Step.reply("Sure! Here it is: {not json"),
                  Step.reply('Here:\n```json\n{"answer": 42}\n```\n'))
    client = LLMClient(settings(server.url), store)
    assert client.ask_json("researcher", MSGS) == {"answer": 42}
    second = server.requests[1]["messages"]
    assert second[-2] == {"role": "assistant", "content": "Sure! Here it is: {not json"}
    assert "could not be used" in second[-1]["content"] and "not a valid JSON object" in second[-1]["content"]
    assert any(o.startswith("malformed") for o in outcomes(store))


def test_reasking_is_bounded(server, store):
    server.default("researcher-model", Step.reply("no json here"))
    client = LLMClient(settings(server.url, max_reasks=2), store)
    with pytest.raises(MalformedAnswer, match="3 times"):
        client.ask_json("researcher", MSGS)
    assert len(server.requests) == 3


def test_validation_errors_are_reasked_too(server, store):
    server.script("researcher-model", Step.json({"x": "a"}), Step.json({"x": 3}))

    def validate(obj, text):
        if not isinstance(obj.get("x"), int):
            raise ValueError('"x" must be an integer')
        return obj["x"]

    assert LLMClient(settings(server.url), store).ask_json("researcher", MSGS, validate=validate) == 3
    assert '"x" must be an integer' in server.requests[1]["messages"][-1]["content"]


def test_cost_from_the_price_table_and_the_dollar_cap(server, store):
    server.default("researcher-model", Step.reply("ok", usage=(100_000, 50_000)))
    prices = parse_prices(["researcher-model=1.0/2.0"])  # $ per million tokens
    client = LLMClient(settings(server.url, prices=prices, dollar_cap=0.3), store)
    assert client.chat("researcher", MSGS).cost_usd == pytest.approx(0.2)
    client.chat("researcher", MSGS)  # 0.2 spent < 0.3: allowed, ends at 0.4
    assert store.llm_dollars() == pytest.approx(0.4)
    with pytest.raises(BudgetExceeded, match="budget.llm_dollars"):
        client.chat("researcher", MSGS)
    assert len(server.requests) == 2  # the cap stops the call before it is made
    row = store.conn.execute("SELECT agent, model, prompt_tokens, completion_tokens, cost_usd, latency_s, outcome"
                             " FROM llm_calls ORDER BY id LIMIT 1").fetchone()
    assert tuple(row)[:5] == ("researcher", "researcher-model", 100_000, 50_000, pytest.approx(0.2))
    assert row["latency_s"] > 0 and row["outcome"] == "ok"


def test_missing_usage_is_estimated_and_unknown_models_cost_nothing(server, store):
    server.script("researcher-model", Step.reply("x" * 400, usage=None))
    reply = LLMClient(settings(server.url), store).chat("researcher", MSGS)
    assert reply.completion_tokens == 100 and reply.prompt_tokens > 0 and reply.cost_usd == 0.0


def test_the_api_key_is_sent_but_never_stored_logged_or_prompted(server, store, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    server.script("researcher-model", Step.error(429), Step.reply("not json"), Step.json({"a": 1}))
    server.script("bad", Step.error(403))
    client = LLMClient(settings(server.url, models={"researcher": "researcher-model", "analyst": "bad"}), store)
    client.ask_json("researcher", MSGS)
    with pytest.raises(LLMError) as info:
        client.chat("analyst", MSGS)
    headers = {k.lower(): v for k, v in server.requests[0]["headers"].items()}
    assert headers["authorization"] == f"Bearer {SECRET}"  # read from the environment at call time
    store.close()
    assert SECRET.encode() not in (tmp_path / "asiarch.db").read_bytes()
    assert SECRET not in caplog.text and SECRET not in str(info.value)
    assert all(SECRET not in json.dumps(r["messages"]) for r in server.requests)


def test_extract_helpers():
    assert extract_json('{"a": {"b": "}"}} trailing') == {"a": {"b": "}"}}
    assert extract_json('text\n```json\n{"a": 1}\n```') == {"a": 1}
    with pytest.raises(ValueError, match="no JSON object"):
        extract_json("just words")
    assert extract_code("x\n```python\nimport torch\n```\n") == "import torch\n"
    assert extract_code("no code") is None
    with pytest.raises(ValueError, match="MODEL=PROMPT/COMPLETION"):
        parse_prices(["gpt-4o"])
    with pytest.raises(LLMError, match="llm.base_url is empty"):
        LLMClient(LLMSettings(base_url=""))
