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

Modules: app.py (the app factory and routes), engine.py (the model-side work, in the worker thread),
middleware.py (API key and body size, before routing), schemas.py (request and response bodies),
errors.py (the error shape and messages). The chat generate loop is `Predictor.chat` (clsgen/chat.py).
"""

from .app import CSP, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_TEXT_CHARS, DEFAULT_MAX_TOKENS, create_app, serve
from .engine import CPU_PASS_TOKENS, Engine, length_groups
from .errors import ApiError
from .schemas import GREEDY_BELOW, ChatRequest, ClassifyRequest

__all__ = ["create_app", "serve", "ApiError", "ClassifyRequest", "ChatRequest", "Engine", "length_groups",
           "CPU_PASS_TOKENS", "GREEDY_BELOW", "CSP", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_TEXT_CHARS",
           "DEFAULT_MAX_TOKENS"]
