"""`clsgen train`: dual-head LoRA fine-tuning."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ClsgenError
from .common import add_config_options, add_data_options, add_model_option, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="fine-tune LoRA + classification head on teacher explanations",
        description="Train the dual-head model on a synth JSONL (clsgen synth output), evaluate on the dev "
                    "split, keep the best checkpoint by dev AUROC. Runs unchanged under `accelerate launch` "
                    "or `torchrun` (DDP, FSDP, DeepSpeed ZeRO); see docs/training.md.")
    p.add_argument("--data", metavar="FILE", help="training records: the synth JSONL (id, label, fields, "
                   "explanation), or a data file of examples (config: data.train_file; default: the "
                   "dataset's train split, without explanations: classification term only)")
    p.add_argument("--explanations", metavar="FILE", help="teacher explanations joined by id to the "
                   "dataset's train split (a synth JSONL, or records {id, explanation}); rows without one "
                   "train on their verdict line alone")
    p.add_argument("--dev", metavar="FILE", help="dev examples (JSONL/CSV/Parquet; synth records add a dev LM "
                   "loss; config: data.dev_file); default: the dataset's validation split")
    p.add_argument("--out", metavar="DIR", help="output directory: the saved model, train_log.jsonl, "
                   "train_summary.json, checkpoints/ (config: output_dir)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue the run in --out from its latest checkpoint (or from CHECKPOINT)")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimizer steps (train.max_steps)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--trust-remote-code", action="store_true", help="let the base model's own Python code "
                   "(auto_map) run (model.trust_remote_code); off by default: only for code you trust")
    add_data_options(p)
    add_model_option(p)
    add_config_options(p, positional=True)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from ..checkpoints import CHECKPOINTS
    from ..data import stratified_sample
    from ..datasets import load_dataset
    from ..files import check_run_dir
    from ..model_io import META_FILE
    from ..train import train
    from ..train_log import LOG_FILE
    from ..training_data import join_explanations, load_training_examples

    if args.max_steps is not None:
        args.overrides = [*args.overrides, f"train.max_steps={args.max_steps}"]
    if args.trust_remote_code:
        args.overrides = [*args.overrides, "model.trust_remote_code=true"]
    cfg = config_from_args(args)
    args.data = args.data or cfg.data.train_file
    args.dev = args.dev or cfg.data.dev_file
    args.out = args.out or cfg.output_dir
    if not args.out:
        raise ClsgenError("no output folder: pass --out DIR, or set output_dir in the config "
                          "(e.g. `clsgen train run.yaml output_dir=runs/x`)")
    check_run_dir(args.out, (META_FILE, LOG_FILE, CHECKPOINTS))
    ds = None
    if args.data is None or args.dev is None:
        ds = load_dataset(cfg.data, cfg.task)
    if args.data and args.explanations:
        raise ClsgenError("give --data (training records) or --explanations (joined to the dataset's train "
                          "split), not both")
    train_set = (stratified_sample(load_training_examples(args.data), cfg.data.max_train, seed=cfg.data.seed)
                 if args.data else ds.train)
    if args.explanations:
        train_set = join_explanations(train_set, args.explanations)
    dev_set = (stratified_sample(load_training_examples(args.dev), cfg.data.max_eval, seed=cfg.data.seed)
               if args.dev else ds.validation)
    result = train(cfg, train_set, dev_set, Path(args.out), resume=args.resume,
                   task=ds.task if ds is not None else None, progress=not args.no_progress)
    return 0 if result.steps else 1
