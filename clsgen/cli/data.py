"""`clsgen data stats`: split sizes, class balance and rendered prompt lengths."""

from __future__ import annotations

import argparse
import json

import numpy as np

from .common import add_config_options, add_data_options, add_model_option, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="inspect datasets")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    stats = data_sub.add_parser("stats", help="split sizes, class balance and prompt-token lengths")
    add_data_options(stats, dataset_positional=True)
    add_model_option(stats, help="tokenizer to count prompt tokens with (default: the embedded model's)")
    stats.add_argument("--no-tokens", action="store_true", help="skip prompt-length counting")
    stats.add_argument("--json", action="store_true", help="print JSON")
    add_config_options(stats)
    stats.set_defaults(func=run_stats)


def dataset_stats(cfg, count_tokens: bool = True) -> dict:
    """The figures `clsgen data stats` prints, as a dict (usable from Python)."""
    from ..datasets import load_dataset, shared_ids

    ds = load_dataset(cfg.data, cfg.task)
    out: dict = {"dataset": ds.name, **{k: v for k, v in ds.info.items() if v is not None}, "splits": {}}
    tokenizer = None
    if count_tokens:
        from ..backbones import load_tokenizer

        tokenizer = load_tokenizer(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
    for split in ("train", "validation", "test"):
        examples = ds.split(split)
        pos = sum(1 for ex in examples if ex.label == 1)
        s = {"n": len(examples), "positives": pos, "negatives": len(examples) - pos,
             "positive_share": round(pos / len(examples), 3) if examples else None}
        if tokenizer is not None and examples:
            encoded = [ds.task.encode_prompt(tokenizer, ex.fields) for ex in examples]
            lengths = np.array([len(e.input_ids) for e in encoded])
            s["prompt_tokens"] = {f"p{q}": int(np.percentile(lengths, q)) for q in (5, 50, 95, 100)}
            s["prompt_tokens"]["truncated"] = sum(e.truncated for e in encoded)
        out["splits"][split] = s
    if ds.train and ds.train[0].meta.get("nctId") is not None:
        out["trials_shared_train_test"] = len(shared_ids(ds.train, ds.test, "nctId"))
    return out


def run_stats(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    stats = dataset_stats(cfg, count_tokens=not args.no_tokens)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"dataset: {stats['dataset']}  " + "  ".join(
        f"{k}: {v}" for k, v in stats.items() if k not in ("dataset", "splits", "source")))
    header = f"{'split':<11}{'n':>6}{'pos':>6}{'neg':>6}{'pos%':>7}"
    with_tokens = any("prompt_tokens" in s for s in stats["splits"].values())
    if with_tokens:
        header += f"{'tok p5':>8}{'p50':>6}{'p95':>6}{'max':>6}{'cut':>5}"
    print(header)
    for split, s in stats["splits"].items():
        share = f"{100 * s['positive_share']:.1f}" if s["positive_share"] is not None else "-"
        line = f"{split:<11}{s['n']:>6}{s['positives']:>6}{s['negatives']:>6}{share:>7}"
        if "prompt_tokens" in s:
            t = s["prompt_tokens"]
            line += f"{t['p5']:>8}{t['p50']:>6}{t['p95']:>6}{t['p100']:>6}{t['truncated']:>5}"
        print(line)
    return 0
