"""The run's log and summary: `train_log.jsonl` (one record per log step and per evaluation, also sent
to the trackers of `train.log_with`) and `train_summary.json` (steps, tokens/s, padding efficiency,
memory, times, the data and the best evaluation), with the lines a run prints.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .checkpoints import LoopState
from .collate import Encoded
from .files import atomic_write_text, finite_json, writing
from .training_data import TrainExample

log = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
SUMMARY_FILE = "train_summary.json"


def available_trackers(names: Sequence[str]) -> list[str]:
    modules = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}
    chosen = []
    for name in names:
        mods = modules.get(name, (name,))
        if any(importlib.util.find_spec(m) is not None for m in mods):
            chosen.append(name)
        else:
            log.warning("train.log_with: %s is not installed; metrics go to %s only", name, LOG_FILE)
    return chosen


def log_record(accelerator: Any, out_dir: Path, record: dict[str, Any], trackers: list[str]) -> None:
    if accelerator.is_main_process:
        intact = "the checkpoints saved before are intact; rerun with --resume"
        with writing(out_dir / LOG_FILE, intact), (out_dir / LOG_FILE).open("a", encoding="utf-8") as f:
            f.write(json.dumps(finite_json({**record, "time": round(time.time(), 3)}), allow_nan=False) + "\n")
    if trackers:
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        accelerator.log(scalars, step=record["step"])


def truncate_log(path: Path, step: int) -> None:
    """On resume, drop records written after the checkpoint (the killed run's lost steps)."""
    if not path.is_file():
        return
    if step == 0:
        path.unlink()
        return
    keep = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line torn by a kill or a full disk: it belongs to the lost steps
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            keep.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def eval_line(m: dict[str, Any]) -> str:
    parts = [f"step {m['step']}"]
    for k in ("dev_auroc", "dev_cls_loss", "dev_lm_loss", "dev_verdict_auroc", "dev_agreement"):
        if m.get(k) is not None:
            parts.append(f"{k} {m[k]:.4f}")
    return "eval: " + ", ".join(parts) + (" (best)" if m.get("best") else "")


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def summarize(state: LoopState, started: float, total_steps: int, steps_per_epoch: int,
              data_info: dict[str, Any], world: int, tc: Any, in_sync: bool | None) -> dict[str, Any]:
    summary = {
        "steps": state.step, "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
        "epochs": round(state.step / steps_per_epoch, 4), "stopped_early": state.stopped_early,
        "best_step": state.best_step, "best_value": state.best_value, "best_dev_auroc": None,
        "last_eval": state.last_eval,
        "train_seconds": round(state.train_seconds, 2), "wall_seconds": round(time.time() - started, 2),
        "train_cpu_seconds": round(state.train_cpu_seconds, 2), "torch_threads": torch.get_num_threads(),
        "tokens": state.real_tokens,
        "tokens_per_s": round(state.real_tokens / max(state.train_seconds, 1e-9), 1),
        "padding_efficiency": round(state.real_tokens / max(state.padded_tokens, 1), 4),
        "peak_rss_mb": _peak_rss_mb(), "num_processes": world,
        "global_batch": tc.batch_size * tc.grad_accum * world, **data_info,
    }
    if data_info.get("selection") == "dev_auroc":
        summary["best_dev_auroc"] = state.best_value
        summary["peak_dev_auroc"] = state.peak_value
    if torch.cuda.is_available():
        summary["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if in_sync is not None:
        summary["processes_in_sync"] = in_sync
    return summary


def summary_line(s: dict[str, Any], out_dir: Path) -> str:
    best = ""
    if s.get("best_dev_auroc") is not None:
        best = f", best dev AUROC {s['best_dev_auroc']:.4f} at step {s['best_step']}"
    rate = "the head alone" if s.get("head_only") else f"{s['tokens_per_s']:.0f} tokens/s"
    return (f"trained {s['steps']} steps in {s['train_seconds']:.1f} s ({rate}, "
            f"padding efficiency {s['padding_efficiency']:.2f}, peak RSS {s['peak_rss_mb']} MB){best}; "
            f"model saved to {out_dir}")


def describe_data(train_set: Sequence[TrainExample], enc: Sequence[Encoded], dev_set: Sequence[TrainExample],
                  pos_weight: float | None, selection: str | None) -> dict[str, Any]:
    return {
        "n_train": len(train_set), "n_train_positive": sum(ex.label for ex in train_set),
        "n_with_explanation": sum(1 for e in enc if e.explained),
        "n_verdict_only": sum(1 for e in enc if e.target_len and not e.explained),
        "n_targets_cut": sum(e.target_cut for e in enc),
        "n_dev": len(dev_set), "pos_weight": pos_weight, "selection": selection,
    }


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
