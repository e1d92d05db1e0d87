"""Decision threshold and temperature scaling, fitted on the dev split and stored with the model.

The temperature T is fitted first (minimum NLL of sigmoid(logit / T) on dev); the threshold is then
chosen on the *calibrated* dev probabilities, because that is what the Predictor thresholds. Both go
into the model directory's clsgen.json (written atomically), where `Predictor` reads them.

"Before" means the model as trained: T = 1 and threshold 0.5. "After" means the fitted T and the
chosen threshold. Temperature scaling leaves AUROC/AUPRC unchanged (it is monotone); it moves ECE
and Brier, and the threshold moves F1 and accuracy.

Everything here works on labels and logits (numpy, no torch); `clsgen.estimator.calibrate_predictor` runs a Predictor
to get them.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ClsgenError
from .files import atomic_write_json
from .metrics import (
    THRESHOLD_METHODS,
    MetricResult,
    UndefinedMetricError,
    apply_temperature,
    choose_threshold,
    compute_metrics,
    fit_temperature,
)

DEFAULT_THRESHOLD = 0.5
SUMMARY_METRICS = ("auroc", "auprc", "f1", "accuracy", "ece", "brier")
"""Metrics recorded in clsgen.json before and after calibration (no explanation needed)."""


@dataclass
class Calibration:
    """A fitted threshold and temperature, and the dev metrics before and after them."""

    threshold: float
    temperature: float
    method: str
    """How the threshold was chosen: max_f1, youden or fixed."""
    n: int
    """Dev rows used."""
    positives: int
    before: dict[str, MetricResult] = field(default_factory=dict)
    """Dev metrics of the model as trained (T = 1, threshold 0.5)."""
    after: dict[str, MetricResult] = field(default_factory=dict)
    """Dev metrics with the fitted temperature and chosen threshold."""
    split: str = "validation"

    def to_meta(self) -> dict[str, Any]:
        """What is stored under "calibration" in clsgen.json."""
        return {
            "threshold": self.threshold, "temperature": self.temperature, "threshold_method": self.method,
            "split": self.split, "n": self.n, "positives": self.positives,
            "fitted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "before": {"threshold": DEFAULT_THRESHOLD, "temperature": 1.0,
                       **{k: v.to_dict() for k, v in self.before.items()}},
            "after": {"threshold": self.threshold, "temperature": self.temperature,
                      **{k: v.to_dict() for k, v in self.after.items()}},
        }


def fit_calibration(y: Any, logits: Any, method: str = "max_f1", fixed: float = DEFAULT_THRESHOLD,
                    scale_temperature: bool = True, n_boot: int = 0, split: str = "validation") -> Calibration:
    """Fit the calibration temperature (unless `scale_temperature` is False: T = 1) and choose the
    threshold on dev data.

    `logits` are the head's raw logits (no temperature applied).
    """
    if method not in THRESHOLD_METHODS:
        raise ClsgenError(f"threshold method {method!r} is not one of {', '.join(THRESHOLD_METHODS)}")
    if not 0.0 <= fixed <= 1.0:
        raise ClsgenError(f"fixed threshold must be in [0, 1], got {fixed}")
    y = np.asarray(y, dtype=np.int64)
    z = np.asarray(logits, dtype=np.float64)
    if len(y) == 0:
        raise ClsgenError(f"the {split} split is empty: nothing to choose a threshold or fit a "
                          "temperature on; use a dataset with a validation split")
    t = fit_temperature(y, z) if scale_temperature else 1.0
    p_before = apply_temperature(z, 1.0)
    p_after = apply_temperature(z, t)
    try:
        threshold = choose_threshold(y, p_after, method=method, fixed=fixed)
    except UndefinedMetricError as e:
        raise ClsgenError(f"cannot choose a {method} threshold on the {split} split ({e}); it has "
                          f"{int(y.sum())} positives of {len(y)}; use --threshold fixed") from None
    before = compute_metrics(y, p_before, DEFAULT_THRESHOLD, n_boot=n_boot)
    after = compute_metrics(y, p_after, threshold, n_boot=n_boot)
    return Calibration(threshold=float(threshold), temperature=float(t), method=method, n=len(y),
                       positives=int(y.sum()),
                       before={k: before[k] for k in SUMMARY_METRICS},
                       after={k: after[k] for k in SUMMARY_METRICS}, split=split)


def apply_calibration(meta: dict[str, Any], cal: Calibration) -> dict[str, Any]:
    """Put the calibration into a model meta dict (in place) and return it."""
    meta["threshold"] = cal.threshold
    meta["temperature"] = cal.temperature
    meta["calibration"] = cal.to_meta()
    return meta


def store_calibration(model_dir: str | Path, cal: Calibration) -> Path:
    """Write threshold and temperature into `model_dir`/clsgen.json atomically (other keys are kept)
    and rewrite its README.md."""
    from .card import write_model_card  # the model folder's modules load torch; fitting needs none
    from .model_io import META_FILE, read_meta

    model_dir = Path(model_dir)
    meta = read_meta(model_dir)
    apply_calibration(meta, cal)
    atomic_write_json(model_dir / META_FILE, meta)
    write_model_card(model_dir)  # the card shows the new threshold, temperature and dev metrics
    return model_dir / META_FILE


def format_calibration(cal: Calibration) -> str:
    """A small before/after table for the terminal."""
    lines = [f"calibrated on {cal.split} (n={cal.n}, positives={cal.positives}): "
             f"temperature {cal.temperature:.4g}, threshold {cal.threshold:.4g} ({cal.method})",
             f"{'metric':<10}{'before':>10}{'after':>10}",
             f"{'':<10}{'T=1,t=0.5':>10}{'fitted':>10}"]
    for k in SUMMARY_METRICS:
        b, a = cal.before[k].value, cal.after[k].value
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"{k:<10}{fmt(b):>10}{fmt(a):>10}")
    return "\n".join(lines)
