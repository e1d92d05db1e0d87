"""Where should the head read? The AUROC of a logistic-regression probe on each frozen layer's pooled
prompt states (last token and mean), from the trunk cache a `clsgen train` run built.

    python benchmarks/readout.py --config clsgen/configs/clinifact-trial-disjoint.yaml \
        --explanations runs/synth/train.jsonl --cache-dir runs/trunk-cache

Reads the cache only (it builds what is missing, which costs a forward pass through the trunk); prints
a Markdown table: readout, pooling, C and its 5-fold cross-validated AUROC on the training rows (C
chosen by it, as `head.init: probe` chooses), dev AUROC and, with `--test`, the test AUROC of that
same probe (the test split is cached too; nothing is chosen on it). Readouts: each trunk layer
alone, then uniform averages of the standardised states of a band of layers (`--bands 12-20 ...`).
Layers above the trunk are not cached: their probe needs `head.init: probe` in a training run
(train_summary.json, `probe`).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--explanations", help="teacher explanations joined by id (as the training run had)")
    parser.add_argument("--cache-dir", help="train.cache_dir of the run (default: the config's)")
    parser.add_argument("--test", action="store_true", help="also report each probe's test AUROC")
    parser.add_argument("--bands", nargs="*", default=["12-20", "13-19", "14-18", "8-24", "0-24"],
                        metavar="A-B", help="bands of layers to average (inclusive)")
    parser.add_argument("--pooling", nargs="*", default=["mean", "last"], choices=["mean", "last"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from clsgen.backbones import load_model
    from clsgen.collate import encode_example, training_task
    from clsgen.config import load_config
    from clsgen.datasets import load_dataset
    from clsgen.head import PROBE_C_GRID, cv_auroc, cv_folds
    from clsgen.model import DualHeadModel
    from clsgen.training_data import join_explanations
    from clsgen.trunk import TrunkCache

    cfg = load_config(args.config, args.overrides)
    ds = load_dataset(cfg.data, cfg.task)
    backbone = load_model(cfg.model.name, dtype=cfg.model.dtype)
    task = training_task(ds.task, backbone.tokenizer, cfg.train.max_length)
    model = DualHeadModel.from_backbone(backbone, task, cfg.lora, head=cfg.head)
    train = join_explanations(ds.train, args.explanations) if args.explanations else ds.train
    dev = ds.validation

    def encode(rows):
        return [encode_example(task, backbone.tokenizer, ex.fields, ex.label, getattr(ex, "explanation", None),
                               cfg.train.max_length, verdict_only=cfg.train.verdict_only) for ex in rows]

    splits = {"train": encode(train), "dev": encode(dev)}
    if args.test:
        splits["test"] = encode(ds.test)
    cache = TrunkCache(model, args.cache_dir or cfg.train.cache_dir)
    started = time.perf_counter()
    built = cache.build([e for rows in splits.values() for e in rows], batch_size=cfg.train.batch_size * 2)
    states = {name: cache.load(rows) for name, rows in splits.items()}
    labels = {name: np.array([e.label for e in rows]) for name, rows in splits.items()}
    print(f"cache: {cache.dir} ({built['computed']} computed, {time.perf_counter() - started:.0f} s); "
          + ", ".join(f"{name} {len(rows)}" for name, rows in splits.items()))
    bands = [tuple(int(v) for v in band.split("-")) for band in args.bands]
    readouts = [(str(layer), [layer]) for layer in range(cache.start + 1)]
    readouts += [(f"{a}-{b} avg", list(range(a, b + 1))) for a, b in bands if 0 <= a <= b <= cache.start]
    folds = cv_folds(labels["train"])
    print("| readout | pooling | C | CV AUROC (train) | dev AUROC |" + (" test AUROC |" if args.test else "")
          + "\n|---|---|---|---|---|" + ("---|" if args.test else ""))
    for pooling in args.pooling:
        pooled = {name: np.stack([s.pooled[pooling].numpy() for s in rows]) for name, rows in states.items()}
        mu, sd = pooled["train"].mean(0), pooled["train"].std(0) + 1e-6
        z = {name: (x - mu) / sd for name, x in pooled.items()}
        for name, layers in readouts:
            x = {split: v[:, layers].mean(1) for split, v in z.items()}
            cv = {c: cv_auroc(x["train"], labels["train"], c, folds, "balanced") for c in PROBE_C_GRID}
            c = max(PROBE_C_GRID, key=lambda c: (cv[c], -c))
            lr = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit(x["train"], labels["train"])
            dev_auroc = roc_auc_score(labels["dev"], lr.decision_function(x["dev"]))
            row = f"| {name} | {pooling} | {c} | {cv[c]:.3f} | {dev_auroc:.3f} |"
            if args.test:
                row += f" {roc_auc_score(labels['test'], lr.decision_function(x['test'])):.3f} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
