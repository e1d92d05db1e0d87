"""Does blocking repeated n-grams help the trained model's explanations? Regenerates the first N
explained test rows of an experiment's evaluation with `no_repeat_ngram_size` and compares them with
the texts that evaluation stored (readability flags, loops, cut-offs, verdicts):

    python benchmarks/no_repeat.py --run runs/clinifact-trial-disjoint --method clsgen+consistency \
        --rows 24 --size 6

Prints the figures; nothing is written. The stored texts must come from a run without the block
(`--set eval.no_repeat_ngram_size=0`), or the comparison is the block against itself.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _path import HERE  # noqa: F401  (this checkout's clsgen on sys.path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="an experiment folder (eval/<method>/predictions.jsonl, models/)")
    p.add_argument("--method", default="clsgen+consistency")
    p.add_argument("--predictions", help="the stored predictions.jsonl (default: the run's eval/<method>/)")
    p.add_argument("--rows", type=int, default=24)
    p.add_argument("--size", type=int, default=6, help="no_repeat_ngram_size of the regenerated texts")
    p.add_argument("--max-new-tokens", type=int, default=160)
    args = p.parse_args()

    import numpy as np

    from clsgen.config import DataConfig
    from clsgen.datasets import load_dataset
    from clsgen.inference import Predictor
    from clsgen.readability import explanation_quality

    run = Path(args.run)
    data = json.loads((run / "experiment.json").read_text())["config"]["data"]  # the run's own data settings
    ds = load_dataset(DataConfig(**{k: v for k, v in data.items() if k in DataConfig.__dataclass_fields__}))
    by_id = {str(e.id): e for e in ds.test}
    stored = Path(args.predictions or run / "eval" / args.method / "predictions.jsonl")
    rows = [json.loads(line) for line in stored.read_text().splitlines()]
    rows = [r for r in rows if r.get("explained")][: args.rows]
    predictor = Predictor.from_pretrained(run / "models" / args.method, batch_size=12,
                                          max_new_tokens=args.max_new_tokens, no_repeat_ngram_size=args.size)
    started = time.perf_counter()
    new = predictor.predict([by_id[r["id"]].fields for r in rows], explain=True)

    def figures(texts, verdicts, cut) -> str:
        q = [explanation_quality(t, v) for t, v in zip(texts, verdicts)]
        return (f"readable {np.mean([x['readable'] for x in q]):.2f}, looping {sum(x['degenerate'] for x in q)}, "
                f"cut off {cut} of {len(q)}")

    print(f"stored:  {figures([r['text'] for r in rows], [r['verdict'] for r in rows], sum(bool(r.get('cut_off')) for r in rows))}")
    print(f"size {args.size}: {figures([o.text for o in new], [o.verdict for o in new], sum(o.new_tokens >= args.max_new_tokens for o in new))} "
          f"({time.perf_counter() - started:.0f} s)")
    print(f"same verdict: {sum(o.verdict == r['verdict'] for o, r in zip(new, rows))} of {len(rows)}")


if __name__ == "__main__":
    main()
