"""The server's errors: `ApiError` (OpenAI's error shape), what a failed model job means for the
client, and one clear message for a request that fails validation or parsing."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Sequence
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from ..batcher import BatcherClosed, QueueFull
from ..errors import ClsgenError

log = logging.getLogger("clsgen.server")


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


def error_json(status: int, message: str, type: str, code: str | None = None,
                headers: dict[str, str] | None = None) -> JSONResponse:
    return ApiError(status, message, type, code, headers=headers).response()


def worker_error(e: BaseException) -> ApiError:
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


def validation_error(errors: Sequence[dict[str, Any]], request: Request) -> ApiError:
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
                        f"{json_kind(first.get('input'))}", code="invalid_body")
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


def unparsable_body(body: bytes | None) -> ApiError:
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


def json_kind(value: Any) -> str:
    for kinds, word in (((bytes, bytearray), "a non-JSON body"), (bool, "a boolean"), ((int, float), "a number"),
                        (str, "a string"), (list, "an array")):
        if isinstance(value, kinds):
            return word
    return "null" if value is None else type(value).__name__


def check_unicode(value: str, param: str) -> None:
    """422 for text that UTF-8 cannot carry (an unpaired surrogate from a JSON "\\ud800" escape): the
    tokenizer would fail on it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(422, f"{param} holds an unpaired UTF-16 surrogate ({value[e.start]!r} at character "
                       f"{e.start}); send valid Unicode text", param=param, code="invalid_unicode") from None
