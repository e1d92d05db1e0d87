"""The HTTP API in-process (FastAPI TestClient) on the tiny random model: every endpoint and error.

The tiny model's predictor is built with no stop tokens, so every explanation and chat reply runs to
exactly its token limit: lengths are predictable and greedy outputs can be compared to the Python
API's own results.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from clsgen.batcher import Batcher, QueueFull
from clsgen.errors import ClsgenError
from clsgen.task import Task

from helpers import sse

SECRET = "s3cret-key"
CONFIDENTIAL = "PATIENT-ZEBRA-7731 has a confidential history"


# ---------------------------------------------------------------------------- fixtures and helpers


def predictor(model, **kw):
    from clsgen.inference import Predictor

    return Predictor(model, **{"max_new_tokens": 8, "stop_token_ids": [], **kw})


def off_main(fn, *args):
    """The Python API's answer, computed with one torch thread (as the test servers run: threads=1).
    On a busy 2-core machine a 2-thread OpenMP pool can be ~100x slower for a tiny model."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(saved)


def make_client(model, **kw) -> TestClient:
    from clsgen.server import create_app

    kw.setdefault("model_name", "tiny-note")
    kw.setdefault("max_tokens", 24)
    kw.setdefault("threads", 1)
    return TestClient(create_app(predictor(model), **kw))


@pytest.fixture(scope="module")
def client(note_model):
    with make_client(note_model) as c:
        yield c


@pytest.fixture(scope="module")
def pair_client(pair_model):
    with make_client(pair_model, model_name="tiny-pair") as c:
        yield c





def error_of(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"]
    return body["error"]


class Gated:
    """A predictor whose model calls wait until `gate` is set (to hold the worker busy)."""

    def __init__(self, inner):
        self.inner = inner
        self.gate = threading.Event()
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict(self, items, explain=True):
        self.calls += 1
        assert self.gate.wait(20), "test gate never opened"
        return self.inner.predict(items, explain=explain)


# ---------------------------------------------------------------------------- read-only endpoints


def test_health_models_task(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny-note"
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["tiny-note"]
    assert models["data"][0]["object"] == "model"
    task = client.get("/v1/task").json()
    assert task["fields"] == ["text"] and task["verbalizers"] == ["NO", "YES"]
    assert task["threshold"] == 0.5 and task["max_tokens"] == 24


def test_openapi_schema_lists_every_endpoint(client):
    schema = client.get("/openapi.json").json()
    for path in ("/v1/classify", "/v1/chat/completions", "/v1/models", "/v1/task", "/health"):
        assert path in schema["paths"], path
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert "ClassifyRequest" in schema["components"]["schemas"]
    assert client.get("/docs").status_code == 404  # its page would load a CDN script


def test_unknown_route_and_method_answer_json_errors(client):
    r = client.get("/v1/nope")
    assert r.status_code == 404 and error_of(r)
    r = client.get("/v1/classify")
    assert r.status_code == 405 and error_of(r)


# ---------------------------------------------------------------------------- classify


def test_classify_probability_only_matches_the_python_api(client, note_model):
    text = "Elderly patient, sepsis, discharged to hospice."
    r = client.post("/v1/classify", json={"text": text, "explain": False})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = float(off_main(predictor(note_model).predict_proba, [text])[0])
    assert body["probability"] == pytest.approx(expected, abs=1e-6)
    assert body["label"] == int(expected >= 0.5) and body["label_name"] == ["NO", "YES"][body["label"]]
    assert body["threshold"] == 0.5 and body["model"] == "tiny-note"
    assert body["explanation"] is None and body["verdict"] is None and body["truncated"] is False
    assert body["id"].startswith("cls-")
    # `fields` is the same input as `text` for a one-field task
    r2 = client.post("/v1/classify", json={"fields": {"text": text}, "explain": False})
    assert r2.json()["probability"] == pytest.approx(body["probability"], abs=1e-6)


def test_classify_with_explanation(client, note_model):
    text = "Stable after hip surgery; home with family."
    body = client.post("/v1/classify", json={"text": text, "max_tokens": 5}).json()
    expected = off_main(predictor(note_model, max_new_tokens=5).predict, [text])[0]
    assert body["explanation"] == expected.explanation and body["explanation"]
    assert body["verdict"] == expected.verdict
    assert body["probability"] == pytest.approx(expected.probability, abs=1e-6)


def test_classify_explanation_length_defaults_to_the_predictor_setting(client, note_model):
    text = "Default explanation length."
    body = client.post("/v1/classify", json={"text": text}).json()
    expected = off_main(predictor(note_model).predict, [text])[0]  # max_new_tokens=8
    assert body["explanation"] == expected.explanation
    assert client.get("/v1/task").json()["explain_tokens"] == 8


def test_classify_max_tokens_is_capped(client, note_model):
    text = "Capped explanation length."
    body = client.post("/v1/classify", json={"text": text, "max_tokens": 10_000}).json()
    capped = off_main(predictor(note_model, max_new_tokens=24).predict, [text])[0]  # the server's max_tokens
    assert body["explanation"] == capped.explanation


def test_classify_stream_sends_probability_first_then_deltas_then_done(client, note_model):
    text = "Metastatic cancer, declining, DNR."
    r = client.post("/v1/classify", json={"text": text, "stream": True, "max_tokens": 6})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    names = [name for name, _ in events]
    assert names[0] == "probability" and names[-1] == "done"
    assert set(names[1:-1]) == {"delta"}, names
    expected = off_main(predictor(note_model, max_new_tokens=6).predict, [text])[0]
    first, done = events[0][1], events[-1][1]
    assert first["probability"] == pytest.approx(expected.probability, abs=1e-6)
    assert first["label"] == done["label"] and first["threshold"] == 0.5
    assert "".join(e["text"] for n, e in events if n == "delta") == expected.text
    assert done["explanation"] == expected.explanation and done["id"] == first["id"]


def test_classify_stream_without_explanation(client):
    events = sse(client.post("/v1/classify", json={"text": "x y z", "stream": True, "explain": False}).text)
    assert [n for n, _ in events] == ["probability", "done"]
    assert events[1][1]["explanation"] is None


def test_classify_multi_field_task(pair_client, pair_model):
    fields = {"claim": "Drug X lowers HbA1c.", "article_abstract": "HbA1c fell by 1.2% vs placebo."}
    body = pair_client.post("/v1/classify", json={"fields": fields, "explain": False}).json()
    expected = float(off_main(predictor(pair_model).predict_proba, [fields])[0])
    assert body["probability"] == pytest.approx(expected, abs=1e-6)
    assert body["label_name"] in ("FALSE", "TRUE")
    page_config = pair_client.get("/").text
    assert '"fields": ["claim", "article_abstract"]' in page_config


@pytest.mark.parametrize("payload, words", [
    ({"text": "a note"}, ["2 fields", "claim", "article_abstract"]),
    ({"fields": {"claim": "c"}}, ["missing", "article_abstract"]),
    ({"fields": {"claim": "c", "article_abstract": "a", "extra": "e"}}, ["unknown", "extra"]),
    ({"fields": {"claim": " ", "article_abstract": ""}}, ["empty"]),
    ({}, ["exactly one"]),
    ({"text": "t", "fields": {"claim": "c", "article_abstract": "a"}}, ["exactly one"]),
    ({"fields": {"claim": "c", "article_abstract": "a"}, "colour": "red"}, ["colour"]),
    ({"fields": {"claim": "c", "article_abstract": "a"}, "max_tokens": 0}, ["max_tokens"]),
    ({"fields": {"claim": "c", "article_abstract": "a"}, "model": "gpt-4"}, ["gpt-4", "tiny-pair"]),
])
def test_classify_rejects_bad_requests_with_clear_messages(pair_client, payload, words):
    r = pair_client.post("/v1/classify", json=payload)
    assert r.status_code in (404, 422), r.text
    message = error_of(r)["message"]
    for word in words:
        assert word in message, (word, message)


def test_invalid_json_is_422(client):
    r = client.post("/v1/classify", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "JSON" in error_of(r)["message"]


# ---------------------------------------------------------------------------- chat completions


def chat(client, **kw):
    body = {"model": "tiny-note", "messages": [{"role": "user", "content": "Summarise the note."}], **kw}
    return client.post("/v1/chat/completions", json=body)


def test_chat_completion_openai_shape_and_limits(client):
    r = chat(client, max_tokens=7, temperature=0)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "tiny-note"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 7 and usage["total_tokens"] == usage["prompt_tokens"] + 7
    assert chat(client, max_tokens=7, temperature=0).json()["choices"][0]["message"] == choice["message"]
    # above the cap: clamped to the server's max_tokens (24)
    assert chat(client, max_tokens=5000, temperature=0).json()["usage"]["completion_tokens"] == 24
    assert chat(client, max_completion_tokens=3, temperature=0).json()["usage"]["completion_tokens"] == 3


def test_chat_sampling_is_seeded(client):
    a = chat(client, max_tokens=6, temperature=1.0, seed=7).json()["choices"][0]["message"]["content"]
    b = chat(client, max_tokens=6, temperature=1.0, seed=7).json()["choices"][0]["message"]["content"]
    assert a == b


def test_chat_stream_chunks_join_to_the_full_reply(client):
    full = chat(client, max_tokens=9, temperature=0).json()["choices"][0]["message"]["content"]
    r = chat(client, max_tokens=9, temperature=0, stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert events[-1][1] == "[DONE]"
    chunks = [data for _, data in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "tiny-note" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == full
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == "length" and set(finish[:-1]) == {None}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 9


def test_chat_stop_string_cuts_the_reply(client):
    full = chat(client, max_tokens=12, temperature=0).json()["choices"][0]["message"]["content"]
    stop = full[4:7]
    cut = full.index(stop)
    body = chat(client, max_tokens=12, temperature=0, stop=[stop]).json()
    assert body["choices"][0]["message"]["content"] == full[:cut]
    assert body["choices"][0]["finish_reason"] == "stop"
    streamed = sse(chat(client, max_tokens=12, temperature=0, stop=stop, stream=True).text)
    text = "".join(c["choices"][0]["delta"].get("content", "") for _, c in streamed[:-1] if c["choices"])
    assert text == full[:cut]


def test_chat_beyond_the_model_context_is_422(note_model):
    with make_client(note_model, max_tokens=5000) as c:
        r = chat(c, max_tokens=5000)
    assert r.status_code == 422 and "context of 4096 tokens" in error_of(r)["message"]


def test_chat_accepts_content_parts_and_system_messages(client):
    r = client.post("/v1/chat/completions", json={"model": "tiny-note", "max_tokens": 3, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}]}]})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("change, status, word", [
    ({"model": "gpt-4o"}, 404, "tiny-note"),
    ({"messages": []}, 422, "messages"),
    ({"n": 2}, 422, "n"),
    ({"temperature": 3}, 422, "temperature"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 422, "role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 422, "text"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 422, "stop"),
])
def test_chat_errors(client, change, status, word):
    body = {"model": "tiny-note", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **change}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    assert word in error_of(r)["message"]


# ---------------------------------------------------------------------------- limits and safety


def test_api_key_required_and_no_model_work_without_it(note_model):
    gated = Gated(predictor(note_model))
    gated.gate.set()
    from clsgen.server import create_app

    with TestClient(create_app(gated, api_key=SECRET, model_name="tiny-note", threads=1)) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": SECRET},
                        {"Authorization": f"Basic {SECRET}"}):
            for method, path, body in (("post", "/v1/classify", {"text": "t", "explain": False}),
                                       ("post", "/v1/chat/completions", {"messages": []}),
                                       ("get", "/v1/models", None), ("get", "/v1/task", None)):
                r = c.request(method, path, json=body, headers=headers)
                assert r.status_code == 401, (path, headers, r.status_code)
                assert r.headers["www-authenticate"] == "Bearer"
                assert error_of(r)["type"] == "authentication_error"
        r = c.post("/v1/classify", content=b"{broken", headers={"Content-Type": "application/json"})
        assert r.status_code == 401  # checked before the body is even parsed
        time.sleep(0.05)
        assert gated.calls == 0 and c.app.state.batcher.stats.jobs == 0
        assert c.get("/health").status_code == 200  # probes need no key
        assert c.get("/").status_code == 200  # the page asks for the key itself
        assert '"auth": true' in c.get("/").text
        ok = c.post("/v1/classify", json={"text": "t", "explain": False},
                    headers={"Authorization": f"Bearer {SECRET}"})
        assert ok.status_code == 200 and gated.calls == 1


def test_body_size_limit_is_413_before_any_model_work(note_model):
    with make_client(note_model, max_body_bytes=2000) as c:
        big = {"text": "x" * 3000, "explain": False}
        r = c.post("/v1/classify", json=big)
        assert r.status_code == 413 and "2000 bytes" in error_of(r)["message"]
        # no Content-Length (chunked upload): counted while reading
        r = c.post("/v1/classify", content=iter([b'{"text": "', b"y" * 2500, b'"}']),
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "z" * 3000}]})
        assert r.status_code == 413
        assert c.app.state.batcher.stats.jobs == 0
        assert c.post("/v1/classify", json={"text": "small", "explain": False}).status_code == 200


def test_text_length_limit_is_422_with_the_numbers(note_model, pair_model):
    with make_client(note_model, max_text_chars=100) as c:
        r = c.post("/v1/classify", json={"text": "a" * 101})
        err = error_of(r)
        assert r.status_code == 422 and "101 characters" in err["message"] and "at most 100" in err["message"]
        assert err["code"] == "text_too_long"
        assert c.post("/v1/classify", json={"text": "a" * 100, "explain": False}).status_code == 200
        r = chat(c, messages=[{"role": "system", "content": "s" * 60}, {"role": "user", "content": "u" * 60}])
        assert r.status_code == 422 and "120 characters" in error_of(r)["message"]
    with make_client(pair_model, max_text_chars=100, model_name="tiny-pair") as c:
        r = c.post("/v1/classify", json={"fields": {"claim": "c" * 50, "article_abstract": "a" * 51}})
        assert r.status_code == 422 and "101 characters" in error_of(r)["message"]


def test_queue_limit_answers_503_with_retry_after(note_model):
    from clsgen.server import create_app

    gated = Gated(predictor(note_model))
    app = create_app(gated, max_queue=2, batch_window_ms=0, model_name="tiny-note", threads=1)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            held = [asyncio.create_task(c.post("/v1/classify", json={"text": f"held {i}", "explain": False}))
                    for i in range(2)]
            for _ in range(500):
                if app.state.batcher.pending >= 2:
                    break
                await asyncio.sleep(0.01)
            refused = await c.post("/v1/classify", json={"text": "one too many", "explain": False})
            refused_chat = await c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
            gated.gate.set()
            done = await asyncio.gather(*held)
            after = await c.post("/v1/classify", json={"text": "later", "explain": False})
            return refused, refused_chat, done, after

    try:
        refused, refused_chat, done, after = asyncio.run(scenario())
    finally:
        gated.gate.set()
        app.state.batcher.stop()
    for r in (refused, refused_chat):
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert error_of(r)["code"] == "queue_full"
    assert [r.status_code for r in done] == [200, 200], [r.text for r in done]
    assert after.status_code == 200, after.text
    assert app.state.batcher.stats.rejected == 2


def test_request_timeout_is_504_and_the_server_recovers(note_model):
    from clsgen.server import create_app

    gated = Gated(predictor(note_model))

    with TestClient(create_app(gated, request_timeout=0.3, model_name="tiny-note", threads=1)) as c:
        started = time.monotonic()
        r = c.post("/v1/classify", json={"text": "slow", "explain": False})
        assert r.status_code == 504 and error_of(r)["code"] == "request_timeout"
        assert time.monotonic() - started < 5
        r = c.post("/v1/classify", json={"text": "slow stream", "stream": True})
        assert r.status_code == 504  # before the first event: a plain HTTP error
        gated.gate.set()
        r = c.post("/v1/classify", json={"text": "fast again", "explain": False})
        assert r.status_code == 200


def test_cors_is_off_by_default_and_on_for_listed_origins(client, note_model):
    origin = {"Origin": "http://evil.example"}
    r = client.post("/v1/classify", json={"text": "t", "explain": False}, headers=origin)
    assert "access-control-allow-origin" not in r.headers
    r = client.options("/v1/classify", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    with make_client(note_model, cors_origins=["http://app.example"], api_key=SECRET) as c:
        pre = c.options("/v1/classify", headers={"Origin": "http://app.example",
                                                 "Access-Control-Request-Method": "POST",
                                                 "Access-Control-Request-Headers": "authorization,content-type"})
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "http://app.example"
        r = c.post("/v1/classify", json={"text": "t"}, headers={"Origin": "http://app.example"})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "http://app.example"
        r = c.post("/v1/classify", json={"text": "t", "explain": False},
                   headers={"Origin": "http://evil.example", "Authorization": f"Bearer {SECRET}"})
        assert "access-control-allow-origin" not in r.headers


def _exercise(c):
    c.post("/v1/classify", json={"text": CONFIDENTIAL, "explain": False})
    c.post("/v1/classify", json={"text": CONFIDENTIAL, "stream": True, "max_tokens": 2})
    chat(c, messages=[{"role": "user", "content": CONFIDENTIAL}], max_tokens=2)
    c.post("/v1/classify", json={"text": CONFIDENTIAL * 10})  # too long: 422


def test_inputs_never_logged_unless_asked(note_model, caplog):
    caplog.set_level(logging.DEBUG)
    with make_client(note_model, max_text_chars=200) as c:
        _exercise(c)
    assert "classify status=200" in caplog.text and "chat status=200" in caplog.text
    assert "classify status=422" in caplog.text
    assert "PATIENT-ZEBRA" not in caplog.text
    caplog.clear()
    with make_client(note_model, max_text_chars=200, log_inputs=True) as c:
        _exercise(c)
    assert "PATIENT-ZEBRA" in caplog.text


# ---------------------------------------------------------------------------- page and factory


def test_page_and_static_assets(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    html = r.text
    assert '"fields": ["text"]' in html and "__CLSGEN_CONFIG__" not in html
    for asset in ("/static/app.js", "/static/style.css"):
        a = client.get(asset)
        assert a.status_code == 200 and a.headers["x-content-type-options"] == "nosniff"
        html += a.text
    for external in ("http://", "https://", "//cdn", "@import"):
        assert external not in html, external


def test_page_config_is_escaped(note_model):
    from clsgen.model import DualHeadModel

    task = Task(name="</script><script>alert(1)</script>", system="s", template="{text}", verbalizers=("a", "b"))
    odd = DualHeadModel(note_model.lm, note_model.head, note_model.tokenizer, task)
    with make_client(odd) as c:
        html = c.get("/").text
    assert "<script>alert(1)" not in html and "\\u003c/script\\u003e" in html


def test_create_app_loads_a_model_directory(tmp_path, note_model):
    from clsgen.server import create_app

    note_model.save_pretrained(tmp_path / "my-model")
    with TestClient(create_app(tmp_path / "my-model", threads=1)) as c:
        assert c.get("/v1/models").json()["data"][0]["id"] == "my-model"
        assert c.post("/v1/classify", json={"text": "t", "explain": False}).json()["model"] == "my-model"


def test_create_app_rejects_bad_settings(note_model):
    from clsgen.server import create_app

    with pytest.raises(ClsgenError, match="max_queue must be >= 1.*max_tokens must be >= 1"):
        create_app(predictor(note_model), max_queue=0, max_tokens=0)
    with pytest.raises(ClsgenError, match="api_key is empty"):
        create_app(predictor(note_model), api_key=" ")


def test_cli_serve_reports_a_missing_api_key_variable(capsys, monkeypatch):
    from clsgen.cli import main

    monkeypatch.delenv("CLSGEN_NO_SUCH_KEY", raising=False)
    assert main(["serve", "--model", "/nonexistent", "--api-key-env", "CLSGEN_NO_SUCH_KEY"]) == 2
    assert "CLSGEN_NO_SUCH_KEY" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the batcher itself


def _run_jobs(batcher: Batcher, jobs: list[tuple[str, object, object]], timeout: float = 10):
    async def go():
        with batcher._cond:  # the worker takes no job before all are queued: batches never depend on timing
            submitted = [batcher.submit(kind, item, key) for kind, item, key in jobs]
        return await asyncio.gather(*(Batcher.wait(j, timeout) for j in submitted), return_exceptions=True)

    try:
        return asyncio.run(go())
    finally:
        batcher.stop()


def test_batcher_groups_same_kind_and_key_and_keeps_order():
    seen: list[list] = []

    def handler(jobs):
        seen.append([(j.kind, j.key, j.item) for j in jobs])
        return [j.item * 10 for j in jobs]

    b = Batcher({"a": handler, "b": handler}, window_s=0.05, max_batch=3, batchable=["a"])
    results = _run_jobs(b, [("a", 1, None), ("b", 2, None), ("a", 3, None), ("a", 4, "k"),
                            ("a", 5, None), ("a", 6, None), ("b", 7, None)])
    assert results == [10, 20, 30, 40, 50, 60, 70]
    assert seen[0] == [("a", None, 1), ("a", None, 3), ("a", None, 5)]  # up to max_batch, same key
    assert all(len({(k, key) for k, key, _ in batch}) == 1 for batch in seen)
    assert all(len(batch) == 1 for batch in seen if batch[0][0] == "b")
    assert b.stats.jobs == 7 and b.stats.largest_batch == 3


def test_batcher_isolates_a_failing_item():
    def handler(jobs):
        if any(j.item == "bad" for j in jobs):
            raise ClsgenError("bad input")
        return [j.item.upper() for j in jobs]

    b = Batcher({"a": handler}, window_s=0.05, max_batch=8)
    results = _run_jobs(b, [("a", "x", None), ("a", "bad", None), ("a", "y", None)])
    assert results[0] == "X" and results[2] == "Y"
    assert isinstance(results[1], ClsgenError)


def test_batcher_skips_abandoned_jobs_and_refuses_past_max_queue():
    gate = threading.Event()
    ran: list = []

    def handler(jobs):
        gate.wait(10)
        ran.extend(j.item for j in jobs)
        return [None for _ in jobs]

    b = Batcher({"a": handler}, window_s=0, max_batch=1, max_queue=3)

    async def go():
        first = b.submit("a", 1)
        await asyncio.sleep(0.05)  # the worker holds job 1
        second, third = b.submit("a", 2), b.submit("a", 3)
        with pytest.raises(QueueFull) as refused:
            b.submit("a", 4)
        assert refused.value.retry_after >= 1
        second.cancel()
        gate.set()
        await Batcher.wait(first, 5)
        await Batcher.wait(third, 5)

    try:
        asyncio.run(go())
    finally:
        b.stop()
    assert ran == [1, 3] and b.stats.skipped == 1 and b.stats.rejected == 1


def test_concurrent_probability_requests_are_batched_and_keep_their_own_results(note_model):
    from clsgen.server import create_app

    texts = [f"note number {i} " + "word " * (i % 7) for i in range(24)]
    expected = off_main(predictor(note_model).predict_proba, texts)
    app = create_app(predictor(note_model), batch_window_ms=30, max_batch=8, model_name="tiny-note",
                     threads=1)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            rs = await asyncio.gather(*(c.post("/v1/classify", json={"text": t, "explain": False}) for t in texts))
            return [r.json()["probability"] for r in rs]

    try:
        got = asyncio.run(scenario())
    finally:
        app.state.batcher.stop()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert app.state.batcher.stats.largest_batch > 1
