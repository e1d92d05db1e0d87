"""Regressions from a hostile new user's black-box tour (issue 17): a data-losing export, forged chat
turns, an unchecked clsgen.json, corrupt weights and checkpoints, unchecked sizes, silent acceptance,
the server's error contract and a slow path. Commands run through the real entry point (a forked
`clsgen` process, tests/helpers.py `WarmLauncher`); the server runs as a real process on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from helpers import ServerProcess, WarmLauncher

CONFIG = ("model: {name: tiny, dtype: float32}\nlora: {r: 4, alpha: 8}\n"
          "task: {template: 'Note: {text}', system: 'Is the note positive?'}\n"
          "train: {batch_size: 4, max_length: 128, save_every: 1}\n")
POS, NEG = ["improved", "benefit", "better"], ["worse", "harm", "no", "difference"]


def _rows(n: int, split: str) -> list[dict]:
    return [{"id": f"{split}-{i}", "text": " ".join((POS if i % 2 else NEG)[: 2 + i % 2]), "label": i % 2,
             "split": split} for i in range(n)]


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> sha256), links included as their target."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def clsgen():
    with WarmLauncher(env={"CLSGEN_DATA_DIR": os.environ.get("CLSGEN_DATA_DIR", "")}) as launcher:
        yield launcher


@pytest.fixture(scope="module")
def work(tmp_path_factory, clsgen):
    """A folder with toy data, a config and a model trained by `clsgen train` (2 steps, 2 checkpoints)."""
    d = tmp_path_factory.mktemp("hostile")
    (d / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(8, "train") + _rows(8, "validation")))
    (d / "c.yaml").write_text(CONFIG)
    run = clsgen.run(["train", "--config", "c.yaml", "--dataset", "toy.jsonl", "--out", "model", "--max-steps", "2",
                      "--no-progress", "--set", "train.keep_checkpoints=3"], cwd=d)
    assert run.returncode == 0, run.output()
    return d


def _fails_cleanly(run, *words: str) -> str:
    """Exit 2, one `clsgen: error:` message holding `words`, no traceback; returns stderr."""
    err = run.stderr
    assert run.returncode == 2, run.output()
    assert "Traceback" not in err and err.startswith("clsgen: error:"), err
    for w in words:
        assert w in err, (w, err)
    return err


# ------------------------------------------------------------------------------ 1. export


def test_export_refuses_a_foreign_folder_and_names_it(clsgen, work, tmp_path):
    project = tmp_path / "P"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("x\n")
    before = _snapshot(project)
    run = clsgen.run(["export", "--merge", work / "model", "--out", project], cwd=work)
    _fails_cleanly(run, str(project), "did not write", "src")
    assert _snapshot(project) == before
    run = clsgen.run(["export", "--merge", work / "model", "--out", project, "--overwrite"], cwd=work)
    _fails_cleanly(run, "did not write")  # --overwrite is for clsgen's own folders only
    assert _snapshot(project) == before


def test_export_never_writes_over_its_source(clsgen, work):
    before = _snapshot(work / "model")
    for out in ("model", "model/merged", "."):
        run = clsgen.run(["export", "--merge", "model", "--out", out, "--overwrite"], cwd=work)
        _fails_cleanly(run, "the input", "never writes over its input")
    assert _snapshot(work / "model") == before


def test_export_into_the_current_folder_and_overwrite_of_its_own(clsgen, work, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    run = clsgen.run(["export", "--merge", work / "model", "--out", "."], cwd=out)  # crashed before
    assert run.returncode == 0, run.output()
    assert (out / "clsgen.json").is_file() and (out / "model.safetensors").is_file()
    first = _snapshot(out)
    run = clsgen.run(["export", "--merge", work / "model", "--out", out], cwd=work)
    _fails_cleanly(run, "already holds a model written by clsgen", "--overwrite")
    run = clsgen.run(["export", "--merge", work / "model", "--out", out, "--overwrite"], cwd=work)
    assert run.returncode == 0, run.output()
    assert set(_snapshot(out)) == set(first)
    (out / "notes.txt").write_text("mine\n")  # a user's file inside clsgen's folder
    before = _snapshot(out)
    run = clsgen.run(["export", "--merge", work / "model", "--out", out, "--overwrite"], cwd=work)
    _fails_cleanly(run, "notes.txt", "which an export does not write")
    assert _snapshot(out) == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_train_refuses_a_foreign_folder(clsgen, work, tmp_path):
    (tmp_path / "README.md").write_text("my project\n")
    before = _snapshot(tmp_path)
    run = clsgen.run(["train", "--config", work / "c.yaml", "--dataset", work / "toy.jsonl", "--out", ".",
                      "--max-steps", "1", "--no-progress"], cwd=tmp_path)
    _fails_cleanly(run, "did not write", "README.md")
    assert _snapshot(tmp_path) == before
