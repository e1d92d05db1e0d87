"""Data-parallel training with two CPU processes (gloo) on the tiny model.

`torchrun --nproc_per_node 2` starts two copies of this file (see `_worker` at the bottom); each
joins the process group through `Accelerator(cpu=True)`. The run must finish, both processes must
end with identical weights, and the saved model must equal a one-process run with the same global
batch (2 processes x 2 examples = 1 process x 4 examples), dev evaluation sharded and gathered.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
POS = ["improved", "survival", "significant", "benefit"]
NEG = ["placebo", "difference", "no", "outcome"]


def toy(n: int, seed: int):
    from clsgen.training_data import TrainExample

    rng = random.Random(seed)
    return [TrainExample(f"{seed}-{i}", {"text": " ".join(rng.choice(POS if i % 2 else NEG)
                                                         for _ in range(rng.randint(2, 6)))}, i % 2,
                         None if i % 4 == 0 else ("Patients improved." if i % 2 else "No difference."))
            for i in range(n)]


def make_cfg(batch_size: int):
    from clsgen.config import Config, DataConfig, EvalConfig, LoraConfig, ModelConfig, TaskConfig, TrainConfig

    return Config(model=ModelConfig(name="tiny", dtype="float32"), data=DataConfig(dataset="toy.jsonl"),
                  lora=LoraConfig(r=4, alpha=8, dropout=0.0),
                  task=TaskConfig(template="Note: {text}", system="Is the note positive?"),
                  eval=EvalConfig(batch_size=3),
                  train=TrainConfig(batch_size=batch_size, max_steps=3, lr=1e-2, head_lr=2e-2, warmup_ratio=0.0,
                                    max_length=128, log_every=1, save_every=2, eval_every=2))


TRAIN, DEV = (9, 0), (8, 1)  # 9 = 4 + 4 + 1: in the last step one process only has a filler row


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_two_cpu_processes_match_one_process(tmp_path):
    from safetensors.torch import load_file

    from clsgen.model import load_pretrained
    from clsgen.train import train

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), __file__, str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    summary = json.loads((tmp_path / "ddp" / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["processes_in_sync"] is True
    assert summary["steps"] == 3 and summary["global_batch"] == 4
    # both processes end with bit-identical weights
    r0, r1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)

    single = train(make_cfg(batch_size=4), toy(*TRAIN), toy(*DEV), tmp_path / "one", progress=False)
    one = _trainable(single.model)
    for k, v in r0.items():
        torch.testing.assert_close(v, one[k], rtol=1e-4, atol=1e-5, msg=k)
    # the logged losses and the gathered dev metrics agree too
    logs = [[json.loads(line) for line in (tmp_path / d / "train_log.jsonl").read_text().splitlines()]
            for d in ("ddp", "one")]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]]
    for a, b in zip(*logs):
        for key in ("loss", "cls_loss", "lm_loss", "dev_auroc", "dev_cls_loss", "dev_lm_loss"):
            if a.get(key) is not None:
                assert a[key] == pytest.approx(b[key], rel=1e-4), key
    # the saved model (adapter + head) equals the one-process model's
    saved_ddp = load_pretrained(tmp_path / "ddp", dtype="float32")
    saved_one = load_pretrained(tmp_path / "one", dtype="float32")
    a, b = _trainable_all(saved_ddp), _trainable_all(saved_one)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def _trainable_all(model) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if "lora_" in n or n.startswith("head.")}


def _worker(out: str) -> None:
    """One of the torchrun processes: train, then write this process's final trainable weights."""
    from safetensors.torch import save_file

    from clsgen.train import train

    torch.set_num_threads(1)
    result = train(make_cfg(batch_size=2), toy(*TRAIN), toy(*DEV), out, progress=False)
    rank = int(os.environ["RANK"])
    save_file({k: v.contiguous() for k, v in _trainable(result.model).items()},
              str(Path(out).parent / f"rank{rank}.safetensors"))


if __name__ == "__main__":
    _worker(sys.argv[1])
