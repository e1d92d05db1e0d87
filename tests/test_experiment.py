"""The experiment runner end to end on the tiny model: every method, one table, cached reruns."""

from __future__ import annotations

import json
import random

import pytest

from clsgen.config import load_config
from clsgen.errors import ClsgenError
from clsgen.experiment import METHODS, run_experiment

WORDS = ["stable", "discharged", "placebo", "treatment", "outcome", "follow-up", "dose", "week"]


def _write_dataset(path, n: int = 36, seed: int = 0) -> None:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        key = "improved" if label else "worsened"
        text = " ".join(rng.sample(WORDS, 4) + [key] + rng.sample(WORDS, 3))
        split = "test" if i % 6 == 0 else "validation" if i % 6 == 1 else "train"
        rows.append({"id": f"r{i}", "text": text, "label": label, "split": split,
                     "rationale": f"The note says the patient {key}."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _config(tmp_path, **extra):
    data = tmp_path / "notes.jsonl"
    if not data.exists():
        _write_dataset(data)
    overrides = [
        "model.name=tiny", f"data.dataset={data}", "task.template='Note: {text}'", "task.max_prompt_tokens=64",
        "teacher.kind=reference", "teacher.reference_field=rationale",
        "train.max_steps=2", "train.batch_size=4", "train.max_length=96", "train.save_every=1",
        "eval.explain=2", "eval.max_new_tokens=4", "eval.n_bootstrap=20", "eval.batch_size=4",
        f"experiment.out_dir={tmp_path / 'run'}",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, overrides)


def test_experiment_runs_every_method_and_reruns_from_cache(tmp_path):
    logs: list[str] = []
    result = run_experiment(_config(tmp_path), log=logs.append)
    assert list(result.methods) == list(METHODS)
    table = result.table_markdown
    for method in METHODS:
        assert f"| {method} |" in table
        assert (result.out_dir / "eval" / method / "metrics.json").is_file()
        assert result.methods[method]["metrics"]["auroc"]["n"] == 6
    # explanation metrics exist exactly for the methods that generate
    for method in ("clsgen", "classification-only", "generation-only", "prompting"):
        assert result.methods[method]["metrics"]["readability"]["n"] == 2
    for method in ("cnn", "tfidf"):
        assert result.methods[method]["metrics"]["readability"]["value"] is None
    # the threshold and temperature fitted on dev are stored with the CLSGen model for predict/serve
    stored = json.loads((result.out_dir / "models" / "clsgen" / "clsgen.json").read_text())
    evaluated = json.loads((result.out_dir / "eval" / "clsgen" / "metrics.json").read_text())
    assert stored["threshold"] == evaluated["threshold"]
    assert stored["temperature"] == evaluated["temperature"]
    saved = json.loads((result.out_dir / "results.json").read_text())
    assert set(saved["methods"]) == set(METHODS)
    page = (result.out_dir / "results.html").read_text()
    assert "Alignment AUROC" in page and "<dt>model</dt><dd>tiny</dd>" in page and "★" in page
    assert saved["run"]["n_test"] == 6 and saved["run"]["model"] == "tiny"
    assert (result.out_dir / "synth" / "train.jsonl").is_file()

    again: list[str] = []
    second = run_experiment(_config(tmp_path), log=again.append)
    assert sum("done earlier" in line for line in again) == len(METHODS)
    assert second.table_markdown == table


def test_changed_settings_are_refused_instead_of_mixed(tmp_path):
    run_experiment(_config(tmp_path), methods=["tfidf"], log=lambda _: None)
    with pytest.raises(ClsgenError, match="train.lr"):
        run_experiment(_config(tmp_path, **{"train.lr": "1e-3"}), methods=["tfidf"], log=lambda _: None)


def test_unknown_method_is_named(tmp_path):
    with pytest.raises(ClsgenError, match="svm"):
        run_experiment(_config(tmp_path), methods=["svm"], log=lambda _: None)


def test_cli_records_its_command_on_the_results_page(tmp_path, capsys):
    from clsgen.cli import main

    data = tmp_path / "notes.jsonl"
    _write_dataset(data)
    out = tmp_path / "run"
    sets = ["model.name=tiny", f"data.dataset={data}", "task.template=Note: {text}", "eval.n_bootstrap=20"]
    argv = ["experiment", *(a for s in sets for a in ("--set", s)), "--methods", "tfidf", "--out", str(out)]
    assert main(argv) == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["run"]["command"].startswith("clsgen experiment --set model.name=tiny")
    assert "'task.template=Note: {text}'" in saved["run"]["command"]  # quoted as a shell would need it
    page = (out / "results.html").read_text()
    assert "<dt>command</dt><dd><code>clsgen experiment --set" in page and "TF-IDF + LR" in page
