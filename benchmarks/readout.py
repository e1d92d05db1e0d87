"""Where should the head read? Dev AUROC of a logistic-regression probe on each frozen layer's pooled
prompt states (last token and mean), from the trunk cache a `clsgen train` run built.

    python benchmarks/readout.py --config clsgen/configs/clinifact-trial-disjoint.yaml \
        --explanations runs/synth/train.jsonl --cache-dir runs/trunk-cache

Reads the cache only (it builds what is missing, which costs a forward pass through the trunk); prints
a Markdown table: layer, pooling, C chosen on dev, dev AUROC. Layers above the trunk are not cached:
their probe needs `head.init: probe` in a training run (train_summary.json, `probe`).
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
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from clsgen.backbones import load_model
    from clsgen.collate import encode_example, training_task
    from clsgen.config import load_config
    from clsgen.datasets import load_dataset
    from clsgen.model import DualHeadModel
    from clsgen.train import join_explanations
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

    enc, dev_enc = encode(train), encode(dev)
    cache = TrunkCache(model, args.cache_dir or cfg.train.cache_dir)
    started = time.perf_counter()
    built = cache.build(enc + dev_enc, batch_size=cfg.train.batch_size * 2)
    states, dev_states = cache.load(enc), cache.load(dev_enc)
    y, yd = np.array([e.label for e in enc]), np.array([e.label for e in dev_enc])
    print(f"cache: {cache.dir} ({built['computed']} computed, {time.perf_counter() - started:.0f} s); "
          f"train {len(enc)}, dev {len(dev_enc)}")
    print("| layer | pooling | C | dev AUROC |\n|---|---|---|---|")
    for pooling in ("mean", "last"):
        x_all = np.stack([s.pooled[pooling].numpy() for s in states])
        xd_all = np.stack([s.pooled[pooling].numpy() for s in dev_states])
        for layer in range(cache.start + 1):
            x, xd = x_all[:, layer], xd_all[:, layer]
            mu, sd = x.mean(0), x.std(0) + 1e-6
            best = (0.0, None)
            for c in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0):
                lr = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit((x - mu) / sd, y)
                best = max(best, (roc_auc_score(yd, lr.decision_function((xd - mu) / sd)), c))
            print(f"| {layer} | {pooling} | {best[1]} | {best[0]:.3f} |", flush=True)


if __name__ == "__main__":
    main()
