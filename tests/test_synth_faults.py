"""The OpenAI-compatible teacher against a misbehaving server: every fault kind is retried, counted
apart in the record and in `<out>.report.json`, and no finished record is lost or written twice.

The fake server is `FakeServer` of tests/fake_openai.py (its docstring lists the tags that make
it misbehave on an example's first request). Loopback only; every wait is bounded.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from clsgen.errors import ClsgenError
from clsgen.synth import read_synth, synthesize
from clsgen.synth.build import FAULT_KINDS

from fake_openai import GOOD, TASK, FakeServer, examples, teacher

# tag -> (the fault kind counted for it, how many times)
FAULTS = {
    "[500]": ("http_5xx", 1), "[503]": ("http_5xx", 1), "[429]": ("http_429", 1),
    "[408]": ("timeout", 1), "[timeout]": ("timeout", 1), "[trickle]": ("timeout", 1),
    "[drop]": ("connection_dropped", 1), "[reset]": ("connection_dropped", 1),
    "[truncated]": ("truncated_body", 1), "[midchunk]": ("truncated_body", 1),
    "[badjson]": ("bad_json", 1), "[html]": ("bad_json", 1),
    "[nochoices]": ("bad_completion", 1), "[nullcontent]": ("bad_completion", 1),
    "[wrong]": ("wrong_verdict", 3),  # a rejection on each of the 3 attempts
}


def test_every_fault_kind_is_retried_and_counted_apart(tmp_path):
    tags = ["", ""] + list(FAULTS)
    exs = examples(tags)
    out = tmp_path / "synth.jsonl"
    started = time.monotonic()
    with FakeServer(delay=0.02) as server:
        report = synthesize(exs, TASK, teacher(server.url, concurrency=4), out, max_attempts=3, progress=False)
    elapsed = time.monotonic() - started
    assert elapsed < 30, elapsed  # the trickling body was cut off at the timeout, not read for 40 s

    records = read_synth(out)
    ids = [r["id"] for r in records]
    assert sorted(ids) == sorted(ex.id for ex in exs) and len(ids) == len(set(ids))  # each exactly once
    by_id = {r["id"]: r for r in records}
    for ex, tag in zip(exs, tags):
        r = by_id[ex.id]
        if tag == "[wrong]":
            assert r["explanation"] is None and r["rejections"] == ["wrong_verdict"] * 3, r
            assert r["faults"] == {}
            continue
        assert r["explanation"] == GOOD and r["attempts"] == 1, (tag, r)  # transport faults cost no attempt
        if tag:
            kind, n = FAULTS[tag]
            assert r["faults"] == {kind: n}, (tag, r["faults"])
        else:
            assert r["faults"] == {}
    expected = {kind: 0 for kind in FAULT_KINDS}
    for kind, n in FAULTS.values():
        expected[kind] += n
    assert report.faults == expected, report.faults
    assert set(report.faults) == set(FAULT_KINDS)
    saved = json.loads((tmp_path / "synth.jsonl.report.json").read_text())
    assert saved["faults"] == expected
    assert report.unfinished == 0 and report.written == len(exs) and report.accepted == len(exs) - 1
    text = report.format()
    for kind in ("timeout 3", "http_429 1", "http_5xx 2", "connection 0", "connection_dropped 2",
                 "truncated_body 2", "bad_json 2", "bad_completion 2", "wrong_verdict 3"):
        assert kind in text, (kind, text)
    print(f"\nteacher faults: {', '.join(f'{k} {v}' for k, v in report.faults.items() if v)} in {elapsed:.1f} s")


def test_a_server_that_stays_down_stops_the_cli_with_exit_2_and_a_rerun_finishes(tmp_path, capsys):
    """The server answers a few examples, then goes away (connections closed, then refused): the run
    stops with one clear message and exit code 2, keeps every finished record, writes the report;
    a rerun against a working server finishes the rest, each example exactly once."""
    from clsgen.cli import main

    n = 60
    data = tmp_path / "claims.jsonl"
    data.write_text("".join(json.dumps({"id": f"c{i}", "claim": f"claim {i}", "label": i % 2, "split": "train"})
                            + "\n" for i in range(n)))
    out = tmp_path / "synth.jsonl"

    def argv(url):
        return ["synth", "--dataset", str(data), "--set", "task.template=Claim: {claim}", "--split", "train",
                "--teacher", "openai", "--model", "fake-model", "--base-url", url, "--concurrency", "2",
                "--set", "teacher.max_retries=0", "--set", "teacher.timeout=5", "--out", str(out), "--no-progress"]

    with FakeServer(delay=0.05) as server:
        def take_down():
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if out.exists() and len(out.read_bytes().splitlines()) >= 5:
                    break
                time.sleep(0.01)
            server.down = True  # open connections: closed without an answer
            server.httpd.shutdown()
            server.httpd.server_close()  # new connections: refused

        watcher = threading.Thread(target=take_down, daemon=True)
        watcher.start()
        capsys.readouterr()
        code = main(argv(server.url))
        watcher.join(30)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("clsgen: error: the teacher failed") and "in a row" in err, err
    assert "rerun the same command" in err and "synth.jsonl.report.json" in err and "Traceback" not in err, err
    first = read_synth(out)
    ids = [r["id"] for r in first]
    assert 5 <= len(ids) < n - 20 and len(ids) == len(set(ids))
    assert all(r["explanation"] == GOOD for r in first)
    report = json.loads((tmp_path / "synth.jsonl.report.json").read_text())
    assert report["written"] == len(first) and report["unfinished"] == report["examples"] - len(first)
    assert report["faults"]["connection"] + report["faults"]["connection_dropped"] >= 20, report["faults"]
    assert any("stopped early" in note for note in report["notes"]), report["notes"]

    with FakeServer() as server:  # back up (at another address: the address is not a setting)
        code = main(argv(server.url))
    assert code == 0, capsys.readouterr().err
    from clsgen.config import DataConfig, TaskConfig
    from clsgen.datasets import load_dataset

    expected = [ex.id for ex in load_dataset(DataConfig(dataset=str(data)), TaskConfig(template="Claim: {claim}")).train]
    lines = out.read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines]
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids)) == report["examples"]
    assert ids[: len(first)] == [r["id"] for r in first]  # the first run's records untouched


def test_a_run_that_stops_keeps_what_is_in_flight(tmp_path):
    """The key is revoked (401) while another request is still being answered: the run sends nothing
    more, waits for that request, saves its record, writes the report, then stops with the message."""
    exs = examples(["[slow]", "[401]", "", "", "", ""])
    out = tmp_path / "synth.jsonl"
    with FakeServer(slow=1.0) as server:
        with pytest.raises(ClsgenError, match=r"(?s)rejected the API key.*report so far"):
            synthesize(exs, TASK, teacher(server.url, concurrency=2, timeout=5), out, progress=False)
        asked = sum(server.calls.values())
    records = read_synth(out)
    assert [r["id"] for r in records] == ["ex0"] and records[0]["explanation"] == GOOD  # in flight, kept
    assert asked == 2  # nothing sent after the refusal
    report = json.loads((tmp_path / "synth.jsonl.report.json").read_text())
    assert report["written"] == 1 and report["unfinished"] == 5
    assert any("rejected the API key" in note for note in report["notes"])


def test_a_redirect_stops_the_run_naming_the_new_address(tmp_path):
    out = tmp_path / "synth.jsonl"
    with FakeServer() as server:
        with pytest.raises(ClsgenError, match=r"redirect to 'https://elsewhere\.example/v1/chat/completions'"):
            synthesize(examples(["[302]"]), TASK, teacher(server.url), out, progress=False)
    assert read_synth(out) == []
