"""`clsgen serve`: the HTTP API (classify, stream, OpenAI-compatible chat) and the web page."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import ClsgenError
from .model_options import add_repeat_option, repeat_size

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a trained model over HTTP (API + web page)",
                       description="Serve a clsgen model directory: POST /v1/classify, "
                                   "POST /v1/chat/completions (OpenAI-compatible), GET /v1/models, "
                                   "GET /health, and a web page at /. See docs/serving.md.")
    p.add_argument("--model", required=True, metavar="DIR", help="a clsgen model directory (from "
                   "`clsgen train` or DualHeadModel.save_pretrained)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this "
                   "machine only; use 0.0.0.0 to expose it, with --api-key-env)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key-env", metavar="VAR", help="name of an environment variable holding the API "
                   "key; requests to /v1/* then need 'Authorization: Bearer <key>'")
    p.add_argument("--name", help="model id shown in /v1/models and responses (default: the directory name)")
    g = p.add_argument_group("limits")
    g.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413 "
                   "(default 1048576)")
    g.add_argument("--max-text-chars", type=int, default=100_000, help="longer texts get 422 "
                   "(default 100000)")
    g.add_argument("--max-tokens", type=int, default=512, help="cap on generated tokens per request "
                   "(default 512)")
    g.add_argument("--max-queue", type=int, default=64, help="requests waiting or running before new "
                   "ones get 503 + Retry-After (default 64)")
    g.add_argument("--request-timeout", type=float, default=120.0, help="seconds before a request gets "
                   "504 (default 120)")
    g = p.add_argument_group("batching and generation")
    g.add_argument("--batch-window-ms", type=float, default=5.0, help="how long the model worker waits to "
                   "batch requests together (default 5)")
    g.add_argument("--max-batch", type=int, default=16, help="requests per micro-batch (default 16)")
    g.add_argument("--batch-size", type=int, default=8, help="rows per forward pass inside a batch "
                   "(default 8)")
    g.add_argument("--explain-tokens", type=int, default=256, help="default explanation length in tokens "
                   "(default 256; a request's max_tokens overrides it, up to --max-tokens)")
    add_repeat_option(g)
    g.add_argument("--threads", type=int, help="CPU threads for the model (default: torch's choice; "
                   "--threads 1 is much steadier on a small machine shared with other work)")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="weights dtype "
                   "(default: as saved)")
    g = p.add_argument_group("privacy and browsers")
    g.add_argument("--log-inputs", action="store_true", help="write request texts to the log (off by "
                   "default: only sizes, status and timings are logged)")
    g.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN", dest="cors_origins",
                   help="allow browser pages from ORIGIN to call the API (repeatable; default: CORS off)")
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def api_key_from_env(var: str | None) -> str | None:
    if var is None:
        return None
    key = os.environ.get(var)
    if not key or not key.strip():
        raise ClsgenError(f"--api-key-env {var}: the environment variable {var} is unset or empty; "
                          f"export {var}=<a secret key> before starting the server")
    return key.strip()


def run(args: argparse.Namespace) -> int:
    api_key = api_key_from_env(args.api_key_env)
    if not 0 <= args.port <= 65535:
        raise ClsgenError(f"--port must be between 0 and 65535, got {args.port}")
    if args.explain_tokens > args.max_tokens:
        raise ClsgenError(f"--explain-tokens ({args.explain_tokens}) is above --max-tokens "
                          f"({args.max_tokens}); lower it or raise --max-tokens")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.host not in LOOPBACK and api_key is None:
        print(f"clsgen: warning: serving on {args.host} without --api-key-env: anyone who can reach this "
              "address can use the model", file=sys.stderr)

    from ..extras import missing
    from ..inference import Predictor

    try:
        from ..server import create_app, serve
    except ImportError as e:
        raise missing(e.name or "fastapi", "clsgen serve") from None

    print(f"clsgen: loading {args.model} ...", file=sys.stderr, flush=True)
    predictor = Predictor.from_pretrained(args.model, dtype=args.dtype, batch_size=args.batch_size,
                                          max_new_tokens=args.explain_tokens,
                                          no_repeat_ngram_size=repeat_size(args))
    from pathlib import Path

    app = create_app(predictor, api_key=api_key, max_body_bytes=args.max_body_bytes,
                     max_text_chars=args.max_text_chars, max_queue=args.max_queue,
                     batch_window_ms=args.batch_window_ms, max_batch=args.max_batch,
                     request_timeout=args.request_timeout, max_tokens=args.max_tokens,
                     log_inputs=args.log_inputs, cors_origins=args.cors_origins or None,
                     model_name=args.name or Path(args.model).resolve().name, threads=args.threads)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"clsgen: serving {args.model} on http://{host}:{args.port}/ (API: /v1/classify, "
          "/v1/chat/completions; schema: /openapi.json)", file=sys.stderr, flush=True)
    serve(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
