"""The whole comparison on one dataset: synth -> train CLSGen and its ablations -> baselines -> one table.

Every step writes its outputs atomically under `experiment.out_dir` and is skipped when they exist,
so a rerun after a crash (or Ctrl-C) continues where it stopped; the training steps resume from
their own checkpoints. The configuration of a run is recorded; a rerun with different settings is
refused instead of mixing results (use another out_dir).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import Config
from .datasets import DatasetSplits, load_dataset
from .errors import ClsgenError
from .files import atomic_write_files, atomic_write_json, check_writable, write_error
from .results_page import render_results_page

METHODS = ("clsgen", "clsgen+consistency", "clsgen+head-verdict", "clsgen+rejection", "classification-only",
           "generation-only", "prompting", "cnn", "tfidf")
LLM_TRAINED = {"clsgen": {"w_consistency": 0.0}, "clsgen+consistency": {},
               "classification-only": {"w_lm": 0.0, "w_consistency": 0.0},
               "generation-only": {"w_cls": 0.0, "w_consistency": 0.0}}
"""Each LLM-trained method: its overrides of train.* ('clsgen+consistency' keeps train.w_consistency,
1.0 when the config leaves it at 0)."""
DECODING_VARIANTS = {"clsgen+head-verdict": "clsgen+consistency", "clsgen+rejection": "clsgen+consistency"}
"""Methods that decode a trained method's model another way (no training of their own): the model they
use. 'clsgen+head-verdict' forces the verdict to the head's calibrated label (head-conditioned decoding):
its alignment is 1 by construction, so the table shows it as undefined, never as a result.
'clsgen+rejection' redraws (samples) an explanation whose verdict disagrees with the head's calibrated
label, up to eval.rejection_samples in all: its inconsistency and readability are of the kept draws
(selected), its first draws are its source's own explanations (`first_draw_inconsistency`)."""
FORCED = ("clsgen+head-verdict",)
"""Decoding variants whose agreement is forced (the metrics of BY_CONSTRUCTION are not measurements)."""
BY_CONSTRUCTION = ("alignment_auroc", "alignment_kappa", "inconsistency_rate")
VERDICT_READ = ("generation-only", "prompting")
"""Methods whose probability is read from the verdict token itself (the verbalizers' probabilities where
the explanation states its verdict): the greedy verdict is that probability's argmax, so their alignment
AUROC is 1, or nearly, by construction (prompting: when the verdict opens the turn, where it is read)."""
GENERATING = {"clsgen", "clsgen+consistency", "clsgen+head-verdict", "clsgen+rejection", "classification-only",
              "generation-only", "prompting"}
CALIBRATED = ("clsgen", "clsgen+consistency", "classification-only")
"""Methods whose model directory keeps the threshold and temperature fitted by evaluation."""
TABLE_METRICS = ("auroc", "auprc", "f1", "ece", "brier", "alignment_auroc", "alignment_kappa",
                 "inconsistency_rate", "readability", "flesch")
OPTIONAL_METRICS = ("body_stance_auroc", "first_draw_inconsistency", "draws")
"""Columns shown only when a method has them (the body stance: with a decoding variant in the run;
the first draws and draws: with rejection sampling)."""
RUN_FILE = "experiment.json"


@dataclass
class ExperimentResult:
    """Metrics of every method, the table and where everything is."""

    out_dir: Path
    methods: dict[str, dict[str, Any]]
    table_markdown: str
    paths: dict[str, Path] = field(default_factory=dict)


UNRECORDED = ("out_dir", "methods", "title", "cache_dir")
"""Settings the results do not depend on: where they go, which methods a run does, the page's title and
where the trunk cache lives (its entries are keyed by what they depend on, so experiments share one)."""


def _settings(cfg: Config) -> dict[str, Any]:
    """What the results depend on (`UNRECORDED` settings may change between runs)."""
    d = cfg.to_dict()
    for section in ("experiment", "train"):
        d[section] = {k: v for k, v in d[section].items() if k not in UNRECORDED}
    return d


def _fingerprint(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(_settings(cfg), sort_keys=True).encode()).hexdigest()[:16]


def _check_run(cfg: Config, out: Path) -> None:
    record = out / RUN_FILE
    fp = _fingerprint(cfg)
    if record.is_file():
        old = json.loads(record.read_text())
        if old.get("fingerprint") != fp:
            # settings that a later clsgen added, at their defaults, leave an earlier run's results valid
            changed = _changed_keys(old.get("config", {}), cfg.to_dict(), Config().to_dict())
            if changed or not old.get("config"):
                raise ClsgenError(f"{out} holds an experiment with other settings ({', '.join(changed) or 'config'} "
                                  "changed); results would mix. Use another experiment.out_dir (--out) or "
                                  "delete the folder")
        return
    atomic_write_json(record, {"fingerprint": fp, "config": cfg.to_dict(), "started": time.time()})


def _changed_keys(a: dict[str, Any], b: dict[str, Any], defaults: dict[str, Any], prefix: str = "") -> list[str]:
    """The settings that differ between configs `a` (recorded) and `b`; a setting absent from `a` counts
    only when `b` moves it from its default."""
    keys = []
    for k in sorted(set(a) | set(b)):
        if k in UNRECORDED:
            continue
        x, y, d = a.get(k), b.get(k), defaults.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            keys += _changed_keys(x, y, d if isinstance(d, dict) else {}, f"{prefix}{k}.")
        elif x != y and not (k not in a and k in defaults and y == d):
            keys.append(f"{prefix}{k}")
    return keys


def run_experiment(cfg: Config, out_dir: str | Path | None = None, *, methods: list[str] | None = None,
                   log: Callable[[str], None] = print, show_examples: bool = False,
                   command: str | None = None,
                   reuse: str | Path | Sequence[str | Path] | None = None) -> ExperimentResult:
    """Run (or continue) the comparison described by `cfg`; returns every method's metrics.

    show_examples: put sample explanations in each method's report.html, the synth report and the
    side-by-side rows of results.html (off by default: generated text can quote the often clinical
    inputs; results.md/json never hold text, results.html only with show_examples). Steps done by an
    earlier run keep the reports they wrote.
    command: the command line that started the run, recorded in results.json and shown on results.html.
    reuse: results.json files of runs with the same settings (e.g. one committed under docs/results/, or
    those of parallel runs that each did some methods): their methods count as done (their metrics are
    copied into the run; a method held by several comes from the first), so only the others run.
    """
    methods = list(methods or cfg.experiment.methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ClsgenError(f"experiment.methods {unknown} unknown; choose from {', '.join(METHODS)}")
    problems = cfg.validate()
    if problems:
        from .errors import ConfigError

        raise ConfigError(problems)
    out = Path(out_dir or cfg.experiment.out_dir)
    check_writable(out, "experiment folder")  # read-only or misplaced: fail before any work
    _check_run(cfg, out)
    for path in [reuse] if isinstance(reuse, (str, Path)) else reuse or []:
        _reuse_results(cfg, Path(path), methods, out, log)
    ds = load_dataset(cfg.data, cfg.task)
    log(f"[data] {ds.name}: train {len(ds.train)}, validation {len(ds.validation)}, test {len(ds.test)}"
        + (f" (subsampled: max_train={cfg.data.max_train}, max_validation={ds.info.get('max_validation')}, "
           f"max_eval={cfg.data.max_eval})" if cfg.data.max_train or ds.info.get("max_validation") else ""))

    skipped = [m for m in methods if m in FORCED and ds.task.verdict_position != "first"]
    if skipped:
        log(f"[{', '.join(skipped)}] skipped: head-conditioned decoding forces the verdict that opens the turn "
            "(task.verdict_position=first)")
        methods = [m for m in methods if m not in skipped]

    synth_path = None
    if any(m in LLM_TRAINED or m in DECODING_VARIANTS for m in methods):
        if cfg.experiment.explanations:  # made once (e.g. shipped): no teacher runs
            from .synth.store import explanations_path

            synth_path = explanations_path(cfg.experiment.explanations)
            log(f"[synth] teacher explanations read from {synth_path} (no teacher runs; see docs/synth.md)")
        else:
            synth_path = _synth_step(cfg, ds, out, log, show_examples)

    results: dict[str, dict[str, Any]] = {}
    for method in methods:
        results[method] = _method_step(cfg, ds, method, out, synth_path, log, show_examples)
    _judge_stances(cfg, ds, results, out, log)

    table = results_table(results, cfg, ds)
    paths = {"markdown": out / "results.md", "json": out / "results.json", "html": out / "results.html"}
    run = _run_facts(cfg, ds, methods, command)
    page = render_results_page(results, title=cfg.experiment.title or f"clsgen — {ds.name}", run=run,
                               out_dir=out, show_examples=show_examples)
    atomic_write_files([  # one unit: a full disk leaves the tables of an earlier run as they were
        (paths["markdown"], (table + "\n").encode("utf-8")),
        (paths["html"], page.encode("utf-8")),
        (paths["json"], (json.dumps({"dataset": ds.name, "info": ds.info, "run": run, "methods": results},
                                    indent=2, ensure_ascii=False) + "\n").encode("utf-8")),
    ])
    return ExperimentResult(out, results, table, paths)


# ---------------------------------------------------------------------------- steps


def _reuse_results(cfg: Config, path: Path, methods: list[str], out: Path, log: Callable[[str], None]) -> None:
    """Copy the metrics of `methods` held by the results.json at `path` into `out` as done steps, after
    checking that its run had the settings of `cfg`; methods already done in `out` keep their own."""
    from .evaluate import METRICS_FILE
    from .stance import STANCE_FILE

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        held, recorded = data["methods"], data["run"].get("config")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ClsgenError(f"--reuse {path}: not a readable results.json of `clsgen experiment` ({e}); "
                          "pass the results.json an experiment wrote") from None
    if not isinstance(recorded, dict):
        raise ClsgenError(f"--reuse {path}: the file does not record its run's settings (run.config), so its "
                          "results cannot be checked against this run's; rerun those methods instead")
    changed = _changed_keys(recorded, cfg.to_dict(), Config().to_dict())
    if changed:
        raise ClsgenError(f"--reuse {path}: its run had other settings ({', '.join(changed)} changed); its "
                          "results would mix with this run's")
    if data["run"].get("dtype") not in (None, _dtype(cfg)):
        log(f"[reuse] {path} ran in {data['run']['dtype']}; model.dtype {cfg.model.dtype!r} gives "
            f"{_dtype(cfg)} on this machine: the rows that run here differ in dtype (the table says so)")
    for method in methods:
        r, eval_dir = held.get(method), out / "eval" / method
        if not isinstance(r, dict) or (eval_dir / METRICS_FILE).is_file():
            continue
        metrics = r.get("metrics") or {}
        stance = {k: v for k, v in metrics.items() if k.startswith("body_stance_")}
        summary = {"metrics": {k: v for k, v in metrics.items() if k not in stance}, "info": r.get("info"),
                   "timing_s": r.get("timing_s"), "n_explained": r.get("n_explained"), "reused_from": str(path)}
        files = [(eval_dir / METRICS_FILE, json.dumps(summary, indent=2).encode("utf-8"))]
        if stance:  # judged by the run that made it: no explanations here to judge again
            files.append((eval_dir / STANCE_FILE, json.dumps({"metrics": stance, "rows": [],
                                                              "reused_from": str(path)}).encode("utf-8")))
        atomic_write_files(files)
        log(f"[{method}] metrics reused from {path}")


def _synth_step(cfg: Config, ds: DatasetSplits, out: Path, log: Callable[[str], None],
                show_examples: bool = False) -> Path:
    from .synth import synthesize

    examples = [ex for split in cfg.experiment.synth_splits for ex in ds.split(split)]
    path = out / "synth" / "train.jsonl"
    log(f"[synth] teacher {_teacher_name(cfg)} explains {len(examples)} examples "
        f"-> {path}")
    try:
        report = synthesize(examples, ds.task, cfg.teacher, path, n_samples=4 if show_examples else 0)
    except OSError as e:  # e.g. appending to the JSONL on a full disk: name the file, keep what is saved
        raise write_error(e.filename or path, e, f"the records already in {path} are intact; rerun to "
                          "resume") from None
    log(f"[synth] {report.summary_line()}" if hasattr(report, "summary_line") else "[synth] done")
    return path


def _method_config(cfg: Config, method: str, out: Path | None = None) -> Config:
    c = copy.deepcopy(cfg)
    for k, v in LLM_TRAINED.get(method, {}).items():
        setattr(c.train, k, v)
    if method == "clsgen+consistency" and c.train.w_consistency == 0:
        c.train.w_consistency = 1.0
    if out is not None and c.train.cache_dir is None:  # every method of the run shares one trunk cache
        c.train.cache_dir = str(out / "trunk-cache")
    return c


def _classifier(cfg: Config, ds: DatasetSplits, method: str, out: Path, synth_path: Path | None,
                log: Callable[[str], None]) -> Any:
    ev = cfg.eval
    if method in DECODING_VARIANTS:
        from .estimator import ClsgenClassifier

        source = DECODING_VARIANTS[method]
        _classifier(cfg, ds, source, out, synth_path, log)  # trains the model it decodes when missing
        how = ({"condition_on_head": True} if method in FORCED else
               {"rejection_samples": ev.rejection_samples, "rejection_temperature": ev.rejection_temperature})
        clf = ClsgenClassifier(out / "models" / source, **_decoding(ev), **how, threshold_method=ev.threshold,
                               fixed_threshold=ev.fixed_threshold, calibrate=ev.calibrate)
        log(f"[{method}] decoding {source}'s model "
            + ("with the verdict forced to the head's label" if method in FORCED else
               f"redrawing explanations that disagree with the head's label (up to {ev.rejection_samples} "
               f"draws, sampled at temperature {ev.rejection_temperature})")
            + " (calibrated on the validation split first)")
        return clf.calibrate(ds.validation)
    if method in LLM_TRAINED:
        from .train import train
        from .training_data import join_explanations

        model_dir = out / "models" / method
        if not (model_dir / "clsgen.json").is_file():
            mc = _method_config(cfg, method, out)
            log(f"[{method}] training (w_cls={mc.train.w_cls}, w_lm={mc.train.w_lm}, "
                f"w_consistency={mc.train.w_consistency}) -> {model_dir}")
            examples = join_explanations(ds.train, synth_path) if synth_path is not None else ds.train
            train(mc, examples, ds.validation, model_dir, resume=True, task=ds.task)
        if method == "generation-only":
            from .baselines.generation_only import GenerationOnlyClassifier

            # its probability is read where it was trained to state the verdict
            scoring = "prefix" if ds.task.verdict_position == "first" else "explanation"
            return GenerationOnlyClassifier(model_dir, **_decoding(ev), scoring=scoring)
        from .estimator import ClsgenClassifier

        return ClsgenClassifier(model_dir, **_decoding(ev))
    from .baselines import make_baseline

    if method == "prompting":
        return make_baseline("prompting", backbone_or_spec=cfg.model.name, task=ds.task,
                             **_decoding(ev), dtype=cfg.model.dtype)
    return make_baseline(method, task=ds.task)


def _dtype(cfg: Config) -> str:
    """The dtype the model runs in on this machine ('auto' resolves per machine: bfloat16 where the CPU
    or GPU computes it natively, else float32), recorded with each LLM row."""
    from .backbones import resolve_dtype

    return str(resolve_dtype(cfg.model.dtype)).removeprefix("torch.")


def _decoding(ev: Any) -> dict[str, int]:
    """The same batching and decoding settings for every generating method."""
    return {"batch_size": ev.batch_size, "max_new_tokens": ev.max_new_tokens,
            "no_repeat_ngram_size": ev.no_repeat_ngram_size}


def _method_step(cfg: Config, ds: DatasetSplits, method: str, out: Path, synth_path: Path | None,
                 log: Callable[[str], None], show_examples: bool = False) -> dict[str, Any]:
    from .evaluate import METRICS_FILE, evaluate

    eval_dir = out / "eval" / method
    done = eval_dir / METRICS_FILE
    if done.is_file():
        log(f"[{method}] done earlier: {done}")
        summary = json.loads(done.read_text())
        if method in CALIBRATED and summary.get("temperature") is not None:
            # a run killed between writing metrics.json and storing the calibration: store it now
            _store_calibration(out / "models" / method, summary["threshold"], summary["temperature"], ds,
                               cfg.eval.threshold, only_if_missing=True)
        return _summary(summary, eval_dir, _by_construction(method, ds.task))
    started = time.perf_counter()
    clf = _classifier(cfg, ds, method, out, synth_path, log)
    if method not in LLM_TRAINED and method not in DECODING_VARIANTS:
        log(f"[{method}] fitting on {len(ds.train)} train / {len(ds.validation)} validation examples")
        clf.fit(ds.train, ds.validation)
    fit_seconds = time.perf_counter() - started
    ev = cfg.eval
    explain = ev.explain if method in GENERATING else 0
    log(f"[{method}] evaluating on {len(ds.test)} test examples"
        + (f", explaining {explain if explain is not None else len(ds.test)}" if method in GENERATING else ""))
    result = evaluate(clf, ds.test, eval_dir, validation=ds.validation, explain=explain,
                      n_bootstrap=ev.n_bootstrap, threshold_method=ev.threshold,
                      fixed_threshold=ev.fixed_threshold, calibrate=ev.calibrate,
                      max_new_tokens=ev.max_new_tokens, verbalizers=ds.task.verbalizers,
                      show_examples=show_examples, title=f"{method} — {ds.name}",
                      info={"method": method, "fit_seconds": round(fit_seconds, 1),
                            **({"dtype": _dtype(cfg)} if method in GENERATING else {})})
    log(f"[{method}] AUROC {_fmt(result.summary.get('metrics', {}).get('auroc'))} -> {eval_dir}")
    if method in CALIBRATED and result.temperature is not None:
        _store_calibration(out / "models" / method, result.threshold, result.temperature, ds, ev.threshold)
    return _summary(result.summary, eval_dir, _by_construction(method, ds.task))


def _judge_stances(cfg: Config, ds: DatasetSplits, results: dict[str, dict[str, Any]], out: Path,
                    log: Callable[[str], None]) -> None:
    """With head-conditioned decoding in the run: the body stance (`clsgen.stance`) of its explanations
    and of its source model's own, judged by the base model; kept in each eval folder's stance.json."""
    from .evaluate import PREDICTIONS_FILE
    from .stance import STANCE_FILE, judged_rows, stance_metrics, stance_shift

    judged = [m for variant, source in DECODING_VARIANTS.items() if variant in results
              for m in (source, variant) if m in results]
    judge = None
    for method in judged:
        path = out / "eval" / method / STANCE_FILE
        if not path.is_file():
            rows = [json.loads(line) for line in (path.parent / PREDICTIONS_FILE).read_text().splitlines()]
            judged_by_id = judged_rows(rows, ds.task)
            if not judged_by_id:
                continue
            if judge is None:
                from .backbones import load_model

                judge = load_model(cfg.model.name, dtype=cfg.model.dtype)
            test = {str(ex.id): ex for ex in ds.test}
            log(f"[{method}] judging the stance of {len(judged_by_id)} explanation bodies with {cfg.model.name}")
            shift = stance_shift(judge.model, judge.tokenizer, ds.task, [test[i] for i, _, _ in judged_by_id],
                                 [body for _, body, _ in judged_by_id], cfg.eval.batch_size)
            verdicts = [v for _, _, v in judged_by_id]
            metrics = stance_metrics(shift, verdicts, cfg.eval.n_bootstrap, cfg.data.seed)
            atomic_write_json(path, {"judge": cfg.model.name, "metrics": {k: v.to_dict() for k, v in metrics.items()},
                                     "rows": [{"id": i, "verdict": v, "stance": round(float(s), 4)}
                                              for (i, _, v), s in zip(judged_by_id, shift)]})
        results[method]["metrics"] = {**(results[method]["metrics"] or {}),
                                      **json.loads(path.read_text())["metrics"]}


def _store_calibration(model_dir: Path, threshold: float, temperature: float, ds: DatasetSplits, method: str,
                       only_if_missing: bool = False) -> None:
    """Keep the threshold and temperature that evaluation fitted on the dev split with the model, so
    `clsgen predict` and `clsgen serve` use them."""
    from .calibration import Calibration, store_calibration
    from .model_io import read_meta

    if only_if_missing:
        meta = read_meta(model_dir)
        if meta.get("threshold") == threshold and meta.get("temperature") == temperature:
            return
    positives = sum(1 for ex in ds.validation if ex.label == 1)
    store_calibration(model_dir, Calibration(threshold=threshold, temperature=temperature,
                                             method=method, n=len(ds.validation), positives=positives))


def _by_construction(method: str, task: Any) -> tuple[str, ...]:
    """The metrics of `method` that its design fixes, so they are not measurements."""
    if method in FORCED:  # agreement forced
        return BY_CONSTRUCTION
    if method in VERDICT_READ and (method != "prompting" or task.verdict_position == "first"):
        return ("alignment_auroc",)
    return ()


def _summary(metrics_json: dict[str, Any], eval_dir: Path, by_construction: tuple[str, ...] = ()) -> dict[str, Any]:
    keys = ("metrics", "info", "timing_s", "n_explained")
    out = {**{k: metrics_json.get(k) for k in keys}, "report": str(eval_dir / "report.html")}
    if metrics_json.get("reused_from"):  # its report and predictions stayed with the run that made it
        out = {**out, "report": None, "reused_from": metrics_json["reused_from"]}
    if by_construction and out.get("metrics"):  # not measurements: shown as —
        out["metrics"] = {k: v for k, v in out["metrics"].items() if k not in by_construction}
        out["by_construction"] = list(by_construction)
    return out


# ---------------------------------------------------------------------------- table


def _fmt(m: dict[str, Any] | None, with_ci: bool = False) -> str:
    if not m or m.get("value") is None:
        return "—"
    v = f"{m['value']:.3f}" if abs(m["value"]) < 10 else f"{m['value']:.1f}"
    if with_ci and m.get("low") is not None and m.get("high") is not None:
        lo, hi = m["low"], m["high"]
        v += f" ({lo:.2f}–{hi:.2f})" if abs(hi) < 10 else f" ({lo:.0f}–{hi:.0f})"
    return v


def results_table(results: dict[str, dict[str, Any]], cfg: Config, ds: DatasetSplits) -> str:
    """A Markdown table: one row per method, metrics with bootstrap 95% intervals."""
    keys = TABLE_METRICS + tuple(k for k in OPTIONAL_METRICS if any(k in (r["metrics"] or {}) for r in results.values()))
    head = "| method | " + " | ".join(keys) + " |"
    lines = [head, "|" + "---|" * (len(keys) + 1)]
    for method, r in results.items():
        m = r["metrics"] or {}
        cells = [_fmt(m.get(k), with_ci=k in ("auroc", "f1", "alignment_auroc", "readability", "body_stance_auroc"))
                 for k in keys]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    n_expl = {meth: ((r["metrics"] or {}).get("readability") or {}).get("n") for meth, r in results.items()}
    note = (f"\nTest split: {len(ds.test)} examples of {ds.name}"
            f" ({ds.info.get('binarization', '')}, {ds.info.get('split', 'official')} split); "
            f"training examples: {len(ds.train)}; validation: {len(ds.validation)}. "
            f"Explanation metrics computed on: "
            + ", ".join(f"{k} {v}" for k, v in n_expl.items() if v) + " rows. "
            f"Base model: {cfg.model.name}; teacher: {_teacher_name(cfg)}. "
            "Intervals: bootstrap 95%.")
    forced = [m for m in results if m in FORCED]
    if forced:
        note += (f" {', '.join(forced)}: the verdict is forced to the head's label, so its alignment and "
                 "inconsistency are not measurements (shown as —).")
    read = [m for m, r in results.items() if m in VERDICT_READ and r.get("by_construction")]
    if read:
        note += (f" {', '.join(read)}: the probability is read from the verdict token the explanation states, "
                 "so its alignment AUROC is 1, or nearly, by construction (shown as —); κ and inconsistency "
                 "compare that verdict with the label at the calibrated threshold.")
    dtypes = {m: (r.get("info") or {}).get("dtype") for m, r in results.items() if m in GENERATING}
    if len(set(dtypes.values())) > 1:  # e.g. rows reused from a run on a machine that resolved 'auto' apart
        note += (" The LLM rows ran in different dtypes (model.dtype 'auto' resolves per machine): "
                 + ", ".join(f"{m} {d or 'not recorded'}" for m, d in dtypes.items()) + ".")
    redrawn = [m for m, r in results.items() if "draws" in (r["metrics"] or {})]
    if redrawn:
        note += (f" {', '.join(redrawn)}: rejection sampling; an explanation whose verdict disagrees with the head's "
                 f"label is sampled again, up to {cfg.eval.rejection_samples} draws (draws: the mean decoded per "
                 "row); inconsistency and readability are of the kept draws, first_draw_inconsistency of the "
                 "first (the model's own).")
    if "body_stance_auroc" in keys:
        note += (" body_stance_auroc: the base model's stance from each explanation's body (its log-odds of "
                 "label 1 with the body minus without) against the verdict the explanation states; 0.5 = the "
                 "bodies ignore their verdict (see clsgen/stance.py).")
    return "\n".join(lines) + "\n" + note


def _teacher_name(cfg: Config) -> str:
    t = cfg.teacher
    return f"reference field '{t.reference_field}'" if t.kind == "reference" else f"{t.kind}:{t.model}"


def _run_facts(cfg: Config, ds: DatasetSplits, methods: list[str], command: str | None) -> dict[str, Any]:
    """What the results page says was run (also kept in results.json under "run")."""
    teacher = None
    if any(m in LLM_TRAINED for m in methods):
        teacher = (f"explanations read from {cfg.experiment.explanations}" if cfg.experiment.explanations
                   else _teacher_name(cfg))
    return {"dataset": ds.name, "split": ds.info.get("split"), "binarization": ds.info.get("binarization"),
            "n_test": len(ds.test), "n_train": len(ds.train), "n_validation": len(ds.validation),
            "model": cfg.model.name, "dtype": _dtype(cfg), "teacher": teacher,
            "verbalizers": list(ds.task.verbalizers),
            "command": command, "config": _settings(cfg)}
