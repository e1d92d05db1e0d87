"""The HTTP server: a FastAPI app factory over `Predictor`, plus the web page at `/`.

Endpoints (see docs/serving.md):
  POST /v1/classify          probability, label, explanation in one call; `explain: false` for the
                             probability only; `stream: true` for server-sent events.
  POST /v1/chat/completions  OpenAI-compatible chat with the fine-tuned LM (adapter on).
  GET  /v1/models, /v1/task  what is served; GET /health; GET /openapi.json; GET / (the page).

All model work runs in one worker thread behind a micro-batching queue (`batcher.Batcher`); the
event loop only parses, validates, waits and streams. Limits answer early, before any model work:
401 without the API key, 413 for a body over `max_body_bytes`, 415 for a body not sent as JSON, 422 for
a text over `max_text_chars` or a bad request (invalid JSON, a wrong field, text that is not valid
Unicode, messages the chat template refuses), 503 with Retry-After when `max_queue` requests wait, 504
past `request_timeout`. Every error is JSON; a 5xx means a bug (tests/test_fuzz_http.py).
Request texts never reach the logs unless `log_inputs=True`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import traceback
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Literal, Sequence

from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .batcher import Batcher, BatcherClosed, Job, QueueFull
from .errors import ClsgenError

log = logging.getLogger("clsgen.server")

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_TEXT_CHARS = 100_000
DEFAULT_MAX_TOKENS = 512
GREEDY_BELOW = 1e-5
"""A chat temperature below this decodes greedily (as vLLM does): dividing the logits by a tinier one
overflows to inf and sampling fails."""
SEED_RANGE = (-(2**63), 2**64 - 1)
"""The seeds torch's generator takes."""
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "form-action 'none'; frame-ancestors 'none'; base-uri 'none'")


# ============================================================================ errors


class ApiError(Exception):
    """An error answered as `{"error": {"message", "type", "code", "param"}}` (OpenAI's shape)."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _error_json(status: int, message: str, type: str, code: str | None = None,
                headers: dict[str, str] | None = None) -> JSONResponse:
    return ApiError(status, message, type, code, headers=headers).response()


def _worker_error(e: BaseException) -> ApiError:
    """What a failed model job means for the client."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, QueueFull):
        return ApiError(503, str(e), "server_busy", "queue_full", headers={"Retry-After": str(e.retry_after)})
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return ApiError(504, "the model did not answer within the server's request timeout "
                        "(--request-timeout); retry, or send a shorter text or a smaller max_tokens",
                        "timeout", "request_timeout")
    if isinstance(e, BatcherClosed):
        return ApiError(503, "the server is shutting down; retry on another instance", "server_busy",
                        "shutting_down", headers={"Retry-After": "5"})
    if isinstance(e, ClsgenError):
        return ApiError(422, str(e), "invalid_request_error", "invalid_input")
    # the frames and the exception's type, never its message: a library's message may quote the input
    log.error("model job failed: %s\n%s", type(e).__name__, "".join(traceback.format_tb(e.__traceback__)))
    return ApiError(500, f"the model failed on this request ({type(e).__name__}); see the server log",
                    "server_error", "model_error")


# ============================================================================ request / response schemas


class ClassifyRequest(BaseModel):
    """Classify one input: `text` (for a task with one field) or `fields` (one entry per task field)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"text": "Patient admitted with ...", "explain": True},
        {"fields": {"claim": "Drug X lowers HbA1c.", "article_abstract": "..."}, "stream": True},
    ]})
    text: str | None = Field(None, description="The input text, for a task whose template has one field.")
    fields: dict[str, str] | None = Field(None, description="The task's fields by name (see GET /v1/task).")
    explain: StrictBool = Field(True, description="Generate the explanation (false: probability only, fast).")
    stream: StrictBool = Field(False, description="Answer with server-sent events: `probability` first, then "
                         "`delta` events with explanation text, then `done` with the full result.")
    max_tokens: int | None = Field(None, ge=1, description="Explanation length limit in tokens (default: "
                                   "the server's --explain-tokens; capped by its --max-tokens).")
    model: str | None = Field(None, description="Optional; must name the served model when given.")


class ClassifyResponse(BaseModel):
    id: str
    model: str
    probability: float = Field(description="P(label 1) from the classification head (calibrated).")
    label: int = Field(description="1 when probability >= threshold, else 0.")
    label_name: str = Field(description="The task's verbalizer for `label`.")
    threshold: float
    explanation: str | None = Field(description="The explanation without its verdict line (null when "
                                    "explain is false).")
    verdict: int | None = Field(description="The label the explanation states in its verdict line "
                                "(null when missing, ambiguous, or explain is false).")
    truncated: bool = Field(description="Whether a long field was cut to fit the model's prompt limit.")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class ChatRequest(BaseModel):
    """OpenAI chat completions; unknown OpenAI parameters are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, description=f"0 (or below {GREEDY_BELOW:g}): greedy.")
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=1, description="Only 1 is supported.")
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])


# ============================================================================ model-side work (worker thread)


@dataclass
class _StreamItem:
    """A streaming job's input and the channel its events travel back on."""

    payload: Any
    queue: asyncio.Queue


CPU_PASS_TOKENS = 512
"""On a CPU, at most this many padded tokens per probability forward pass (rows x longest prompt)."""


def length_groups(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped by similar length, longest first, each group's padded size (rows x its longest
    length) at most `max_tokens`; a row longer than that runs alone."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _push(job: Job, event: Any) -> None:
    """From the worker thread: put an event on the job's asyncio queue."""
    job.emit(job.item.queue.put_nowait, ("event", event))


class _Engine:
    """The handlers that the worker thread runs; the only code that touches the model."""

    def __init__(self, predictor: Any):
        self.predictor = predictor
        self.model = predictor.model
        self.tokenizer = self.model.tokenizer
        self.pass_tokens = CPU_PASS_TOKENS if self.model.device.type == "cpu" else None

    # ---------------------------------------------------------------- classification
    def proba(self, jobs: Sequence[Job]) -> list[Any]:
        """Probabilities of a micro-batch. On a CPU, rows share a forward pass only up to
        `pass_tokens` padded tokens: one long prompt already keeps the cores busy, so padding several
        into one pass only adds work (docs/benchmarks.md, "Server")."""
        items = [j.item for j in jobs]
        if self.pass_tokens is None or len(items) == 1:
            return list(self.predictor.predict(items, explain=False))
        lengths = [len(self.predictor.encode(it).input_ids) for it in items]
        results: list[Any] = [None] * len(items)
        for group in length_groups(lengths, self.pass_tokens):
            for i, prediction in zip(group, self.predictor.predict([items[i] for i in group], explain=False)):
                results[i] = prediction
        return results

    def predict(self, jobs: Sequence[Job]) -> list[Any]:
        with _generation(self.predictor, jobs[0].key):
            return list(self.predictor.predict([j.item for j in jobs], explain=True))

    def stream(self, jobs: Sequence[Job]) -> list[Any]:
        (job,) = jobs
        fields, explain, max_tokens = job.item.payload
        with _generation(self.predictor, max_tokens):
            events = self.predictor.stream(fields, explain=explain)
            try:
                for event in events:
                    _push(job, _stream_event(event))
                    if job.cancelled.is_set():  # client gone or timed out: stop decoding
                        break
            finally:
                events.close()
        return [None]

    # ---------------------------------------------------------------- chat
    def chat(self, jobs: Sequence[Job]) -> list[Any]:
        (job,) = jobs
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        req = job.item.payload if isinstance(job.item, _StreamItem) else job.item
        streaming = isinstance(job.item, _StreamItem)
        tok = self.tokenizer
        text = _render_chat(tok, req["messages"])
        ids = {k: v.to(self.model.device) for k, v in tok(text, return_tensors="pt", add_special_tokens=False).items()}
        prompt_len = ids["input_ids"].shape[1]
        context = getattr(self.model.causal_lm.config, "max_position_embeddings", None)
        max_new = req["max_tokens"]
        if context and prompt_len + max_new > context:
            raise ClsgenError(f"the messages take {prompt_len} tokens; with max_tokens={max_new} that "
                              f"exceeds the model's context of {context} tokens; shorten the messages")
        stops: list[str] = req["stop"]
        state = {"ids": [], "sent": 0, "stopped": False}
        eos = set(self.predictor.stop_token_ids)  # eos and the template's end-of-turn tokens

        def visible() -> str:
            out = [t for t in state["ids"] if t not in eos]
            return tok.decode(out, skip_special_tokens=True)

        class _Watch(StoppingCriteria):
            """Collects new tokens, streams text deltas, stops on a stop string or a cancelled job."""

            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                state["ids"] = input_ids[0, prompt_len:].tolist()
                current = visible()
                cut = _first_stop(current, stops)
                if cut is not None:
                    current, state["stopped"] = current[:cut], True
                held = _held_back(current, stops) if cut is None else 0
                upto = len(current) - held
                if streaming and upto > state["sent"] and not current[:upto].endswith("\ufffd"):
                    _push(job, current[state["sent"]:upto])
                    state["sent"] = upto
                done = state["stopped"] or job.cancelled.is_set()
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        sample = req["temperature"] >= GREEDY_BELOW
        gen_kw: dict[str, Any] = dict(max_new_tokens=max_new, do_sample=sample,
                                      pad_token_id=tok.pad_token_id, eos_token_id=sorted(eos) or None,
                                      stopping_criteria=StoppingCriteriaList([_Watch()]))
        if sample:
            gen_kw.update(temperature=req["temperature"], top_p=req["top_p"], top_k=0)
            if req["seed"] is not None:
                torch.manual_seed(req["seed"])
        else:
            gen_kw.update(temperature=None, top_p=None, top_k=None)
        was_training = self.model.training
        self.model.eval()  # no LoRA dropout
        try:
            with torch.inference_mode():
                out = self.model.lm.generate(**ids, **gen_kw)
        finally:
            if was_training:
                self.model.train()
        new = out[0, prompt_len:].tolist()
        state["ids"] = new
        content = visible()
        cut = _first_stop(content, stops)
        if cut is not None:
            content, state["stopped"] = content[:cut], True
        ended_eos = bool(new) and new[-1] in eos
        finish = "stop" if (state["stopped"] or ended_eos) else "length"
        if streaming and len(content) > state["sent"]:
            _push(job, content[state["sent"]:])
        completion_tokens = len([t for t in new if t not in eos]) + (1 if ended_eos else 0)
        return [{"content": content, "finish_reason": finish,
                 "usage": {"prompt_tokens": prompt_len, "completion_tokens": completion_tokens,
                           "total_tokens": prompt_len + completion_tokens}}]


def _render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The chat prompt; 422 when the model's chat template refuses the messages (many templates raise
    on roles that do not alternate, or on a system message). Control-token strings in a message
    (`<|im_end|>`) are defused as in the classify fields, so no message can close its turn or forge
    another one."""
    from jinja2.exceptions import TemplateError

    from .task import defuse_special_tokens

    messages = [{**m, "content": defuse_special_tokens(tokenizer, m["content"])} for m in messages]
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except TemplateError as e:
        raise ApiError(422, f"this model's chat template refuses these messages: {e}", param="messages",
                       code="invalid_messages") from None


class _generation:
    """Temporarily set the predictor's explanation length (only the worker thread uses it)."""

    def __init__(self, predictor: Any, max_new_tokens: int | None):
        self.predictor, self.value = predictor, max_new_tokens

    def __enter__(self) -> None:
        self.saved = getattr(self.predictor, "max_new_tokens", None)
        if self.value is not None and self.saved is not None:
            self.predictor.max_new_tokens = self.value

    def __exit__(self, *exc: Any) -> None:
        if self.saved is not None:
            self.predictor.max_new_tokens = self.saved


def _stream_event(event: Any) -> tuple[str, Any]:
    """A `StreamEvent` as (kind, payload): ("first", event), ("delta", text) or ("final", Prediction)."""
    if event.type == "done":
        return "final", event.prediction
    if event.type == "delta":
        return "delta", event.delta or ""
    return "first", event


def _validation_error(errors: Sequence[dict[str, Any]], request: Request) -> ApiError:
    """A request-validation failure as one clear error: the body as a whole (not JSON, not an object,
    missing, the wrong content type) or the fields at fault, the first of them as `param`."""
    first = errors[0] if errors else {}
    where = [x for x in first.get("loc", ()) if x != "body"]
    if first.get("type") == "json_invalid":
        at = f" at character {where[0]}" if where and isinstance(where[0], int) else ""
        reason = (first.get("ctx") or {}).get("error") or "JSON decode error"
        return ApiError(422, f"invalid request: the body is not valid JSON ({reason}{at})", code="invalid_json")
    kind = first.get("type")
    if not where and kind == "missing":
        return ApiError(422, "invalid request: the body is empty; send a JSON object", code="missing_body")
    if not where and kind in ("model_attributes_type", "model_type", "dict_type"):  # not an object
        content_type = request.headers.get("content-type") or ""
        media = content_type.split(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            got = f"got {content_type[:80]!r}" if content_type else "the request has none"
            return ApiError(415, f"send the body as JSON with the header 'Content-Type: application/json' "
                            f"({got})", code="unsupported_media_type")
        return ApiError(422, "invalid request: the body must be a JSON object ({...}), got "
                        f"{_json_kind(first.get('input'))}", code="invalid_body")
    if kind == "string_unicode":  # a key with an unpaired surrogate (values are checked by the routes)
        name = ".".join(str(x) for x in where)
        return ApiError(422, f"invalid request: a field name {'in ' + name + ' ' if name else ''}holds an "
                        "unpaired UTF-16 surrogate; send valid Unicode", param=name or None, code="invalid_unicode")
    parts, param = [], None
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        name = ".".join(loc)
        param = param or (name or None)
        if err.get("type") == "extra_forbidden":
            parts.append(f"unknown field {name!r}")
        else:
            parts.append(f"{name or 'body'}: {err.get('msg', 'invalid')}")
    return ApiError(422, "invalid request: " + "; ".join(parts), param=param)


_BODY_KEY = "clsgen.body"


def _unparsable_body(body: bytes | None) -> ApiError:
    """422 for a body that JSON parsing gave up on without a syntax error: bytes that are not UTF-8, or
    nesting deeper than the parser follows. The body as a whole is at fault, so `param` is null."""
    if body is not None:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as e:
            return ApiError(422, f"invalid request: the body is not valid UTF-8 (byte {e.start}); send JSON "
                            "encoded as UTF-8", code="invalid_json")
    return ApiError(422, "invalid request: the body could not be parsed as JSON: it is nested too deeply; "
                    "send one JSON object nested at most a few hundred levels deep", code="invalid_json")


def _json_kind(value: Any) -> str:
    for kinds, word in (((bytes, bytearray), "a non-JSON body"), (bool, "a boolean"), ((int, float), "a number"),
                        (str, "a string"), (list, "an array")):
        if isinstance(value, kinds):
            return word
    return "null" if value is None else type(value).__name__


def _check_unicode(value: str, param: str) -> None:
    """422 for text that UTF-8 cannot carry (an unpaired surrogate from a JSON "\\ud800" escape): the
    tokenizer would fail on it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(422, f"{param} holds an unpaired UTF-16 surrogate ({value[e.start]!r} at character "
                       f"{e.start}); send valid Unicode text", param=param, code="invalid_unicode") from None


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of `text` that could be the start of a stop string (not sent yet)."""
    held = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                held = max(held, k)
                break
    return held


# ============================================================================ the ASGI guard


class _Guard:
    """Before any routing: API-key check for /v1/*, then the request body size limit.

    The body is read here, up to the limit, and replayed to the app; a larger body is refused with
    413 without being read further, and an unauthenticated request never reaches the model.
    """

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body = app, api_key, max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if self.api_key and path.startswith("/v1/") and scope.get("method") != "OPTIONS":
            if not self._authorized(scope):
                resp = _error_json(401, "missing or wrong API key: send the header "
                                   "'Authorization: Bearer <key>' (the key the server was started with, "
                                   "see --api-key-env)", "authentication_error", "invalid_api_key",
                                   headers={"WWW-Authenticate": "Bearer"})
                return await resp(scope, receive, send)
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            declared = _header(scope, b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
                return await self._too_large(scope, receive, send)
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body:
                    return await self._too_large(scope, receive, send)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            scope[_BODY_KEY] = body  # for the error a body that cannot be parsed gets
            replayed = False

            async def replay() -> dict:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            return await self.app(scope, replay, send)
        return await self.app(scope, receive, send)

    def _authorized(self, scope: dict) -> bool:
        value = _header(scope, b"authorization") or ""
        scheme, _, token = value.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    async def _too_large(self, scope: dict, receive: Any, send: Any) -> None:
        resp = _error_json(413, f"the request body is larger than this server accepts ({self.max_body} "
                           "bytes, --max-body-bytes); send a shorter text", "invalid_request_error",
                           "body_too_large", headers={"Connection": "close"})
        await resp(scope, receive, send)


def _header(scope: dict, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v.decode("latin-1")
    return None


# ============================================================================ the app


def _load_predictor(source: Any) -> Any:
    from .inference import Predictor

    if isinstance(source, (str, Path)):
        return Predictor.from_pretrained(source)
    if isinstance(source, Predictor) or hasattr(source, "predict_proba"):
        return source
    from .model import DualHeadModel

    if isinstance(source, DualHeadModel):
        return Predictor(source)
    raise TypeError(f"create_app needs a Predictor, a DualHeadModel or a model directory, got "
                    f"{type(source).__name__}")


def create_app(
    predictor_or_model_dir: Any,
    *,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    max_queue: int = 64,
    batch_window_ms: float = 5.0,
    max_batch: int = 16,
    request_timeout: float = 120.0,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    log_inputs: bool = False,
    cors_origins: Sequence[str] | None = None,
    model_name: str | None = None,
    threads: int | None = None,
) -> FastAPI:
    """Build the app around a `Predictor` (or a model directory, loaded here).

    api_key: when set, every /v1/* request needs `Authorization: Bearer <api_key>` (else 401).
    max_body_bytes: larger request bodies get 413. max_text_chars: longer texts (summed over fields
    or chat messages) get 422. max_queue: requests queued or running before new ones get 503 with
    Retry-After. batch_window_ms / max_batch: how long the worker waits to fill a batch, and its size.
    request_timeout: seconds before 504 (a stream ends with an error event). max_tokens: the cap on
    generated tokens per request (explanations and chat). log_inputs: write request texts to the log
    (off: only sizes and timings). cors_origins: origins allowed to call the API from a browser
    (default none: CORS off). model_name: the id shown in /v1/models (default: the directory name).
    threads: CPU threads for the model worker's torch operations (default: torch's own choice; 1 is
    much steadier on a small machine shared with other work).
    """
    problems = [f"{name} must be >= 1, got {value}" for name, value in
                [("max_body_bytes", max_body_bytes), ("max_text_chars", max_text_chars),
                 ("max_queue", max_queue), ("max_batch", max_batch), ("max_tokens", max_tokens),
                 ("threads", 1 if threads is None else threads)]
                if value < 1]
    if batch_window_ms < 0 or request_timeout <= 0:
        problems.append("batch_window_ms must be >= 0 and request_timeout > 0")
    if api_key is not None and not api_key.strip():
        problems.append("api_key is empty; pass None for no authentication")
    if problems:
        raise ClsgenError("server settings: " + "; ".join(problems))

    if model_name is None and isinstance(predictor_or_model_dir, (str, Path)):
        model_name = Path(predictor_or_model_dir).resolve().name
    predictor = _load_predictor(predictor_or_model_dir)
    model = predictor.model
    task = model.task
    name = model_name or f"clsgen-{task.name}"
    threshold = float(model.meta.get("threshold", 0.5))
    engine = _Engine(predictor)
    batcher = Batcher({"proba": engine.proba, "predict": engine.predict, "stream": engine.stream,
                       "chat": engine.chat}, batchable=("proba", "predict"), max_queue=max_queue,
                      window_s=batch_window_ms / 1000.0, max_batch=max_batch,
                      init=None if threads is None else partial(_set_torch_threads, threads))

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(
        title="clsgen", version=__version__, lifespan=_asynccontextmanager(lifespan),
        docs_url=None, redoc_url=None,  # their pages load scripts from a CDN; /openapi.json stays
        description="Classify and explain with a CLSGen model: a calibrated probability from the "
                    "classification head and a readable explanation from the LM head, in one call. "
                    "Also an OpenAI-compatible chat endpoint over the same fine-tuned LM.",
    )
    app.state.batcher = batcher
    app.state.predictor = predictor
    bearer = HTTPBearer(auto_error=False, description="Needed when the server was started with "
                        "--api-key-env (checked before routing).")
    auth = [Security(bearer)]

    # ---------------------------------------------------------------- error handlers
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return _validation_error(e.errors(), request).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(e.status_code, "invalid_request_error")
        if e.status_code == 400 and str(e.detail) == "There was an error parsing the body":  # FastAPI's words
            return _unparsable_body(request.scope.get(_BODY_KEY)).response()
        return _error_json(e.status_code, str(e.detail), kind, headers=getattr(e, "headers", None))

    # ---------------------------------------------------------------- helpers
    def check_model(requested: str | None) -> None:
        if requested and requested != name:
            raise ApiError(404, f"model {requested!r} is not served here; this server serves {name!r} "
                           "(GET /v1/models)", "invalid_request_error", "model_not_found", "model")

    def fields_of(req: ClassifyRequest) -> dict[str, str]:
        expected = task.fields
        if (req.text is None) == (req.fields is None):
            raise ApiError(422, "send exactly one of 'text' (a task with one field) or 'fields' "
                           f"(this task's fields: {expected})", param="text")
        if req.text is not None:
            if len(expected) != 1:
                raise ApiError(422, f"this task has {len(expected)} fields {expected}: send them as "
                               '{"fields": {...}} instead of "text"', param="text")
            fields = {expected[0]: req.text}
        else:
            fields = dict(req.fields or {})
            unknown = sorted(set(fields) - set(expected))
            missing = [f for f in expected if f not in fields]
            if unknown or missing:
                what = "; ".join(x for x in (f"unknown {unknown}" if unknown else "",
                                             f"missing {missing}" if missing else "") if x)
                raise ApiError(422, f"fields must be exactly this task's fields {expected} ({what})",
                               param="fields")
        if not any(v.strip() for v in fields.values()):
            raise ApiError(422, "the text is empty; send the text to classify", param="text")
        for key, value in fields.items():
            _check_unicode(value, "text" if req.text is not None else f"fields.{key}")
        check_length(sum(len(v) for v in fields.values()), "text" if req.text is not None else "fields")
        return fields

    def check_length(chars: int, param: str) -> None:
        if chars > max_text_chars:
            raise ApiError(422, f"the text has {chars} characters; this server accepts at most "
                           f"{max_text_chars} (--max-text-chars)", param=param, code="text_too_long")

    def submit(kind: str, item: Any, key: Any = None) -> Job:
        try:
            return batcher.submit(kind, item, key)
        except (QueueFull, BatcherClosed) as e:
            raise _worker_error(e) from None

    async def result_of(job: Job) -> Any:
        try:
            return await Batcher.wait(job, request_timeout)
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except BaseException as e:  # noqa: BLE001
            raise _worker_error(e) from None

    explain_tokens = min(int(getattr(predictor, "max_new_tokens", max_tokens)), max_tokens)

    def cap(requested: int | None, default: int = max_tokens) -> int:
        """A request's token limit: its own, else `default`, never above the server's cap."""
        return min(requested or default, max_tokens)

    def audit(endpoint: str, status: int, started: float, chars: int, inputs: Any, **extra: Any) -> None:
        info = " ".join(f"{k}={v}" for k, v in extra.items())
        message = f"{endpoint} status={status} chars={chars} {info} {time.monotonic() - started:.3f}s"
        if log_inputs:
            message += " input=" + json.dumps(inputs, ensure_ascii=False)
        log.info(message)

    def classify_body(pred: Any, rid: str) -> dict[str, Any]:
        label = int(pred.label)
        return {"id": rid, "model": name, "probability": float(pred.probability), "label": label,
                "label_name": task.verbalizers[label], "threshold": float(pred.threshold),
                "explanation": pred.explanation, "verdict": pred.verdict,
                "truncated": bool(getattr(pred, "truncated", False))}

    # ---------------------------------------------------------------- routes
    @app.get("/health", tags=["server"])
    async def health() -> dict[str, Any]:
        """Liveness and load: always open (no API key), never touches the model."""
        s = batcher.stats
        return {"status": "ok", "model": name, "pending": batcher.pending, "max_queue": max_queue,
                "batches": s.batches, "jobs": s.jobs, "largest_batch": s.largest_batch,
                "rejected": s.rejected}

    @app.get("/v1/models", tags=["openai"], dependencies=auth)
    async def models() -> dict[str, Any]:
        """The served model, in OpenAI's list format."""
        created = int(model.meta.get("created", 0) or 0)
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                            "owned_by": "clsgen"}]}

    @app.get("/v1/task", tags=["classify"], dependencies=auth)
    async def task_info() -> dict[str, Any]:
        """What the classifier decides and which fields it reads."""
        return {"model": name, "name": task.name, "fields": task.fields, "verbalizers": list(task.verbalizers),
                "system": task.system, "template": task.template, "threshold": threshold,
                "temperature": float(model.meta.get("temperature", 1.0)),
                "max_text_chars": max_text_chars, "max_tokens": max_tokens, "explain_tokens": explain_tokens}

    @app.post("/v1/classify", tags=["classify"], dependencies=auth, response_model=ClassifyResponse,
              responses={200: {"content": {"text/event-stream": {}},
                               "description": "JSON, or server-sent events when stream is true"}})
    async def classify(req: ClassifyRequest, request: Request) -> Any:
        """Probability, label and explanation for one input (see the request schema)."""
        started = time.monotonic()
        chars = len(req.text or "") + sum(len(v) for v in (req.fields or {}).values())
        try:
            check_model(req.model)
            fields = fields_of(req)
            rid = f"cls-{uuid.uuid4().hex[:24]}"
            if req.stream:  # the stream logs itself once it has started
                return await classify_stream(fields, req, rid, started, chars)
            kind, key = ("predict", cap(req.max_tokens, explain_tokens)) if req.explain else ("proba", None)
            pred = await result_of(submit(kind, fields, key))
        except ApiError as e:
            audit("classify", e.status, started, chars, req.fields or req.text, stream=req.stream)
            raise
        audit("classify", 200, started, chars, fields, explain=req.explain)
        return classify_body(pred, rid)

    async def classify_stream(fields: dict[str, str], req: ClassifyRequest, rid: str, started: float,
                              chars: int) -> Response:
        queue: asyncio.Queue = asyncio.Queue()
        job = submit("stream", _StreamItem((fields, req.explain, cap(req.max_tokens, explain_tokens)), queue))
        job.future.add_done_callback(lambda fut: queue.put_nowait(("end", fut)))
        deadline = started + request_timeout
        first = await _next(queue, job, deadline)  # errors before the first event are HTTP errors
        if first[0] == "end":
            raise _end_error(first[1]) or ApiError(500, "the model ended the stream without a result",
                                                   "server_error")

        async def events() -> AsyncIterator[str]:
            item, status = first, 200
            explanation: list[str] = []
            try:
                while True:
                    if item[0] == "end":
                        e = _end_error(item[1])
                        if e is not None:
                            status = e.status
                            yield _sse("error", e.body()["error"])
                        return
                    kind, payload = item[1]
                    if kind == "first":
                        yield _sse("probability", first_body(payload, rid))
                    elif kind == "delta":
                        if payload:
                            explanation.append(payload)
                            yield _sse("delta", {"text": payload})
                    else:  # final
                        yield _sse("done", classify_body(payload, rid))
                    try:
                        item = await _next(queue, job, deadline)
                    except ApiError as e:
                        status = e.status
                        yield _sse("error", e.body()["error"])
                        return
            finally:
                job.cancel()
                audit("classify", status, started, chars, fields, stream=True)

        return StreamingResponse(events(), media_type="text/event-stream", headers=_SSE_HEADERS)

    def first_body(event: Any, rid: str) -> dict[str, Any]:
        prob = float(event.probability)
        label = int(event.label) if getattr(event, "label", None) is not None else int(prob >= threshold)
        thr = getattr(event, "threshold", None)
        return {"id": rid, "model": name, "probability": prob, "label": label,
                "label_name": task.verbalizers[label], "threshold": float(threshold if thr is None else thr)}

    @app.post("/v1/chat/completions", tags=["openai"], dependencies=auth,
              responses={200: {"content": {"text/event-stream": {}},
                               "description": "a chat.completion, or chat.completion.chunk events"}})
    async def chat(req: ChatRequest, request: Request) -> Any:
        """OpenAI-compatible chat completion with the fine-tuned LM (LoRA adapter on)."""
        started = time.monotonic()
        try:
            return await chat_reply(req, started)
        except ApiError as e:
            raw = [m.content for m in req.messages]
            audit("chat", e.status, started, sum(len(str(c or "")) for c in raw), raw, stream=req.stream)
            raise

    async def chat_reply(req: ChatRequest, started: float) -> Any:
        check_model(req.model)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": _content(m)}
                    for m in req.messages]
        chars = sum(len(m["content"]) for m in messages)
        check_length(chars, "messages")
        for i, m in enumerate(messages):
            _check_unicode(m["content"], f"messages.{i}.content")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > 4:
            raise ApiError(422, f"stop takes at most 4 strings, got {len(stops)}", param="stop")
        temperature = 1.0 if req.temperature is None else req.temperature
        payload = {"messages": messages, "max_tokens": cap(req.max_completion_tokens or req.max_tokens),
                   "temperature": temperature, "top_p": 1.0 if req.top_p is None else req.top_p,
                   "stop": stops, "seed": req.seed}
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if not req.stream:
            out = await result_of(submit("chat", payload))
            audit("chat", 200, started, chars, messages, tokens=out["usage"]["completion_tokens"])
            return {"id": cid, "object": "chat.completion", "created": created, "model": name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": out["content"]},
                                 "logprobs": None, "finish_reason": out["finish_reason"]}],
                    "usage": out["usage"]}

        queue: asyncio.Queue = asyncio.Queue()
        job = submit("chat", _StreamItem(payload, queue))
        job.future.add_done_callback(lambda fut: queue.put_nowait(("end", fut)))
        deadline = started + request_timeout
        first = await _next(queue, job, deadline)
        if first[0] == "end" and _end_error(first[1]) is not None:
            raise _end_error(first[1])
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(delta: dict[str, Any], finish: str | None = None, **more: Any) -> str:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                    **more}
            return _sse(None, body)

        async def chunks() -> AsyncIterator[str]:
            item, status = first, 200
            try:
                yield chunk({"role": "assistant", "content": ""})
                while True:
                    if item[0] == "end":
                        e = _end_error(item[1])
                        if e is not None:
                            status = e.status
                            yield _sse(None, e.body())
                        else:
                            out = item[1].result()
                            yield chunk({}, out["finish_reason"])
                            if include_usage:
                                yield _sse(None, {"id": cid, "object": "chat.completion.chunk",
                                                  "created": created, "model": name, "choices": [],
                                                  "usage": out["usage"]})
                            yield "data: [DONE]\n\n"
                        return
                    yield chunk({"content": item[1]})
                    try:
                        item = await _next(queue, job, deadline)
                    except ApiError as e:
                        status = e.status
                        yield _sse(None, e.body())
                        return
            finally:
                job.cancel()
                audit("chat", status, started, chars, messages, stream=True)

        return StreamingResponse(chunks(), media_type="text/event-stream", headers=_SSE_HEADERS)

    # ---------------------------------------------------------------- the page
    page_config = {"model": name, "task": task.name, "fields": task.fields,
                   "verbalizers": list(task.verbalizers), "threshold": threshold,
                   "auth": bool(api_key), "max_text_chars": max_text_chars}

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
        config = json.dumps(page_config).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        return HTMLResponse(html.replace("__CLSGEN_CONFIG__", config), headers=_PAGE_HEADERS)

    app.mount("/static", _StaticFiles(directory=str(STATIC_DIR)), name="static")

    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=max_body_bytes)
    if cors_origins:  # outermost, so that 401 and 413 answers carry the CORS headers too
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    return app


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                 "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


class _StaticFiles(StaticFiles):
    """Static files with the page's security headers."""

    async def get_response(self, path: str, scope: dict) -> Response:
        resp = await super().get_response(path, scope)
        resp.headers.update({"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})
        return resp


def _set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _asynccontextmanager(fn: Any) -> Any:
    from contextlib import asynccontextmanager

    return asynccontextmanager(fn)


def _sse(event: str | None, data: Any) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _next(queue: asyncio.Queue, job: Job, deadline: float) -> tuple[str, Any]:
    """The next item of a streaming job, or ApiError(504) past the deadline."""
    left = deadline - time.monotonic()
    try:
        if left <= 0:
            raise asyncio.TimeoutError
        return await asyncio.wait_for(queue.get(), left)
    except asyncio.TimeoutError:
        job.cancel()
        raise _worker_error(asyncio.TimeoutError()) from None


def _end_error(future: asyncio.Future) -> ApiError | None:
    if future.cancelled():
        return ApiError(503, "the request was cancelled", "server_busy", "cancelled")
    e = future.exception()
    return None if e is None else _worker_error(e)


def _content(message: ChatMessage) -> str:
    """A chat message's text: a string, or OpenAI content parts of type 'text' joined."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.get("type") != "text":
            raise ApiError(422, f"message content parts must be of type 'text' (this model reads text "
                           f"only), got {part.get('type')!r}", param="messages")
        if not isinstance(part.get("text"), str):
            raise ApiError(422, "a message content part of type 'text' needs a string 'text', got "
                           f"{_json_kind(part.get('text'))}", param="messages")
        texts.append(part["text"])
    return "\n".join(texts)


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the app with uvicorn (blocking)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=True,
                timeout_graceful_shutdown=5)


__all__: Iterable[str] = ["create_app", "serve", "ApiError", "ClassifyRequest", "ChatRequest"]
