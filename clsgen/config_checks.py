"""The checks on a whole `Config`: values that cannot work, found before any expensive step.

`Config.validate()` returns `config_problems(cfg)`; types and unknown keys are checked earlier, while
the YAML is read (`config_coerce`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .data import short_repr
from .errors import Problem

if TYPE_CHECKING:
    from .config import Config


def config_problems(cfg: Config) -> list[Problem]:
    """Every value of `cfg` that cannot work, each naming its key."""
    p: list[Problem] = []
    t = cfg.train
    if t.w_cls == 0 and t.w_lm == 0:
        p.append(Problem("both loss weights are 0: nothing would be trained; set train.w_cls or "
                         "train.w_lm above 0", field="train.w_cls"))
    for name in ("w_cls", "w_lm", "w_consistency", "lr", "head_lr", "weight_decay", "select_tolerance"):
        if getattr(t, name) < 0:
            p.append(Problem(f"must be >= 0, got {getattr(t, name)}", field=f"train.{name}"))
    for name in ("batch_size", "grad_accum", "max_length", "save_every"):
        if getattr(t, name) < 1:
            p.append(Problem(f"must be >= 1, got {getattr(t, name)}", field=f"train.{name}"))
    if not 0 <= t.warmup_ratio < 1:
        p.append(Problem(f"must be in [0, 1), got {t.warmup_ratio}", field="train.warmup_ratio"))
    if isinstance(t.pos_weight, float) and t.pos_weight <= 0:
        p.append(Problem(f"must be > 0, got {t.pos_weight}", field="train.pos_weight"))
    if cfg.lora.r < 1:
        p.append(Problem(f"must be >= 1, got {cfg.lora.r}", field="lora.r"))
    lo = cfg.lora
    if lo.top_layers is not None and lo.layers is not None:
        p.append(Problem("give lora.top_layers or lora.layers, not both", field="lora.layers"))
    if lo.top_layers is not None and lo.top_layers < 1:
        p.append(Problem(f"must be >= 1 (or null for all layers), got {lo.top_layers}", field="lora.top_layers"))
    if lo.layers is not None and (len(lo.layers) != 2 or not 0 <= lo.layers[0] < lo.layers[1]):
        p.append(Problem(f"must be [a, b] with 0 <= a < b (LoRA in decoder layers a..b-1), got {lo.layers}",
                         field="lora.layers"))
    if isinstance(cfg.head.layer, int) and cfg.head.layer < 0:
        p.append(Problem(f"must be >= 0 (a layer count), 'mix' or null, got {cfg.head.layer}",
                         field="head.layer"))
    if not 0 <= cfg.lora.dropout < 1:
        p.append(Problem(f"must be in [0, 1), got {cfg.lora.dropout}", field="lora.dropout"))
    if cfg.task.max_prompt_tokens is not None and cfg.task.max_prompt_tokens < 16:
        p.append(Problem(f"must be >= 16, got {cfg.task.max_prompt_tokens}",
                         field="task.max_prompt_tokens"))
    if cfg.task.verbalizers is not None and (
        len(cfg.task.verbalizers) != 2 or len({v.strip().lower() for v in cfg.task.verbalizers}) != 2
        or not all(v.strip() for v in cfg.task.verbalizers)
    ):
        p.append(Problem(f"need two different non-empty words (label 0, label 1), got "
                         f"{cfg.task.verbalizers!r}", field="task.verbalizers"))
    bad_labels = {k: v for k, v in (cfg.data.label_map or {}).items() if v not in (0, 1)}
    if bad_labels:
        p.append(Problem(f"must map labels to 0 or 1, got {short_repr(bad_labels, 80)}",
                         field="data.label_map"))
    elif cfg.data.label_map and len(set(cfg.data.label_map.values())) < 2:
        p.append(Problem(f"maps every label to {next(iter(cfg.data.label_map.values()))}, so one class would "
                         f"be empty; map some labels to 0 and some to 1", field="data.label_map"))
    if cfg.task.template is not None and not _template_fields(cfg.task.template):
        p.append(Problem(f"uses no field, so every prompt would be the same; name a field of the data in "
                         f"braces, e.g. 'Note: {{text}}', got {short_repr(cfg.task.template, 80)}",
                         field="task.template"))
    for name in ("max_train", "max_eval", "max_validation"):
        value = getattr(cfg.data, name)
        if value is not None and value < 1:
            p.append(Problem(f"must be >= 1 (or null for all examples), got {value}", field=f"data.{name}"))
    if t.max_steps is not None and t.max_steps < 1:
        p.append(Problem(f"must be >= 1 (or null to train train.epochs), got {t.max_steps}",
                         field="train.max_steps"))
    if not (math.isfinite(t.epochs) and t.epochs > 0):
        p.append(Problem(f"must be > 0, got {t.epochs}", field="train.epochs"))
    if cfg.teacher.max_attempts < 1:
        p.append(Problem("must be >= 1", field="teacher.max_attempts"))
    ca = cfg.teacher.class_attempts
    if ca is not None and (len(ca) != 2 or min(ca) < 1):
        p.append(Problem(f"must be two counts >= 1 (label 0, label 1), got {ca}", field="teacher.class_attempts"))
    for name, low in (("batch_size", 1), ("max_new_tokens", 0), ("n_bootstrap", 0)):
        if getattr(cfg.eval, name) < low:
            p.append(Problem(f"must be >= {low}, got {getattr(cfg.eval, name)}", field=f"eval.{name}"))
    if cfg.eval.no_repeat_ngram_size < 0 or cfg.eval.no_repeat_ngram_size == 1:
        p.append(Problem(f"must be 0 (off) or >= 2, got {cfg.eval.no_repeat_ngram_size}",
                         field="eval.no_repeat_ngram_size"))
    if cfg.eval.rejection_samples < 1:
        p.append(Problem(f"must be >= 1 (1: no redraws), got {cfg.eval.rejection_samples}",
                         field="eval.rejection_samples"))
    if not cfg.eval.rejection_temperature > 0:
        p.append(Problem(f"must be > 0, got {cfg.eval.rejection_temperature}", field="eval.rejection_temperature"))
    if not 0 <= cfg.eval.fixed_threshold <= 1:
        p.append(Problem("must be in [0, 1]", field="eval.fixed_threshold"))
    return p


def _template_fields(template: Any) -> list[str]:
    """The field names a template uses; [] when it names none (or does not parse: checked elsewhere)."""
    import string

    try:
        return [name for _, name, _, _ in string.Formatter().parse(str(template)) if name]
    except ValueError:
        return ["?"]
