"""The OpenAI-compatible teacher over real HTTP, against a fake server started on 127.0.0.1
(`FakeServer` of tests/fake_openai.py, whose docstring lists the tags that make it misbehave)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from clsgen.errors import ClsgenError
from clsgen.synth import OpenAITeacher, read_synth, synthesize

from fake_openai import GOOD, TASK, FakeServer, examples, teacher

REPO = Path(__file__).resolve().parent.parent


def test_faults_are_retried_counted_and_output_is_complete(tmp_path):
    tags = ["", "", "", "", "[500]", "[timeout]", "[badjson]", "[429]", "[wrong]", "[loop]"]
    exs = examples(tags)
    out = tmp_path / "synth.jsonl"
    with FakeServer(delay=0.15) as server:
        report = synthesize(exs, TASK, teacher(server.url), out, max_attempts=3, progress=False, n_samples=4)

    # concurrency: several requests really overlapped, never more than the limit
    assert 1 < server.max_in_flight <= 3
    # the first attempt is greedy, retries are sampled
    temps = Counter(b["temperature"] for b in server.bodies)
    assert temps[0.0] >= len(exs) and temps[0.7] >= 1
    # 429: the retry waited for Retry-After
    (k429,) = [k for k in server.times if "[429]" in k]
    assert server.times[k429][1] - server.times[k429][0] >= 0.95

    records = read_synth(out)
    assert sorted(r["id"] for r in records) == sorted(ex.id for ex in exs)  # each exactly once
    by_id = {r["id"]: r for r in records}
    for ex, tag in zip(exs, tags):
        r = by_id[ex.id]
        assert r["label"] == ex.label and r["fields"] == ex.fields and r["teacher"] == report.settings_hash
        if tag in ("[wrong]", "[loop]"):  # kept, with no explanation, after every attempt failed
            assert r["explanation"] is None and r["attempts"] == 3
            assert r["rejections"] == ["wrong_verdict" if tag == "[wrong]" else "degenerate"] * 3
            assert len(r["rejected_texts"]) == 3 and r["rejected_texts"][0].endswith("Answer: " + (
                TASK.verbalizers[1 - ex.label] if tag == "[wrong]" else TASK.verbalizers[ex.label]))
        else:
            assert r["explanation"] == GOOD and r["attempts"] == 1
            assert r["text"].endswith(f"Answer: {TASK.verbalizers[ex.label]}")
            assert r["verdict"] == ex.label and r["tokens"] == 25
    assert by_id["ex4"]["faults"] == {"http_5xx": 1}
    assert by_id["ex5"]["faults"] == {"timeout": 1}
    assert by_id["ex6"]["faults"] == {"bad_json": 1}
    assert by_id["ex7"]["faults"] == {"http_429": 1}

    f = report.faults
    assert (f["timeout"], f["http_429"], f["http_5xx"], f["bad_json"], f["connection"]) == (1, 1, 1, 1, 0)
    assert (f["wrong_verdict"], f["degenerate"]) == (3, 3)
    assert report.accepted == 8 and report.written == 10 and report.unfinished == 0
    assert report.per_class["0"]["n"] == 5 and report.per_class["0"]["accepted"] == 4  # ex8 [wrong] is label 0
    assert report.per_class["1"]["accepted"] == 4  # ex9 [loop] is label 1
    assert report.attempts["total_run"] == 8 + 3 + 3 and report.tokens == 14 * 25
    saved = json.loads((tmp_path / "synth.jsonl.report.json").read_text())
    assert saved["per_class"] == report.per_class and saved["faults"] == report.faults
    assert "Answer:" in report.format() and report.samples

    # a rerun has nothing to do and asks nothing
    with FakeServer() as server:
        again = synthesize(exs, TASK, teacher(server.url), out, max_attempts=3, progress=False)
    assert again.skipped == 10 and again.written == 0 and not server.calls
    assert len(out.read_text().splitlines()) == 10


def test_unanswered_examples_get_no_record_and_a_rerun_finishes_them(tmp_path):
    exs = examples(["", "[down]", ""])
    out = tmp_path / "synth.jsonl"
    with FakeServer() as server:
        report = synthesize(exs, TASK, teacher(server.url, max_retries=1), out, progress=False)
    assert report.unfinished == 1 and report.faults["http_5xx"] == 2
    assert sorted(r["id"] for r in read_synth(out)) == ["ex0", "ex2"]
    exs[1].fields["claim"] = "claim 1"  # the same id, now answered (the settings are unchanged)
    with FakeServer() as server:
        report = synthesize(exs, TASK, teacher(server.url), out, progress=False)
    assert report.written == 1 and report.skipped == 2 and report.accepted == 3
    assert sorted(r["id"] for r in read_synth(out)) == ["ex0", "ex1", "ex2"]


def test_a_dead_server_stops_the_run_with_work_saved(tmp_path):
    exs = examples([""] * 2 + ["[down]"] * 8)
    out = tmp_path / "synth.jsonl"
    with FakeServer() as server:
        with pytest.raises(ClsgenError, match="failed 4 requests in a row.*rerun"):
            synthesize(exs, TASK, teacher(server.url, max_retries=0, concurrency=1), out, progress=False,
                       max_consecutive_failures=4)
    assert [r["id"] for r in read_synth(out)] == ["ex0", "ex1"]


# ---------------------------------------------------------------------------- fail fast


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_url_fails_fast_before_any_work(tmp_path):
    out = tmp_path / "synth.jsonl"
    started = time.monotonic()
    with pytest.raises(ClsgenError, match=r"cannot reach the teacher server at http://127\.0\.0\.1:\d+/v1"):
        synthesize(examples(["", ""]), TASK, teacher(f"http://127.0.0.1:{_free_port()}"), out, progress=False)
    assert time.monotonic() - started < 5 and not out.exists()


def test_unknown_model_fails_fast_naming_the_served_ones(tmp_path):
    out = tmp_path / "synth.jsonl"
    with FakeServer(models=("llama-3.1-8b", "qwen")) as server:
        with pytest.raises(ClsgenError, match=r"model 'fake-model'.*not served.*llama-3\.1-8b, qwen"):
            synthesize(examples([""]), TASK, teacher(server.url), out, progress=False)
        assert not server.calls and not out.exists()


def test_missing_or_rejected_api_key_fails_fast(tmp_path, monkeypatch):
    out = tmp_path / "synth.jsonl"
    monkeypatch.delenv("CLSGEN_TEST_KEY", raising=False)
    with FakeServer(key="s3cret") as server:
        with pytest.raises(ClsgenError, match="CLSGEN_TEST_KEY.*not set"):
            synthesize(examples([""]), TASK, teacher(server.url, api_key_env="CLSGEN_TEST_KEY"), out,
                       progress=False)
        monkeypatch.setenv("CLSGEN_TEST_KEY", "wrong")
        with pytest.raises(ClsgenError, match="rejected the API key.*CLSGEN_TEST_KEY"):
            synthesize(examples([""]), TASK, teacher(server.url, api_key_env="CLSGEN_TEST_KEY"), out,
                       progress=False)
        assert not out.exists()
        monkeypatch.setenv("CLSGEN_TEST_KEY", "s3cret")
        report = synthesize(examples([""]), TASK, teacher(server.url, api_key_env="CLSGEN_TEST_KEY"), out,
                            progress=False)
    assert report.accepted == 1


def test_bad_base_url_is_a_clear_error():
    with pytest.raises(ClsgenError, match="not an http"):
        OpenAITeacher("m", "localhost:8000")
    with pytest.raises(ClsgenError, match="base_url"):
        OpenAITeacher("m", None)
    assert OpenAITeacher("m", "http://h:1").base_url == "http://h:1/v1"
    assert OpenAITeacher("m", "https://api.x.com/openai/v1/").base_url == "https://api.x.com/openai/v1"


# ---------------------------------------------------------------------------- kill -9 and resume

_CLI = ("import argparse, sys\n"
        "from clsgen.cli import synth\n"
        "p = argparse.ArgumentParser(); synth.register(p.add_subparsers())\n"
        "args = p.parse_args(sys.argv[1:]); sys.exit(args.func(args))\n")


def test_sigkill_midway_then_rerun_gives_every_example_exactly_once(tmp_path):
    n = 24
    data = tmp_path / "claims.jsonl"
    data.write_text("".join(json.dumps({"id": f"c{i}", "claim": f"claim {i}", "label": i % 2, "split": "train"})
                            + "\n" for i in range(n)))
    out = tmp_path / "run" / "synth.jsonl"
    with FakeServer(delay=0.25) as server:
        cmd = [sys.executable, "-c", _CLI, "synth", "--dataset", str(data), "--set", "task.template=Claim: {claim}",
               "--split", "train", "--teacher", "openai", "--model", "fake-model", "--base-url", server.url,
               "--concurrency", "2", "--out", str(out), "--no-progress"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and len(out.read_bytes().splitlines()) >= 6:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        first = read_synth(out)
        assert 6 <= len(first) < n - 4
        with out.open("ab") as f:  # the worst case of a kill: a half-written line
            f.write(b'{"id": "c99", "label": 1, "explanation": "The ab')
        assert len(read_synth(out)) == len(first)

        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    from clsgen.config import DataConfig, TaskConfig
    from clsgen.datasets import load_dataset

    expected = [ex.id for ex in load_dataset(DataConfig(dataset=str(data)), TaskConfig(template="Claim: {claim}")).train]
    lines = out.read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines]
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids)) == len(expected)
    assert ids[: len(first)] == [r["id"] for r in first]  # old records untouched
    assert "cut a torn last line" in done.stdout and "acceptance by class" in done.stdout
    assert all(r["explanation"] == GOOD for r in read_synth(out))
