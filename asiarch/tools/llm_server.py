"""A real HTTP server on loopback speaking OpenAI's chat-completions protocol.

Requests reach it through the ``openai`` package and httpx over a socket, as they would reach
vLLM or OpenAI; what it answers is a subclass's :meth:`ChatServer.answer`. The benchmarks use it
(``asiarch bench pipeline``: proposals after a set latency) and so do the tests (tests/llm_server.py:
scripted answers and faults). Threaded: calls made at once are answered at once.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def completion(model: str, text: str | None, *, usage: tuple[int, int] | None = (100, 50), n: int = 0) -> dict:
    """A chat.completion object answering ``text`` (None: an empty choice list)."""
    choices = [] if text is None else [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]
    out = {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()), "model": model,
           "choices": choices}
    if usage is not None:
        out["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
    return out


class ChatServer:
    """``with Server() as srv: ... srv.url`` (the base URL, ending in /v1). Subclasses answer each
    POST to .../chat/completions with :meth:`answer`."""

    def __init__(self):
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
                status, payload, headers = server.answer(body.get("model", ""), body, dict(self.headers))
                self._send(status, payload, headers)

            def _send(self, status, payload, headers=None):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
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

    def answer(self, model: str, body: dict, headers: dict) -> tuple[int, dict | bytes, dict | None]:
        """(HTTP status, JSON object or raw bytes, extra headers) for one request."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
