"""The --model options and loading shared by `clsgen evaluate`, `clsgen predict` and `clsgen calibrate`:
a clsgen model directory (or a base model with --untrained-head), its dataset and its eval settings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import ClsgenError, ConfigError
from .common import config_from_args


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="a clsgen model directory (from `clsgen train`); with "
                   "--untrained-head, a base model spec (smollm2-135m, tiny, a local HF directory)")
    g.add_argument("--untrained-head", action="store_true", help="wrap a base model with a fresh, untrained "
                   "(random) classification head: a smoke test of the pipeline, not a classifier")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default=None,
                   help="weight dtype (default: the model's own; auto = bfloat16)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    add_trust_options(g)
    g.add_argument("--batch-size", type=int, default=None, help="prompts per forward pass (eval.batch_size)")
    g.add_argument("--max-new-tokens", type=int, default=None, help="longest explanation (eval.max_new_tokens)")
    add_repeat_option(g)


def add_repeat_option(g: Any) -> None:
    from ..config import EvalConfig

    g.add_argument("--no-repeat-ngram-size", type=int, default=None, metavar="N",
                   help="never repeat an N-token n-gram of the explanation, 0 = off (eval.no_repeat_ngram_size, "
                        f"default {EvalConfig.no_repeat_ngram_size})")


def repeat_size(args: argparse.Namespace) -> int:
    """--no-repeat-ngram-size, or the configuration's default."""
    from ..config import EvalConfig

    value = getattr(args, "no_repeat_ngram_size", None)
    return EvalConfig.no_repeat_ngram_size if value is None else value


def add_trust_options(g: Any) -> None:
    g.add_argument("--base-model", default=None, metavar="SPEC", help="the base model of a clsgen model "
                   "directory, instead of the one its clsgen.json names (e.g. a local base model that moved)")
    g.add_argument("--trust-remote-code", action="store_true", help="let the base model's own Python code "
                   "(auto_map) run; off by default: only for a model whose code you trust")


def load_trained(args: argparse.Namespace) -> Any:
    """The clsgen model directory --model, loaded with the caller's trust settings."""
    from ..model import load_pretrained

    model = load_pretrained(args.model, dtype=args.dtype, base_model=getattr(args, "base_model", None),
                            trust_remote_code=getattr(args, "trust_remote_code", False))
    return model.to(device(args.device))


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding (greedy unless --sample)")
    g.add_argument("--sample", action="store_true", help="sample the explanation instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --sample)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument("--rejection-samples", type=int, default=1, metavar="K",
                   help="rejection sampling: an explanation whose verdict disagrees with the label is sampled "
                   "again (at --rejection-temperature), up to K explanations in all; 1 = off (default)")
    g.add_argument("--rejection-temperature", type=float, default=0.7, metavar="T",
                   help="sampling temperature of the redrawn explanations (default 0.7)")


def rejection_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Predictor's rejection-sampling arguments from --rejection-samples/--rejection-temperature."""
    return {"rejection_samples": args.rejection_samples, "rejection_temperature": args.rejection_temperature}


def model_meta(spec: str) -> dict[str, Any] | None:
    from ..model_io import META_FILE, read_meta

    return read_meta(spec) if (Path(spec) / META_FILE).is_file() else None


def default_dataset(args: argparse.Namespace, meta: dict[str, Any] | None) -> None:
    from ..datasets import LOADERS

    if getattr(args, "dataset", None) is None and meta and meta.get("task", {}).get("name") in LOADERS:
        args.dataset = meta["task"]["name"]


def load_split(args: argparse.Namespace, meta: dict[str, Any] | None) -> tuple[Any, Any, list, str]:
    """The evaluation config, the dataset, the examples of `--split` (checked non-empty before any
    model loads) and the split's name ('dev' read as 'validation')."""
    from ..datasets import load_dataset

    default_dataset(args, meta)
    cfg = eval_config(args, meta)
    ds = load_dataset(cfg.data, cfg.task)
    examples = ds.split(args.split)
    check_split(ds, args.split, examples)
    return cfg, ds, examples, "validation" if args.split == "dev" else args.split


def check_split(ds: Any, split: str, examples: list) -> None:
    """An empty split fails before the model loads, saying which splits the data has."""
    if examples:
        return
    have = [f"{s} ({len(ds.split(s))})" for s in ("train", "validation", "test") if ds.split(s)]
    raise ClsgenError(f"dataset {ds.name!r} has no {split} examples; its splits: {', '.join(have) or 'none'}. A "
                      "single file without a 'split' column is all training data (a validation part is held "
                      "out of it): add a 'split' column or a test file, or pass --split validation")


def device(name: str | None) -> str:
    import torch

    if name:
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_model_kind(args: argparse.Namespace, meta: dict[str, Any] | None) -> None:
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

    check_model_kind(args, meta)
    if meta is not None:
        return Predictor(load_trained(args), **kwargs)
    from ..backbones import load_model
    from ..model import DualHeadModel

    print(f"note: {args.model} with an UNTRAINED classification head: its probabilities are random",
          file=sys.stderr)
    model = DualHeadModel.from_backbone(load_model(args.model, dtype=args.dtype or "auto",
                                                   trust_remote_code=args.trust_remote_code), task)
    return Predictor(model.to(device(args.device)).eval(), **kwargs)


def eval_config(args: argparse.Namespace, meta: dict[str, Any] | None = None):
    from ..datasets import LOADERS

    cfg = config_from_args(args)
    if meta is not None and cfg.data.dataset not in LOADERS and cfg.task.template is None:
        task = meta["task"]  # a user's data file: the model's own task renders it
        cfg.task.template, cfg.task.system = task["template"], task["system"]
        cfg.task.verbalizers = list(task["verbalizers"])
    e = cfg.eval
    for attr, key in (("batch_size", "batch_size"), ("max_new_tokens", "max_new_tokens"),
                      ("no_repeat_ngram_size", "no_repeat_ngram_size"),
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
