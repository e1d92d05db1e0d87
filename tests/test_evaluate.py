"""Tests for clsgen.evaluate and the `clsgen evaluate` / `clsgen predict` commands: any classifier,
explanations when it explains, calibration on validation, the three output files."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np
import pytest

from clsgen.backbones import tiny_model
from clsgen.cli import main
from clsgen.data import Example
from clsgen.errors import ClsgenError
from clsgen.estimator import ClsgenClassifier
from clsgen.evaluate import evaluate
from clsgen.inference import Predictor
from clsgen.metrics import apply_temperature, choose_threshold, compute_metrics, fit_temperature, logit
from clsgen.model import DualHeadModel
from clsgen.task import Task

from helpers import save_tiny_classifier

TASK = Task(name="toy", system="Is the note positive?", template="Note: {text}", verbalizers=("NO", "YES"))
PAIR_TASK = Task(name="pair", system="Check the claim.", template="Claim: {claim}\nAbstract: {abstract}",
                 verbalizers=("FALSE", "TRUE"))
SECRET = "Patient Jane Roe"



def _examples(n: int, seed: int = 0, prefix: str = "t") -> list[Example]:
    rng = np.random.default_rng(seed)
    return [Example(f"{prefix}{i}", {"text": f"{SECRET} note {i} score {rng.normal():.3f}"}, label=int(i % 3 == 0))
            for i in range(n)]


class Scorer:
    """A plain classifier (no explanations): an overconfident noisy score of the label."""

    name = "scorer"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, train, validation):
        return self

    def predict_proba(self, examples):
        rng = np.random.default_rng(zlib.crc32(" ".join(ex.id for ex in examples).encode()))
        z = np.array([(2.0 if ex.label else -2.0) for ex in examples]) + rng.normal(0, 2.0, len(examples))
        return 1 / (1 + np.exp(-3 * z))


class Talker(Scorer):
    """A classifier that also explains; its verdict agrees with the label on most rows."""

    name = "talker"
    task = TASK

    def __init__(self):
        super().__init__()
        self.explained: list[str] = []

    def explain(self, examples, max_new_tokens=256):
        self.explained.extend(ex.id for ex in examples)
        out = []
        for i, ex in enumerate(examples):
            if i % 4 == 3:
                out.append("I am not sure.")  # no verdict line
            else:
                out.append(f"The note reads {'well' if ex.label else 'badly'}.\n\nAnswer: {'YES' if ex.label else 'NO'}")
        return out


def _read(out: Path):
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "metrics.json").read_text()), (out / "report.html").read_text()


def test_any_classifier_without_explanations(tmp_path):
    examples = _examples(30)
    result = evaluate(Scorer(), examples, tmp_path, n_bootstrap=50)
    rows, metrics, report = _read(tmp_path)
    assert len(rows) == 30 and [r["id"] for r in rows] == [ex.id for ex in examples]
    assert metrics["n_explained"] == 0 and not metrics["can_explain"]
    assert metrics["threshold"] == 0.5 and metrics["threshold_source"] == "default 0.5"
    assert metrics["metrics"]["readability"]["value"] is None and metrics["metrics"]["auroc"]["n"] == 30
    expected = compute_metrics([ex.label for ex in examples], Scorer().predict_proba(examples), 0.5, n_boot=50)
    assert metrics["metrics"]["auroc"] == expected["auroc"].to_dict()
    assert result.metrics["f1"] == expected["f1"]
    assert "fields" not in rows[0] and SECRET not in report and SECRET not in (tmp_path / "predictions.jsonl").read_text()
    assert report.count("data:image/png;base64,") == 4


def test_explainer_gets_explanation_metrics_on_the_explained_rows(tmp_path):
    examples = _examples(30)
    talker = Talker()
    evaluate(talker, examples, tmp_path, explain=12, n_bootstrap=50, show_inputs=True)
    rows, metrics, report = _read(tmp_path)
    assert len(talker.explained) == 12 and metrics["n_explained"] == 12
    explained = [r for r in rows if r["explained"]]
    assert {r["id"] for r in explained} == set(talker.explained)
    assert sum(r["label"] for r in explained) == 4  # stratified: 1 in 3 positive
    m = metrics["metrics"]
    assert m["readability"]["n"] == 12 and m["inconsistency_rate"]["n"] == 12
    assert m["alignment_kappa"]["n"] == 9  # rows with a verdict
    assert m["auroc"]["n"] == 30
    verdict_of = {r["id"]: r["verdict"] for r in explained}
    assert all(verdict_of[i] is None for i in talker.explained[3::4])
    assert explained[0]["explanation"].startswith("The note reads")
    assert rows[0]["fields"]["text"].startswith(SECRET) and SECRET in report


def test_validation_calibrates_any_classifier_and_reports_before_and_after(tmp_path):
    examples, validation = _examples(40), _examples(40, seed=1, prefix="v")
    clf = Scorer()
    result = evaluate(clf, examples, tmp_path, validation=validation, n_bootstrap=0, explain=0)
    p_val = clf.predict_proba(validation)
    y_val = [ex.label for ex in validation]
    t = fit_temperature(y_val, logit(p_val))
    assert result.temperature == pytest.approx(t)
    assert result.threshold == choose_threshold(y_val, apply_temperature(logit(p_val), t))
    p_test = clf.predict_proba(examples)
    np.testing.assert_allclose([r["probability"] for r in result.predictions],
                               apply_temperature(logit(p_test), t))
    assert result.metrics_uncalibrated is not None
    assert result.summary["threshold_uncalibrated"] == choose_threshold(y_val, p_val)
    assert result.metrics["brier"].value < result.metrics_uncalibrated["brier"].value  # it was overconfident
    report = (tmp_path / "report.html").read_text()
    assert "uncalibrated" in report
    no_temp = evaluate(clf, examples, tmp_path / "b", validation=validation, n_bootstrap=0, calibrate=False)
    assert no_temp.temperature is None and no_temp.threshold == choose_threshold(y_val, p_val)


def test_bad_calls_give_clear_errors(tmp_path):
    with pytest.raises(ClsgenError, match="no examples"):
        evaluate(Scorer(), [], tmp_path)
    with pytest.raises(ClsgenError, match="no label"):
        evaluate(Scorer(), [Example("a", {"text": "x"})], tmp_path)
    with pytest.raises(ClsgenError, match="threshold_method"):
        evaluate(Scorer(), _examples(3), tmp_path, threshold_method="median")

    class Broken(Scorer):
        def predict_proba(self, examples):
            return np.full(len(examples) + 1, 0.5)

    with pytest.raises(ClsgenError, match="returned 4 values for 3"):
        evaluate(Broken(), _examples(3), tmp_path)


# ------------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_classifier(TASK, tmp_path_factory.mktemp("eval") / "model")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "toy.jsonl"
    rows = [{"id": ex.id, "text": ex.fields["text"], "label": ex.label,
             "split": "validation" if i < 12 else "test"} for i, ex in enumerate(_examples(24))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_clsgen_classifier_end_to_end(tiny_dir, tmp_path):
    clf = ClsgenClassifier(Predictor.from_pretrained(tiny_dir, max_new_tokens=6, batch_size=4))
    result = evaluate(clf, _examples(8), tmp_path, explain=4, max_new_tokens=5, n_bootstrap=20)
    assert result.summary["n_explained"] == 4 and result.threshold == clf.threshold
    assert result.summary["threshold_source"] == "classifier"
    assert all(set(r) >= {"id", "probability", "prediction", "explained"} for r in result.predictions)
    np.testing.assert_allclose([r["probability"] for r in result.predictions], clf.positive_proba(_examples(8)))


def test_evaluate_command(tiny_dir, data_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["evaluate", "--model", str(tiny_dir), "--dataset", str(data_file), "--out", str(out),
                 "--explain", "3", "--max-new-tokens", "4", "--n-bootstrap", "20"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows, metrics, report = _read(out)
    assert len(rows) == 12 and metrics["n_explained"] == 3
    assert metrics["info"]["calibration"] == "validation" and metrics["temperature"] is not None
    assert metrics["metrics_uncalibrated"] is not None and "auroc" in printed and "report" in printed
    assert SECRET not in report
    code = main(["evaluate", "--model", str(tiny_dir), "--dataset", str(data_file), "--out", str(out),
                 "--no-explain", "--calibration", "stored", "--n-bootstrap", "0"])
    _, metrics, _ = _read(out)
    assert code == 0 and metrics["n_explained"] == 0 and metrics["threshold_source"] == "classifier"


def test_evaluate_command_refuses_a_base_model_without_the_flag(data_file, tmp_path, capsys):
    assert main(["evaluate", "--model", "tiny", "--dataset", str(data_file), "--out", str(tmp_path)]) == 2
    assert "--untrained-head" in capsys.readouterr().err


def test_predict_command(tiny_dir, tmp_path, capsys):
    assert main(["predict", "--model", str(tiny_dir), "A short note.", "--max-new-tokens", "3", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {"probability", "label", "threshold", "explanation", "verdict", "agrees"} <= set(d)
    assert d["agrees"] == (d["verdict"] == d["label"])
    assert main(["predict", "--model", str(tiny_dir), "A short note.", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "probability" in out and "the explanation states no clear verdict" in out  # 3 random tokens
    assert main(["predict", "--model", str(tiny_dir), "--field", "text=Another note.", "--no-explain"]) == 0
    assert "label" in capsys.readouterr().out
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"id": "a", "text": "one"}\n{"id": "b", "text": "two"}\n')
    assert main(["predict", "--model", str(tiny_dir), "--input", str(inputs), "--json", "--no-explain"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["id"] for x in lines] == ["a", "b"] and all(x["text"] is None for x in lines)
    assert main(["predict", "--model", str(tiny_dir), "   "]) == 2
    assert "'text' is empty" in capsys.readouterr().err
    assert main(["predict", "--model", str(tiny_dir)]) == 2
    assert "give exactly one of" in capsys.readouterr().err
    assert main(["predict", "--model", str(tiny_dir), "--field", "txt=oops"]) == 2
    assert "not a field of the task" in capsys.readouterr().err
    assert main(["predict", "--model", str(tiny_dir), "A note.", "--head-verdict"]) == 2  # trained verdict last
    assert "condition_on_head forces the verdict that opens the turn" in capsys.readouterr().err
    # rejection sampling: the random model never states a verdict, so all 3 draws are made, the first kept
    assert main(["predict", "--model", str(tiny_dir), "A short note.", "--max-new-tokens", "3", "--json",
                 "--rejection-samples", "3"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["draws"] == 3 and d["first_verdict"] is None and d["agrees"] is False
    assert main(["predict", "--model", str(tiny_dir), "A note.", "--rejection-samples", "0"]) == 2
    assert "rejection_samples must be >= 1" in capsys.readouterr().err


def test_predict_needs_fields_for_a_multi_field_task(tmp_path, capsys):
    m = DualHeadModel.from_backbone(tiny_model(), PAIR_TASK)
    m.save_pretrained(tmp_path / "pair")
    assert main(["predict", "--model", str(tmp_path / "pair"), "just one text"]) == 2
    err = capsys.readouterr().err
    assert "--field claim=... --field abstract=..." in err
    assert main(["predict", "--model", str(tmp_path / "pair"), "--field", "claim=c"]) == 2
    assert "missing --field abstract" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path / "pair"), "--field", "claim=c", "--field", "abstract=a",
                 "--max-new-tokens", "2", "--json"]) == 0


# ------------------------------------------------------------------------------- embedded, slow


@pytest.mark.slow
def test_embedded_model_evaluates_clinifact_end_to_end(data_dir, tmp_path, capsys):
    """The embedded SmolLM2 with an untrained head on 4 CliniFact test examples, short explanations."""
    os.environ.setdefault("CLSGEN_DATA_DIR", str(data_dir))
    out = tmp_path / "run"
    code = main(["evaluate", "--model", "smollm2-135m", "--untrained-head", "--dataset", "clinifact",
                 "--data-dir", str(data_dir), "--max-eval", "4", "--calibration", "stored",
                 "--max-new-tokens", "12", "--n-bootstrap", "50", "--out", str(out),
                 "--set", "task.max_prompt_tokens=320"])  # real abstracts get truncated: never a crash
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows, metrics, report = _read(out)
    assert len(rows) == 4 and metrics["n_explained"] == 4
    assert all(r["text"] for r in rows)
    assert report.count("data:image/png;base64,") == 4 and "untrained head" in report
    # no wall-clock bound: this shared 2-core machine varies 3x; timings live in benchmarks/


# ------------------------------------------------------------------------------- trackers


def test_evaluation_metrics_and_report_path_reach_the_trackers(tiny_dir, data_file, tmp_path, monkeypatch, capsys):
    from accelerate.tracking import GeneralTracker

    from clsgen import tracking

    class Recorder(GeneralTracker):
        name, requires_logging_directory, main_process_only = "recorder", False, True

        def __init__(self):
            super().__init__()
            self.logged, self.configs = [], []

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            self.configs.append(values)

        def log(self, values, step=None, **kwargs):
            self.logged.append(values)

    recorder = Recorder()
    sent = tracking.log_evaluation([recorder], tmp_path, {"auroc": {"value": 0.8, "low": 0.7, "high": 0.9, "n": 9},
                                                          "flesch": {"value": None, "n": 0}}, tmp_path / "report.html",
                                   prefix="test", config={"model": "m"})
    assert sent == [recorder]
    assert recorder.logged == [{"test/auroc": 0.8, "test/auroc_low": 0.7, "test/auroc_high": 0.9,
                                "test/report": str((tmp_path / "report.html").resolve())}]
    assert recorder.configs == [{"model": "m"}]
    # the evaluate command sends its metrics to the trackers named by train.log_with
    monkeypatch.setattr(tracking, "available", lambda names: [recorder] if list(names) == ["recorder"] else [])
    out = tmp_path / "run"
    code = main(["evaluate", "--model", str(tiny_dir), "--dataset", str(data_file), "--out", str(out),
                 "--no-explain", "--n-bootstrap", "20", "--set", "train.log_with=[recorder]"])
    assert code == 0, capsys.readouterr().err
    last = recorder.logged[-1]
    assert last["test/report"] == str((out / "report.html").resolve())
    assert last["test/auroc"] == pytest.approx(_read(out)[1]["metrics"]["auroc"]["value"])
    assert "sent to" in capsys.readouterr().out


def test_verdict_note_says_when_the_explanation_disagrees():
    from clsgen.cli.predict import verdict_note
    from clsgen.inference import Prediction

    words = ("FALSE", "TRUE")
    agree = Prediction(0.8, 1, 0.5, text="Answer: TRUE", verdict=1)
    disagree = Prediction(0.8, 1, 0.5, text="Answer: FALSE", verdict=0)
    assert "agrees" in verdict_note(agree, words)
    assert verdict_note(disagree, words).startswith("warning: the explanation concludes FALSE")
