"""The real server process: `python -m clsgen.cli serve` on 127.0.0.1 and a free port, called with the
`openai` client and with httpx (streaming read incrementally), then stopped with SIGTERM.

Loopback only; every wait is bounded.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest

from helpers import NOTE_TASK, ServerProcess, talking_model

REPO = Path(__file__).resolve().parent.parent
KEY = "process-test-key-4471"
CONFIDENTIAL = "PATIENT-OKAPI-5520 confidential history"


def tiny_model_dir(path: Path) -> Path:
    """A saved tiny model whose LoRA B weights are random, so that its greedy text varies."""
    return talking_model(NOTE_TASK).save_pretrained(path)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model_dir = tiny_model_dir(root / "tiny-note")
    srv = ServerProcess(model_dir, root / "server.log", "--api-key-env", "CLSGEN_TEST_API_KEY",
                        "--explain-tokens", "6", "--max-tokens", "16", "--threads", "1",
                        env={"CLSGEN_TEST_API_KEY": KEY})
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def test_binds_loopback_and_requires_the_key(server):
    assert f"http://127.0.0.1:{server.port}/" in server.output()
    assert httpx.get(server.base + "/v1/models").status_code == 401
    r = httpx.post(server.base + "/v1/classify", json={"text": CONFIDENTIAL})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    models = httpx.get(server.base + "/v1/models", headers=auth()).json()
    assert models["data"][0]["id"] == "tiny-note"
    assert httpx.get(server.base + "/").status_code == 200


def test_openai_client_chat_completions(server):
    openai = pytest.importorskip("openai", reason="the openai package is a dev dependency (pip install openai)")
    client = openai.OpenAI(base_url=server.base + "/v1", api_key=KEY, max_retries=0, timeout=60)
    assert [m.id for m in client.models.list()] == ["tiny-note"]
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Explain sepsis."}]
    reply = client.chat.completions.create(model="tiny-note", messages=messages, max_tokens=5, temperature=0)
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 5
    text = reply.choices[0].message.content
    assert isinstance(text, str) and text
    stream = client.chat.completions.create(model="tiny-note", messages=messages, max_tokens=5, temperature=0,
                                            stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == text
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=2)


def test_httpx_classify_and_incremental_stream(server):
    with httpx.Client(base_url=server.base, headers=auth(), timeout=60) as c:
        body = c.post("/v1/classify", json={"text": CONFIDENTIAL}).json()
        assert 0 <= body["probability"] <= 1 and body["label_name"] in ("NO", "YES")
        assert isinstance(body["explanation"], str) and body["model"] == "tiny-note"
        fast = c.post("/v1/classify", json={"text": CONFIDENTIAL, "explain": False}).json()
        assert fast["probability"] == pytest.approx(body["probability"], abs=1e-6)
        assert fast["explanation"] is None

        events, first_seen_at = [], None
        with c.stream("POST", "/v1/classify", json={"text": CONFIDENTIAL, "stream": True}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            name = None
            for line in r.iter_lines():
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    events.append((name, json.loads(line[5:])))
                    if first_seen_at is None:
                        first_seen_at = len(events)
        assert events[0][0] == "probability" and events[-1][0] == "done"
        assert events[0][1]["probability"] == pytest.approx(body["probability"], abs=1e-6)
        assert "".join(e["text"] for n, e in events if n == "delta").startswith(events[-1][1]["explanation"])
        assert events[-1][1]["explanation"] == body["explanation"]

        r = c.post("/v1/chat/completions", json={"model": "tiny-note", "max_tokens": 3, "stream": True,
                                                  "messages": [{"role": "user", "content": CONFIDENTIAL}]})
        assert r.text.rstrip().endswith("data: [DONE]")


def test_logs_hold_no_input_text_and_sigterm_stops_cleanly(server):
    httpx.post(server.base + "/v1/classify", json={"text": CONFIDENTIAL, "explain": False}, headers=auth())
    code = server.stop()
    log = server.output()
    assert "classify status=200" in log  # requests are logged ...
    assert "OKAPI" not in log  # ... without their text
    assert "Application shutdown complete" in log
    assert code in (0, -signal.SIGTERM), log[-2000:]  # uvicorn re-raises the signal once shut down
