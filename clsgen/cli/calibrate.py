"""`clsgen calibrate`: choose the threshold and fit the temperature on dev; store them with the model."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import ClsgenError
from .common import add_config_options, add_data_options
from .model_options import add_trust_options, load_split, load_trained, model_meta


def register(sub: argparse._SubParsersAction) -> None:
    ca = sub.add_parser("calibrate", help="choose the threshold and fit the temperature on dev; store them",
                        description="Choose the decision threshold and fit temperature scaling on the "
                        "validation split, print metrics before and after, and store both in the model "
                        "directory's clsgen.json (atomically).")
    ca.add_argument("--model", required=True, help="a clsgen model directory")
    ca.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default=None)
    ca.add_argument("--device", default=None)
    add_trust_options(ca)
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


def run_calibrate(args: argparse.Namespace) -> int:
    from ..calibration import format_calibration, store_calibration
    from ..estimator import calibrate_predictor
    from ..inference import Predictor

    meta = model_meta(args.model)
    if meta is None:
        raise ClsgenError(f"--model {args.model!r} is not a clsgen model directory (no clsgen.json); "
                          "train one with `clsgen train`")
    cfg, _, examples, split = load_split(args, meta)
    if split == "test":
        print("warning: fitting the threshold and temperature on the test split makes test metrics "
              "optimistic", file=sys.stderr)
    predictor = Predictor(load_trained(args), batch_size=cfg.eval.batch_size, progress=True)
    cal = calibrate_predictor(predictor, examples, method=cfg.eval.threshold, fixed=cfg.eval.fixed_threshold,
                              scale_temperature=cfg.eval.calibrate, n_boot=args.n_bootstrap, split=split)
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
