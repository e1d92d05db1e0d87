"""Checkpoints: a run's resumable state on disk, and the saved models it keeps.

`out/checkpoints/step-N/` holds the adapter and head (`model/`), accelerate's optimizer and RNG states of
every process, and `trainer_state.json`: the loop's state (`LoopState`), the data position and the run's
fingerprint (what must not change for a resumed run to reach the same weights). Each is written into a
temporary folder and renamed once complete, so a kill leaves the previous ones intact; the last
`train.keep_checkpoints` are kept. `checkpoints/best-step-N/` is the best model so far (a loadable model
directory) and `install_model` copies the final one into `out/` as one unit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .collate import Encoded
from .config import Config
from .distributed import plain_parallel
from .errors import ClsgenError
from .files import atomic_write_json, write_error, writing
from .model import DualHeadModel
from .model_io import HEAD_FILE, META_FILE

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
BEST = "best-step-"
"""Prefix of the best model's folder, `checkpoints/best-step-N/` (a loadable model directory)."""
TRAINER_STATE = "trainer_state.json"
RESUME_MAY_CHANGE = {"eval_every", "save_every", "log_every", "log_with", "early_stopping", "keep_checkpoints",
                     "cache_dir"}
"""TrainConfig fields a resumed run may change; any other change would give different weights."""


@dataclass
class LoopState:
    """Everything the loop carries between steps (saved in each checkpoint)."""

    step: int = 0
    best_value: float | None = None
    """The selection metric of the kept model."""
    peak_value: float | None = None
    """The best selection metric seen (dev AUROC: the kept model is within select_tolerance of it)."""
    best_step: int | None = None
    evals_since_best: int = 0
    stopped_early: bool = False
    finished: bool = False
    real_tokens: int = 0
    padded_tokens: int = 0
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0
    last_eval: dict[str, Any] | None = None


def list_checkpoints(root: Path) -> list[Path]:
    """Complete `step-N` checkpoints, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")
             and p.name[5:].isdigit() and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def resume_checkpoint(root: Path, resume: bool | str | Path) -> Path | None:
    if resume is False or resume is None:
        return None
    if resume is True:
        found = list_checkpoints(root)
        if not found:
            log.warning("no checkpoint in %s: starting from the beginning", root)
        for ckpt in reversed(found):  # the latest readable one; a corrupt one is said and passed over
            problem = checkpoint_problem(ckpt)
            if problem is None:
                return ckpt
            log.warning("%s; resuming from the checkpoint before it instead", problem)
        if found:
            log.warning("no checkpoint in %s is readable: starting from the beginning", root)
        return None
    path = Path(resume)
    if not (path / TRAINER_STATE).is_file():
        raise ClsgenError(f"{path} is not a clsgen training checkpoint (no {TRAINER_STATE}); pass "
                          f"--resume without a value to use the latest one in {root}")
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ClsgenError(f"{problem}; pass --resume without a value to use the latest readable one in {root}")
    return path


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint `path` cannot be loaded (a truncated or corrupt file, named), or None. Every
    file is read the way resuming reads it: JSON, safetensors, or accelerate's torch.load(weights_only=True)."""
    from accelerate.utils import load as accelerate_load

    from .model_io import weights_file_problem

    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            if file.suffix == ".json":
                json.loads(file.read_text(encoding="utf-8"))
            elif file.suffix == ".safetensors":
                problem = weights_file_problem(file)
                if problem is not None:
                    raise ValueError(problem)
            elif file.suffix in (".bin", ".pt", ".pth", ".pkl"):
                accelerate_load(file, map_location="cpu")
        except Exception as e:  # any failure to read is the file's, not the run's
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            return f"checkpoint file {file} is truncated or corrupt ({reason[:160]})"
    return None


def register_checkpoint_hooks(accelerator: Any) -> None:
    """accelerate saves the optimizer and RNG states (loaded with weights_only=True); the weights travel as `model/`
    (adapter + head, via save_pretrained), so frozen base weights are never copied into checkpoints."""
    if not plain_parallel(accelerator):
        return  # FSDP / DeepSpeed save their own (sharded) model states

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        weights.clear()

    def load_hook(models: list, input_dir: str) -> None:
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def save_checkpoint(accelerator: Any, model: Any, ckpt_root: Path, state: LoopState,
                    extra: dict[str, Any], keep: int) -> None:
    """Write `step-N/` atomically: into a temporary folder, renamed once every process has written.

    `trainer_state.json` holds the loop state, the data position (epoch, step in epoch: the batch
    plan of an epoch is a function of the seed and the epoch) and the run's fingerprint."""
    final = ckpt_root / f"step-{state.step}"
    tmp = ckpt_root / f".step-{state.step}.tmp"
    intact = "the checkpoints saved before are intact; rerun with --resume (resume=True) to continue from them"
    try:
        with writing(final, intact):
            if accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            accelerator.wait_for_everyone()
            save_model(accelerator, model, tmp / "model")
            accelerator.save_state(str(tmp))
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                atomic_write_json(tmp / TRAINER_STATE, {**dataclasses.asdict(state), **extra}, finite=False)
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # a half-written checkpoint: never left to fill the disk
        raise
    if accelerator.is_main_process:
        if final.exists():
            _remove_checkpoint(final)
        os.replace(tmp, final)
        for old in list_checkpoints(ckpt_root)[:-max(1, keep)]:
            _remove_checkpoint(old)
        _prune_best(ckpt_root, state.best_step)
    accelerator.wait_for_everyone()


def _remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint or best-model folder so that a kill midway never leaves a partial one under
    its name: it is renamed to a hidden temporary first (one atomic step), then deleted; what a kill
    leaves of it is removed by the next run (`remove_stale_temporaries`)."""
    trash = path.with_name(f".{path.name}.del.tmp")
    shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def remove_stale_temporaries(out_dir: Path) -> None:
    """Delete what a killed run left half-written: `.name.*.tmp` files and folders (atomic writes,
    checkpoints, model installs) and `.name.old` folders, in `out_dir` and its `checkpoints/`. Nothing
    reads them; they only take space."""
    for folder in (out_dir, out_dir / CHECKPOINTS):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(".") and (p.name.endswith(".tmp") or (folder.name == CHECKPOINTS
                                                                       and p.name.endswith(".old"))):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


def best_dir(out_dir: Path, step: int) -> Path:
    return out_dir / CHECKPOINTS / f"{BEST}{step}"


def _prune_best(ckpt_root: Path, current: int | None) -> None:
    """Delete best-model folders that neither the run nor a kept checkpoint refers to (a checkpoint
    refers to the best model of its own time, which a resumed run starts from)."""
    wanted = {current}
    for ckpt in list_checkpoints(ckpt_root):
        wanted.add(json.loads((ckpt / TRAINER_STATE).read_text()).get("best_step"))
    for d in ckpt_root.glob(f"{BEST}*"):
        if d.is_dir() and d.name[len(BEST):].isdigit() and int(d.name[len(BEST):]) not in wanted:
            _remove_checkpoint(d)


def load_checkpoint(accelerator: Any, model: Any, scheduler: Any, path: Path,
                    fingerprint: dict[str, Any]) -> LoopState:
    """Restore a checkpoint. The LR schedule's state travels in trainer_state.json (plain JSON), never
    as a pickle: accelerate loads registered custom objects with torch.load(weights_only=False)."""
    saved = json.loads((path / TRAINER_STATE).read_text())
    changed = _fingerprint_changes(saved.get("fingerprint", {}), fingerprint)
    if changed:
        raise ClsgenError(f"cannot resume from {path}: {'; '.join(changed)} changed since it was written; "
                          "restore them, or train into a new --out")
    accelerator.load_state(str(path))
    scheduler.load_state_dict(saved["scheduler"])
    if plain_parallel(accelerator):
        load_model_weights(accelerator.unwrap_model(model), path / "model")
    fields = {f.name for f in dataclasses.fields(LoopState)}
    return LoopState(**{k: v for k, v in saved.items() if k in fields})


def save_model(accelerator: Any, model: Any, path: Path, meta: dict[str, Any] | None = None) -> None:
    """save_pretrained on the main process; under FSDP / ZeRO-3 the shards are gathered first."""
    unwrapped = accelerator.unwrap_model(model)
    state = None if plain_parallel(accelerator) else accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        old = dict(unwrapped.meta)
        unwrapped.meta.update(meta or {})
        try:
            unwrapped.save_pretrained(path, state_dict=state)
        finally:
            unwrapped.meta = old
    accelerator.wait_for_everyone()


def load_model_weights(model: DualHeadModel, path: Path) -> None:
    """Load the adapter and head saved by `save_pretrained` at `path` into `model` (in place)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    adapter = load_file(str(path / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model.lm, adapter)
    if getattr(result, "unexpected_keys", None):
        raise ClsgenError(f"{path}: the adapter does not fit this model (unexpected keys such as "
                          f"{result.unexpected_keys[0]})")
    model.head.load_state_dict(load_file(str(path / HEAD_FILE)))


def install_model(src: Path, out_dir: Path) -> None:
    """Copy a saved model's files into `out_dir` as one unit: every file is copied to a temporary name
    first (a full disk fails here, with the model already in `out_dir`, if any, untouched), then
    clsgen.json is removed, the files renamed into place and clsgen.json renamed last: its presence
    marks a complete model, never a mix of two."""
    files = sorted((p for p in src.iterdir() if p.is_file()), key=lambda p: p.name == META_FILE)
    staged: list[tuple[Path, Path]] = []
    try:
        for p in files:
            tmp = out_dir / f".{p.name}.tmp"
            staged.append((tmp, out_dir / p.name))
            try:
                shutil.copyfile(p, tmp)
            except OSError as e:
                raise write_error(out_dir / p.name, e, f"the model files already in {out_dir}, if any, are "
                                  "intact") from None
        (out_dir / META_FILE).unlink(missing_ok=True)
        for tmp, dest in staged:
            os.replace(tmp, dest)
        staged = []
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def run_fingerprint(cfg: Config, enc: Sequence[Encoded], world: int) -> dict[str, Any]:
    """What must not change for a resumed run to reach the same weights."""
    h = hashlib.sha256()
    for e in enc:
        h.update(json.dumps([e.input_ids, e.prompt_len, e.label]).encode())
    train_cfg = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in RESUME_MAY_CHANGE}
    return {"data": h.hexdigest()[:16], "num_processes": world, "model": dataclasses.asdict(cfg.model),
            "lora": dataclasses.asdict(cfg.lora), "head": dataclasses.asdict(cfg.head), "train": train_cfg}


def _fingerprint_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changes = []
    for key in ("data", "num_processes"):
        if old.get(key) != new.get(key):
            what = ("the training data (or task, tokenizer or max_length)" if key == "data"
                    else "the number of processes")
            changes.append(f"{what}: {old.get(key)} -> {new.get(key)}")
    for section in ("model", "lora", "head", "train"):
        a, b = old.get(section, {}), new.get(section, {})
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                changes.append(f"{section}.{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return changes
