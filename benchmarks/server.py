"""Server: requests/s and latency percentiles of `clsgen serve`'s app for probability-only and
explanation requests at 1, 4 and 16 concurrent clients, with and without micro-batching.

    python benchmarks/server.py [--quick]

Two apps (`clsgen.server.create_app`) serve the same model object on 127.0.0.1 in this process
(uvicorn in threads): one micro-batches (`clsgen serve`'s defaults: max_batch 16, a 5 ms window,
Predictor batch size 8), the
other runs one request at a time (max_batch 1). The clients are httpx.AsyncClient requests, at most
`concurrency` in flight, each sending a real CliniFact test example. Each cell sends a fixed number
of requests; the two servers take turns cell by cell.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import _path  # noqa: F401  (first: this checkout's clsgen on sys.path)

# isort: split

from common import Section, data_dir, table  # noqa: E402

EXPLAIN_TOKENS = 16
MAX_BATCH = 16  # `clsgen serve --max-batch` default
BATCH_SIZE = 8  # `clsgen serve --batch-size` default: rows per forward pass inside a micro-batch


class _Server:
    """uvicorn serving `app` on 127.0.0.1 and a free port, in a daemon thread."""

    def __init__(self, app):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


async def _cell(base: str, bodies: list[dict], concurrency: int) -> dict:
    """Send `bodies` with at most `concurrency` in flight; latencies, wall time and batching."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        before = (await client.get("/health")).json()

        async def one(body: dict) -> None:
            nonlocal errors
            async with gate:
                t0 = time.perf_counter()
                r = await client.post("/v1/classify", json=body)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        wall = time.perf_counter() - t0
        after = (await client.get("/health")).json()
    batches = after["batches"] - before["batches"]
    return {"wall": wall, "latencies": latencies, "errors": errors,
            "mean_batch": (after["jobs"] - before["jobs"]) / batches if batches else 0.0}


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q))


def run(quick: bool = False) -> Section:
    import torch

    from clsgen.backbones import load_model
    from clsgen.config import DataConfig
    from clsgen.datasets import load_dataset
    from clsgen.inference import Predictor
    from clsgen.model import DualHeadModel
    from clsgen.server import create_app

    concurrencies = (1, 4) if quick else (1, 4, 16)
    counts = {"probability": 8, "explanation": 4} if quick else {"probability": 32, "explanation": 16}
    ds = load_dataset(DataConfig(dataset="clinifact", data_dir=data_dir(), max_eval=32))
    fields = [dict(ex.fields) for ex in ds.test]
    backbone = load_model("smollm2-135m", dtype="auto")  # what `clsgen serve` runs here: bf16 only where native
    model = DualHeadModel.from_backbone(backbone, ds.task).eval()
    threads = torch.get_num_threads()
    common = dict(max_queue=256, request_timeout=600, max_tokens=64, threads=threads)
    apps = {
        "batched": create_app(Predictor(model, batch_size=BATCH_SIZE, max_new_tokens=EXPLAIN_TOKENS),
                              max_batch=MAX_BATCH, batch_window_ms=5, **common),
        "unbatched": create_app(Predictor(model, batch_size=1, max_new_tokens=EXPLAIN_TOKENS),
                                max_batch=1, batch_window_ms=0, **common),
    }

    def bodies(kind: str, n: int) -> list[dict]:
        extra = {"explain": False} if kind == "probability" else {"explain": True, "max_tokens": EXPLAIN_TOKENS}
        return [{"fields": fields[i % len(fields)], **extra} for i in range(n)]

    results: dict[str, dict] = {}
    with _Server(apps["batched"]) as a, _Server(apps["unbatched"]) as b:
        servers = {"batched": a, "unbatched": b}
        for srv in servers.values():  # warm-up: both request kinds once
            for kind in counts:
                asyncio.run(_cell(srv.base, bodies(kind, 1), 1))
        flip = False
        for kind, n in counts.items():
            for c in concurrencies:
                order = ["unbatched", "batched"] if flip else ["batched", "unbatched"]
                flip = not flip
                for mode in order:
                    r = asyncio.run(_cell(servers[mode].base, bodies(kind, n), c))
                    results[f"{kind}|{c}|{mode}"] = r
                    print(f"  {kind:11s} c={c:2d} {mode:9s}: {n / r['wall']:.2f} req/s, p50 "
                          f"{_percentile(r['latencies'], 50):.2f} s, batch {r['mean_batch']:.1f}, "
                          f"errors {r['errors']}", flush=True)

    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    rows, figures = [], {"cells": {}, "dtype": dtype, "counts": counts, "explain_tokens": EXPLAIN_TOKENS,
                         "max_batch": MAX_BATCH, "batch_size": BATCH_SIZE, "threads": threads}
    errors = 0
    for kind, n in counts.items():
        for c in concurrencies:
            rps = {}
            for mode in ("batched", "unbatched"):
                r = results[f"{kind}|{c}|{mode}"]
                rps[mode] = n / r["wall"]
                p50, p95 = _percentile(r["latencies"], 50), _percentile(r["latencies"], 95)
                errors += r["errors"]
                figures["cells"][f"{kind}|{c}|{mode}"] = {"requests": n, "requests_per_s": rps[mode],
                                                          "p50_s": p50, "p95_s": p95, "wall_s": r["wall"],
                                                          "mean_batch": r["mean_batch"], "errors": r["errors"]}
                rows.append([kind, c, mode, n, rps[mode], p50, p95, r["mean_batch"], r["errors"]])
            figures["cells"][f"{kind}|{c}|speedup"] = rps["batched"] / rps["unbatched"]
            rows.append([kind, c, "**batched / unbatched**", "", f"**{rps['batched'] / rps['unbatched']:.2f}x**",
                         "", "", "", ""])
    figures["errors"] = errors
    spans = {}
    for kind in counts:
        ups = [figures["cells"][f"{kind}|{c}|speedup"] for c in concurrencies if c > 1]
        spans[kind] = f"{min(ups):.2f}x–{max(ups):.2f}x" if len(ups) > 1 else f"{ups[0]:.2f}x"
    markdown = "\n".join([
        f"`clsgen.server.create_app` over SmolLM2-135M-Instruct ({figures['dtype']}) + fresh LoRA + head, served by "
        f"uvicorn on 127.0.0.1 in this process, model worker on {threads} torch thread(s). Requests are "
        f"`POST /v1/classify` with real CliniFact test examples (claim + abstract, ~500 prompt tokens): "
        f"probability only (`explain: false`), or with an explanation of at most {EXPLAIN_TOKENS} tokens. "
        f"**batched**: micro-batching on with `clsgen serve`'s defaults (max_batch {MAX_BATCH}, 5 ms window; "
        f"a micro-batch is sorted by prompt length and run {BATCH_SIZE} rows per forward pass); "
        "**unbatched**: max_batch 1. Clients: httpx.AsyncClient, at most *concurrency* "
        "requests in flight; latency is per request, seen by the client (queueing included). "
        "The two servers take turns cell by cell; one run per cell (absolute figures move with the "
        "machine's load).",
        "",
        table(["request", "concurrency", "server", "requests", "requests/s", "p50 s", "p95 s",
               "mean batch", "errors"], rows),
        "",
        f"With more than one client, micro-batching changed throughput by {spans['probability']} for "
        f"probability requests and {spans['explanation']} for explanation requests (batched / unbatched "
        "requests/s; mean batch: jobs per model call, from /health).",
    ])
    return Section("Server", markdown, figures)


if __name__ == "__main__":
    from common import main

    main(run)
