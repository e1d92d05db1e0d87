"""The app factory: `create_app` wires the predictor, the batcher, the routes, the page and the guard.

The routes only parse, validate, wait and stream; `Service` holds what they share (the served
model's name and task, the batcher, the limits), and `Engine` (engine.py) does the model-side work in
the batcher's worker thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..batcher import Batcher, BatcherClosed, Job, QueueFull
from ..errors import ClsgenError
from .engine import Engine, StreamItem
from .errors import ApiError, check_unicode, error_json, unparsable_body, validation_error, worker_error
from .middleware import BODY_KEY, Guard
from .schemas import ChatRequest, ClassifyRequest, ClassifyResponse, message_text

log = logging.getLogger("clsgen.server")

STATIC_DIR = Path(__file__).parent.parent / "static"
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_TEXT_CHARS = 100_000
DEFAULT_MAX_TOKENS = 512
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                 "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


def _load_predictor(source: Any) -> Any:
    from ..inference import Predictor

    if isinstance(source, (str, Path)):
        return Predictor.from_pretrained(source)
    if isinstance(source, Predictor) or hasattr(source, "predict_proba"):
        return source
    from ..model import DualHeadModel

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
    engine = Engine(predictor)
    batcher = Batcher({"proba": engine.proba, "predict": engine.predict, "stream": engine.stream,
                       "chat": engine.chat}, batchable=("proba", "predict"), max_queue=max_queue,
                      window_s=batch_window_ms / 1000.0, max_batch=max_batch,
                      init=None if threads is None else partial(_set_torch_threads, threads))
    service = Service(predictor, batcher, model_name or f"clsgen-{predictor.model.task.name}",
                      max_text_chars=max_text_chars, max_tokens=max_tokens, request_timeout=request_timeout,
                      log_inputs=log_inputs)

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
    _add_error_handlers(app)
    _add_routes(app, service, max_queue=max_queue, auth=bool(api_key))

    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body_bytes)
    if cors_origins:  # outermost, so that 401 and 413 answers carry the CORS headers too
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answers in OpenAI's JSON shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return validation_error(e.errors(), request).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(e.status_code, "invalid_request_error")
        if e.status_code == 400 and str(e.detail) == "There was an error parsing the body":  # FastAPI's words
            return unparsable_body(request.scope.get(BODY_KEY)).response()
        return error_json(e.status_code, str(e.detail), kind, headers=getattr(e, "headers", None))


def _add_routes(app: FastAPI, service: Service, max_queue: int, auth: bool) -> None:
    """The API's routes, the web page at / and its static files."""
    batcher, model, task = service.batcher, service.model, service.task
    bearer = HTTPBearer(auto_error=False, description="Needed when the server was started with "
                        "--api-key-env (checked before routing).")
    guarded = [Security(bearer)]

    @app.get("/health", tags=["server"])
    async def health() -> dict[str, Any]:
        """Liveness and load: always open (no API key), never touches the model."""
        s = batcher.stats
        return {"status": "ok", "model": service.name, "pending": batcher.pending, "max_queue": max_queue,
                "batches": s.batches, "jobs": s.jobs, "largest_batch": s.largest_batch,
                "rejected": s.rejected}

    @app.get("/v1/models", tags=["openai"], dependencies=guarded)
    async def models() -> dict[str, Any]:
        """The served model, in OpenAI's list format."""
        created = int(model.meta.get("created", 0) or 0)
        return {"object": "list", "data": [{"id": service.name, "object": "model", "created": created,
                                            "owned_by": "clsgen"}]}

    @app.get("/v1/task", tags=["classify"], dependencies=guarded)
    async def task_info() -> dict[str, Any]:
        """What the classifier decides and which fields it reads."""
        return {"model": service.name, "name": task.name, "fields": task.fields,
                "verbalizers": list(task.verbalizers), "system": task.system, "template": task.template,
                "threshold": service.threshold, "temperature": float(model.meta.get("temperature", 1.0)),
                "max_text_chars": service.max_text_chars, "max_tokens": service.max_tokens,
                "explain_tokens": service.explain_tokens}

    @app.post("/v1/classify", tags=["classify"], dependencies=guarded, response_model=ClassifyResponse,
              responses={200: {"content": {"text/event-stream": {}},
                               "description": "JSON, or server-sent events when stream is true"}})
    async def classify(req: ClassifyRequest, request: Request) -> Any:
        """Probability, label and explanation for one input (see the request schema)."""
        return await service.classify(req)

    @app.post("/v1/chat/completions", tags=["openai"], dependencies=guarded,
              responses={200: {"content": {"text/event-stream": {}},
                               "description": "a chat.completion, or chat.completion.chunk events"}})
    async def chat(req: ChatRequest, request: Request) -> Any:
        """OpenAI-compatible chat completion with the fine-tuned LM (LoRA adapter on)."""
        started = time.monotonic()
        try:
            return await service.chat(req, started)
        except ApiError as e:
            raw = [m.content for m in req.messages]
            service.audit("chat", e.status, started, sum(len(str(c or "")) for c in raw), raw, stream=req.stream)
            raise

    page_config = {"model": service.name, "task": task.name, "fields": task.fields,
                   "verbalizers": list(task.verbalizers), "threshold": service.threshold,
                   "auth": auth, "max_text_chars": service.max_text_chars}

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
        config = json.dumps(page_config).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        return HTMLResponse(html.replace("__CLSGEN_CONFIG__", config), headers=_PAGE_HEADERS)

    app.mount("/static", _StaticFiles(directory=str(STATIC_DIR)), name="static")


class Service:
    """What the routes share: the served model's name and task, the batcher and the request limits;
    and the endpoints' work between parsing a request and answering it."""

    def __init__(self, predictor: Any, batcher: Batcher, name: str, *, max_text_chars: int, max_tokens: int,
                 request_timeout: float, log_inputs: bool):
        self.batcher, self.name = batcher, name
        self.model = predictor.model
        self.task = self.model.task
        self.threshold = float(self.model.meta.get("threshold", 0.5))
        self.max_text_chars, self.max_tokens = max_text_chars, max_tokens
        self.request_timeout, self.log_inputs = request_timeout, log_inputs
        self.explain_tokens = min(int(getattr(predictor, "max_new_tokens", max_tokens)), max_tokens)

    # ---------------------------------------------------------------- checks
    def check_model(self, requested: str | None) -> None:
        if requested and requested != self.name:
            raise ApiError(404, f"model {requested!r} is not served here; this server serves {self.name!r} "
                           "(GET /v1/models)", "invalid_request_error", "model_not_found", "model")

    def fields_of(self, req: ClassifyRequest) -> dict[str, str]:
        expected = self.task.fields
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
            check_unicode(value, "text" if req.text is not None else f"fields.{key}")
        self.check_length(sum(len(v) for v in fields.values()), "text" if req.text is not None else "fields")
        return fields

    def check_length(self, chars: int, param: str) -> None:
        if chars > self.max_text_chars:
            raise ApiError(422, f"the text has {chars} characters; this server accepts at most "
                           f"{self.max_text_chars} (--max-text-chars)", param=param, code="text_too_long")

    def cap(self, requested: int | None, default: int | None = None) -> int:
        """A request's token limit: its own, else `default`, never above the server's cap."""
        return min(requested or (self.max_tokens if default is None else default), self.max_tokens)

    # ---------------------------------------------------------------- jobs
    def submit(self, kind: str, item: Any, key: Any = None) -> Job:
        try:
            return self.batcher.submit(kind, item, key)
        except (QueueFull, BatcherClosed) as e:
            raise worker_error(e) from None

    async def result_of(self, job: Job) -> Any:
        try:
            return await Batcher.wait(job, self.request_timeout)
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except BaseException as e:  # noqa: BLE001
            raise worker_error(e) from None

    async def open_stream(self, kind: str, payload: Any, started: float) -> tuple[Job, asyncio.Queue, Any, float]:
        """Submit a streaming job; return it, its queue, its first item and its deadline."""
        queue: asyncio.Queue = asyncio.Queue()
        job = self.submit(kind, StreamItem(payload, queue))
        job.future.add_done_callback(lambda fut: queue.put_nowait(("end", fut)))
        deadline = started + self.request_timeout
        return job, queue, await _next(queue, job, deadline), deadline

    def audit(self, endpoint: str, status: int, started: float, chars: int, inputs: Any, **extra: Any) -> None:
        info = " ".join(f"{k}={v}" for k, v in extra.items())
        message = f"{endpoint} status={status} chars={chars} {info} {time.monotonic() - started:.3f}s"
        if self.log_inputs:
            message += " input=" + json.dumps(inputs, ensure_ascii=False)
        log.info(message)

    # ---------------------------------------------------------------- classify
    async def classify(self, req: ClassifyRequest) -> Any:
        started = time.monotonic()
        chars = len(req.text or "") + sum(len(v) for v in (req.fields or {}).values())
        try:
            self.check_model(req.model)
            fields = self.fields_of(req)
            rid = f"cls-{uuid.uuid4().hex[:24]}"
            if req.stream:  # the stream logs itself once it has started
                return await self.classify_stream(fields, req, rid, started, chars)
            explain_key = self.cap(req.max_tokens, self.explain_tokens)
            kind, key = ("predict", explain_key) if req.explain else ("proba", None)
            pred = await self.result_of(self.submit(kind, fields, key))
        except ApiError as e:
            self.audit("classify", e.status, started, chars, req.fields or req.text, stream=req.stream)
            raise
        self.audit("classify", 200, started, chars, fields, explain=req.explain)
        return self.classify_body(pred, rid)

    def classify_body(self, pred: Any, rid: str) -> dict[str, Any]:
        label = int(pred.label)
        return {"id": rid, "model": self.name, "probability": float(pred.probability), "label": label,
                "label_name": self.task.verbalizers[label], "threshold": float(pred.threshold),
                "explanation": pred.explanation, "verdict": pred.verdict,
                "truncated": bool(getattr(pred, "truncated", False))}

    def first_body(self, event: Any, rid: str) -> dict[str, Any]:
        prob = float(event.probability)
        label = int(event.label) if getattr(event, "label", None) is not None else int(prob >= self.threshold)
        thr = getattr(event, "threshold", None)
        return {"id": rid, "model": self.name, "probability": prob, "label": label,
                "label_name": self.task.verbalizers[label],
                "threshold": float(self.threshold if thr is None else thr)}

    async def classify_stream(self, fields: dict[str, str], req: ClassifyRequest, rid: str, started: float,
                              chars: int) -> Response:
        payload = (fields, req.explain, self.cap(req.max_tokens, self.explain_tokens))
        job, queue, first, deadline = await self.open_stream("stream", payload, started)
        if first[0] == "end":  # errors before the first event are HTTP errors
            raise _end_error(first[1]) or ApiError(500, "the model ended the stream without a result",
                                                   "server_error")

        async def events() -> AsyncIterator[str]:
            status = 200
            try:
                async for kind, value in _relay(queue, job, first, deadline):
                    if kind == "error":
                        status = value.status
                        yield _sse("error", value.body()["error"])
                    elif kind == "event":
                        what, payload = value
                        if what == "first":
                            yield _sse("probability", self.first_body(payload, rid))
                        elif what == "delta":
                            if payload:
                                yield _sse("delta", {"text": payload})
                        else:  # final
                            yield _sse("done", self.classify_body(payload, rid))
            finally:
                job.cancel()
                self.audit("classify", status, started, chars, fields, stream=True)

        return StreamingResponse(events(), media_type="text/event-stream", headers=_SSE_HEADERS)

    # ---------------------------------------------------------------- chat
    async def chat(self, req: ChatRequest, started: float) -> Any:
        self.check_model(req.model)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": message_text(m)}
                    for m in req.messages]
        chars = sum(len(m["content"]) for m in messages)
        self.check_length(chars, "messages")
        for i, m in enumerate(messages):
            check_unicode(m["content"], f"messages.{i}.content")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > 4:
            raise ApiError(422, f"stop takes at most 4 strings, got {len(stops)}", param="stop")
        temperature = 1.0 if req.temperature is None else req.temperature
        payload = {"messages": messages, "max_tokens": self.cap(req.max_completion_tokens or req.max_tokens),
                   "temperature": temperature, "top_p": 1.0 if req.top_p is None else req.top_p,
                   "stop": stops, "seed": req.seed}
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if not req.stream:
            out = await self.result_of(self.submit("chat", payload))
            self.audit("chat", 200, started, chars, messages, tokens=out["usage"]["completion_tokens"])
            return {"id": cid, "object": "chat.completion", "created": created, "model": self.name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": out["content"]},
                                 "logprobs": None, "finish_reason": out["finish_reason"]}],
                    "usage": out["usage"]}
        return await self.chat_stream(payload, req, cid, created, started, chars, messages)

    async def chat_stream(self, payload: dict[str, Any], req: ChatRequest, cid: str, created: int,
                          started: float, chars: int, messages: list[dict[str, str]]) -> Response:
        job, queue, first, deadline = await self.open_stream("chat", payload, started)
        if first[0] == "end" and _end_error(first[1]) is not None:
            raise _end_error(first[1])
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.name}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return _sse(None, {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                    "finish_reason": finish}]})

        async def chunks() -> AsyncIterator[str]:
            status = 200
            try:
                yield chunk({"role": "assistant", "content": ""})
                async for kind, value in _relay(queue, job, first, deadline):
                    if kind == "error":
                        status = value.status
                        yield _sse(None, value.body())
                    elif kind == "done":
                        yield chunk({}, value["finish_reason"])
                        if include_usage:
                            yield _sse(None, {**head, "choices": [], "usage": value["usage"]})
                        yield "data: [DONE]\n\n"
                    else:
                        yield chunk({"content": value})
            finally:
                job.cancel()
                self.audit("chat", status, started, chars, messages, stream=True)

        return StreamingResponse(chunks(), media_type="text/event-stream", headers=_SSE_HEADERS)


# ============================================================================ streaming


async def _relay(queue: asyncio.Queue, job: Job, first: Any, deadline: float) -> AsyncIterator[tuple[str, Any]]:
    """The items of a streaming job, from `first` on: ("event", payload) for each event the worker
    sent, then ("done", the job's result) or ("error", ApiError) once, past the deadline too."""
    item = first
    while True:
        if item[0] == "end":
            e = _end_error(item[1])
            yield ("error", e) if e is not None else ("done", item[1].result())
            return
        yield "event", item[1]
        try:
            item = await _next(queue, job, deadline)
        except ApiError as e:
            yield "error", e
            return


async def _next(queue: asyncio.Queue, job: Job, deadline: float) -> tuple[str, Any]:
    """The next item of a streaming job, or ApiError(504) past the deadline."""
    left = deadline - time.monotonic()
    try:
        if left <= 0:
            raise asyncio.TimeoutError
        return await asyncio.wait_for(queue.get(), left)
    except asyncio.TimeoutError:
        job.cancel()
        raise worker_error(asyncio.TimeoutError()) from None


def _end_error(future: asyncio.Future) -> ApiError | None:
    if future.cancelled():
        return ApiError(503, "the request was cancelled", "server_busy", "cancelled")
    e = future.exception()
    return None if e is None else worker_error(e)


def _sse(event: str | None, data: Any) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"


# ============================================================================ plumbing


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


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the app with uvicorn (blocking)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=True,
                timeout_graceful_shutdown=5)
