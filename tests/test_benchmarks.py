"""The benchmark scripts load and follow run_all's contract; the target arithmetic is right.

The benchmarks themselves are measured runs (`python benchmarks/run_all.py`), never timed tests.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def modules():
    sys.path.insert(0, str(BENCH))
    try:
        run_all = importlib.import_module("run_all")
        yield {name: importlib.import_module(name) for name in run_all.BENCHMARKS}
    finally:
        sys.path.remove(str(BENCH))


def test_every_benchmark_has_run_quick(modules):
    assert set(modules) == {"hardware", "training", "inference", "scoring", "server", "synth"}
    for name, module in modules.items():
        assert list(inspect.signature(module.run).parameters) == ["quick"], name


def test_targets_and_sections(modules):
    from common import Section, Target, table

    assert Target("x", 1.0, ">= 1.0").met and not Target("x", 0.99, ">= 1.0").met
    assert Target("x", 1.05, "<= 1.05").met and not Target("x", 1.06, "<= 1.05").met
    text = Section("T", table(["a", "b"], [[1, 0.12345]]), targets=[Target("r", 0.5, ">= 0.9")]).render()
    assert text.startswith("## T") and "| 1 | 0.123 |" in text and "missed" in text


def test_an_only_run_keeps_the_sections_it_did_not_run(modules, tmp_path):
    import json

    run_all = importlib.import_module("run_all")
    out = tmp_path / "benchmarks.md"
    # a file of the older format (no rendered text in the JSON): the sections are read from the Markdown
    out.write_text("# Benchmarks\n\n## Targets\n\n| t |\n\n## Hardware ceiling\n\npeak 101\n\n## Server\n\nold server\n")
    out.with_suffix(".json").write_text(json.dumps({"command": "python benchmarks/run_all.py", "benchmarks": {
        "hardware": {"targets": [], "seconds": 9}, "server": {"targets": [], "seconds": 5}}}))
    kept = run_all._earlier_sections(out, {"server"})
    assert list(kept) == ["hardware"]
    assert kept["hardware"]["title"] == "Hardware ceiling" and "peak 101" in kept["hardware"]["rendered"]
    assert kept["hardware"]["command"] == "python benchmarks/run_all.py"
    assert run_all._earlier_sections(tmp_path / "none.md", set()) == {}
