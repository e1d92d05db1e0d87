"""The HTTP request models fuzzed with hypothesis, over real HTTP (uvicorn on 127.0.0.1, tiny model).

Random JSON bodies (wrong types, nesting, huge and non-UTF-8-safe strings, NaN and Infinity, huge and
negative numbers, missing and extra fields, broken `messages` arrays), bytes that are not JSON and
wrong content types go to /v1/classify and /v1/chat/completions. Every answer must be a 2xx with a
correctly shaped body (JSON, or server-sent events) or a 4xx with a JSON error body; a request that
breaks one field gets an error naming that field. Never a 5xx, a traceback, or a hang: every request
has a client timeout, and the server's log must hold no error record.

Bounded: a fixed number of derandomized examples per property (no example database), tiny limits on
the server (3 generated tokens, 2000 characters, 16 KB bodies); the file runs in well under a minute.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from clsgen.server import ChatRequest, ClassifyRequest

from helpers import ThreadServer, sse

MAX_BODY = 16_000
MAX_TEXT = 2_000
MODEL = "tiny-fuzz"
TRIED: Counter = Counter()

FUZZ = settings(max_examples=150, deadline=20_000, database=None, derandomize=True, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.large_base_example, HealthCheck.data_too_large])


# ---------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def server(note_model):
    from clsgen.inference import Predictor
    from clsgen.server import create_app

    model = note_model.eval()
    app = create_app(Predictor(model, max_new_tokens=3, stop_token_ids=[]), max_tokens=3, threads=1,
                     max_body_bytes=MAX_BODY, max_text_chars=MAX_TEXT, model_name=MODEL, request_timeout=20)
    with ThreadServer(app) as srv, httpx.Client(base_url=srv.base, timeout=30) as client:
        srv.client, srv.app = client, app
        yield srv


@pytest.fixture(autouse=True)
def no_server_errors(caplog):
    """No traceback: neither uvicorn ('Exception in ASGI application') nor the model worker
    ('model job failed') may log an error while a property runs."""
    caplog.set_level(logging.WARNING)
    uvicorn_log = logging.getLogger("uvicorn.error")  # uvicorn's loggers do not propagate to the root
    uvicorn_log.addHandler(caplog.handler)
    try:
        yield
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors[:3]]


def post(server, path: str, content: bytes, content_type: str | None = "application/json") -> httpx.Response:
    TRIED[path] += 1
    headers = {} if content_type is None else {"Content-Type": content_type}
    return server.client.post(path, content=content, headers=headers)


def encode(obj) -> bytes:
    """JSON with NaN/Infinity allowed and lone surrogates escaped (as a client in another language may send)."""
    return json.dumps(obj, allow_nan=True, ensure_ascii=True).encode()


# ---------------------------------------------------------------------------- checking answers





CLASSIFY_KEYS = {"id", "model", "probability", "label", "label_name", "threshold", "explanation", "verdict",
                 "truncated"}


def check_classify_body(body: dict, explain: bool) -> None:
    assert set(body) == CLASSIFY_KEYS, body
    assert 0.0 <= body["probability"] <= 1.0 and math.isfinite(body["probability"])
    assert body["label"] in (0, 1) and body["label_name"] == ("NO", "YES")[body["label"]]
    assert body["label"] == int(body["probability"] >= body["threshold"])
    assert body["model"] == MODEL and body["id"].startswith("cls-")
    assert isinstance(body["truncated"], bool) and body["verdict"] in (None, 0, 1)
    assert (body["explanation"] is None) == (not explain), body


def check_chat_completion(body: dict) -> None:
    assert body["object"] == "chat.completion" and body["model"] == MODEL, body
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 0 <= usage["completion_tokens"] <= 3


def check_ok(r: httpx.Response, path: str, request: dict) -> None:
    """A 2xx: the right shape for the endpoint and for `stream`."""
    assert r.status_code == 200, r.text
    if r.headers["content-type"].startswith("text/event-stream"):
        assert request.get("stream") not in (None, False, 0), request
        events = sse(r.text)
        if path == "/v1/classify":
            assert events[0][0] == "probability" and events[-1][0] == "done", events
            assert all(name == "delta" for name, _ in events[1:-1]), events
            check_classify_body(events[-1][1], explain=events[-1][1]["explanation"] is not None)
        else:
            assert events[-1][1] == "[DONE]", events
            chunks = [data for _, data in events[:-1]]
            assert all(c["object"] == "chat.completion.chunk" for c in chunks), chunks
            finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
            assert finishes[-1] in ("stop", "length") and set(finishes[:-1]) <= {None}
    else:
        assert r.headers["content-type"].startswith("application/json")
        body = r.json()
        if path == "/v1/classify":
            check_classify_body(body, explain=body["explanation"] is not None)
        else:
            check_chat_completion(body)


def error_of(r: httpx.Response) -> dict:
    """A 4xx with OpenAI's error shape."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code", "param"}, body
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"].strip()
    assert "Traceback" not in err["message"]
    assert err["param"] is None or isinstance(err["param"], str)
    return err


def names(err: dict, field: str) -> bool:
    param = err["param"] or ""
    return param == field or param.startswith(field + ".") or f"'{field}'" in err["message"] or \
        err["message"].startswith(f"{field} ") or f": {field}" in err["message"] or f"{field}:" in err["message"]


def check_any(r: httpx.Response, path: str, request) -> None:
    """Any answer: 2xx with the right shape, or a 4xx whose error names a field of the request (or
    speaks of the body as a whole)."""
    if r.status_code < 300:
        check_ok(r, path, request if isinstance(request, dict) else {})
        return
    err = error_of(r)
    if r.status_code == 422 and err["param"] is not None:
        known = set(ClassifyRequest.model_fields if path == "/v1/classify" else ChatRequest.model_fields)
        sent = set(request) if isinstance(request, dict) else set()
        # a dotted path names a nested field; a key that itself holds a dot is named whole
        assert err["param"] in sent or err["param"].split(".")[0] in known | sent, (err, request)


# ---------------------------------------------------------------------------- strategies

SURROGATES = st.sampled_from(["\ud800", "note \udfff end", "\udbff\udc00x\ud800"])
TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0x80), min_size=1, max_size=40),  # non-ASCII only
    SURROGATES,
    st.integers(MAX_TEXT - 2, MAX_TEXT + 2).map(lambda n: "é" * n),  # around --max-text-chars
    st.sampled_from([MAX_BODY, 3 * MAX_BODY]).map(lambda n: "x" * n),  # beyond --max-body-bytes
)
NUMBER = st.one_of(st.integers(), st.integers(min_value=-(2**80), max_value=2**80),
                   st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, -1, 1, 2, 1.5, 1e308]))
LEAF = st.one_of(st.none(), st.booleans(), NUMBER, TEXT)
JSON = st.recursive(LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                    max_size=4), max_leaves=8)
CONTENT_TYPES = st.sampled_from(["application/json", "application/json; charset=utf-8", None, "text/plain",
                                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=zz",
                                 "application/merge-patch+json", "application/xml", "garbage/*;;;"])

CLASSIFY_FIELDS = {"text": TEXT, "fields": st.one_of(st.dictionaries(st.sampled_from(["text", "other", ""]), TEXT,
                                                                     max_size=2), JSON),
                   "explain": st.one_of(st.booleans(), JSON), "stream": st.one_of(st.booleans(), JSON),
                   "max_tokens": st.one_of(st.integers(-5, 10), NUMBER, JSON),
                   "model": st.one_of(st.just(MODEL), TEXT, JSON)}

ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool", "wizard", "", "USER"])
PART = st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}),
                 st.fixed_dictionaries({"type": st.sampled_from(["image_url", "input_audio", "text", 5])},
                                       optional={"text": JSON, "image_url": JSON}),
                 JSON)
MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": ROLES}, optional={"content": st.one_of(TEXT, st.none(), st.lists(PART, max_size=3),
                                                                          JSON), "name": JSON}),
    JSON)
MESSAGES = st.one_of(st.lists(MESSAGE, max_size=4), JSON)
CHAT_FIELDS = {"messages": MESSAGES, "model": st.one_of(st.just(MODEL), TEXT, JSON),
               "max_tokens": st.one_of(st.integers(-5, 10), NUMBER, JSON),
               "max_completion_tokens": st.one_of(st.integers(-5, 10), NUMBER),
               "temperature": st.one_of(st.floats(0, 2), NUMBER, JSON), "top_p": st.one_of(st.floats(0, 1), NUMBER),
               "n": st.one_of(st.integers(-1, 3), JSON), "stream": st.one_of(st.booleans(), JSON),
               "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": st.booleans()}), JSON),
               "stop": st.one_of(TEXT, st.lists(TEXT, max_size=6), JSON),
               "seed": st.one_of(st.integers(), NUMBER, JSON),
               "tools": JSON, "response_format": JSON, "logprobs": JSON, "user": JSON}


def body_of(fields: dict) -> st.SearchStrategy:
    """A JSON object: any subset of the endpoint's fields (valid or not) plus random extra keys."""
    return st.fixed_dictionaries({}, optional=fields).flatmap(
        lambda d: st.dictionaries(st.text(max_size=10), JSON, max_size=2).map(lambda extra: {**extra, **d}))


# ---------------------------------------------------------------------------- properties


@FUZZ
@given(request=body_of(CLASSIFY_FIELDS), content_type=CONTENT_TYPES)
@example(request={".": None}, content_type="application/json")  # a key holding a dot, named whole
def test_classify_random_json_objects(server, request, content_type):
    r = post(server, "/v1/classify", encode(request), content_type)
    check_any(r, "/v1/classify", request)
    media = (content_type or "").split(";")[0]
    if media not in ("application/json", "application/merge-patch+json") and len(encode(request)) <= MAX_BODY:
        assert r.status_code == 415 and "application/json" in error_of(r)["message"]


@FUZZ
@given(request=body_of(CHAT_FIELDS), content_type=st.sampled_from(["application/json", None, "text/plain"]))
def test_chat_random_json_objects(server, request, content_type):
    r = post(server, "/v1/chat/completions", encode(request), content_type)
    check_any(r, "/v1/chat/completions", request)


@FUZZ
@given(path=st.sampled_from(["/v1/classify", "/v1/chat/completions"]), raw=st.one_of(
    st.binary(max_size=300),
    JSON.map(encode),  # any JSON document: arrays, strings, numbers, null
    body_of(CLASSIFY_FIELDS).map(encode).flatmap(lambda b: st.integers(0, max(len(b) - 1, 0)).map(lambda k: b[:k])),
    st.integers(1, 3000).map(lambda depth: b"[" * depth + b"]" * depth),  # deep nesting
    st.integers(1, 3000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
    st.sampled_from([b"", b"\xff\xfe\xfd", b"\xef\xbb\xbf{}", b'{"text": "\xff"}', b"NaN", b"{\"text\": 1e999}"]),
), content_type=CONTENT_TYPES)
def test_bytes_that_are_not_a_request(server, path, raw, content_type):
    """Truncated JSON, random bytes, deep nesting, bare JSON values: a 4xx (or, for a truncation
    that happens to be a valid request, a 2xx), never a 5xx."""
    r = post(server, path, raw, content_type)
    try:
        request = json.loads(raw)
    except (ValueError, RecursionError):
        request = None
    check_any(r, path, request)


def corrupt(base: dict, fields: dict) -> st.SearchStrategy:
    """A valid request with exactly one field replaced by a random (mostly wrong) value."""
    return st.sampled_from(sorted(fields)).flatmap(
        lambda name: st.tuples(st.just(name), fields[name].map(lambda v: {**base, name: v})))


CLASSIFY_BAD = {"text": st.one_of(NUMBER, st.lists(TEXT, max_size=2), st.booleans(), SURROGATES,
                                  st.just(" \n\t"), st.integers(MAX_TEXT + 1, MAX_TEXT + 3).map(lambda n: "é" * n)),
                "fields": st.one_of(NUMBER, TEXT, st.lists(TEXT, max_size=2),
                                    st.fixed_dictionaries({"text": st.one_of(NUMBER, st.none(), SURROGATES)}),
                                    st.fixed_dictionaries({"text": TEXT, "extra": TEXT})),
                "explain": st.one_of(TEXT.filter(lambda s: len(s) > 5), st.floats(1.5, 10), st.lists(LEAF, max_size=2)),
                "max_tokens": st.one_of(st.integers(max_value=0), st.sampled_from([1.5, float("nan"), "many",
                                                                                    float("inf"), [1]])),
                "model": st.one_of(NUMBER, st.lists(TEXT, max_size=2), TEXT.filter(lambda s: s and s != MODEL))}


@FUZZ
@given(case=corrupt({"text": "Stable after surgery.", "explain": False}, CLASSIFY_BAD))
def test_classify_one_bad_field_is_named(server, case):
    field, request = case
    if field == "fields":
        request = {k: v for k, v in request.items() if k != "text"}
    r = post(server, "/v1/classify", encode(request))
    if r.status_code == 413:  # the body limit answers before any field is read
        assert len(encode(request)) > MAX_BODY and error_of(r)["code"] == "body_too_large"
        return
    if r.status_code < 300:
        check_ok(r, "/v1/classify", request)
        return
    err = error_of(r)
    assert names(err, field), (field, request, err)


CHAT_BAD = {"messages": st.one_of(st.just([]), NUMBER, TEXT, st.lists(JSON, min_size=1, max_size=2),
                                  st.lists(st.fixed_dictionaries({"role": st.sampled_from(["wizard", "", 5, None])},
                                                                 optional={"content": TEXT}), min_size=1, max_size=2),
                                  st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": st.one_of(
                                      NUMBER, SURROGATES, st.lists(st.one_of(NUMBER, PART), min_size=1, max_size=2))}),
                                      min_size=1, max_size=2)),
            "max_tokens": st.one_of(st.integers(max_value=0), st.sampled_from([1.5, float("nan"), "many", [2]])),
            "temperature": st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=2.000001),
                                     st.sampled_from([float("nan"), "hot", [0.5]])),
            "top_p": st.one_of(st.floats(max_value=0), st.floats(min_value=1.000001),
                               st.sampled_from([float("nan"), "all"])),
            "n": st.one_of(st.integers(min_value=2), st.integers(max_value=0)),
            "seed": st.one_of(st.integers(min_value=2**64), st.integers(max_value=-(2**63) - 1),
                              st.sampled_from([1.5, "lucky", [7]])),
            "stop": st.one_of(NUMBER, st.lists(TEXT, min_size=5, max_size=8), st.lists(NUMBER, min_size=1, max_size=2)),
            "stream_options": st.one_of(NUMBER, TEXT, st.fixed_dictionaries({"include_usage": st.sampled_from(
                ["maybe", 7, [True]])})),
            "model": st.one_of(NUMBER, TEXT.filter(lambda s: s and s != MODEL))}


@FUZZ
@given(case=corrupt({"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Summarise."}]},
                    CHAT_BAD))
def test_chat_one_bad_field_is_named(server, case):
    field, request = case
    r = post(server, "/v1/chat/completions", encode(request))
    if r.status_code == 413:
        assert len(encode(request)) > MAX_BODY and error_of(r)["code"] == "body_too_large"
        return
    if r.status_code < 300:
        check_ok(r, "/v1/chat/completions", request)
        return
    err = error_of(r)
    assert names(err, field), (field, request, err)


@FUZZ
@given(text=st.text(min_size=1, max_size=60).filter(str.strip), explain=st.booleans(), stream=st.booleans(),
       max_tokens=st.one_of(st.none(), st.integers(1, 10**30)), by_fields=st.booleans())
def test_valid_classify_requests_always_succeed(server, text, explain, stream, max_tokens, by_fields):
    request = {"fields": {"text": text}} if by_fields else {"text": text}
    request.update(explain=explain, stream=stream, model=MODEL)
    if max_tokens is not None:
        request["max_tokens"] = max_tokens
    r = post(server, "/v1/classify", encode(request))
    check_ok(r, "/v1/classify", request)


VALID_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user", "assistant"]),
                                       "content": st.one_of(st.text(max_size=40), st.none(), st.lists(
                                           st.fixed_dictionaries({"type": st.just("text"),
                                                                  "text": st.text(max_size=20)}), max_size=2))})


@FUZZ
@given(messages=st.lists(VALID_MESSAGE, min_size=1, max_size=4), temperature=st.one_of(st.none(), st.floats(0, 2)),
       top_p=st.one_of(st.none(), st.floats(0, 1, exclude_min=True)), stream=st.booleans(),
       seed=st.one_of(st.none(), st.integers(-(2**63), 2**64 - 1)), max_tokens=st.one_of(st.none(), st.integers(1, 10**6)),
       stop=st.one_of(st.none(), st.text(max_size=3), st.lists(st.text(max_size=3), max_size=4)),
       include_usage=st.booleans())
def test_valid_chat_requests_always_succeed(server, messages, temperature, top_p, stream, seed, max_tokens, stop,
                                            include_usage):
    request = {"model": MODEL, "messages": messages, "stream": stream,
               "stream_options": {"include_usage": include_usage}}
    for key, value in (("temperature", temperature), ("top_p", top_p), ("seed", seed), ("max_tokens", max_tokens),
                       ("stop", stop)):
        if value is not None:
            request[key] = value
    r = post(server, "/v1/chat/completions", encode(request))
    check_ok(r, "/v1/chat/completions", request)


# ---------------------------------------------------------------------------- what the fuzzing found

CHAT_OK = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Summarise."}]}


@pytest.mark.parametrize("path, content, content_type, status, param, words", [
    # a seed beyond torch's 64 bits was a 500 (ValueError in torch.manual_seed)
    ("/v1/chat/completions", encode({**CHAT_OK, "temperature": 1, "seed": 2**64}), "application/json", 422, "seed",
     ["seed"]),
    ("/v1/chat/completions", encode({**CHAT_OK, "temperature": 1, "seed": -(2**63) - 1}), "application/json", 422,
     "seed", ["seed"]),
    # a tiny positive temperature overflowed the logits to inf: 500 (RuntimeError in sampling); now greedy
    ("/v1/chat/completions", encode({**CHAT_OK, "temperature": 5e-324}), "application/json", 200, None, []),
    ("/v1/chat/completions", encode({**CHAT_OK, "temperature": 1e-300, "stream": True}), "application/json", 200,
     None, []),
    # a lone surrogate (JSON "\ud800") in a chat message was a 500 (TypeError in the tokenizer)
    ("/v1/chat/completions", encode({**CHAT_OK, "messages": [{"role": "user", "content": "a\ud800b"}]}),
     "application/json", 422, "messages.0.content", ["surrogate"]),
    ("/v1/chat/completions", encode({**CHAT_OK, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "\udfff"}]}]}), "application/json", 422, "messages.0.content", ["surrogate"]),
    ("/v1/classify", encode({"text": "x\ud800", "explain": False}), "application/json", 422, "text", ["surrogate"]),
    ("/v1/classify", b'{"text": "x", "\\ud800": 1}', "application/json", 422, None, ["field name", "surrogate"]),
    # a text part whose text is not a string was reported as a part of the wrong type ('text')
    ("/v1/chat/completions", encode({**CHAT_OK, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}),
     "application/json", 422, "messages", ["string 'text'", "a number"]),
    # invalid JSON named a character position as the field ("param": "1")
    ("/v1/classify", b"{not json", "application/json", 422, None, ["not valid JSON", "character 1"]),
    # a JSON body sent without the JSON content type: "Input should be a valid dictionary"
    ("/v1/classify", encode({"text": "x"}), "text/plain", 415, None, ["Content-Type: application/json", "text/plain"]),
    ("/v1/classify", encode({"text": "x"}), None, 415, None, ["Content-Type: application/json", "has none"]),
    ("/v1/classify", b"[1, 2]", "application/json", 422, None, ["JSON object", "an array"]),
    ("/v1/classify", b"", "application/json", 422, None, ["body is empty"]),
    # bytes that are not UTF-8 and very deep nesting were 400 while docs/serving.md promises 422
    ("/v1/classify", b"[" * 5000 + b"]" * 5000, "application/json", 422, None, ["nested too deeply"]),
    ("/v1/classify", b'{"text": "caf\xe9"}', "application/json", 422, None, ["not valid UTF-8", "byte 13"]),
    ("/v1/classify", encode({"text": "x", "colour": "red"}), "application/json", 422, "colour", ["unknown field 'colour'"]),
])
def test_found_by_fuzzing(server, path, content, content_type, status, param, words):
    r = post(server, path, content, content_type)
    assert r.status_code == status, r.text
    if status == 200:
        check_ok(r, path, json.loads(content))
        return
    err = error_of(r)
    assert err["param"] == param, err
    for word in words:
        assert word in err["message"], (word, err)


def test_messages_the_chat_template_refuses_are_422(server):
    """Many chat templates raise on roles that do not alternate or on a system message (a 500 before)."""
    tok = server.app.state.predictor.model.tokenizer
    saved = tok.chat_template
    tok.chat_template = ("{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation roles must "
                         "alternate user/assistant/user/assistant/...') }}{% endif %}" + saved)
    try:
        body = {**CHAT_OK, "messages": [{"role": "system", "content": "Be brief."}]}
        for stream in (False, True):
            r = post(server, "/v1/chat/completions", encode({**body, "stream": stream}))
            err = error_of(r)
            assert r.status_code == 422 and err["param"] == "messages", err
            assert "chat template refuses" in err["message"] and "must alternate" in err["message"]
    finally:
        tok.chat_template = saved
    assert post(server, "/v1/chat/completions", encode(CHAT_OK)).status_code == 200


def test_the_server_is_healthy_after_the_fuzzing(server, capsys):
    """Runs last in this file: the worker is idle, nothing failed inside it, /health answers."""
    health = server.client.get("/health").json()
    assert health["status"] == "ok" and health["pending"] == 0
    with capsys.disabled():
        print(f"\nfuzz: {sum(TRIED.values())} requests ({dict(TRIED)}); {health['jobs']} reached the model")
