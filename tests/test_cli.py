"""Tests for the `clsgen` command: in-process through `clsgen.cli.main`, and as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clsgen import __version__
from clsgen.cli import main

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = "task.template=Note: {text}"


def _run(capsys, *argv):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse: --help, --version, usage errors
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def _subprocess(*argv, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "clsgen.cli", *map(str, argv)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


def _stats(capsys, *argv):
    code, out, err = _run(capsys, "data", "stats", *argv, "--no-tokens", "--json")
    assert code == 0, err
    return json.loads(out)


def test_version_and_help(capsys):
    code, out, _ = _run(capsys, "--version")
    assert code == 0 and out.strip() == f"clsgen {__version__}"
    code, out, _ = _run(capsys, "--help")
    assert code == 0 and "usage: clsgen" in out and "data" in out and "generate" in out
    code, out, _ = _run(capsys, "data", "stats", "--help")
    assert code == 0 and "--no-tokens" in out and "--split-scheme" in out and "--set" in out
    code, out, _ = _run(capsys)  # no command: the help, and a non-zero code
    assert code == 2 and "usage: clsgen" in out


HEAVY_MODULES = ("torch", "transformers", "peft", "accelerate", "fastapi", "sklearn", "pandas")


def test_help_imports_no_heavy_library():
    """`clsgen --help` (and each command's help) builds every parser without importing torch or the
    other heavy libraries: the commands import them when they run."""
    script = ("import sys, contextlib, io\n"
              "from clsgen.cli import build_parser, main\n"
              "build_parser().format_help()\n"
              "for argv in (['--help'], ['train', '--help'], ['serve', '--help'], ['generate', '--help']):\n"
              "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
              "        main(argv)\n"
              f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"the CLI's help imported {done.stdout.strip()}"


def test_usage_error_exit_code(capsys):
    code, _, err = _run(capsys, "data", "stats", "clinifact", "--split-scheme", "random")
    assert code == 2 and "invalid choice" in err


def test_data_stats_clinifact(capsys, data_dir):
    stats = _stats(capsys, "clinifact", "--data-dir", data_dir)
    assert stats["dataset"] == "clinifact"
    splits = stats["splits"]
    assert [splits[s]["n"] for s in ("train", "validation", "test")] == [1260, 316, 394]
    assert [splits[s]["positives"] for s in ("train", "validation", "test")] == [366, 83, 113]
    assert splits["train"]["negatives"] == 894
    assert stats["trials_shared_train_test"] == 150
    assert "prompt_tokens" not in splits["train"]


def test_data_stats_flags(capsys, data_dir):
    stats = _stats(capsys, "clinifact", "--data-dir", data_dir, "--split-scheme", "trial-disjoint")
    assert stats["trials_shared_train_test"] == 0
    assert sum(s["n"] for s in stats["splits"].values()) == 1970
    stats = _stats(capsys, "clinifact", "--data-dir", data_dir, "--binarization", "evidence-vs-inconclusive")
    assert [s["n"] for s in stats["splits"].values()] == [628, 150, 167]
    stats = _stats(capsys, "--set", "data.dataset=clinifact", "--set", f"data.data_dir={data_dir}",
                   "--set", "data.max_train=100")
    assert stats["splits"]["train"]["n"] == 100


def test_data_stats_config_file(capsys, data_dir, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"data:\n  dataset: clinifact\n  data_dir: {data_dir}\n  max_eval: 40\n")
    stats = _stats(capsys, "--config", cfg)
    assert stats["splits"]["test"]["n"] == 40 and stats["splits"]["train"]["n"] == 1260


def test_data_stats_table(capsys, data_dir):
    code, out, err = _run(capsys, "data", "stats", "clinifact", "--data-dir", data_dir, "--no-tokens")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("dataset: clinifact")
    assert lines[2].split() == ["train", "1260", "366", "894", "29.0"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("name, content, row, field, needle", [
    ("nocol.csv", "id,label\n1,yes\n2,no\n", 1, "text", "missing field"),
    ("seven.csv", "id,text,label\n1,fine,yes\n2,also fine,7\n", 2, "label", "label '7'"),
    ("empty.jsonl", '{"id": 1, "text": "ok", "label": 1}\n{"id": 2, "text": "  ", "label": 0}\n', 2, "text",
     "empty text"),
    ("cut.jsonl", '{"id": 1, "text": "ok", "label": 1}\n{"id": 3, "text": "ab', 2, None, "not valid JSON"),
])
def test_bad_user_files_give_one_clear_message(capsys, tmp_path, name, content, row, field, needle):
    path = _write(tmp_path / name, content)
    code, out, err = _run(capsys, "data", "stats", path, "--no-tokens", "--set", TEMPLATE)
    assert code == 2
    assert "Traceback" not in err and out == ""
    assert err.startswith("clsgen: error: ") and err.count("clsgen: error") == 1
    where = f"{path}, row {row}" + (f", field '{field}'" if field else "")
    assert where in err and needle in err


def test_config_errors_give_exit_2(capsys, tmp_path, data_dir):
    code, _, err = _run(capsys, "data", "stats", "clinifact", "--data-dir", data_dir, "--no-tokens",
                        "--set", "train.lr=fast", "--set", "train.epochs_=2")
    assert code == 2 and "Traceback" not in err
    assert "train.lr" in err and "train.epochs_" in err and "2 problems" in err
    code, _, err = _run(capsys, "data", "stats", "--config", tmp_path / "none.yaml", "--no-tokens")
    assert code == 2 and "none.yaml" in err


def test_missing_dataset_and_template(capsys, tmp_path):
    code, _, err = _run(capsys, "data", "stats", tmp_path / "nothing.jsonl", "--no-tokens", "--set", TEMPLATE)
    assert code == 2 and "nothing.jsonl" in err and "neither a built-in dataset" in err
    path = _write(tmp_path / "ok.jsonl", '{"id": 1, "claim": "a", "label": 1}\n')
    code, _, err = _run(capsys, "data", "stats", path, "--no-tokens")
    assert code == 2 and "task.template" in err  # no 'text' column: '{text}' cannot be the default


def test_user_file_stats(capsys, tmp_path):
    rows = [{"id": i, "text": f"note {i}", "label": i % 2, "split": "train" if i < 8 else "test"} for i in range(10)]
    path = _write(tmp_path / "notes.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    stats = _stats(capsys, path, "--set", TEMPLATE)
    assert stats["dataset"] == "notes"
    assert {s: v["n"] for s, v in stats["splits"].items()} == {"train": 7, "validation": 1, "test": 2}


def test_data_stats_with_tiny_tokenizer(capsys, tmp_path):
    rows = [{"id": i, "text": "word " * (5 + 40 * i), "label": i % 2} for i in range(12)]
    path = _write(tmp_path / "long.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = _run(capsys, "data", "stats", path, "--model", "tiny", "--json", "--set", TEMPLATE,
                          "--set", "task.max_prompt_tokens=64")
    assert code == 0, err
    tokens = json.loads(out)["splits"]["train"]["prompt_tokens"]
    assert tokens["p100"] <= 64 and tokens["truncated"] > 0 and tokens["p5"] < tokens["p100"]


def test_generate(capsys):
    code, _, err = _run(capsys, "generate", "   ")
    assert code == 2 and "prompt is empty" in err
    code, out, err = _run(capsys, "generate", "Hello", "--model", "tiny", "--max-new-tokens", "5")
    assert code == 0, err
    code, _, err = _run(capsys, "generate", "Hello", "--model", "/nonexistent/model")
    assert code == 2 and "/nonexistent/model" in err and "Traceback" not in err


def test_real_subprocess(tmp_path):
    proc = _subprocess("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"clsgen {__version__}"
    path = _write(tmp_path / "cut.jsonl", '{"id": 1, "text": "ok", "label": 1}\n{"id": 3, "text": "ab')
    proc = _subprocess("data", "stats", path, "--no-tokens", "--set", TEMPLATE, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.startswith("clsgen: error: ") and f"{path}, row 2: not valid JSON" in proc.stderr


@pytest.mark.slow
def test_data_stats_pubmedqa_with_tokens(capsys, data_dir, embedded):
    code, out, err = _run(capsys, "data", "stats", "pubmedqa", "--data-dir", data_dir, "--json")
    assert code == 0, err
    stats = json.loads(out)
    splits = stats["splits"]
    assert splits["test"]["n"] == 445 and splits["test"]["positives"] == 276
    assert splits["train"]["n"] + splits["validation"]["n"] == 445
    for s in splits.values():
        t = s["prompt_tokens"]
        assert 100 < t["p5"] <= t["p50"] <= t["p95"] <= t["p100"] <= 768
        assert 0 <= t["truncated"] <= s["n"]


def test_openmp_waits_passively_only_on_a_busy_machine(monkeypatch):
    """Spinning OpenMP threads collapse on a busy CPU and win on an idle one (docs/benchmarks.md)."""
    import os

    from clsgen import cli

    for load, expected in ((0.0, None), (64.0, "PASSIVE")):
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        cli._openmp_waits_passively_when_busy()
        assert os.environ.get("OMP_WAIT_POLICY") == expected
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's setting wins
    cli._openmp_waits_passively_when_busy()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
