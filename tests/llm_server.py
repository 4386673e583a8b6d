"""A real HTTP server on loopback that speaks the chat-completions protocol (for tests).

It is not a stand-in for the client: requests travel through the ``openai`` package and
httpx over a socket, as they would to vLLM or OpenAI. Answers are scripted per model
name (tests give each agent its own model), each a :class:`Step`:

    server.script("researcher-model", Step.status(429), Step.reply(text), ...)

and a model whose script is used up answers with its ``default`` (or a 500 when none).
Faults: an HTTP status (429 with Retry-After, 500, 400), a slow answer (sleeps before
answering, so a client timeout fires), a body that is not JSON, an empty choice list.
Every request is kept in ``server.requests`` (model, messages, headers, body) for
assertions.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

import pytest

from asiarch.tools.llm_server import ChatServer, completion


@dataclass
class Step:
    kind: str                      # reply | status | slow | raw | empty
    text: str = ""
    status: int = 200
    delay_s: float = 0.0
    usage: tuple[int, int] | None = (100, 50)
    headers: dict = field(default_factory=dict)
    reject_schema: bool = False    # answer 400 when the request carries response_format json_schema

    @classmethod
    def reply(cls, text: str, *, usage: tuple[int, int] | None = (100, 50), reject_schema: bool = False) -> "Step":
        return cls("reply", text=text, usage=usage, reject_schema=reject_schema)

    @classmethod
    def json(cls, obj: dict, **kw) -> "Step":
        return cls.reply(json.dumps(obj), **kw)

    @classmethod
    def error(cls, status: int, *, retry_after: float | None = None) -> "Step":
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return cls("status", status=status, headers=headers)

    @classmethod
    def slow(cls, delay_s: float, text: str = "{}") -> "Step":
        return cls("slow", text=text, delay_s=delay_s)

    @classmethod
    def raw(cls, body: str) -> "Step":
        return cls("raw", text=body)

    @classmethod
    def empty(cls) -> "Step":
        return cls("empty")


class FakeLLMServer(ChatServer):
    """``with FakeLLMServer() as srv: ... srv.url`` (the base URL, ending in /v1)."""

    def __init__(self):
        super().__init__()
        self.scripts: dict[str, deque[Step]] = defaultdict(deque)
        self.defaults: dict[str, Step] = {}
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def answer(self, model: str, body: dict, headers: dict):
        with self.lock:
            self.requests.append({"model": model, "messages": body.get("messages", []), "headers": headers,
                                  "body": body})
            n = len(self.requests)
            queue = self.scripts.get(model)
            step = queue.popleft() if queue else self.defaults.get(model) or self.defaults.get("*")
        if step is None:
            return 500, {"error": {"message": f"no scripted answer for model {model!r}"}}, None
        if step.reject_schema and body.get("response_format", {}).get("type") == "json_schema":
            with self.lock:  # the same answer again for the request without response_format
                self.scripts[model].appendleft(step)
            return 400, {"error": {"message": "response_format json_schema not supported"}}, None
        if step.kind == "status":
            return step.status, {"error": {"message": f"scripted {step.status}"}}, step.headers
        if step.kind == "slow":
            time.sleep(step.delay_s)
        if step.kind == "raw":
            return 200, step.text.encode(), None
        return 200, completion(model, None if step.kind == "empty" else step.text, usage=step.usage, n=n), None

    def script(self, model: str, *steps: Step) -> "FakeLLMServer":
        with self.lock:
            self.scripts[model].extend(steps)
        return self

    def default(self, model: str, step: Step) -> "FakeLLMServer":
        self.defaults[model] = step
        return self

    def requests_for(self, model: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["model"] == model]


@pytest.fixture
def server():
    """A fresh loopback chat-completions server per test."""
    with FakeLLMServer() as srv:
        yield srv
