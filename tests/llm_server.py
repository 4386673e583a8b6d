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

import pytest

import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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


class FakeLLMServer:
    """``with FakeLLMServer() as srv: ... srv.url`` (the base URL, ending in /v1)."""

    def __init__(self):
        self.scripts: dict[str, deque[Step]] = defaultdict(deque)
        self.defaults: dict[str, Step] = {}
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                model = body.get("model", "")
                with server.lock:
                    server.requests.append({"model": model, "messages": body.get("messages", []),
                                            "headers": dict(self.headers), "body": body})
                    queue = server.scripts.get(model)
                    step = queue.popleft() if queue else server.defaults.get(model) or server.defaults.get("*")
                if step is None:
                    return self._send(500, {"error": {"message": f"no scripted answer for model {model!r}"}})
                if step.reject_schema and body.get("response_format", {}).get("type") == "json_schema":
                    with server.lock:  # the same answer again for the request without response_format
                        server.scripts[model].appendleft(step)
                    return self._send(400, {"error": {"message": "response_format json_schema not supported"}})
                if step.kind == "status":
                    return self._send(step.status, {"error": {"message": f"scripted {step.status}"}}, step.headers)
                if step.kind == "slow":
                    time.sleep(step.delay_s)
                if step.kind == "raw":
                    return self._send_raw(200, step.text.encode())
                choices = [] if step.kind == "empty" else [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": step.text}}]
                out = {"id": f"chatcmpl-{len(server.requests)}", "object": "chat.completion",
                       "created": int(time.time()), "model": model, "choices": choices}
                if step.usage is not None:
                    out["usage"] = {"prompt_tokens": step.usage[0], "completion_tokens": step.usage[1],
                                    "total_tokens": sum(step.usage)}
                self._send(200, out)

            def _send(self, status, obj, headers=None):
                self._send_raw(status, json.dumps(obj).encode(), headers)

            def _send_raw(self, status, data, headers=None):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

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

    def __enter__(self) -> "FakeLLMServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    """A fresh loopback chat-completions server per test."""
    with FakeLLMServer() as srv:
        yield srv
