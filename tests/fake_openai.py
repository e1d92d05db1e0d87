"""A fake OpenAI-compatible server for the teacher's tests (test_synth_openai.py, test_synth_faults.py):
`FakeServer` (stdlib `http.server`, one thread per request) serves `/v1/models` and
`/v1/chat/completions` on 127.0.0.1.

An example's claim carries tags that make the server misbehave on that example's first request:
`[500]`, `[timeout]` (answers after the client's timeout), `[badjson]`, `[429]` (with Retry-After),
`[down]` (always 500), or on every request: `[wrong]` (states the other label), `[loop]` (a repetition
loop). Otherwise it answers with a short explanation whose verdict line states the correct answer
named in the request.

More first-request faults: `[503]` (with Retry-After), `[408]`, `[drop]` (closes the connection
without a response), `[reset]` (resets it: RST), `[truncated]` (Content-Length larger than what is
sent, then closes), `[midchunk]` (a chunked body closed after its first chunk), `[trickle]` (a 200
whose body arrives one byte at a time, slower than the client's timeout), `[html]` (a 200 with an HTML
page), `[nochoices]` (JSON without `choices`), `[nullcontent]` (a message whose content is null),
`[401]` (the key refused), `[302]` (a redirect), `[slow]` (a good answer after `slow` seconds).
`server.down = True` makes it close every connection without answering.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from clsgen.data import Example
from clsgen.synth import OpenAITeacher
from clsgen.task import Task

TASK = Task(name="fake", system="Decide whether the claim holds.", template="Claim: {claim}",
            verbalizers=("FALSE", "TRUE"))
GOOD = ("The input states the finding that the answer rests on, and nothing in it points the other way, "
        "so the answer holds.")


class FakeServer:
    """A fake OpenAI-compatible server in a background thread (see the module docstring)."""

    def __init__(self, models=("fake-model",), delay: float = 0.0, key: str | None = None,
                 slow: float = 1.0, retry_after: int = 1):
        self.models, self.delay, self.key, self.slow, self.retry_after = models, delay, key, slow, retry_after
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.calls: Counter = Counter()
        self.times: dict[str, list[float]] = defaultdict(list)
        self.bodies: list[dict] = []
        self.down = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status, body: bytes, headers=()):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _authorized(self) -> bool:
                if server.key is None or self.headers.get("Authorization") == f"Bearer {server.key}":
                    return True
                self._send(401, b'{"error": "bad key"}')
                return False

            def do_GET(self):
                if not self._authorized():
                    return
                if self.path == "/v1/models":
                    data = {"object": "list", "data": [{"id": m, "object": "model"} for m in server.models]}
                    self._send(200, json.dumps(data).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                if server.down:  # gone: the connection closes without a response
                    self.close_connection = True
                    return
                if not self._authorized():
                    return
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                counted = [True]
                try:
                    server.handle(self, body, counted)
                finally:
                    with server.lock:
                        server.in_flight -= counted[0]

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def handle(self, h, body, counted):
        user = body["messages"][-1]["content"]
        with self.lock:
            self.bodies.append(body)
            self.calls[user] += 1
            n = self.calls[user]
            self.times[user].append(time.monotonic())
        time.sleep(self.delay)
        if "[500]" in user and n == 1 or "[down]" in user:
            return h._send(500, b'{"error": "internal"}')
        if n == 1 and self.misbehave(h, user):
            return
        if "[timeout]" in user and n == 1:
            with self.lock:  # the client gives up on this one: it no longer holds a slot
                self.in_flight -= 1
                counted[0] = False
            time.sleep(self.slow)
        if "[badjson]" in user and n == 1:
            return h._send(200, b'{"choices": [{"message": ')
        if "[429]" in user and n == 1:
            return h._send(429, b'{"error": "slow down"}', [("Retry-After", str(self.retry_after))])
        answer = re.search(r"Correct answer: (\w+)", user).group(1)
        if "[wrong]" in user:
            answer = {"TRUE": "FALSE", "FALSE": "TRUE"}[answer]
        text = ("the " * 60).strip() if "[loop]" in user else GOOD
        reply = {"id": "x", "object": "chat.completion", "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": f"{text}\n\nAnswer: {answer}"}}],
                 "usage": {"prompt_tokens": 10, "completion_tokens": 25, "total_tokens": 35}}
        h._send(200, json.dumps(reply).encode())


    def misbehave(self, h, user: str) -> bool:
        """The first-request faults added for tests/test_synth_faults.py; True when one was served."""
        import socket
        import struct

        def close():
            h.close_connection = True
            try:
                h.wfile.flush()
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        if "[slow]" in user:
            time.sleep(self.slow)
            return False
        if "[503]" in user:
            h._send(503, b'{"error": "overloaded"}', [("Retry-After", str(self.retry_after))])
        elif "[401]" in user:
            h._send(401, b'{"error": "key revoked"}')
        elif "[302]" in user:
            h._send(302, b"", [("Location", "https://elsewhere.example/v1/chat/completions")])
        elif "[408]" in user:
            h._send(408, b'{"error": "request timeout"}')
        elif "[drop]" in user:
            close()
        elif "[reset]" in user:  # SO_LINGER 0: close() sends RST
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close_connection = True
        elif "[truncated]" in user:
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", "1000")
            h.end_headers()
            h.wfile.write(b'{"id": "x", "object": "chat.completion", "choices": [{"index": 0, ')
            close()
        elif "[midchunk]" in user:
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            chunk = b'{"id": "x", "choices": ['
            h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            close()
        elif "[trickle]" in user:
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", "400")
            h.end_headers()
            try:
                for _ in range(400):  # 40 s in all; the client gives up after its timeout
                    h.wfile.write(b" ")
                    h.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
            h.close_connection = True
        elif "[html]" in user:
            body = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            h.send_response(200)
            h.send_header("Content-Type", "text/html")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        elif "[nochoices]" in user:
            h._send(200, b'{"id": "x", "object": "chat.completion", "model": "fake-model"}')
        elif "[nullcontent]" in user:
            h._send(200, json.dumps({"id": "x", "object": "chat.completion", "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": None}}]}).encode())
        else:
            return False
        return True


def examples(tags: list[str]) -> list[Example]:
    return [Example(f"ex{i}", {"claim": f"claim {i} {tag}".strip()}, label=i % 2) for i, tag in enumerate(tags)]


def teacher(url: str, **kw) -> OpenAITeacher:
    kw = {"concurrency": 3, "timeout": 0.5, "max_retries": 3, "backoff": 0.01, **kw}
    return OpenAITeacher("fake-model", url, **kw)
