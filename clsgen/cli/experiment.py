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
    p.add_argument("--reuse", metavar="RESULTS_JSON", action="append", help="a results.json of a run with the "
                   "same settings (e.g. docs/results/<config>.json): the methods it holds count as done, so only "
                   "the others run; repeat it to assemble runs that each did some methods")
    p.set_defaults(func=run_experiment_cmd)

    d = sub.add_parser("demo", help="the whole pipeline on a small CliniFact slice (about 15 min on a CPU)")
    d.add_argument("--out", help="output folder (default: runs/demo)")
    d.add_argument("--data-dir", help="folder holding the built-in datasets")
    d.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides")
    d.add_argument("--show-examples", action="store_true", help=SHOW_EXAMPLES_HELP)
    d.add_argument("--fresh-teacher", action="store_true", help="run the teacher (the embedded model, about 20 s "
                   "per training row on 2 cores) instead of reading the explanations shipped with clsgen")
    d.set_defaults(func=run_demo, config="demo")


def _run(args: argparse.Namespace) -> object:
    from ..experiment import RUN_FILE, run_experiment
    from ..files import check_run_dir

    args.config = str(packaged_config(args.config)) if args.config else None
    cfg = config_from_args(args)
    methods = [m.strip() for m in args.methods.split(",")] if getattr(args, "methods", None) else None
    check_run_dir(args.out or cfg.experiment.out_dir, (RUN_FILE,))
    command = shlex.join(["clsgen", *getattr(args, "argv", [])]) if getattr(args, "argv", None) else None
    result = run_experiment(cfg, args.out, methods=methods, show_examples=args.show_examples, command=command,
                            reuse=getattr(args, "reuse", None))
    print()
    print(result.table_markdown)
    print()
    print(f"Report: {result.paths['html']}")
    return result


def run_experiment_cmd(args: argparse.Namespace) -> int:
    _run(args)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    if args.fresh_teacher:
        args.overrides = [*args.overrides, "experiment.explanations=null"]
    result = _run(args)
    shown = demo_example(Path(result.out_dir), result.methods)
    if shown is None:
        print("\nNo explained test row of a CLSGen model has a complete explanation whose verdict agrees "
              "with its probability.")
        return 0
    method, row, stats = shown
    from ..datasets import load_dataset

    cfg = config_from_args(args)
    fields = next((ex.fields for ex in load_dataset(cfg.data, cfg.task).test if str(ex.id) == row["id"]), {})
    print(f"\nOne test prediction of {method} ({stats['agree']} of its {stats['explained']} explained test "
          f"rows end their explanation and state the verdict its probability gives; this is the first):")
    if "claim" in fields:
        print(f"  claim: {fields['claim'][:300]}")
    print(f"  gold label: {row['label']}   probability: {row['probability']:.3f}   label: {row['prediction']}")
    print(f"  explanation: {row['text']}")
    return 0


def demo_example(out_dir: Path, methods: dict[str, object]) -> tuple[str, dict, dict[str, int]] | None:
    """The first explained test row of the first CLSGen method whose explanation is complete (not cut by
    the token limit) and states the verdict its probability gives, with how many rows are so."""
    import json

    from ..evaluate import PREDICTIONS_FILE

    for method in (m for m in methods if m.startswith("clsgen")):
        path = out_dir / "eval" / method / PREDICTIONS_FILE
        if not path.is_file():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        explained = [r for r in rows if r.get("explained")]
        agree = [r for r in explained if not r.get("cut_off") and r.get("verdict") == r["prediction"]
                 and (r.get("explanation") or "").strip()]
        if agree:
            return method, agree[0], {"explained": len(explained), "agree": len(agree)}
    return None
