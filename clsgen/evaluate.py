"""Run any classifier on a split: predictions.jsonl, metrics.json and a self-contained report.html.

Works for every classifier of the shared protocol (`predict_proba`); explanation metrics are added
when the classifier is an `Explainer`. The only type test is `isinstance(c, Explainer)`.

Threshold and calibration: with `validation` examples, the threshold is chosen on them
(`threshold_method`) and, with `calibrate`, a temperature is fitted on logit(p) of the validation
probabilities, for any classifier; the metrics are reported with (``metrics``) and without
(``metrics_uncalibrated``, threshold chosen on the raw validation probabilities) that temperature.
Without `validation`, the classifier's probabilities are used as they are, with its own
`threshold` attribute (a clsgen model's stored threshold) or 0.5.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .calibration import fit_calibration
from .classifier import Explainer, VerdictScorer, labels_of, positive_proba
from .data import Example, stratified_sample
from .errors import ClsgenError
from .files import atomic_write_files, check_writable
from .metrics import (
    THRESHOLD_METHODS,
    MetricResult,
    UndefinedMetricError,
    apply_temperature,
    choose_threshold,
    compute_metrics,
    logit,
    redraw_metrics,
)
from .report import render_report
from .verdict import parse_verdict, split_verdict

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"


@dataclass
class EvalResult:
    """What `evaluate` computed and where it wrote it."""

    metrics: dict[str, MetricResult]
    """Metrics of the final probabilities (calibrated when a temperature was fitted)."""
    predictions: list[dict[str, Any]]
    """One row per example (as in predictions.jsonl)."""
    paths: dict[str, Path]
    """predictions, metrics, report."""
    threshold: float
    temperature: float | None = None
    """The temperature fitted on validation (None when none was fitted)."""
    metrics_uncalibrated: dict[str, MetricResult] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    """The content of metrics.json."""


def _check_probabilities(p: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64).reshape(-1)
    if arr.shape != (n,):
        raise ClsgenError(f"{what}.predict_proba returned {arr.shape[0]} values for {n} examples; it must "
                          "return one probability of label 1 per example")
    if not (np.all(np.isfinite(arr)) and arr.min(initial=0) >= 0 and arr.max(initial=0) <= 1):
        raise ClsgenError(f"{what}.predict_proba returned values outside [0, 1]")
    return arr


def _threshold(y: np.ndarray, p: np.ndarray, method: str, fixed: float) -> float:
    try:
        return choose_threshold(y, p, method=method, fixed=fixed)
    except UndefinedMetricError as e:
        raise ClsgenError(f"cannot choose a {method} threshold on the validation split ({e}); use "
                          "threshold_method='fixed' (CLI: --threshold fixed)") from None


def _explain_indices(y: np.ndarray, n: int | None, seed: int) -> list[int]:
    """Row indices to explain: all, or a class-stratified sample of `n` (in the original order)."""
    stand_ins = [Example(id=str(i), fields={}, label=int(label)) for i, label in enumerate(y)]
    return [int(ex.id) for ex in stratified_sample(stand_ins, n, seed=seed)]


def evaluate(
    classifier: Any,
    examples: Sequence[Example],
    out_dir: str | Path,
    *,
    validation: Sequence[Example] | None = None,
    explain: int | None = None,
    n_bootstrap: int = 1000,
    threshold_method: str = "max_f1",
    fixed_threshold: float = 0.5,
    calibrate: bool = True,
    show_inputs: bool = False,
    show_examples: bool = False,
    max_new_tokens: int = 256,
    verbalizers: Sequence[str] | None = None,
    seed: int = 0,
    title: str | None = None,
    info: dict[str, Any] | None = None,
) -> EvalResult:
    """Evaluate `classifier` on labelled `examples`; write predictions.jsonl, metrics.json, report.html.

    explain: explain at most this many examples (a class-stratified sample; None: all; 0: none).
    verbalizers: the task's label words, to read the explanations' verdict lines (default: the
        classifier's `task.verbalizers`).
    show_examples: put sample explanations (with ids) in report.html; off by default, because a
        generated explanation can quote its (often clinical) input.
    show_inputs: also put the input texts in report.html's samples and in predictions.jsonl
        (`fields`); implies `show_examples`.

    Privacy: without these, no text of the examples and no generated text reaches report.html or
    metrics.json (only metrics and counts); predictions.jsonl, the output asked for, holds ids,
    labels, probabilities and the generated explanations, never the input fields.
    """
    if threshold_method not in THRESHOLD_METHODS:
        raise ClsgenError(f"threshold_method {threshold_method!r} is not one of {', '.join(THRESHOLD_METHODS)}")
    if not examples:
        raise ClsgenError("no examples to evaluate; check the dataset and split")
    if explain is not None and explain < 0:
        raise ClsgenError(f"explain must be >= 0 (or None for all), got {explain}")
    name = str(getattr(classifier, "name", type(classifier).__name__))
    out_dir = check_writable(out_dir)  # a read-only or misplaced --out fails now, not after the model ran
    y = labels_of(examples)
    timing: dict[str, float] = {}

    ex = _explain(classifier, examples, y, name, explain, verbalizers, max_new_tokens, seed, timing)
    # after explaining: a classifier may reuse the prefill that produced the explanation
    started = time.perf_counter()
    p_model = _check_probabilities(positive_proba(classifier, list(examples)), len(examples), name)
    timing["predict_proba"] = time.perf_counter() - started
    d = _decide(classifier, p_model, validation, name, threshold_method, fixed_threshold, calibrate, timing)

    explained = [t is not None for t in ex.texts]
    have_explanations = any(explained)
    metrics = compute_metrics(y, d.p_final, d.threshold,
                              verdicts=ex.verdicts if have_explanations else None,
                              explanations=ex.texts if have_explanations else None,
                              n_boot=n_bootstrap, seed=seed, alignment_verdicts=ex.all_verdicts)
    if ex.redraws:  # rejection sampling: the first draws' figures and how many were decoded
        idx = sorted(ex.redraws)
        metrics.update(redraw_metrics((d.p_final[idx] >= d.threshold).astype(np.int64),
                                      [ex.redraws[i][1] for i in idx], [ex.redraws[i][0] for i in idx],
                                      n_boot=n_bootstrap, seed=seed))
    metrics_uncal = None
    if d.p_raw is not None and d.threshold_raw is not None:
        metrics_uncal = compute_metrics(y, d.p_raw, d.threshold_raw,
                                        verdicts=ex.verdicts if have_explanations else None,
                                        explanations=ex.texts if have_explanations else None,
                                        n_boot=n_bootstrap, seed=seed, alignment_verdicts=ex.all_verdicts)
    rows = _rows(examples, y, d, ex, explained, show_inputs)

    summary: dict[str, Any] = {
        "classifier": name, "n": len(examples), "positives": int(y.sum()),
        "n_explained": int(sum(explained)), "can_explain": ex.can_explain,
        "n_cut_off": int(sum(ex.cut_off)) if ex.cut_off else None,
        "n_no_verdict": int(sum(1 for i, e in enumerate(explained) if e and ex.verdicts[i] is None)),
        "n_verdicts_all_rows": (sum(v is not None for v in ex.all_verdicts) if ex.all_verdicts is not None else None),
        "threshold": d.threshold, "threshold_source": d.threshold_source, "temperature": d.temperature,
        "threshold_uncalibrated": d.threshold_raw if d.temperature is not None else None,
        "n_validation": len(validation) if validation else 0,
        "metrics": {k: v.to_dict() for k, v in metrics.items()},
        "metrics_uncalibrated": ({k: v.to_dict() for k, v in metrics_uncal.items()} if metrics_uncal else None),
        "n_bootstrap": n_bootstrap, "timing_s": {k: round(v, 3) for k, v in timing.items()},
        "info": info or {},
    }
    paths = {"predictions": out_dir / PREDICTIONS_FILE, "metrics": out_dir / METRICS_FILE,
             "report": out_dir / REPORT_FILE}
    report_info = {"classifier": name, **(info or {}), "threshold source": d.threshold_source,
                   "temperature (fitted on validation)": None if d.temperature is None else f"{d.temperature:.4g}"}
    page = render_report(y=y, p=d.p_final, threshold=d.threshold, metrics=metrics, rows=rows,
                         p_uncalibrated=d.p_raw, metrics_uncalibrated=metrics_uncal, verbalizers=ex.verbalizers,
                         info=report_info, title=title or f"clsgen evaluation: {name}", show_inputs=show_inputs,
                         show_examples=show_examples)
    # one unit: a full disk leaves an earlier evaluation's three files as they were; metrics.json, which
    # marks a finished evaluation (the experiment runner skips a method that has it), is renamed last
    atomic_write_files([
        (paths["predictions"], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")),
        (paths["report"], page.encode("utf-8")),
        (paths["metrics"], (json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode("utf-8")),
    ])
    return EvalResult(metrics=metrics, predictions=rows, paths=paths, threshold=d.threshold,
                      temperature=d.temperature, metrics_uncalibrated=metrics_uncal, summary=summary)


# ----------------------------------------------------------------------------- the steps of evaluate


@dataclass
class _Explanations:
    """What the classifier's explanations gave, one entry per example (None where none was asked)."""

    texts: list[str | None]
    verdicts: list[int | None]
    cut_off: list[bool]
    """Per explained row, whether the token limit cut its explanation ([] when the classifier does not say)."""
    cut_at: dict[int, bool]
    """example index -> whether the token limit cut its explanation"""
    redraws: dict[int, tuple[int, int | None]]
    """Rejection sampling: example index -> (explanations decoded, the first one's verdict); {} without."""
    all_verdicts: list[int | None] | None
    """The teacher-forced verdict of every row (a verdict-first `VerdictScorer`), else None."""
    verbalizers: Sequence[str] | None
    position: str
    can_explain: bool


def _explain(classifier: Any, examples: Sequence[Example], y: np.ndarray, name: str, explain: int | None,
             verbalizers: Sequence[str] | None, max_new_tokens: int, seed: int,
             timing: dict[str, float]) -> _Explanations:
    """Explain the chosen rows (an `Explainer`) and read their verdicts; a verdict-first `VerdictScorer`
    also gives every row's verdict. Records the seconds taken in `timing`."""
    n = len(examples)
    ex = _Explanations(texts=[None] * n, verdicts=[None] * n, cut_off=[], cut_at={}, redraws={}, all_verdicts=None,
                       verbalizers=verbalizers, can_explain=isinstance(classifier, Explainer),
                       position=getattr(getattr(classifier, "task", None), "verdict_position", "last"))
    if ex.can_explain and explain != 0:
        words = verbalizers or getattr(getattr(classifier, "task", None), "verbalizers", None)
        if not words:
            raise ClsgenError(f"{name} explains, but its verdict words are unknown; pass verbalizers=")
        chosen = _explain_indices(y, explain, seed)
        started = time.perf_counter()
        generated = classifier.explain([examples[i] for i in chosen], max_new_tokens=max_new_tokens)
        timing["explain"] = time.perf_counter() - started
        if len(generated) != len(chosen):
            raise ClsgenError(f"{name}.explain returned {len(generated)} texts for {len(chosen)} examples")
        for i, text in zip(chosen, generated):
            ex.texts[i] = text or ""
            ex.verdicts[i] = parse_verdict(text, words, ex.position)
        cut = getattr(classifier, "cut_off", None)
        ex.cut_off = list(cut) if isinstance(cut, list) and len(cut) == len(chosen) else []
        ex.cut_at = {i: bool(c) for i, c in zip(chosen, ex.cut_off)}
        draws, firsts = getattr(classifier, "draws", None), getattr(classifier, "first_verdicts", None)
        if isinstance(draws, list) and isinstance(firsts, list) and len(draws) == len(firsts) == len(chosen):
            ex.redraws = {i: (int(d), f) for i, d, f in zip(chosen, draws, firsts)}
        ex.verbalizers = list(words)
    if isinstance(classifier, VerdictScorer) and ex.position == "first":
        started = time.perf_counter()  # the verdict of every row, teacher-forced: alignment on all rows
        ex.all_verdicts = classifier.verdicts(list(examples))
        timing["verdicts"] = time.perf_counter() - started
    return ex


@dataclass
class _Decision:
    """The final probabilities and the threshold applied to them, and where both came from."""

    p_final: np.ndarray
    threshold: float
    threshold_source: str
    temperature: float | None = None
    """Fitted on validation (None when none was fitted)."""
    p_raw: np.ndarray | None = None
    """The classifier's own probabilities, when a temperature changed them."""
    threshold_raw: float | None = None
    """The threshold chosen on the raw validation probabilities (None without validation)."""


def _decide(classifier: Any, p_model: np.ndarray, validation: Sequence[Example] | None, name: str,
            threshold_method: str, fixed_threshold: float, calibrate: bool, timing: dict[str, float]) -> _Decision:
    """Threshold (and, with `calibrate`, temperature) chosen on `validation`; without it, the
    classifier's own probabilities and stored threshold (else 0.5)."""
    if not validation:
        stored = getattr(classifier, "threshold", None)
        return _Decision(p_final=p_model, threshold=float(stored) if stored is not None else 0.5,
                         threshold_source="classifier" if stored is not None else "default 0.5")
    started = time.perf_counter()
    y_val = labels_of(validation)
    p_val = _check_probabilities(positive_proba(classifier, list(validation)), len(validation), name)
    timing["validation_predict_proba"] = time.perf_counter() - started
    threshold_raw = _threshold(y_val, p_val, threshold_method, fixed_threshold)
    if not calibrate:
        return _Decision(p_final=p_model, threshold=threshold_raw, threshold_source=f"validation ({threshold_method})",
                         threshold_raw=threshold_raw)
    cal = fit_calibration(y_val, logit(p_val), method=threshold_method, fixed=fixed_threshold)
    return _Decision(p_final=apply_temperature(logit(p_model), cal.temperature), threshold=cal.threshold,
                     threshold_source=f"validation ({threshold_method}, after temperature scaling)",
                     temperature=cal.temperature, p_raw=p_model, threshold_raw=threshold_raw)


def _rows(examples: Sequence[Example], y: np.ndarray, d: _Decision, ex: _Explanations, explained: list[bool],
          show_inputs: bool) -> list[dict[str, Any]]:
    """predictions.jsonl: one row per example (its input fields only with `show_inputs`)."""
    rows = []
    for i, example in enumerate(examples):
        pred = int(d.p_final[i] >= d.threshold)
        row: dict[str, Any] = {"id": example.id, "label": int(y[i]), "probability": float(d.p_final[i]),
                               "prediction": pred, "correct": pred == int(y[i]), "explained": explained[i]}
        if d.p_raw is not None:
            row["probability_uncalibrated"] = float(d.p_raw[i])
        if explained[i]:
            row["verdict"] = ex.verdicts[i]
            row["explanation"] = split_verdict(ex.texts[i], ex.position)[0]
            row["text"] = ex.texts[i]
            if i in ex.cut_at:
                row["cut_off"] = ex.cut_at[i]
            if i in ex.redraws:
                row["draws"], row["first_verdict"] = ex.redraws[i]
        if show_inputs:
            row["fields"] = dict(example.fields)
        rows.append(row)
    return rows
