"""The LLM edge: chat completions against any OpenAI-compatible endpoint.

One :class:`LLMClient` serves every agent. Each agent may have its own model and base
URL (:class:`LLMSettings`). The API key is read from the environment variable the
settings name at the moment of each request, handed to the ``openai`` client and
nowhere else: it is never logged, stored, rendered into a prompt or passed to a job.

Every HTTP try is one row of the store's ``llm_calls`` table (agent, model, tokens,
dollars from the price table, latency, outcome), failed tries included, so the spend
shown by ``asiarch status`` is what the endpoint saw. Rate limits (429), server errors
(5xx), timeouts and broken connections are retried with exponential backoff and
jitter, a bounded number of times. :meth:`LLMClient.ask_json` asks for a structured
answer (``response_format`` json_schema where the server takes it, else a fenced block
in the text) and re-asks with the parse error when the answer is malformed.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import openai

from asiarch.job.contract import redact, secret_values

__all__ = [
    "AGENTS", "LLMSettings", "LLMClient", "LLMError", "BudgetExceeded", "MalformedAnswer", "Reply",
    "parse_prices", "parse_agent_map", "budget_left", "check_budget", "extract_json",
    "extract_code", "DEFAULT_PRICES",
]

log = logging.getLogger("asiarch.propose.llm")

#: The agents that talk to the LLM (each may have its own model and base URL).
AGENTS = ("researcher", "novelty", "engineer", "analyst")

#: Dollars per million (prompt, completion) tokens for a few common models; a model
#: missing from the table costs 0 (local servers), unless settings.prices names it.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "o3": (2.00, 8.00),
    "o4-mini": (1.10, 4.40),
}

# Characters per token when the server reports no usage (a rough figure for English and code).
_CHARS_PER_TOKEN = 4


class LLMError(RuntimeError):
    """The endpoint could not give an answer (after retries); the message says what to check."""


class BudgetExceeded(LLMError):
    """The dollar cap (budget.llm_dollars) is reached: no new LLM call is made."""


class MalformedAnswer(LLMError):
    """The model kept answering in a form that could not be used (after re-asking)."""


def parse_prices(items: Sequence[str]) -> dict[str, tuple[float, float]]:
    """``["gpt-4o-mini=0.15/0.60", ...]`` (model = prompt/completion dollars per million tokens)."""
    out = {}
    for item in items:
        model, sep, rest = item.partition("=")
        p_in, sep2, p_out = rest.partition("/")
        try:
            if not (sep and sep2 and model.strip()):
                raise ValueError
            out[model.strip()] = (float(p_in), float(p_out))
        except ValueError:
            raise ValueError(f"llm.prices: {item!r} should look like 'MODEL=PROMPT/COMPLETION' in dollars per "
                             "million tokens, e.g. 'gpt-4o-mini=0.15/0.60'") from None
    return out


def parse_agent_map(items: Sequence[str], what: str) -> dict[str, str]:
    """``["analyst=http://...", ...]`` as a dict; agents must be among :data:`AGENTS`."""
    out = {}
    for item in items:
        agent, sep, value = item.partition("=")
        if not sep or agent.strip() not in AGENTS or not value.strip():
            raise ValueError(f"{what}: {item!r} should look like 'AGENT=VALUE' with AGENT one of {', '.join(AGENTS)}")
        out[agent.strip()] = value.strip()
    return out


@dataclass
class LLMSettings:
    """What the client needs; :meth:`from_config` builds it from the ``[llm]`` section."""

    base_url: str
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"
    models: dict[str, str] = field(default_factory=dict)      #: agent -> model (default: model)
    base_urls: dict[str, str] = field(default_factory=dict)   #: agent -> base URL (default: base_url)
    timeout_s: float = 120.0
    max_retries: int = 5
    backoff_s: float = 1.0          #: first retry waits about this long, doubling each time
    backoff_max_s: float = 60.0
    max_reasks: int = 2             #: re-asks after a malformed answer
    structured: str = "auto"        #: 'auto' (json_schema, falling back on refusal), 'json_schema', 'text'
    temperature: float | None = None
    max_tokens: int | None = None
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)
    dollar_cap: float = 0.0         #: 0: no cap

    def model_for(self, agent: str) -> str:
        return self.models.get(agent) or self.model

    def url_for(self, agent: str) -> str:
        return self.base_urls.get(agent) or self.base_url

    def price_for(self, model: str) -> tuple[float, float]:
        if model in self.prices:
            return self.prices[model]
        return DEFAULT_PRICES.get(model, (0.0, 0.0))

    @classmethod
    def from_config(cls, cfg: Any) -> "LLMSettings":
        """From a loaded Config; fields the ``[llm]`` section lacks keep their defaults."""
        llm = cfg.llm
        get = lambda name, default: getattr(llm, name, default)  # noqa: E731
        models = {a: get(f"{a}_model", "") for a in AGENTS}
        return cls(
            base_url=llm.base_url, model=llm.model, api_key_env=llm.api_key_env,
            models={a: m for a, m in models.items() if m},
            base_urls=parse_agent_map(get("agent_base_urls", []), "llm.agent_base_urls"),
            timeout_s=llm.timeout_s, max_retries=llm.max_retries,
            backoff_s=get("backoff_s", 1.0), backoff_max_s=get("backoff_max_s", 60.0),
            max_reasks=get("max_reasks", 2), structured=get("structured", "auto"),
            temperature=_temperature(get("temperature", None)), max_tokens=get("max_tokens", 0) or None,
            prices=parse_prices(get("prices", [])),
            dollar_cap=float(getattr(getattr(cfg, "budget", None), "llm_dollars", 0.0) or 0.0),
        )


def _temperature(value: float | None) -> float | None:
    """A negative llm.temperature means the server's default (TOML has no null)."""
    return None if value is None or value < 0 else float(value)


# ----------------------------------------------------------------------------- spend


def budget_left(store, cap: float) -> float | None:
    """Dollars left under ``cap`` (None: no cap)."""
    if not cap or cap <= 0:
        return None
    return max(0.0, cap - store.llm_dollars())


def check_budget(store, cap: float, *, in_flight: float = 0.0) -> None:
    """Raise :class:`BudgetExceeded` when ``cap`` dollars (> 0) are spent, counting ``in_flight``
    (the expected cost of calls not yet answered)."""
    left = budget_left(store, cap)
    if left is not None and left - in_flight <= 0:
        raise BudgetExceeded(f"the LLM budget of ${cap:.2f} (budget.llm_dollars) is spent "
                             f"(${store.llm_dollars():.4f}); raise it to propose more with the LLM")


# ----------------------------------------------------------------------------- parsing answers

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.S)


def extract_json(text: str) -> dict:
    """The JSON object in an answer: the whole text, a fenced ```json block, or the first
    balanced ``{...}``. Raises ValueError with what was wrong (shown to the model on a re-ask)."""
    text = (text or "").strip()
    if not text:
        raise ValueError("the answer was empty")
    tries = [text] + [body for lang, body in _FENCE.findall(text) if lang.lower() in ("json", "")]
    start = text.find("{")
    if start >= 0:
        tries.append(_balanced(text, start))
    first_error = None
    for t in tries:
        try:
            value = json.loads(t)
        except (json.JSONDecodeError, TypeError) as exc:
            first_error = first_error or exc
            continue
        if isinstance(value, dict):
            return value
    if first_error is None or "{" not in text:
        raise ValueError("the answer holds no JSON object")
    raise ValueError(f"the answer is not a valid JSON object ({first_error})")


def _balanced(text: str, start: int) -> str:
    depth, in_str, esc = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    return text[start:]


def extract_code(text: str) -> str | None:
    """The longest fenced ```python block of an answer, or None."""
    blocks = [body for lang, body in _FENCE.findall(text or "") if lang.lower() in ("python", "py")]
    return max(blocks, key=len).strip("\n") + "\n" if blocks else None


# ----------------------------------------------------------------------------- the client


@dataclass
class Reply:
    """One answer: its text, the model that gave it and the tokens it cost."""

    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


_RETRYABLE = "retryable"


class LLMClient:
    """Chat completions with retries, structured answers, cost recording and a dollar cap.

    ``store`` (an asiarch Store, optional) receives one llm_calls row per HTTP try.
    ``sleep`` and ``rng`` are the backoff's clock and jitter (tests make them instant).
    """

    def __init__(self, settings: LLMSettings, store=None, *, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None):
        if not settings.base_url:
            raise LLMError("llm.base_url is empty: set it to an OpenAI-compatible endpoint "
                           "(e.g. http://localhost:8000/v1) or use search.proposer = 'offline'")
        if settings.structured not in ("auto", "json_schema", "text"):
            raise ValueError(f"llm.structured {settings.structured!r}: one of 'auto', 'json_schema', 'text'")
        self.settings = settings
        self.store = store
        self.sleep = sleep
        self.rng = rng or random.Random()
        self._no_schema: set[tuple[str, str]] = set()  # (url, model) that refused response_format
        # Calls in flight (the steady pipeline makes several at once) count against the dollar cap at
        # their estimated cost: the prompt at the model's price, the answer at the mean answer so far.
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._reserved: dict[int, float] = {}              # call id -> estimated dollars
        self._answers: dict[str, tuple[int, int]] = {}     # model -> (completion tokens, answers)

    # ------------------------------------------------------------- plumbing
    def _api_key(self) -> str:
        key = os.environ.get(self.settings.api_key_env)
        if not key:
            # local servers (vLLM, Ollama) take any key; a hosted API answers 401, reported below
            return "no-key"
        return key

    def _record(self, agent: str, model: str, p: int, c: int, cost: float, latency: float, outcome: str) -> None:
        if self.store is not None:
            self.store.add_llm_call(agent=agent, model=model, prompt_tokens=p, completion_tokens=c,
                                    cost_usd=cost, latency_s=latency, outcome=outcome)

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        p_in, p_out = self.settings.price_for(model)
        return (prompt_tokens * p_in + completion_tokens * p_out) / 1e6

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before retry ``attempt`` (0-based): base * 2^attempt, capped, with jitter in
        [50 %, 100 %]; a server's Retry-After is honoured up to the cap."""
        s = self.settings
        delay = min(s.backoff_max_s, s.backoff_s * (2 ** attempt))
        delay *= 0.5 + 0.5 * self.rng.random()
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.backoff_max_s))
        return delay

    def check_budget(self) -> None:
        """Raise BudgetExceeded when what is spent and what calls in flight are expected to cost reach
        budget.llm_dollars."""
        if self.store is not None:
            check_budget(self.store, self.settings.dollar_cap, in_flight=self.in_flight_dollars())

    def in_flight_dollars(self) -> float:
        """The estimated cost of the calls in flight now."""
        with self._lock:
            return sum(self._reserved.values())

    def estimate(self, model: str, messages: list[dict]) -> float:
        """Dollars a call is expected to cost: its prompt (characters / 4) and the mean answer of this
        model so far (llm.max_tokens, or 1,000 tokens, before the first)."""
        prompt = sum(len(str(m.get("content", ""))) for m in messages) // _CHARS_PER_TOKEN
        with self._lock:
            tokens, answers = self._answers.get(model, (0, 0))
        completion = tokens / answers if answers else (self.settings.max_tokens or 1000)
        return self.cost(model, prompt, int(completion))

    def _reserve(self, model: str, messages: list[dict]) -> int:
        """Check the cap with the calls in flight, and count this one among them (atomically, so that
        calls made at once cannot all pass a cap that has room for one)."""
        cap = self.settings.dollar_cap
        estimate = self.estimate(model, messages)
        spent = self.store.llm_dollars() if self.store is not None and cap > 0 else 0.0
        with self._lock:
            reserved = sum(self._reserved.values())
            if self.store is not None and cap > 0 and spent + reserved >= cap:
                raise BudgetExceeded(
                    f"the LLM budget of ${cap:.2f} (budget.llm_dollars) is spent or taken by calls in flight "
                    f"(${spent:.4f} spent, ${reserved:.4f} expected of {len(self._reserved)} in flight); "
                    "raise it to propose more with the LLM")
            call = next(self._ids)
            self._reserved[call] = estimate
        return call

    def _release(self, call: int, model: str, completion_tokens: int | None) -> None:
        with self._lock:
            self._reserved.pop(call, None)
            if completion_tokens is not None:
                tokens, answers = self._answers.get(model, (0, 0))
                self._answers[model] = (tokens + completion_tokens, answers + 1)

    # ------------------------------------------------------------- one answer
    def chat(self, agent: str, messages: list[dict], *, schema: dict | None = None,
             schema_name: str = "answer") -> Reply:
        """One answer to ``messages`` for ``agent``, retrying transient failures.

        With ``schema`` (a JSON schema), the request asks for it through ``response_format``
        unless settings.structured is 'text' or this endpoint refused it before.
        Raises BudgetExceeded before any request when the cap is reached (counting the calls in
        flight at their expected cost), LLMError when
        retries run out or the endpoint refuses the request.
        """
        s = self.settings
        model, url = s.model_for(agent), s.url_for(agent)
        attempt = 0
        while True:
            use_schema = schema is not None and s.structured != "text" and (url, model) not in self._no_schema
            # the last line of defence: no secret value of this process's environment is ever sent in a prompt
            secrets = secret_values(os.environ, (s.api_key_env,))
            sent = [{**m, "content": redact(m["content"], secrets)} if isinstance(m.get("content"), str) else m
                    for m in messages]
            kwargs: dict[str, Any] = {"model": model, "messages": sent}
            if s.temperature is not None:
                kwargs["temperature"] = s.temperature
            if s.max_tokens:
                kwargs["max_tokens"] = s.max_tokens
            if use_schema:
                kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": schema_name, "schema": schema, "strict": False}}
            t0 = time.monotonic()
            retry_after = None
            call = self._reserve(model, sent)
            answered = None
            try:
                with openai.OpenAI(base_url=url, api_key=self._api_key(), timeout=s.timeout_s,
                                   max_retries=0) as api:
                    resp = api.chat.completions.create(**kwargs)
                answered = _completion_tokens(resp)
            except openai.APITimeoutError:
                outcome, why = _RETRYABLE, "timeout"
            except openai.APIConnectionError as exc:
                outcome, why = _RETRYABLE, f"connection error ({_short(exc)})"
            except openai.APIStatusError as exc:
                code = exc.status_code
                retry_after = _retry_after(exc.response)
                latency = time.monotonic() - t0
                if code == 429 or code >= 500:
                    outcome, why = _RETRYABLE, f"http {code}"
                elif code in (400, 422) and use_schema and s.structured == "auto":
                    # the server does not take response_format json_schema: ask for a fenced block instead
                    self._record(agent, model, 0, 0, 0.0, latency, f"http {code}: no json_schema")
                    log.info("%s: %s refused response_format json_schema; asking for fenced JSON", agent, model)
                    self._no_schema.add((url, model))
                    continue
                else:
                    self._record(agent, model, 0, 0, 0.0, latency, f"http {code}")
                    hint = {401: f"check the key in ${s.api_key_env}", 403: f"check the key in ${s.api_key_env}",
                            404: f"check llm.base_url ({url}) and the model name {model!r}"}.get(code, "")
                    raise LLMError(f"{agent}: the endpoint refused the request: http {code}: {_short(exc)}"
                                   + (f"; {hint}" if hint else "")) from None
            except (openai.APIResponseValidationError, json.JSONDecodeError, ValueError) as exc:
                outcome, why = _RETRYABLE, f"bad response ({_short(exc)})"
            else:
                latency = time.monotonic() - t0
                reply = self._reply(agent, model, messages, resp, latency)
                if reply is not None:
                    return reply
                outcome, why = _RETRYABLE, "bad response (no choices)"
            finally:  # after the cost is recorded, so that it is never in neither place
                self._release(call, model, answered)
            if outcome is _RETRYABLE:
                latency = time.monotonic() - t0
                self._record(agent, model, 0, 0, 0.0, latency, why)
                if attempt >= s.max_retries:
                    raise LLMError(f"{agent}: no answer from {url} ({model}) after {attempt + 1} tries; "
                                   f"last: {why}. Check the endpoint, or raise llm.max_retries / llm.timeout_s")
                delay = self.backoff(attempt, retry_after)
                log.warning("%s: %s from %s; retry %d/%d in %.2f s", agent, why, model, attempt + 1,
                            s.max_retries, delay)
                self.sleep(delay)
                attempt += 1

    def _reply(self, agent: str, model: str, messages: list[dict], resp: Any, latency: float) -> Reply | None:
        choices = getattr(resp, "choices", None) or []
        if not choices:
            return None
        text = choices[0].message.content or ""
        usage = getattr(resp, "usage", None)
        if usage is not None and getattr(usage, "prompt_tokens", None) is not None:
            p, c = int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0)
        else:  # the server reports no usage: estimate, so the cap still bites
            p = sum(len(str(m.get("content", ""))) for m in messages) // _CHARS_PER_TOKEN
            c = len(text) // _CHARS_PER_TOKEN
        used = getattr(resp, "model", None) or model
        cost = self.cost(model, p, c)
        self._record(agent, model, p, c, cost, latency, "ok")
        return Reply(text=text, model=used, prompt_tokens=p, completion_tokens=c, cost_usd=cost)

    # ------------------------------------------------------------- structured answers
    def ask_json(self, agent: str, messages: list[dict], *, schema: dict | None = None,
                 validate: Callable[[dict, str], Any] | None = None, schema_name: str = "answer") -> Any:
        """A structured answer: the JSON object of the reply, passed through ``validate(obj, text)``.

        ``validate`` returns the value to hand back or raises ValueError naming what is
        wrong; a parse or validation error is sent back to the model (with its answer)
        up to settings.max_reasks times, then MalformedAnswer is raised.
        """
        msgs = list(messages)
        for ask in range(self.settings.max_reasks + 1):
            reply = self.chat(agent, msgs, schema=schema, schema_name=schema_name)
            try:
                obj = extract_json(reply.text)
                return validate(obj, reply.text) if validate else obj
            except ValueError as exc:
                error = str(exc)
            log.info("%s: malformed answer (%s); re-asking %d/%d", agent, error, ask + 1, self.settings.max_reasks)
            self._record(agent, self.settings.model_for(agent), 0, 0, 0.0, 0.0, f"malformed: {error[:200]}")
            msgs = msgs + [
                {"role": "assistant", "content": reply.text},
                {"role": "user", "content": f"Your answer could not be used: {error}. Answer again, in full, "
                                            "in the requested format."},
            ]
        raise MalformedAnswer(f"{agent}: the model's answer was malformed {self.settings.max_reasks + 1} times; "
                              f"last problem: {error}")


def _completion_tokens(resp: Any) -> int | None:
    """The answer's length in tokens as the server reports it (None when it does not)."""
    usage = getattr(resp, "usage", None)
    tokens = getattr(usage, "completion_tokens", None) if usage is not None else None
    return int(tokens) if tokens is not None else None


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text[:limit]


def _retry_after(response: Any) -> float | None:
    try:
        value = response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None


def messages(system: str, user: str) -> list[dict]:
    """A system and a user message."""
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]

