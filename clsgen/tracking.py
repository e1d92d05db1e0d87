"""Experiment trackers (accelerate's: tensorboard, wandb, mlflow, or a `GeneralTracker` instance) for
what happens after training: an evaluation's metrics, with their intervals, and where its report is.

Training logs its own records (train_log.py); `log_evaluation` sends an evaluation to the same trackers,
named by `train.log_with`, so a run's dashboard shows the test metrics beside the training curves.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TRACKER_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}


def available(trackers: Sequence[Any]) -> list[Any]:
    """The trackers that can run: tracker instances as given, names whose package is installed (a
    warning names each one that is not)."""
    chosen = []
    for t in trackers:
        if not isinstance(t, str):
            chosen.append(t)
        elif any(importlib.util.find_spec(m) is not None for m in TRACKER_MODULES.get(t, (t,))):
            chosen.append(t)
        else:
            log.warning("train.log_with: %s is not installed; the evaluation is not sent to it", t)
    return chosen


def evaluation_record(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """{prefix/metric, prefix/metric_low, prefix/metric_high: value} for every defined metric
    (`MetricResult`s or their dicts)."""
    out: dict[str, float] = {}
    for name, m in metrics.items():
        d = m.to_dict() if hasattr(m, "to_dict") else m
        if not isinstance(d, Mapping):
            continue
        for suffix, key in (("", "value"), ("_low", "low"), ("_high", "high")):
            if d.get(key) is not None:
                out[f"{prefix}/{name}{suffix}"] = float(d[key])
    return out


def log_evaluation(trackers: Sequence[Any], out_dir: str | Path, metrics: Mapping[str, Any],
                   report: str | Path | None = None, *, prefix: str = "eval", step: int | None = None,
                   config: Mapping[str, Any] | None = None, project: str = "clsgen") -> list[Any]:
    """Send an evaluation's metrics (value and 95% interval ends) and its report's path to `trackers`;
    returns the trackers used (none installed: nothing happens)."""
    chosen = available(trackers)
    if not chosen:
        return []
    from accelerate import Accelerator

    from .distributed import release

    accelerator = Accelerator(cpu=True, mixed_precision="no", log_with=chosen, project_dir=str(out_dir))
    try:
        accelerator.init_trackers(project, config=dict(config or {}))
        record: dict[str, Any] = evaluation_record(metrics, prefix)
        if report is not None:
            record[f"{prefix}/report"] = str(Path(report).resolve())
        accelerator.log(record, step=step)
        accelerator.end_training()
    finally:
        release(accelerator)
    return chosen
