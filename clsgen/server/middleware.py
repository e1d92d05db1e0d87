"""The ASGI guard in front of the app: the API key for /v1/* and the request body size limit."""

from __future__ import annotations

import hmac
from typing import Any

from .errors import error_json

BODY_KEY = "clsgen.body"
"""Where the guard leaves the request body in the ASGI scope, for the error a body that cannot be parsed gets."""


class Guard:
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
                resp = error_json(401, "missing or wrong API key: send the header "
                                   "'Authorization: Bearer <key>' (the key the server was started with, "
                                   "see --api-key-env)", "authentication_error", "invalid_api_key",
                                   headers={"WWW-Authenticate": "Bearer"})
                return await resp(scope, receive, send)
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            declared = header(scope, b"content-length")
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
            scope[BODY_KEY] = body  # for the error a body that cannot be parsed gets
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
        value = header(scope, b"authorization") or ""
        scheme, _, token = value.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    async def _too_large(self, scope: dict, receive: Any, send: Any) -> None:
        resp = error_json(413, f"the request body is larger than this server accepts ({self.max_body} "
                           "bytes, --max-body-bytes); send a shorter text", "invalid_request_error",
                           "body_too_large", headers={"Connection": "close"})
        await resp(scope, receive, send)


def header(scope: dict, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v.decode("latin-1")
    return None
