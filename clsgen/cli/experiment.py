"""`clsgen experiment` (the whole comparison) and `clsgen demo` (the same on a small CliniFact slice)."""

from __future__ import annotations

import argparse
import shlex
from importlib import resources
from pathlib import Path

from ..errors import ClsgenError
from .common import add_config_options, add_data_options, config_from_args

SHOW_EXAMPLES_HELP = ("put sample explanations (with ids) in each method's report.html and the synth report; "
                     "off by default, because generated text can quote its (often clinical) input")


def packaged_config(name: str) -> Path:
    """A config shipped with clsgen ('demo', 'clinifact', 'pubmedqa', ...), or the path as given."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    shipped = resources.files("clsgen") / "configs" / f"{name}.yaml"
    if not shipped.is_file():
        names = sorted(p.name.removesuffix(".yaml") for p in (resources.files("clsgen") / "configs").iterdir()
                       if p.name.endswith(".yaml"))
        raise ClsgenError(f"--config {name!r} is neither a YAML file nor a shipped config ({', '.join(names)})")
    return Path(str(shipped))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="synth -> train CLSGen and baselines -> evaluate all -> one table")
    add_config_options(p)
    add_data_options(p)
    p.add_argument("--out", help="output folder (default: experiment.out_dir); a rerun continues there")
    p.add_argument("--methods", help="comma-separated subset, e.g. clsgen,tfidf (default: experiment.methods)")
    p.add_argument("--show-examples", action="store_true", help=SHOW_EXAMPLES_HELP)
    p.set_defaults(func=run_experiment_cmd)

    d = sub.add_parser("demo", help="the whole pipeline on a small CliniFact slice (about 15 min on a CPU)")
    d.add_argument("--out", help="output folder (default: runs/demo)")
    d.add_argument("--data-dir", help="folder holding the built-in datasets")
    d.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides")
    d.add_argument("--show-examples", action="store_true", help=SHOW_EXAMPLES_HELP)
    d.set_defaults(func=run_demo, config="demo")


def _run(args: argparse.Namespace) -> object:
    from ..experiment import RUN_FILE, run_experiment
    from ..files import check_run_dir

    args.config = str(packaged_config(args.config)) if args.config else None
    cfg = config_from_args(args)
    methods = [m.strip() for m in args.methods.split(",")] if getattr(args, "methods", None) else None
    check_run_dir(args.out or cfg.experiment.out_dir, (RUN_FILE,))
    command = shlex.join(["clsgen", *getattr(args, "argv", [])]) if getattr(args, "argv", None) else None
    result = run_experiment(cfg, args.out, methods=methods, show_examples=args.show_examples, command=command)
    print()
    print(result.table_markdown)
    print()
    print(f"Report: {result.paths['html']}")
    return result


def run_experiment_cmd(args: argparse.Namespace) -> int:
    _run(args)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    result = _run(args)
    model_dir = Path(result.out_dir) / "models" / "clsgen"
    if model_dir.is_dir():
        from ..datasets import load_dataset
        from ..inference import Predictor

        cfg = config_from_args(args)
        example = load_dataset(cfg.data, cfg.task).test[0]
        pred = Predictor.from_pretrained(model_dir, max_new_tokens=cfg.eval.max_new_tokens).predict([example])[0]
        print("\nOne prediction of the CLSGen model (a test example):")
        print(f"  claim: {example.fields['claim'][:200]}")
        print(f"  gold label: {example.label}   probability: {pred.probability:.3f}   "
              f"label: {pred.label} (threshold {pred.threshold:.3f})")
        print(f"  explanation: {pred.explanation}")
        print(f"  verdict stated by the explanation: {pred.verdict}")
    return 0
