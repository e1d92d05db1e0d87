"""`clsgen evaluate`: a thin layer over `clsgen.evaluate` (predictions.jsonl, metrics.json, report.html)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..errors import ClsgenError
from .common import add_config_options, add_data_options
from .model_options import (
    add_model_options,
    add_sampling_options,
    check_model_kind,
    load_predictor,
    load_split,
    model_meta,
    rejection_options,
)

CALIBRATION_MODES = ("auto", "validation", "stored")


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("evaluate", help="run a model on a split: predictions.jsonl, metrics.json, report.html",
                        description="Run a clsgen model on a dataset split and write predictions.jsonl, "
                        "metrics.json and a self-contained report.html.")
    add_model_options(ev)
    add_data_options(ev)
    ev.add_argument("--split", default="test", choices=["train", "validation", "dev", "test"],
                    help="split to evaluate (default: test)")
    ev.add_argument("--max-eval", type=int, default=None, help="at most this many validation/test examples "
                    "each (class-stratified sample; data.max_eval)")
    ev.add_argument("--explain", type=int, default=None, metavar="N", help="explain at most N examples "
                    "(stratified; default: all, eval.explain); the metrics say how many rows each used")
    ev.add_argument("--no-explain", action="store_true", help="probabilities only, no explanations")
    ev.add_argument("--out", default=None, help="output folder (default: runs/eval-<dataset>-<split>)")
    ev.add_argument("--show-examples", action="store_true", help="include sample explanations (the most "
                    "confident right and wrong, with ids) in report.html; off by default, because generated "
                    "text can quote its (often clinical) input")
    ev.add_argument("--show-inputs", action="store_true", help="include the input texts (often clinical) in "
                    "report.html's samples and in predictions.jsonl; implies --show-examples")
    ev.add_argument("--calibration", choices=CALIBRATION_MODES, default="auto",
                    help="validation: choose the threshold and fit the temperature on the validation split "
                    "(reports metrics before and after); stored: use the model's stored threshold and "
                    "temperature; auto (default): stored when the model has a calibration, else validation")
    ev.add_argument("--threshold", choices=["max_f1", "youden", "fixed"], default=None,
                    help="threshold rule on validation (eval.threshold; default max_f1)")
    ev.add_argument("--fixed-threshold", type=float, default=None, help="threshold for --threshold fixed")
    ev.add_argument("--no-temperature", action="store_true", help="do not fit a temperature (threshold only)")
    ev.add_argument("--n-bootstrap", type=int, default=None, help="bootstrap resamples (eval.n_bootstrap)")
    add_sampling_options(ev)
    add_config_options(ev)
    ev.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from ..estimator import ClsgenClassifier
    from ..evaluate import METRICS_FILE, PREDICTIONS_FILE, evaluate
    from ..files import check_run_dir

    started = time.perf_counter()
    meta = model_meta(args.model)
    check_model_kind(args, meta)
    cfg, ds, examples, split = load_split(args, meta)
    out = check_run_dir(args.out or f"runs/eval-{ds.name}-{split}", (METRICS_FILE, PREDICTIONS_FILE))
    predictor = load_predictor(args, ds.task, meta, batch_size=cfg.eval.batch_size,
                               max_new_tokens=cfg.eval.max_new_tokens, do_sample=args.sample,
                               no_repeat_ngram_size=cfg.eval.no_repeat_ngram_size,
                               temperature=args.temperature, top_p=args.top_p, seed=args.seed, progress=True,
                               **rejection_options(args))
    classifier = ClsgenClassifier(predictor)
    mode = args.calibration
    if mode == "auto":
        mode = "stored" if meta is not None and meta.get("calibration") else "validation"
    validation = ds.validation if mode == "validation" else None
    if mode == "validation" and not validation:
        raise ClsgenError(f"dataset {ds.name!r} has no validation split to calibrate on; use "
                          "--calibration stored")
    info = {"model": args.model + (" (untrained head)" if meta is None else ""), "dataset": ds.name,
            "split": split, "calibration": mode, "max_new_tokens": cfg.eval.max_new_tokens,
            "decoding": (f"sample T={args.temperature} top_p={args.top_p}" if args.sample else "greedy")
            + (f", rejection sampling up to {args.rejection_samples} draws at T={args.rejection_temperature}"
               if args.rejection_samples > 1 else ""),
            "stored calibration": _describe_calibration((meta or {}).get("calibration"))}
    result = evaluate(classifier, examples, out, validation=validation, explain=cfg.eval.explain,
                      n_bootstrap=cfg.eval.n_bootstrap, threshold_method=cfg.eval.threshold,
                      fixed_threshold=cfg.eval.fixed_threshold, calibrate=cfg.eval.calibrate,
                      show_inputs=args.show_inputs, show_examples=args.show_examples,
                      max_new_tokens=cfg.eval.max_new_tokens,
                      verbalizers=predictor.task.verbalizers, seed=cfg.data.seed,
                      title=f"clsgen evaluation: {Path(args.model).name} on {ds.name}/{split}", info=info)
    print(format_metrics(result.metrics, result.metrics_uncalibrated))
    print(f"threshold {result.threshold:.4g} ({result.summary['threshold_source']})"
          + (f", temperature {result.temperature:.4g}" if result.temperature is not None else ""))
    for what, path in result.paths.items():
        print(f"{what}: {path}")
    if cfg.train.log_with:  # the same trackers as training: the test metrics beside the training curves
        from ..tracking import log_evaluation

        sent = log_evaluation(cfg.train.log_with, out, result.metrics, result.paths["report"], prefix=split,
                              config={k: v for k, v in info.items() if v is not None})
        if sent:
            print(f"metrics and report path sent to {', '.join(map(str, sent))}")
    print(f"{len(examples)} examples, {result.summary['n_explained']} explained, "
          f"{time.perf_counter() - started:.1f}s")
    return 0


def _describe_calibration(cal: dict[str, Any] | None) -> str | None:
    if not cal:
        return None
    return (f"temperature {cal.get('temperature', 1.0):.4g}, threshold {cal.get('threshold', 0.5):.4g} "
            f"({cal.get('threshold_method')}, fitted on {cal.get('split')} n={cal.get('n')}, {cal.get('fitted_at')})")


def format_metrics(metrics: dict, uncalibrated: dict | None = None) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    head = f"{'metric':<20}{'value':>8}  {'95% interval':<17}{'n':>5}"
    head += f"{'uncal.':>8}" if uncalibrated else ""
    lines = [head]
    for k, m in metrics.items():
        interval = f"[{fmt(m.low)}, {fmt(m.high)}]" if m.low is not None else "-"
        line = f"{k:<20}{fmt(m.value):>8}  {interval:<17}{m.n:>5}"
        if uncalibrated:
            line += f"{fmt(uncalibrated[k].value):>8}"
        lines.append(line)
    return "\n".join(lines)
