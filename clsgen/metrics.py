"""Evaluation metrics for clsgen, in pure numpy (no torch, no model).

Notation (see DESIGN.md, "Metrics (our definitions)"): ``p`` is the head's probability of class 1,
``y`` the gold label in {0, 1}, ``tau`` the decision threshold, ``y_hat = 1[p >= tau]`` and ``e``
the label stated by the explanation's verdict line (None when missing or ambiguous).

The metric functions raise `UndefinedMetricError` (a `ValueError`) when a metric does not exist for
the data (only one class, no rows); `compute_metrics` turns that into ``value=None`` with a note, so
a report never shows NaN. Malformed input (labels outside {0, 1}, probabilities outside [0, 1],
arrays of different lengths) raises a plain `ValueError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import UndefinedMetricError
from .readability import (
    body_flesch,
    explanation_quality,
    flesch_reading_ease,  # noqa: F401 (a metric of one text, offered here too)
)
from .verdict import split_verdict

ECE_BINS = 15
"""Equal-width bins on [0, 1] for the expected calibration error."""

THRESHOLD_METHODS = ("max_f1", "youden", "fixed")


# ---------------------------------------------------------------------------------------- inputs


def _labels(y: Any, name: str = "y") -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of 0/1 labels, got shape {arr.shape}")
    if arr.size and not np.all(np.isin(arr, (0, 1))):
        bad = sorted({repr(v) for v in arr[~np.isin(arr, (0, 1))].tolist()})[:5]
        raise ValueError(f"{name} must hold only 0 and 1, got {', '.join(bad)}")
    return arr.astype(np.int64)


def _probabilities(p: Any, name: str = "p") -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of probabilities, got shape {arr.shape}")
    if arr.size and not (np.all(np.isfinite(arr)) and arr.min() >= 0.0 and arr.max() <= 1.0):
        raise ValueError(f"{name} must hold probabilities in [0, 1], got values in [{arr.min()}, {arr.max()}]")
    return arr


def _same_length(**arrays: Any) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        given = ", ".join(f"{k}={v}" for k, v in lengths.items())
        raise ValueError(f"inputs must have the same number of rows, got {given}")
    return next(iter(lengths.values()))


def _nonempty(n: int) -> None:
    if n == 0:
        raise UndefinedMetricError("undefined: no rows")


def _both_classes(y: np.ndarray) -> None:
    _nonempty(len(y))
    if y.min() == y.max():
        raise UndefinedMetricError("undefined: only one class present")


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _present_verdicts(e: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(mask of rows whose verdict is present, those verdicts as 0/1 ints)."""
    mask = np.array([not _is_missing(v) for v in e], dtype=bool)
    present = _labels([int(v) for v, m in zip(e, mask) if m], name="e")
    return mask, present


# ----------------------------------------------------------------------- probability and labels


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x`, ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    group_ranks = (starts + ends + 1) / 2.0
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(group_ranks, ends - starts)
    return ranks


def auroc(y: Any, p: Any) -> float:
    """Area under the ROC curve of scores `p` against labels `y` (ties count one half)."""
    y, p = _labels(y), np.asarray(p, dtype=np.float64)
    _same_length(y=y, p=p)
    _both_classes(y)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    rank_sum = _average_ranks(p)[y == 1].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _counts_by_threshold(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct thresholds descending, true positives, false positives) of `p >= threshold`."""
    order = np.argsort(-p, kind="mergesort")
    p_sorted, y_sorted = p[order], y[order]
    last_of_group = np.flatnonzero(np.r_[p_sorted[1:] != p_sorted[:-1], True])
    tps = np.cumsum(y_sorted)[last_of_group].astype(np.float64)
    fps = (last_of_group + 1) - tps
    return p_sorted[last_of_group], tps, fps


def auprc(y: Any, p: Any) -> float:
    """Average precision: sum over thresholds of (recall step) x precision, as in scikit-learn."""
    y, p = _labels(y), np.asarray(p, dtype=np.float64)
    _same_length(y=y, p=p)
    _nonempty(len(y))
    if y.sum() == 0:
        raise UndefinedMetricError("undefined: no positive labels")
    _, tps, fps = _counts_by_threshold(y, p)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def f1(y: Any, y_hat: Any) -> float:
    """F1 of the positive class: 2 TP / (2 TP + FP + FN)."""
    y, y_hat = _labels(y), _labels(y_hat, "y_hat")
    _same_length(y=y, y_hat=y_hat)
    _nonempty(len(y))
    tp = int(np.sum((y == 1) & (y_hat == 1)))
    wrong = int(np.sum(y != y_hat))
    if 2 * tp + wrong == 0:
        raise UndefinedMetricError("undefined: no positive labels or predictions")
    return 2.0 * tp / (2.0 * tp + wrong)


def accuracy(y: Any, y_hat: Any) -> float:
    """Share of rows where `y_hat` equals `y`."""
    y, y_hat = _labels(y), _labels(y_hat, "y_hat")
    _same_length(y=y, y_hat=y_hat)
    _nonempty(len(y))
    return float(np.mean(y == y_hat))


def brier(y: Any, p: Any) -> float:
    """Mean squared error of the probability `p` against the label `y`."""
    y, p = _labels(y), _probabilities(p)
    _same_length(y=y, p=p)
    _nonempty(len(y))
    return float(np.mean((p - y) ** 2))


def ece(y: Any, p: Any, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error over `n_bins` equal-width bins on [0, 1].

    Bins are [k/n, (k+1)/n), the last one closed on 1.0; each non-empty bin contributes
    (rows in bin / all rows) * |mean(y) - mean(p)| over its rows.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
    y, p = _labels(y), _probabilities(p)
    _same_length(y=y, p=p)
    _nonempty(len(y))
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.digitize(p, edges[1:-1], right=False)
    count = np.bincount(bins, minlength=n_bins)
    sum_y = np.bincount(bins, weights=y, minlength=n_bins)
    sum_p = np.bincount(bins, weights=p, minlength=n_bins)
    used = count > 0
    gaps = np.abs(sum_y[used] - sum_p[used]) / count[used]
    return float(np.sum(count[used] * gaps) / len(y))


def cohen_kappa(a: Any, b: Any) -> float:
    """Cohen's kappa between two raters' labels: (p_observed - p_chance) / (1 - p_chance)."""
    a, b = np.asarray(a), np.asarray(b)
    _same_length(a=a, b=b)
    _nonempty(len(a))
    if len(np.unique(a)) < 2 or len(np.unique(b)) < 2:
        # one rater constant: kappa is 0 (or undefined) whatever the other does, which reads as
        # "no agreement beyond chance" when it means "nothing to measure"
        raise UndefinedMetricError("degenerate: one side gives a single label")
    labels = np.unique(np.concatenate([a, b]))
    p_a = np.array([np.mean(a == k) for k in labels])
    p_b = np.array([np.mean(b == k) for k in labels])
    chance = float(np.sum(p_a * p_b))
    if chance >= 1.0:
        raise UndefinedMetricError("undefined: both raters give one and the same label")
    observed = float(np.mean(a == b))
    return (observed - chance) / (1.0 - chance)


# ------------------------------------------------------------------- probability vs explanation


def alignment_auroc(p: Any, e: Sequence[Any]) -> float:
    """AUROC of the probability `p` against the verdict `e`, on rows where `e` is present."""
    p = np.asarray(p, dtype=np.float64)
    _same_length(p=p, e=e)
    mask, present = _present_verdicts(e)
    return auroc(present, p[mask])


def alignment_kappa(y_hat: Any, e: Sequence[Any]) -> float:
    """Cohen's kappa between `y_hat` and the verdict `e`, on rows where `e` is present."""
    y_hat = _labels(y_hat, "y_hat")
    _same_length(y_hat=y_hat, e=e)
    mask, present = _present_verdicts(e)
    return cohen_kappa(y_hat[mask], present)


def inconsistency_rate(y_hat: Any, e: Sequence[Any]) -> float:
    """Share of all rows whose verdict `e` is missing or differs from `y_hat`."""
    y_hat = _labels(y_hat, "y_hat")
    n = _same_length(y_hat=y_hat, e=e)
    _nonempty(n)
    mask, present = _present_verdicts(e)
    disagree = int(np.sum(present != y_hat[mask]))
    return (int(np.sum(~mask)) + disagree) / n


# ------------------------------------------------------------------------------- readability


def readability(texts: Sequence[str | None], verdicts: Sequence[Any]) -> float:
    """Share of explanations that are readable (see `explanation_quality`)."""
    n = _same_length(texts=texts, verdicts=verdicts)
    _nonempty(n)
    return sum(explanation_quality(t, v)["readable"] for t, v in zip(texts, verdicts)) / n


def flesch(texts: Sequence[str | None]) -> float:
    """Mean Flesch reading ease of the explanations' bodies (verdict line removed), skipping
    texts that are None or have no words."""
    scores = [body_flesch(t) for t in texts]
    scores = [s for s in scores if s is not None]
    if not scores:
        raise UndefinedMetricError("undefined: no explanation with words")
    return float(np.mean(scores))


# -------------------------------------------------------------------- thresholds, temperature


def choose_threshold(y: Any, p: Any, method: str = "max_f1", fixed: float = 0.5) -> float:
    """A decision threshold tau for `y_hat = 1[p >= tau]`, chosen on (dev) data.

    * ``max_f1``: the distinct value of `p` that maximizes F1;
    * ``youden``: the distinct value of `p` that maximizes TPR - FPR (Youden's J);
    * ``fixed``: `fixed`.

    Ties go to the larger threshold (fewer positive predictions).
    """
    if method == "fixed":
        return float(fixed)
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"threshold method must be one of {', '.join(THRESHOLD_METHODS)}, got {method!r}")
    y, p = _labels(y), _probabilities(p)
    _same_length(y=y, p=p)
    if method == "max_f1":
        _nonempty(len(y))
        if y.sum() == 0:
            raise UndefinedMetricError("undefined: no positive labels to choose a max-F1 threshold")
        thresholds, tps, fps = _counts_by_threshold(y, p)
        scores = 2 * tps / (tps + fps + y.sum())
    else:
        _both_classes(y)
        thresholds, tps, fps = _counts_by_threshold(y, p)
        scores = tps / y.sum() - fps / (len(y) - y.sum())
    return float(thresholds[int(np.argmax(scores))])  # thresholds descend: first max is the largest


def sigmoid(x: Any) -> np.ndarray:
    """Numerically stable logistic function."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(x, dtype=np.float64)))


def logit(p: Any, eps: float = 1e-12) -> np.ndarray:
    """Inverse of `sigmoid`, with `p` clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)


def _nll(y: np.ndarray, z: np.ndarray, temperature: float) -> float:
    """Mean binary cross-entropy of sigmoid(z / T): softplus(s) - y * s."""
    s = z / temperature
    return float(np.mean(np.logaddexp(0.0, s) - y * s))


def fit_temperature(y: Any, logits: Any, t_min: float = 1e-2, t_max: float = 1e2, tol: float = 1e-6) -> float:
    """The temperature T > 0 minimizing the NLL of sigmoid(logits / T) against `y`.

    Golden-section search on log T over [t_min, t_max]; the NLL is convex in 1/T, hence unimodal in
    log T. Perfectly separated data push T to `t_min`; anti-correlated logits push it to `t_max`.
    """
    y, z = _labels(y), np.asarray(logits, dtype=np.float64)
    _same_length(y=y, logits=z)
    _nonempty(len(y))
    if not np.all(np.isfinite(z)):
        raise ValueError("logits must be finite")
    if not 0 < t_min < t_max:
        raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min}, t_max={t_max}")
    loss = lambda u: _nll(y, z, math.exp(u))  # noqa: E731
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = math.log(t_min), math.log(t_max)
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = loss(d)
    return math.exp((a + b) / 2.0)


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """Calibrated probabilities sigmoid(logits / T). Use `logit(p)` to get logits from probabilities."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return sigmoid(np.asarray(logits, dtype=np.float64) / temperature)


# -------------------------------------------------------------------------------- bootstrap


def _indexable(a: Any) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    arr = np.empty(len(a), dtype=object)
    arr[:] = list(a)
    return arr if any(_is_missing(v) or isinstance(v, str) for v in arr) else np.asarray(list(a))


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: Any,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval (1 - alpha) of `metric_fn(*arrays)`, resampling rows jointly.

    Resamples where the metric is undefined (raises `UndefinedMetricError`, returns None or a
    non-finite value) are skipped; (None, None) when every resample is undefined or there are no rows.
    """
    if n < 1:
        raise ValueError(f"n (bootstrap resamples) must be >= 1, got {n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    arrs = [_indexable(a) for a in arrays]
    rows = _same_length(**{f"array{i}": a for i, a in enumerate(arrs)})
    if rows == 0:
        return None, None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, rows, size=rows)
        try:
            v = metric_fn(*(a[idx] for a in arrs))
        except UndefinedMetricError:
            continue
        if v is not None and math.isfinite(v):
            values.append(float(v))
    if not values:
        return None, None
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


# ---------------------------------------------------------------------------------- all of it


@dataclass(frozen=True)
class MetricResult:
    """One metric: its value, bootstrap interval, the rows it used, and why it is missing."""

    value: float | None
    """The point estimate; None when the metric is undefined for the data."""
    low: float | None = None
    """Lower end of the bootstrap interval (None without one)."""
    high: float | None = None
    """Upper end of the bootstrap interval (None without one)."""
    n: int = 0
    """Rows used to compute the metric."""
    note: str | None = None
    """Why the value (or the interval) is missing, e.g. 'undefined: only one class present'."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dict (floats, ints, strings, None; never NaN)."""
        as_float = lambda v: None if v is None else float(v)  # noqa: E731
        return {
            "value": as_float(self.value),
            "low": as_float(self.low),
            "high": as_float(self.high),
            "n": int(self.n),
            "note": self.note,
        }


def _result(fn: Callable[..., float], arrays: list[Any], n_boot: int, seed: int, alpha: float) -> MetricResult:
    rows = len(arrays[0])
    try:
        value = float(fn(*arrays))
    except UndefinedMetricError as err:
        return MetricResult(None, n=rows, note=str(err))
    if n_boot <= 0:
        return MetricResult(value, n=rows)
    low, high = bootstrap_ci(fn, *arrays, n=n_boot, alpha=alpha, seed=seed)
    note = None if low is not None else "interval undefined: every resample was undefined"
    return MetricResult(value, low, high, n=rows, note=note)


def _mean(values: np.ndarray) -> float:
    _nonempty(len(values))
    return float(np.mean(values))


def compute_metrics(
    y: Any,
    p: Any,
    threshold: float,
    verdicts: Sequence[Any] | None = None,
    explanations: Sequence[str | None] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    alignment_verdicts: Sequence[Any] | None = None,
) -> dict[str, MetricResult]:
    """Every metric of DESIGN.md with a bootstrap (1 - alpha) interval (none when `n_boot` is 0).

    Always returns the same keys: auroc, auprc, f1, accuracy, ece, brier, alignment_auroc,
    alignment_kappa, inconsistency_rate, readability, flesch. A metric that cannot be computed has
    value None and a note.

    `verdicts` and `explanations` are aligned with `y`. A row has an explanation when its entry in
    `explanations` is not None (when only `verdicts` is given, every row counts as explained);
    rows without one are left out of the explanation metrics, and each result's `n` says how many
    rows it used. A None verdict on an explained row means the verdict is missing (inconsistent,
    unreadable). Without `verdicts`, readability counts a verdict as present when the text has an
    answer line. `alignment_verdicts` (aligned with `y`, e.g. scored teacher-forced for every row)
    replace the explained rows' verdicts for alignment_auroc and alignment_kappa.
    """
    y, p = _labels(y), _probabilities(p)
    rows = _same_length(y=y, p=p)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    y_hat = (p >= threshold).astype(np.int64)
    boot = dict(n_boot=n_boot, seed=seed, alpha=alpha)
    results = {
        "auroc": _result(auroc, [y, p], **boot),
        "auprc": _result(auprc, [y, p], **boot),
        "f1": _result(f1, [y, y_hat], **boot),
        "accuracy": _result(accuracy, [y, y_hat], **boot),
        "ece": _result(ece, [y, p], **boot),
        "brier": _result(brier, [y, p], **boot),
    }
    results.update(_explanation_metrics(p, y_hat, rows, verdicts, explanations, boot))
    if alignment_verdicts is not None:
        _same_length(y=y, alignment_verdicts=alignment_verdicts)
        present, e_present = _present_verdicts(list(alignment_verdicts))
        results["alignment_auroc"] = _result(lambda pp, ee: auroc(ee, pp), [p[present], e_present], **boot)
        results["alignment_kappa"] = _result(cohen_kappa, [y_hat[present], e_present], **boot)
    return results


def redraw_metrics(y_hat: Any, first_verdicts: Sequence[Any], draws: Sequence[int], n_boot: int = 1000,
                   seed: int = 0, alpha: float = 0.05) -> dict[str, MetricResult]:
    """Rejection sampling's own figures, on the explained rows: `draws` (mean explanations decoded per
    row) and `first_draw_inconsistency` (the inconsistency rate of each row's first draw: the model's
    own, before any was redrawn; the kept draws' is `inconsistency_rate`)."""
    y_hat = _labels(y_hat, "y_hat")
    _same_length(y_hat=y_hat, first_verdicts=first_verdicts, draws=draws)
    boot = dict(n_boot=n_boot, seed=seed, alpha=alpha)
    return {"draws": _result(_mean, [np.asarray(draws, dtype=np.float64)], **boot),
            "first_draw_inconsistency": _result(inconsistency_rate, [y_hat, _indexable(first_verdicts)], **boot)}


def _explanation_metrics(
    p: np.ndarray,
    y_hat: np.ndarray,
    rows: int,
    verdicts: Sequence[Any] | None,
    explanations: Sequence[str | None] | None,
    boot: dict[str, Any],
) -> dict[str, MetricResult]:
    if verdicts is not None:
        _same_length(y=y_hat, verdicts=verdicts)
    if explanations is not None:
        _same_length(y=y_hat, explanations=explanations)
        explained = np.array([t is not None for t in explanations], dtype=bool)
    else:
        explained = np.ones(rows, dtype=bool)
    idx = np.flatnonzero(explained)
    out: dict[str, MetricResult] = {}

    if verdicts is None:
        note = "undefined: no verdicts given"
        for key in ("alignment_auroc", "alignment_kappa", "inconsistency_rate"):
            out[key] = MetricResult(None, note=note)
    else:
        e = [verdicts[i] for i in idx]
        present, e_present = _present_verdicts(e)
        out["alignment_auroc"] = _result(lambda pp, ee: auroc(ee, pp), [p[idx][present], e_present], **boot)
        out["alignment_kappa"] = _result(cohen_kappa, [y_hat[idx][present], e_present], **boot)
        out["inconsistency_rate"] = _result(inconsistency_rate, [y_hat[idx], _indexable(e)], **boot)

    if explanations is None:
        note = "undefined: no explanations given"
        for key in ("readability", "flesch"):
            out[key] = MetricResult(None, note=note)
    else:
        texts = [explanations[i] for i in idx]
        if verdicts is not None:
            stated = [verdicts[i] for i in idx]
            stated = [None if _is_missing(v) else v for v in stated]
        else:
            stated = [split_verdict(t)[1] for t in texts]
        readable = np.array([explanation_quality(t, v)["readable"] for t, v in zip(texts, stated)], dtype=np.float64)
        scores = np.array([s for s in (body_flesch(t) for t in texts) if s is not None], dtype=np.float64)
        out["readability"] = _result(_mean, [readable], **boot)
        out["flesch"] = _result(_mean, [scores], **boot)
        if scores.size == 0:
            out["flesch"] = MetricResult(None, n=0, note="undefined: no explanation with words")
    return out
