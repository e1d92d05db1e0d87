"""A bounded load test: 200 requests, 16 at a time, against a real uvicorn server on 127.0.0.1.

The server runs in a thread of this process (no second interpreter to start) with the tiny model.
Every request's probability must equal the single-request probability of its own text, and every
explanation the single-request explanation, so no request can have received another's result.
Latency percentiles and throughput are printed.
"""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import numpy as np
import pytest

from helpers import NOTE_TASK, talking_model

N_REQUESTS = 200
CONCURRENCY = 16
N_TEXTS = 50
EXPLAIN_EVERY = 10  # every 10th request also asks for a (4-token) explanation
WALL_LIMIT_S = 600  # a guard against a hang, not a speed test: the machine may be shared and busy


def tiny_predictor():
    from clsgen.inference import Predictor

    model = talking_model(NOTE_TASK).eval()
    return Predictor(model, max_new_tokens=4, stop_token_ids=[])


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def test_load_200_requests_16_concurrent(capsys, live_server):
    import torch

    from clsgen.server import create_app

    pred = tiny_predictor()
    texts = [f"Discharge note {i}: " + " ".join(random.Random(i).choice(
        ["sepsis", "stable", "home", "hospice", "fracture", "improving", "dialysis", "frail"])
        for _ in range(3 + i % 11)) for i in range(N_TEXTS)]
    order = [texts[i % N_TEXTS] for i in range(N_REQUESTS)]
    random.Random(0).shuffle(order)
    explain = [i % EXPLAIN_EVERY == 0 for i in range(N_REQUESTS)]

    def references():  # one request at a time, through the Python API
        single = {t: float(pred.predict_proba([t])[0]) for t in texts}
        explained = {t: pred.predict([t])[0].explanation for t, e in zip(order, explain, strict=True) if e}
        return single, explained

    # one torch thread, as the server below: on a busy 2-core machine a 2-thread OpenMP pool can
    # be ~100x slower for a tiny model than one thread
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single, single_explanation = references()
    finally:
        torch.set_num_threads(saved)

    app = create_app(pred, max_queue=64, batch_window_ms=5, max_batch=16, max_tokens=8, request_timeout=30,
                     threads=1)

    async def run(base):
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        gate = asyncio.Semaphore(CONCURRENCY)
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
            async def one(i):
                async with gate:
                    started = time.perf_counter()
                    r = await client.post("/v1/classify", json={"text": order[i], "explain": explain[i],
                                                                "max_tokens": 4})
                    return i, r.status_code, r.json(), time.perf_counter() - started

            began = time.perf_counter()
            results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(N_REQUESTS))), WALL_LIMIT_S)
            wall = time.perf_counter() - began
            health = (await client.get("/health")).json()
            return results, wall, health

    results, wall, health = asyncio.run(run(live_server(app).base))

    latencies = [lat for *_, lat in results]
    errors = [(i, status, body) for i, status, body, _ in results if status != 200]
    assert not errors, errors[:3]
    for i, _, body, _ in results:
        assert body["probability"] == pytest.approx(single[order[i]], abs=1e-5), (i, order[i])
        if explain[i]:
            assert body["explanation"] == single_explanation[order[i]], (i, order[i])
        else:
            assert body["explanation"] is None
    assert health["jobs"] == N_REQUESTS and health["rejected"] == 0
    assert health["largest_batch"] > 1  # requests really were batched together

    with capsys.disabled():
        print(f"\nload test: {N_REQUESTS} requests, {CONCURRENCY} concurrent, tiny model, loopback: "
              f"p50 {percentile(latencies, 50) * 1000:.0f} ms, p95 {percentile(latencies, 95) * 1000:.0f} ms, "
              f"p99 {percentile(latencies, 99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms, "
              f"{N_REQUESTS / wall:.0f} requests/s; {health['batches']} batches "
              f"(mean {health['jobs'] / health['batches']:.1f}, largest {health['largest_batch']})")


def test_a_client_that_hangs_up_stops_its_generation(live_server):
    """Closing a stream early cancels the model work: the worker is free again at once, not after
    the thousands of tokens the request asked for."""
    from clsgen.server import create_app

    app = create_app(tiny_predictor(), max_tokens=5000, threads=1)
    batcher = app.state.batcher
    requests = [("/v1/classify", {"text": "a long story", "stream": True, "max_tokens": 3000}),
                ("/v1/chat/completions", {"messages": [{"role": "user", "content": "talk"}], "stream": True,
                                          "max_tokens": 3000, "temperature": 0})]
    with httpx.Client(base_url=live_server(app).base, timeout=30) as client:
        for path, body in requests:
            started = time.monotonic()
            with client.stream("POST", path, json=body) as r:
                assert r.status_code == 200
                for n, _ in enumerate(r.iter_lines()):
                    if n >= 10:
                        break
            # the bound scales with this machine's speed now: reading ~10 events took `first`; the 3000
            # tokens asked for would take ~100x as long, so a free worker within 20x that (and at least
            # 5 s) means the generation was stopped, however busy the machine is
            first = time.monotonic() - started
            deadline = time.monotonic() + max(5.0, 20 * first)
            while batcher.pending and time.monotonic() < deadline:
                time.sleep(0.02)
            assert batcher.pending == 0, (path, first)
        assert client.post("/v1/classify", json={"text": "next", "explain": False}).status_code == 200
