"""Tests for clsgen.calibration: threshold and temperature fitted on dev, stored in clsgen.json, used
by the Predictor; and the `clsgen calibrate` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clsgen.backbones import tiny_model
from clsgen.calibration import (
    Calibration,
    apply_calibration,
    fit_calibration,
    format_calibration,
    store_calibration,
)
from clsgen.cli import main
from clsgen.data import Example
from clsgen.errors import ClsgenError
from clsgen.estimator import calibrate_predictor
from clsgen.inference import Predictor
from clsgen.metrics import apply_temperature, choose_threshold, ece, fit_temperature
from clsgen.model import DualHeadModel
from clsgen.model_io import META_FILE
from clsgen.task import Task

TASK = Task(name="toy", system="Is the note positive?", template="Note: {text}", verbalizers=("NO", "YES"))
WORDS = ["improved", "worse", "stable", "discharged", "placebo", "treatment", "outcome", "significant"]



def _overconfident(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z), reported as 4 z: a model four times too confident."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return y, 4 * z


def test_temperature_first_then_threshold_on_calibrated_probabilities():
    y, logits = _overconfident()
    cal = fit_calibration(y, logits)
    assert cal.temperature == pytest.approx(fit_temperature(y, logits))
    assert 3.0 < cal.temperature < 5.5
    assert cal.threshold == choose_threshold(y, apply_temperature(logits, cal.temperature), "max_f1")
    assert cal.n == 400 and cal.positives == int(y.sum()) and cal.method == "max_f1"
    # before: T = 1, threshold 0.5; after: fitted
    assert cal.before["ece"].value == pytest.approx(ece(y, apply_temperature(logits, 1.0)))
    assert cal.after["ece"].value < cal.before["ece"].value
    assert cal.after["brier"].value < cal.before["brier"].value
    assert cal.after["auroc"].value == pytest.approx(cal.before["auroc"].value)  # monotone
    assert cal.after["f1"].value >= cal.before["f1"].value - 1e-12
    text = format_calibration(cal)
    assert "before" in text and "ece" in text


def test_threshold_options():
    y, logits = _overconfident(seed=1)
    youden = fit_calibration(y, logits, method="youden")
    assert youden.threshold == choose_threshold(y, apply_temperature(logits, youden.temperature), "youden")
    fixed = fit_calibration(y, logits, method="fixed", fixed=0.3, scale_temperature=False)
    assert fixed.threshold == 0.3 and fixed.temperature == 1.0
    with pytest.raises(ClsgenError, match="not one of"):
        fit_calibration(y, logits, method="median")
    with pytest.raises(ClsgenError, match="fixed threshold must be in"):
        fit_calibration(y, logits, method="fixed", fixed=1.5)


def test_unusable_dev_splits_give_clear_errors():
    with pytest.raises(ClsgenError, match="empty"):
        fit_calibration([], [])
    with pytest.raises(ClsgenError, match="0 positives of 3.*--threshold fixed"):
        fit_calibration([0, 0, 0], [0.1, -0.2, 0.3])


def test_meta_holds_threshold_temperature_and_the_before_after_metrics():
    y, logits = _overconfident()
    meta: dict = {"threshold": 0.5, "temperature": 1.0, "base_model": "tiny"}
    cal = fit_calibration(y, logits, n_boot=20)
    apply_calibration(meta, cal)
    assert meta["threshold"] == cal.threshold and meta["temperature"] == cal.temperature
    stored = meta["calibration"]
    assert stored["before"]["temperature"] == 1.0 and stored["after"]["temperature"] == cal.temperature
    assert stored["after"]["ece"]["low"] is not None and stored["n"] == 400
    json.dumps(meta)


def _examples(n: int, seed: int = 0) -> list[Example]:
    rng = np.random.default_rng(seed)
    return [Example(f"e{i}", {"text": " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12))))},
                    label=i % 2) for i in range(n)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    m = DualHeadModel.from_backbone(tiny_model(), TASK)
    torch.manual_seed(0)
    with torch.no_grad():
        m.head.linear.weight.normal_(0, 2.0)  # spread the logits
    path = tmp_path_factory.mktemp("calib") / "model"
    m.save_pretrained(path)
    return path


def test_stored_calibration_is_used_by_the_predictor(model_dir, tmp_path):
    import shutil

    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    before_meta = json.loads((target / META_FILE).read_text())
    dev = _examples(24)
    predictor = Predictor.from_pretrained(target, max_new_tokens=0)
    cal = calibrate_predictor(predictor, dev)
    assert predictor.model.meta["temperature"] == cal.temperature  # in memory at once
    store_calibration(target, cal)
    after_meta = json.loads((target / META_FILE).read_text())
    assert after_meta["threshold"] == cal.threshold and after_meta["temperature"] == cal.temperature
    assert {k: v for k, v in after_meta.items() if k not in ("threshold", "temperature", "calibration")} == \
        {k: v for k, v in before_meta.items() if k not in ("threshold", "temperature", "calibration")}
    assert not [p for p in target.iterdir() if p.name.startswith(".")]  # no temporary file left behind

    reloaded = Predictor.from_pretrained(target, max_new_tokens=0)
    test = _examples(10, seed=1)
    logits = reloaded.logits(test)
    preds = reloaded.predict(test, explain=False)
    expected = apply_temperature(logits, cal.temperature)
    np.testing.assert_allclose([p.probability for p in preds], expected, atol=1e-9)
    assert [p.label for p in preds] == [int(v >= cal.threshold) for v in expected]
    assert all(p.threshold == cal.threshold for p in preds)


def test_store_refuses_a_directory_that_is_not_a_model(tmp_path):
    cal = Calibration(threshold=0.4, temperature=1.2, method="max_f1", n=10, positives=5)
    with pytest.raises(ClsgenError, match="not a clsgen model directory"):
        store_calibration(tmp_path, cal)


def test_calibrate_command(model_dir, tmp_path, capsys):
    import shutil

    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    data = tmp_path / "toy.jsonl"
    rows = [{"id": ex.id, "text": ex.fields["text"], "label": ex.label,
             "split": "validation" if i < 20 else "test"} for i, ex in enumerate(_examples(30))]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["calibrate", "--model", str(target), "--dataset", str(data), "--threshold", "youden",
                 "--dry-run"])
    out = capsys.readouterr()
    assert code == 0 and "before" in out.out and "dry run" in out.err
    assert json.loads((target / META_FILE).read_text()).get("calibration") is None
    code = main(["calibrate", "--model", str(target), "--dataset", str(data), "--json"])
    printed = json.loads(capsys.readouterr().out)
    stored = json.loads((target / META_FILE).read_text())
    assert code == 0 and stored["calibration"]["n"] == 20 and stored["threshold"] == printed["threshold"]
    assert main(["calibrate", "--model", str(tmp_path), "--dataset", str(data)]) == 2
    assert "not a clsgen model directory" in capsys.readouterr().err
