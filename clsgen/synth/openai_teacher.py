"""`OpenAITeacher`: a teacher model behind any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM,
SGLang, Ollama, llama.cpp, a hosted API), with timeouts, retries and every transport fault counted."""

from __future__ import annotations

import email.utils
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..data import Example
from ..errors import ClsgenError
from .teacher import Reply, Request, request_seed


class TeacherAbort(ClsgenError):
    """The server refuses every request (bad key, wrong endpoint): stop the run, keep what is done."""


def _base_url(url: str) -> str:
    """'http://host:8000' -> 'http://host:8000/v1'; a URL with a path is used as given."""
    import httpx

    url = url.strip().rstrip("/")
    try:
        parsed = httpx.URL(url)
    except Exception:  # httpx.InvalidURL and friends
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ClsgenError(f"teacher.base_url {url!r} is not an http(s) URL; pass e.g. "
                          "--base-url http://127.0.0.1:8000/v1")
    return url if parsed.path not in ("", "/") else url + "/v1"


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


class OpenAITeacher:
    """A model behind an OpenAI-compatible `/chat/completions` endpoint."""

    kind = "openai"
    batch_size = 1

    def __init__(self, model: str, base_url: str | None, *, api_key_env: str | None = None,
                 temperature: float = 0.7, max_new_tokens: int = 256, concurrency: int = 4,
                 timeout: float = 60.0, max_retries: int = 5, backoff: float = 0.5,
                 max_backoff: float = 30.0, check_timeout: float = 10.0):
        if base_url is None or not str(base_url).strip():
            raise ClsgenError("the openai teacher needs teacher.base_url (--base-url), e.g. "
                              "http://127.0.0.1:8000/v1")
        if not model:
            raise ClsgenError("the openai teacher needs teacher.model (--model): the served model's name")
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise ClsgenError(f"need teacher.concurrency >= 1, teacher.max_retries >= 0 and teacher.timeout "
                              f"> 0; got {concurrency}, {max_retries}, {timeout}")
        self.model, self.base_url = model, _base_url(base_url)
        self.api_key_env = api_key_env
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        self.parallel = self.concurrency = concurrency
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff, self.max_backoff, self.check_timeout = backoff, max_backoff, check_timeout
        self.notes: list[str] = []
        self._slots = threading.BoundedSemaphore(concurrency)
        self._client: Any = None

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "temperature": self.temperature,
                "max_new_tokens": self.max_new_tokens, "first_attempt": "greedy"}

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env, "").strip()
            if not key:
                raise ClsgenError(f"the API key variable {self.api_key_env} (teacher.api_key_env, "
                                  f"--api-key-env) is not set or empty; export {self.api_key_env}=<key> or "
                                  "drop --api-key-env for a server without keys")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def check(self, examples: Sequence[Example]) -> None:
        """API key present, server reachable, model listed by `/models` (when the server has it)."""
        import httpx

        headers = self._headers()
        url = f"{self.base_url}/models"
        try:
            r = httpx.get(url, headers=headers, timeout=min(self.timeout, self.check_timeout))
        except httpx.TimeoutException:
            raise ClsgenError(f"the teacher server at {self.base_url} did not answer GET /models within "
                              f"{min(self.timeout, self.check_timeout):g} s; is it running and is "
                              "--base-url right?") from None
        except httpx.HTTPError as e:
            raise ClsgenError(f"cannot reach the teacher server at {self.base_url} ({type(e).__name__}: "
                              f"{e}); start it or fix --base-url / teacher.base_url") from None
        if r.status_code in (401, 403):
            raise ClsgenError(f"the teacher server at {self.base_url} rejected the API key "
                              f"(HTTP {r.status_code}); check {self.api_key_env or '--api-key-env'}")
        if r.status_code == 404:
            self.notes.append(f"{url} answered 404: model name not checked")
            return
        if r.status_code >= 400:
            raise ClsgenError(f"GET {url} answered HTTP {r.status_code}: {r.text[:200]!r}; is --base-url "
                              "an OpenAI-compatible endpoint (ending in /v1)?")
        try:
            served = [m["id"] for m in r.json()["data"]]
        except Exception:
            self.notes.append(f"{url} did not answer an OpenAI model list: model name not checked")
            return
        if self.model not in served:
            shown = ", ".join(served[:20]) + (" ..." if len(served) > 20 else "")
            raise ClsgenError(f"model {self.model!r} (teacher.model, --model) is not served by "
                              f"{self.base_url}; it serves: {shown or 'nothing'}")
        self._client = self._new_client(headers)

    def _new_client(self, headers: dict[str, str]) -> Any:
        import httpx

        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        return httpx.Client(headers=headers, timeout=self.timeout, limits=limits)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def generate(self, requests: list[Request]) -> list[Reply]:
        if self._client is None:
            self._client = self._new_client(self._headers())
        if len(requests) == 1:
            return [self._complete(requests[0])]
        out: list[Reply | None] = [None] * len(requests)

        def work(i: int) -> None:
            out[i] = self._complete(requests[i])

        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out  # type: ignore[return-value]

    def _post(self, body: dict[str, Any]) -> _Answer:
        """POST a chat completion and read the whole answer, or raise `_Fault` with the fault's kind.

        httpx's timeout bounds each wait (connect, each read), not the request; a server that trickles
        its body would hold the slot for ever, so the body read also stops at `timeout` seconds after
        the response began (a request takes at most about twice `timeout`)."""
        import httpx

        try:
            with self._client.stream("POST", f"{self.base_url}/chat/completions", json=body) as r:
                deadline = time.monotonic() + self.timeout
                try:
                    chunks = []
                    for chunk in r.iter_bytes():
                        chunks.append(chunk)
                        if time.monotonic() > deadline:
                            raise _Fault("timeout")
                except httpx.TimeoutException:
                    raise _Fault("timeout") from None
                except httpx.TransportError:  # the body was cut short: closed, reset, unfinished chunks
                    raise _Fault("truncated_body") from None
                return _Answer(r.status_code, r.headers, b"".join(chunks))
        except httpx.TimeoutException:
            raise _Fault("timeout") from None
        except httpx.ConnectError:
            raise _Fault("connection") from None
        except httpx.TransportError:  # closed or reset before a response: RemoteProtocolError, ReadError, ...
            raise _Fault("connection_dropped") from None

    def _complete(self, request: Request) -> Reply:
        started = time.perf_counter()
        body = {"model": self.model, "max_tokens": self.max_new_tokens,
                "messages": request.prompt.messages(request.example.fields, request.label),
                "temperature": 0.0 if request.greedy else self.temperature}
        faults: Counter = Counter()
        rng = random.Random(request_seed([request], 0))
        kind = "connection"
        for retry in range(self.max_retries + 1):
            wait = None
            with self._slots:  # never more than `concurrency` requests in flight
                try:
                    r = self._post(body)
                except _Fault as fault:
                    kind = fault.kind
                else:
                    status = r.status_code
                    if 200 <= status < 300:
                        reply, kind = _parse_completion(r.content)
                        if reply is not None:
                            reply.faults, reply.seconds = faults, time.perf_counter() - started
                            return reply
                    elif status == 429:
                        kind, wait = "http_429", _retry_after(r.headers.get("retry-after"))
                    elif status >= 500:
                        kind, wait = "http_5xx", _retry_after(r.headers.get("retry-after"))
                    elif status == 408:  # the server's own timeout
                        kind = "timeout"
                    elif 300 <= status < 400:
                        where = r.headers.get("location", "elsewhere")
                        raise TeacherAbort(f"POST {self.base_url}/chat/completions answered {status}, a redirect to "
                                           f"{where[:200]!r}; pass the final address as --base-url")
                    elif status in (401, 403):
                        raise TeacherAbort(f"the teacher server rejected the API key (HTTP {status}); check "
                                           f"{self.api_key_env or '--api-key-env'}")
                    elif status == 404:
                        raise TeacherAbort(f"POST {self.base_url}/chat/completions answered 404 ({r.text[:200]!r});"
                                           " check --base-url and --model")
                    else:  # 400, 413, 422, ...: this request will never succeed (e.g. too long)
                        faults["http_4xx"] += 1
                        return Reply(None, faults=faults, error="http_4xx", final=True,
                                     seconds=time.perf_counter() - started)
            faults[kind] += 1
            if retry == self.max_retries:
                break
            if wait is None:
                wait = self.backoff * 2**retry * (0.5 + rng.random())
            time.sleep(min(wait, self.max_backoff))
        return Reply(None, faults=faults, error=kind, seconds=time.perf_counter() - started)


@dataclass
class _Answer:
    """An HTTP answer read in full."""

    status_code: int
    headers: Any
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class _Fault(Exception):
    """A request that got no usable HTTP response; `kind` is one of `TRANSPORT_FAULTS`."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


def _parse_completion(content: bytes) -> tuple[Reply | None, str | None]:
    """(the reply, None) for an OpenAI chat completion; (None, 'bad_json') for a body that is not JSON,
    (None, 'bad_completion') for JSON that is not a completion with text."""
    import json

    try:
        data = json.loads(content)
    except (ValueError, RecursionError):  # not JSON (UnicodeDecodeError is a ValueError too)
        return None, "bad_json"
    try:
        choice = data["choices"][0]
        text = choice["message"]["content"]
        if not isinstance(text, str):
            return None, "bad_completion"
        # JSON may carry lone surrogates ("\ud800"), which no UTF-8 file can hold: replace them.
        text = text.encode("utf-8", "replace").decode("utf-8")
        usage = data.get("usage") or {}
        tokens = usage.get("completion_tokens")
        finish = choice.get("finish_reason") or "stop"
    except (KeyError, IndexError, TypeError, AttributeError):
        return None, "bad_completion"
    return Reply(text=text, tokens=int(tokens) if isinstance(tokens, int) else 0,
                 finish="length" if finish == "length" else "stop"), None
