"""`clsgen evaluate`, `clsgen predict` and `clsgen calibrate`: thin layers over inference, calibration
and evaluate."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import ClsgenError, ConfigError
from .common import add_config_options, add_data_options, config_from_args

CALIBRATION_MODES = ("auto", "validation", "stored")


# ---------------------------------------------------------------------------------- options


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="a clsgen model directory (from `clsgen train`); with "
                   "--untrained-head, a base model spec (smollm2-135m, tiny, a local HF directory)")
    g.add_argument("--untrained-head", action="store_true", help="wrap a base model with a fresh, untrained "
                   "(random) classification head: a smoke test of the pipeline, not a classifier")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default=None,
                   help="weight dtype (default: the model's own; auto = bfloat16)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    _add_trust_options(g)
    g.add_argument("--batch-size", type=int, default=None, help="prompts per forward pass (eval.batch_size)")
    g.add_argument("--max-new-tokens", type=int, default=None, help="longest explanation (eval.max_new_tokens)")


def _add_trust_options(g: Any) -> None:
    g.add_argument("--base-model", default=None, metavar="SPEC", help="the base model of a clsgen model "
                   "directory, instead of the one its clsgen.json names (e.g. a local base model that moved)")
    g.add_argument("--trust-remote-code", action="store_true", help="let the base model's own Python code "
                   "(auto_map) run; off by default: only for a model whose code you trust")


def _load_trained(args: argparse.Namespace) -> Any:
    """The clsgen model directory --model, loaded with the caller's trust settings."""
    from ..model import load_pretrained

    model = load_pretrained(args.model, dtype=args.dtype, base_model=getattr(args, "base_model", None),
                            trust_remote_code=getattr(args, "trust_remote_code", False))
    return model.to(_device(args.device))


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding (greedy unless --sample)")
    g.add_argument("--sample", action="store_true", help="sample the explanation instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --sample)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("evaluate", help="run a model on a split: predictions.jsonl, metrics.json, report.html",
                        description="Run a clsgen model on a dataset split and write predictions.jsonl, "
                        "metrics.json and a self-contained report.html.")
    _add_model_options(ev)
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
    _add_sampling_options(ev)
    add_config_options(ev)
    ev.set_defaults(func=run_evaluate)

    pr = sub.add_parser("predict", help="probability, label and explanation for texts",
                        description="Classify and explain one text, --field pairs, or a JSONL file.")
    pr.add_argument("text", nargs="?", help="the text, for a task with a single text field")
    pr.add_argument("--field", action="append", default=[], metavar="NAME=VALUE",
                    help="a task field (repeat for each field of a multi-field task)")
    pr.add_argument("--input", metavar="FILE", help="a JSONL/CSV/Parquet file with the task's fields (and "
                    "optionally id)")
    pr.add_argument("--max-text-chars", type=int, default=MAX_TEXT_CHARS, metavar="N",
                    help=f"refuse an input whose fields hold more than N characters together (default "
                    f"{MAX_TEXT_CHARS:,}, as the server's --max-text-chars)")
    pr.add_argument("--json", action="store_true", help="print JSON (one object per line)")
    pr.add_argument("--no-explain", action="store_true", help="probability and label only")
    pr.add_argument("--dataset", default=None, help="with --untrained-head: the built-in dataset whose task "
                    "to use (default clinifact)")
    _add_model_options(pr)
    _add_sampling_options(pr)
    pr.set_defaults(func=run_predict)

    ca = sub.add_parser("calibrate", help="choose the threshold and fit the temperature on dev; store them",
                        description="Choose the decision threshold and fit temperature scaling on the "
                        "validation split, print metrics before and after, and store both in the model "
                        "directory's clsgen.json (atomically).")
    ca.add_argument("--model", required=True, help="a clsgen model directory")
    ca.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default=None)
    ca.add_argument("--device", default=None)
    _add_trust_options(ca)
    ca.add_argument("--batch-size", type=int, default=None)
    add_data_options(ca)
    ca.add_argument("--split", default="validation", choices=["train", "validation", "dev", "test"],
                    help="split to fit on (default: validation; fitting on test leaks)")
    ca.add_argument("--max-eval", type=int, default=None, help="at most this many examples (stratified)")
    ca.add_argument("--threshold", choices=["max_f1", "youden", "fixed"], default=None,
                    help="threshold rule (default: eval.threshold = max_f1)")
    ca.add_argument("--fixed-threshold", type=float, default=None)
    ca.add_argument("--no-temperature", action="store_true", help="keep T = 1; choose the threshold only")
    ca.add_argument("--n-bootstrap", type=int, default=0, help="bootstrap resamples for the printed metrics")
    ca.add_argument("--dry-run", action="store_true", help="print, do not store")
    ca.add_argument("--json", action="store_true", help="print JSON")
    add_config_options(ca)
    ca.set_defaults(func=run_calibrate)


# ---------------------------------------------------------------------------------- loading


def _model_meta(spec: str) -> dict[str, Any] | None:
    from ..model import META_FILE, read_meta

    return read_meta(spec) if (Path(spec) / META_FILE).is_file() else None


def _default_dataset(args: argparse.Namespace, meta: dict[str, Any] | None) -> None:
    from ..datasets import LOADERS

    if getattr(args, "dataset", None) is None and meta and meta.get("task", {}).get("name") in LOADERS:
        args.dataset = meta["task"]["name"]


def _check_split(ds: Any, split: str, examples: list) -> None:
    """An empty split fails before the model loads, saying which splits the data has."""
    if examples:
        return
    have = [f"{s} ({len(ds.split(s))})" for s in ("train", "validation", "test") if ds.split(s)]
    raise ClsgenError(f"dataset {ds.name!r} has no {split} examples; its splits: {', '.join(have) or 'none'}. A "
                      "single file without a 'split' column is all training data (a validation part is held "
                      "out of it): add a 'split' column or a test file, or pass --split validation")


def _device(name: str | None) -> str:
    import torch

    if name:
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_model_kind(args: argparse.Namespace, meta: dict[str, Any] | None) -> None:
    untrained = getattr(args, "untrained_head", False)
    if meta is not None and untrained:
        raise ClsgenError(f"{args.model} is a trained clsgen model; drop --untrained-head")
    if meta is None and not untrained:
        raise ClsgenError(f"--model {args.model!r} is not a clsgen model directory (no clsgen.json); train one "
                          "with `clsgen train`, or add --untrained-head to run a base model with an untrained "
                          "(random) classification head as a smoke test")


def load_predictor(args: argparse.Namespace, task: Any, meta: dict[str, Any] | None, **kwargs: Any):
    """A Predictor for --model: a clsgen model directory, or a base model with --untrained-head."""
    from ..inference import Predictor

    _check_model_kind(args, meta)
    if meta is not None:
        return Predictor(_load_trained(args), **kwargs)
    from ..backbones import load_model
    from ..model import DualHeadModel

    print(f"note: {args.model} with an UNTRAINED classification head: its probabilities are random",
          file=sys.stderr)
    model = DualHeadModel.from_backbone(load_model(args.model, dtype=args.dtype or "auto",
                                                   trust_remote_code=args.trust_remote_code), task)
    return Predictor(model.to(_device(args.device)).eval(), **kwargs)


def _config(args: argparse.Namespace, meta: dict[str, Any] | None = None):
    from ..datasets import LOADERS

    cfg = config_from_args(args)
    if meta is not None and cfg.data.dataset not in LOADERS and cfg.task.template is None:
        task = meta["task"]  # a user's data file: the model's own task renders it
        cfg.task.template, cfg.task.system = task["template"], task["system"]
        cfg.task.verbalizers = list(task["verbalizers"])
    e = cfg.eval
    for attr, key in (("batch_size", "batch_size"), ("max_new_tokens", "max_new_tokens"),
                      ("threshold", "threshold"), ("fixed_threshold", "fixed_threshold"),
                      ("n_bootstrap", "n_bootstrap"), ("explain", "explain")):
        value = getattr(args, attr, None)
        if value is not None:
            setattr(e, key, value)
    if getattr(args, "max_eval", None) is not None:
        cfg.data.max_eval = args.max_eval
    if getattr(args, "no_temperature", False):
        e.calibrate = False
    if getattr(args, "no_explain", False):
        e.explain = 0
    problems = cfg.validate()  # the flags above bypass the config's own check
    if problems:
        raise ConfigError(problems)
    return cfg


# ---------------------------------------------------------------------------------- evaluate


def run_evaluate(args: argparse.Namespace) -> int:
    from ..datasets import load_dataset
    from ..evaluate import METRICS_FILE, PREDICTIONS_FILE, evaluate
    from ..files import check_run_dir
    from ..estimator import ClsgenClassifier

    started = time.perf_counter()
    meta = _model_meta(args.model)
    _check_model_kind(args, meta)
    _default_dataset(args, meta)
    cfg = _config(args, meta)
    ds = load_dataset(cfg.data, cfg.task)
    examples = ds.split(args.split)
    _check_split(ds, args.split, examples)
    split = "validation" if args.split == "dev" else args.split
    out = check_run_dir(args.out or f"runs/eval-{ds.name}-{split}", (METRICS_FILE, PREDICTIONS_FILE))
    predictor = load_predictor(args, ds.task, meta, batch_size=cfg.eval.batch_size,
                               max_new_tokens=cfg.eval.max_new_tokens, do_sample=args.sample,
                               temperature=args.temperature, top_p=args.top_p, seed=args.seed, progress=True)
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
            "decoding": f"sample T={args.temperature} top_p={args.top_p}" if args.sample else "greedy",
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


# ---------------------------------------------------------------------------------- predict


def _parse_fields(pairs: list[str], names: list[str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ClsgenError(f"--field {pair!r} must be NAME=VALUE (fields: {', '.join(names)})")
        if name not in names:
            raise ClsgenError(f"--field {name!r} is not a field of the task; its fields are {', '.join(names)}")
        if name in fields:
            raise ClsgenError(f"--field {name} is given twice; give each field once")
        fields[name] = value
    missing = [n for n in names if n not in fields]
    if missing:
        raise ClsgenError(f"missing --field {missing[0]}=...; the task needs " +
                          " ".join(f"--field {n}=..." for n in names))
    return fields


MAX_TEXT_CHARS = 100_000


def _check_text_size(chars: int, args: argparse.Namespace, row: int | None) -> None:
    """Refuse a text longer than --max-text-chars: most of it would be truncated away, after work that
    grows with its length."""
    if chars > args.max_text_chars:
        where = f"{args.input} row {row + 1}: " if row is not None else ""
        raise ClsgenError(f"{where}the text has {chars:,} characters; predict accepts at most "
                          f"{args.max_text_chars:,} (--max-text-chars); shorten it or raise the limit")


def _task_for_predict(args: argparse.Namespace, meta: dict[str, Any] | None):
    from ..datasets import CLINIFACT_TASK, LCD_TASK, PUBMEDQA_TASK
    from ..task import Task

    if meta is not None:
        t = meta["task"]
        return Task(**{**t, "verbalizers": tuple(t["verbalizers"])})
    tasks = {"clinifact": CLINIFACT_TASK, "pubmedqa": PUBMEDQA_TASK, "lcd": LCD_TASK}
    name = args.dataset or "clinifact"
    if name not in tasks:
        raise ClsgenError(f"--dataset {name!r}: with --untrained-head, predict takes the task of a built-in "
                          f"dataset ({', '.join(tasks)})")
    return tasks[name]


def run_predict(args: argparse.Namespace) -> int:
    meta = _model_meta(args.model)
    _check_model_kind(args, meta)
    task = _task_for_predict(args, meta)
    given = sum(bool(x) for x in (args.text is not None, args.field, args.input))
    if given != 1:
        raise ClsgenError("give exactly one of: a text, --field NAME=VALUE pairs, or --input FILE "
                          f"(task fields: {', '.join(task.fields)})")
    if args.text is not None:
        if len(task.fields) != 1:
            raise ClsgenError(f"task {task.name!r} has fields {', '.join(task.fields)}; a bare text is "
                              "ambiguous: pass " + " ".join(f"--field {n}=..." for n in task.fields))
        items: list[Any] = [{task.fields[0]: args.text}]
    elif args.field:
        items = [_parse_fields(args.field, task.fields)]
    else:
        from ..data import examples_from_rows, read_rows

        items = examples_from_rows(read_rows(args.input), source=args.input, text_fields=task.fields,
                                   label_field=None, require_label=False)
        if not items:
            raise ClsgenError(f"--input {args.input} holds no examples; give a file with one row per text")
    from ..inference import fields_of

    for i, it in enumerate(items):  # fail before the model is loaded on a bad input
        _check_text_size(sum(len(t) for t in fields_of(it, task).values()), args, i if args.input else None)
    predictor = load_predictor(args, task, meta, batch_size=args.batch_size or 8,
                               max_new_tokens=256 if args.max_new_tokens is None else args.max_new_tokens,
                               do_sample=args.sample, temperature=args.temperature, top_p=args.top_p,
                               seed=args.seed, progress=len(items) > 1)
    for it in items:  # a prompt that cannot fit fails before any model work
        predictor.encode(it)
    explain = not args.no_explain
    words = predictor.task.verbalizers
    if len(items) == 1 and not args.json and explain:
        for event in predictor.stream(items[0]):
            if event.type == "probability":
                print(f"probability {event.probability:.4f}  label {event.label} ({words[event.label]})  "
                      f"threshold {event.threshold:.4g}\n", flush=True)
            elif event.type == "delta":
                print(event.delta, end="", flush=True)
            elif event.prediction is not None:
                print("\n" + verdict_note(event.prediction, words), end="")
        print()
        return 0
    for p in predictor.predict(items, explain=explain):
        if args.json:
            print(json.dumps({**p.to_dict(), "agrees": _agrees(p)}, ensure_ascii=False, allow_nan=False),
                  flush=True)
        else:
            head = f"{p.id + '  ' if p.id else ''}probability {p.probability:.4f}  label {p.label} ({words[p.label]})"
            print(head + (f"\n{p.text}\n{verdict_note(p, words)}\n" if p.text is not None else ""), flush=True)
    return 0


def _agrees(p: Any) -> bool | None:
    """Whether the explanation's stated verdict is the label (None: nothing generated)."""
    return None if p.text is None else p.verdict == p.label


def verdict_note(p: Any, words: Sequence[str]) -> str:
    """One line saying whether the explanation's verdict agrees with the thresholded probability."""
    if p.verdict is None:
        return "note: the explanation states no clear verdict"
    if p.verdict != p.label:
        return (f"warning: the explanation concludes {words[p.verdict]}, but the probability gives "
                f"{words[p.label]}: treat this explanation with caution")
    return f"the explanation's verdict ({words[p.verdict]}) agrees with the label"


# ---------------------------------------------------------------------------------- calibrate


def run_calibrate(args: argparse.Namespace) -> int:
    from ..calibration import format_calibration, store_calibration
    from ..estimator import calibrate_predictor
    from ..datasets import load_dataset
    from ..inference import Predictor

    meta = _model_meta(args.model)
    if meta is None:
        raise ClsgenError(f"--model {args.model!r} is not a clsgen model directory (no clsgen.json); "
                          "train one with `clsgen train`")
    _default_dataset(args, meta)
    cfg = _config(args, meta)
    ds = load_dataset(cfg.data, cfg.task)
    examples = ds.split(args.split)
    _check_split(ds, args.split, examples)
    split = "validation" if args.split == "dev" else args.split
    if split == "test":
        print("warning: fitting the threshold and temperature on the test split makes test metrics "
              "optimistic", file=sys.stderr)
    predictor = Predictor(_load_trained(args), batch_size=cfg.eval.batch_size, progress=True)
    cal = calibrate_predictor(predictor, examples, method=cfg.eval.threshold, fixed=cfg.eval.fixed_threshold,
                              temperature=cfg.eval.calibrate, n_boot=args.n_bootstrap, split=split)
    if args.json:
        print(json.dumps(cal.to_meta(), indent=2))
    else:
        print(format_calibration(cal))
    if args.dry_run:
        print("dry run: nothing stored", file=sys.stderr)
    else:
        path = store_calibration(args.model, cal)
        print(f"stored in {path}", file=sys.stderr)
    return 0
