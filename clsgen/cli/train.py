"""`clsgen train` (dual-head LoRA fine-tuning) and `clsgen export --merge` (a model that loads without PEFT)."""

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

    e = sub.add_parser("export", help="write a merged full model + head that loads without PEFT")
    e.add_argument("--merge", required=True, metavar="MODEL_DIR", help="a model saved by clsgen train")
    e.add_argument("--out", required=True, metavar="DIR", help="where to write the merged model: a new or "
                   "empty folder (never the source model)")
    e.add_argument("--overwrite", action="store_true", help="replace a merged model that clsgen wrote at "
                   "--out before (a folder holding clsgen.json and only the files an export writes)")
    e.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the merged weights (default: the model's)")
    e.add_argument("--base-model", metavar="SPEC", help="the base model, instead of the one clsgen.json names")
    e.add_argument("--trust-remote-code", action="store_true", help="let the base model's own Python code "
                   "run; off by default")
    e.set_defaults(func=run_export)


def run_train(args: argparse.Namespace) -> int:
    from ..data import stratified_sample
    from ..datasets import load_dataset
    from ..errors import ClsgenError
    from ..files import check_run_dir
    from ..model import META_FILE
    from ..train import CHECKPOINTS, LOG_FILE, join_explanations, load_training_examples, train

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


def run_export(args: argparse.Namespace) -> int:
    from ..files import atomic_dir, check_output_dir
    from ..model import META_FILE, load_pretrained, read_meta

    sources = [args.merge] + ([args.base_model] if args.base_model and Path(args.base_model).exists() else [])
    out = check_output_dir(args.out, META_FILE, overwrite=args.overwrite, sources=sources)
    if read_meta(args.merge).get("merged"):
        print(f"{args.merge} is already merged; nothing to do")
        return 0
    model = load_pretrained(args.merge, dtype=args.dtype, base_model=args.base_model,
                            trust_remote_code=args.trust_remote_code)
    with atomic_dir(out, check=lambda new: _replaces_only_model_files(out, new)) as tmp:
        model.export_merged(tmp)
    print(f"merged model + head written to {args.out} (loads with clsgen, no PEFT needed)")
    return 0


def _replaces_only_model_files(out: Path, new: Path) -> None:
    """Refuse to replace a clsgen folder that also holds files the export does not write (a user's own)."""
    import os

    from ..errors import ClsgenError
    from ..files import foreign_entries

    foreign = foreign_entries(out, os.listdir(new))
    if foreign:
        raise ClsgenError(f"--out {out} holds {', '.join(foreign[:5])}, which an export does not write; "
                          "clsgen replaces only what it wrote: move them away or choose another --out")
