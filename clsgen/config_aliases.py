"""The names Trainer / TRL / PEFT / LLaMA-Factory users type for clsgen's settings, and their
resolution to the canonical `section.key`."""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import ConfigError, Problem

ALIASES: dict[str, tuple[str, ...]] = {
    # setting: the names Trainer / TRL / PEFT / LLaMA-Factory users type for it
    "model.name": ("model_name_or_path", "model_name"),
    "model.dtype": ("torch_dtype",),
    "model.trust_remote_code": ("trust_remote_code",),
    "lora.r": ("lora_rank", "lora_r"),
    "lora.alpha": ("lora_alpha",),
    "lora.dropout": ("lora_dropout",),
    "lora.target_modules": ("lora_target", "lora_target_modules"),
    "data.dataset": ("dataset", "dataset_name"),
    "data.data_dir": ("dataset_dir",),
    "data.train_file": ("train_file",),
    "data.dev_file": ("validation_file", "eval_file", "dev_file"),
    "data.max_train": ("max_train_samples", "max_samples"),
    "data.max_eval": ("max_eval_samples",),
    "train.lr": ("learning_rate",),
    "train.grad_accum": ("gradient_accumulation_steps",),
    "train.batch_size": ("per_device_train_batch_size", "batch_size"),
    "train.epochs": ("num_train_epochs",),
    "train.max_steps": ("max_steps",),
    "train.warmup_ratio": ("warmup_ratio",),
    "train.weight_decay": ("weight_decay",),
    "train.max_grad_norm": ("max_grad_norm",),
    "train.seed": ("seed",),
    "train.schedule": ("lr_scheduler_type",),
    "train.max_length": ("max_length", "max_seq_length", "cutoff_len"),
    "train.log_with": ("report_to",),
    "train.log_every": ("logging_steps",),
    "train.save_every": ("save_steps",),
    "train.eval_every": ("eval_steps",),
    "train.keep_checkpoints": ("save_total_limit",),
    "train.gradient_checkpointing": ("gradient_checkpointing",),
    "eval.batch_size": ("per_device_eval_batch_size",),
}
"""Canonical setting -> its aliases. An alias is accepted at the top level of a config (as in a
Trainer / LLaMA-Factory YAML: `learning_rate: 1e-4`) and inside the setting's section
(`train.learning_rate`); an alias and its setting (or two aliases of one setting) given together are
an error naming both. Top-level `output_dir` is itself a setting."""


def _alias_table() -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    from .config import Config  # config.py imports this module: Config exists by the first call

    flat: dict[str, str] = {}
    sectioned: dict[tuple[str, str], str] = {}
    for canonical, aliases in ALIASES.items():
        section, key = canonical.split(".")
        for alias in aliases:
            if alias not in {f.name for f in dataclasses.fields(Config)}:
                flat.setdefault(alias, canonical)
            if alias != key:
                sectioned[(section, alias)] = canonical
    return flat, sectioned


def canonical_key(keys: list[str]) -> list[str]:
    """['learning_rate'] or ['train', 'learning_rate'] -> ['train', 'lr']; other keys unchanged."""
    flat, sectioned = _alias_table()
    if len(keys) == 1 and keys[0] in flat:
        return flat[keys[0]].split(".")
    if len(keys) == 2 and (keys[0], keys[1]) in sectioned:
        return sectioned[(keys[0], keys[1])].split(".")
    return keys


def resolve_aliases(data: Any, source: str = "config") -> Any:
    """A copy of a config mapping with every alias moved to its canonical setting; a `ConfigError`
    when an alias and its setting, or two aliases of one setting, are both given."""
    if not isinstance(data, dict):
        return data
    out: dict[Any, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    given: dict[str, list[str]] = {}  # canonical -> the spellings that set it
    moves: list[tuple[tuple[Any, ...], list[str]]] = []
    for key, value in data.items():
        if not isinstance(key, str):
            continue
        target = canonical_key([key])
        if target != [key]:
            moves.append(((key,), target))
        elif isinstance(value, dict):
            for sub in value:
                if isinstance(sub, str):
                    target = canonical_key([key, sub])
                    if target != [key, sub]:
                        moves.append(((key, sub), target))
                    else:
                        given.setdefault(f"{key}.{sub}", []).append(f"{key}.{sub}")
    problems: list[Problem] = []
    for where, target in moves:
        spelled = ".".join(where)
        canonical = ".".join(target)
        given.setdefault(canonical, []).append(spelled)
        value = out.pop(where[0]) if len(where) == 1 else out[where[0]].pop(where[1])
        section = out.setdefault(target[0], {})
        if isinstance(section, dict):
            section[target[1]] = value
    for canonical, spellings in given.items():
        if len(spellings) > 1:
            problems.append(Problem(f"set twice, as {' and as '.join(spellings)}: they name the same setting; "
                                    f"keep one (the canonical name is {canonical})", file=source,
                                    field=canonical))
    if problems:
        raise ConfigError(problems)
    return out
