"""Probability-only micro-batches on a CPU, without HTTP: every row padded into passes of 8 (the
server's micro-batching before length groups), the server's length groups (`CPU_PASS_TOKENS`), and
no batching (one row per pass). Interleaved runs, medians; ratios are what to read.

    OMP_NUM_THREADS=1 python benchmarks/server_passes.py float32 8 3   # dtype, requests, repeats
"""
import statistics
import sys
import time

import _path  # noqa: F401  (first: this checkout's clsgen on sys.path)

# isort: split

import torch  # noqa: E402

from clsgen.backbones import load_model  # noqa: E402
from clsgen.batcher import Job  # noqa: E402
from clsgen.config import DataConfig  # noqa: E402
from clsgen.datasets import load_dataset  # noqa: E402
from clsgen.inference import Predictor  # noqa: E402
from clsgen.model import DualHeadModel  # noqa: E402
from clsgen.server import Engine  # noqa: E402

from common import data_dir  # noqa: E402

dtype, n, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
ds = load_dataset(DataConfig(dataset="clinifact", data_dir=data_dir(), max_eval=32))
items = [dict(ex.fields) for ex in ds.test][:n]
model = DualHeadModel.from_backbone(load_model("smollm2-135m", dtype=dtype), ds.task).eval()
pred = Predictor(model, batch_size=8)
engine = Engine(pred)
lengths = [len(pred.encode(it).input_ids) for it in items]
print("prompt tokens", min(lengths), statistics.median(lengths), max(lengths))
modes = {
    "old batched": lambda: pred.predict(items, explain=False),
    "new groups": lambda: engine.proba([Job("proba", it) for it in items]),
    "unbatched": lambda: [pred.predict([it], explain=False)[0] for it in items],
}
times = {k: [] for k in modes}
modes["unbatched"]()  # warm-up
for r in range(reps):
    for k in (list(modes) if r % 2 == 0 else list(modes)[::-1]):
        t = time.perf_counter()
        modes[k]()
        times[k].append(time.perf_counter() - t)
for k, v in times.items():
    m = statistics.median(v)
    print(f"{k:12s} median {m:7.2f} s for {n} requests -> {n / m:.3f} req/s  {[f'{x:.2f}' for x in v]}")
u = statistics.median(times["unbatched"])
for k in ("old batched", "new groups"):
    print(f"{k} / unbatched throughput: {u / statistics.median(times[k]):.2f}x")
