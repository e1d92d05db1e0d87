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
    result = run_experiment(_config(tmp_path, **{"task.verdict_position": "first"}), log=logs.append)
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
    # head-conditioned decoding of clsgen+consistency's model: agreement forced, so not reported
    forced = result.methods["clsgen+head-verdict"]
    assert "alignment_kappa" not in forced["metrics"] and forced["by_construction"]
    assert forced["metrics"]["readability"]["n"] == 2 and "forced to the head's label" in result.table_markdown
    assert not (result.out_dir / "models" / "clsgen+head-verdict").exists()
    rows = [json.loads(line) for line in (result.out_dir / "eval" / "clsgen+head-verdict" / "predictions.jsonl")
            .read_text().splitlines()]
    assert all(r["verdict"] == r["prediction"] for r in rows if r["explained"])
    # probabilities read from the verdict the explanation states: alignment AUROC 1 by construction, hidden
    for method in ("generation-only", "prompting"):
        r = result.methods[method]
        assert r["by_construction"] == ["alignment_auroc"] and "alignment_auroc" not in r["metrics"]
        assert "inconsistency_rate" in r["metrics"]
    assert "generation-only, prompting: the probability is read from the verdict token" in table
    assert "by_construction" not in result.methods["clsgen"]
    # the dtype each LLM row ran in ('auto' resolves per machine); a table mixing them says so
    assert result.methods["clsgen"]["info"]["dtype"] in ("float32", "bfloat16")
    assert "dtype" not in result.methods["tfidf"]["info"] and "ran in different dtypes" not in table
    from clsgen.datasets import load_dataset
    from clsgen.experiment import results_table

    cfg = _config(tmp_path, **{"task.verdict_position": "first"})
    mixed = {m: {**r, "info": {**r["info"], "dtype": "float32" if m == "clsgen" else "bfloat16"}}
             for m, r in result.methods.items()}
    note = results_table(mixed, cfg, load_dataset(cfg.data, cfg.task))
    assert "ran in different dtypes" in note and "clsgen float32" in note and "prompting bfloat16" in note
    # rejection sampling of the same model: its own figures, the kept draws' agreement measured as usual
    redrawn = result.methods["clsgen+rejection"]
    assert redrawn["metrics"]["draws"]["n"] == 2 and 1 <= redrawn["metrics"]["draws"]["value"] <= 4
    assert "first_draw_inconsistency" in redrawn["metrics"] and "alignment_kappa" in redrawn["metrics"]
    assert "rejection sampling" in table and "first_draw_inconsistency" in table
    rows = [json.loads(line) for line in (result.out_dir / "eval" / "clsgen+rejection" / "predictions.jsonl")
            .read_text().splitlines()]
    assert all(1 <= r["draws"] <= 4 and "first_verdict" in r for r in rows if r["explained"])
    assert not (result.out_dir / "models" / "clsgen+rejection").exists()
    # the tiny model writes no body after the verdict line: nothing for the stance judge (tests/test_stance.py)
    assert "body_stance_auroc" not in table
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
    second = run_experiment(_config(tmp_path, **{"task.verdict_position": "first"}), log=again.append)
    assert sum("done earlier" in line for line in again) == len(METHODS)
    assert second.table_markdown == table


def test_head_conditioned_decoding_is_skipped_with_the_verdict_last(tmp_path):
    logs: list[str] = []
    result = run_experiment(_config(tmp_path), methods=["clsgen+head-verdict", "tfidf"], log=logs.append)
    assert list(result.methods) == ["tfidf"]
    assert any("clsgen+head-verdict] skipped" in line and "verdict_position=first" in line for line in logs)


def test_changed_settings_are_refused_instead_of_mixed(tmp_path):
    run_experiment(_config(tmp_path), methods=["tfidf"], log=lambda _: None)
    with pytest.raises(ClsgenError, match="train.lr"):
        run_experiment(_config(tmp_path, **{"train.lr": "1e-3"}), methods=["tfidf"], log=lambda _: None)


def test_a_run_recorded_before_a_setting_existed_resumes_while_the_setting_keeps_its_default(tmp_path):
    run_experiment(_config(tmp_path), methods=["tfidf"], log=lambda _: None)
    record = tmp_path / "run" / "experiment.json"
    old = json.loads(record.read_text())
    del old["config"]["eval"]["rejection_samples"]  # as an earlier clsgen wrote it
    old["fingerprint"] = "0" * 16
    record.write_text(json.dumps(old))
    logs: list[str] = []
    run_experiment(_config(tmp_path), methods=["tfidf"], log=logs.append)
    assert any("[tfidf] done earlier" in line for line in logs)
    with pytest.raises(ClsgenError, match="eval.rejection_samples"):
        run_experiment(_config(tmp_path, **{"eval.rejection_samples": 2}), methods=["tfidf"], log=lambda _: None)


def test_experiments_may_share_one_trunk_cache_folder(tmp_path):
    run_experiment(_config(tmp_path), methods=["tfidf"], log=lambda _: None)
    logs: list[str] = []
    run_experiment(_config(tmp_path, **{"train.cache_dir": str(tmp_path / "shared-cache")}), methods=["tfidf"],
                   log=logs.append)
    assert any("[tfidf] done earlier" in line for line in logs)


def test_a_committed_results_json_of_the_same_settings_counts_its_methods_as_done(tmp_path):
    first = run_experiment(_config(tmp_path), methods=["tfidf"], log=lambda _: None)
    committed = tmp_path / "committed.json"
    committed.write_text(first.paths["json"].read_text())
    logs: list[str] = []
    again = run_experiment(_config(tmp_path), tmp_path / "fresh", methods=["tfidf", "cnn"], log=logs.append,
                           reuse=committed)
    assert any("[tfidf] metrics reused from" in line for line in logs)
    assert not any("[tfidf] fitting" in line for line in logs)
    assert any("[cnn] fitting" in line for line in logs)  # not in the file: it runs
    assert again.methods["tfidf"]["metrics"] == first.methods["tfidf"]["metrics"]
    assert again.methods["tfidf"]["reused_from"] == str(committed)
    assert json.loads(again.paths["json"].read_text())["run"]["dtype"] in ("float32", "bfloat16")
    other = json.loads(committed.read_text())
    other["run"]["dtype"] = "float16"  # as a run on another machine would record it
    committed.write_text(json.dumps(other))
    logs.clear()
    run_experiment(_config(tmp_path), tmp_path / "third", methods=["tfidf"], log=logs.append, reuse=committed)
    assert any("ran in float16" in line for line in logs)
    assert "metrics from committed.json" in again.paths["html"].read_text()


def test_parallel_runs_of_some_methods_each_assemble_into_one_table(tmp_path):
    one = run_experiment(_config(tmp_path), tmp_path / "a", methods=["tfidf"], log=lambda _: None)
    two = run_experiment(_config(tmp_path), tmp_path / "b", methods=["cnn"], log=lambda _: None)
    logs: list[str] = []
    both = run_experiment(_config(tmp_path), tmp_path / "all", methods=["tfidf", "cnn"], log=logs.append,
                          reuse=[one.paths["json"], two.paths["json"]])
    assert not any("fitting" in line for line in logs)  # nothing runs again
    assert both.methods["tfidf"]["metrics"] == one.methods["tfidf"]["metrics"]
    assert both.methods["cnn"]["metrics"] == two.methods["cnn"]["metrics"]
    assert both.methods["cnn"]["reused_from"] == str(two.paths["json"])


def test_results_of_other_settings_or_unrecorded_settings_are_not_reused(tmp_path):
    first = run_experiment(_config(tmp_path), methods=["tfidf"], log=lambda _: None)
    with pytest.raises(ClsgenError, match="train.lr"):
        run_experiment(_config(tmp_path, **{"train.lr": "1e-3"}), tmp_path / "other", methods=["tfidf"],
                       log=lambda _: None, reuse=first.paths["json"])
    old = json.loads(first.paths["json"].read_text())
    del old["run"]["config"]  # as a results.json written before the settings were recorded
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(ClsgenError, match="does not record its run's settings"):
        run_experiment(_config(tmp_path), tmp_path / "third", methods=["tfidf"], log=lambda _: None,
                       reuse=tmp_path / "old.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ClsgenError, match="not a readable results.json"):
        run_experiment(_config(tmp_path), tmp_path / "fourth", methods=["tfidf"], log=lambda _: None,
                       reuse=tmp_path / "bad.json")


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


def test_the_demo_shows_a_complete_explanation_whose_verdict_agrees(tmp_path):
    from clsgen.cli.experiment import demo_example

    rows = {
        "tfidf": [{"id": "t", "label": 1, "probability": 0.9, "prediction": 1, "explained": False}],
        "clsgen+consistency": [
            {"id": "a", "label": 1, "probability": 0.2, "prediction": 0, "explained": False},
            {"id": "b", "label": 1, "probability": 0.8, "prediction": 1, "explained": True, "verdict": 0,
             "explanation": "Disagrees.", "text": "Answer: FALSE\n\nDisagrees.", "cut_off": False},
            {"id": "c", "label": 0, "probability": 0.1, "prediction": 0, "explained": True, "verdict": 0,
             "explanation": "Cut off in the midd", "text": "Answer: FALSE\n\nCut off in the midd", "cut_off": True},
            {"id": "d", "label": 0, "probability": 0.1, "prediction": 0, "explained": True, "verdict": 0,
             "explanation": "No effect was found.", "text": "Answer: FALSE\n\nNo effect was found.", "cut_off": False},
        ],
    }
    for method, rs in rows.items():
        (tmp_path / "eval" / method).mkdir(parents=True)
        (tmp_path / "eval" / method / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    method, row, stats = demo_example(tmp_path, {"tfidf": {}, "clsgen+consistency": {}})
    assert (method, row["id"], stats) == ("clsgen+consistency", "d", {"explained": 3, "agree": 1})
    rows["clsgen+consistency"].pop()
    (tmp_path / "eval" / "clsgen+consistency" / "predictions.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows["clsgen+consistency"]))
    assert demo_example(tmp_path, {"clsgen+consistency": {}}) is None
