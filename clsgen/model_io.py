"""A saved model directory: its file names, its clsgen.json (read and checked: a model directory is
untrusted input), the base model it names, and the soundness of its safetensors files.

`model.load_pretrained` and `DualHeadModel.save_pretrained` build on these; code that only reads or
rewrites clsgen.json (calibration, the model card, the hub) needs nothing else.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .backbones import EMBEDDED, TINY
from .errors import ClsgenError

FORMAT_VERSION = 1
HEAD_FILE = "head.safetensors"
META_FILE = "clsgen.json"


def recorded_spec(spec: str) -> str:
    """The base model as clsgen.json records it: a local directory by its absolute path (a relative
    one would depend on the working directory, and `load_pretrained` follows no relative paths)."""
    if spec in (EMBEDDED, TINY) or not Path(spec).is_dir():
        return spec
    return str(Path(spec).resolve())


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def base_model_spec(meta: dict[str, Any], path: str | Path) -> str:
    """The base model a clsgen.json names, if it is one `load_pretrained` may follow.

    A model directory may come from anyone, so what it names is checked: the embedded or tiny model,
    a hub id ('org/name'), or an absolute local directory (as `save_pretrained` records one). A
    relative path (e.g. '../../x') is refused: it would be resolved against the working directory,
    outside the model directory. Whatever is named is loaded by `load_model` with the same rules
    (safetensors only, no remote code). Pass `base_model=` to `load_pretrained` to choose it yourself.
    """
    spec = meta.get("base_model")
    if not isinstance(spec, str) or not spec.strip():
        raise ClsgenError(f"{Path(path) / META_FILE} has no base_model; pass base_model= to load it")
    if spec in (EMBEDDED, TINY):
        return spec
    if Path(spec).is_absolute() and ".." not in Path(spec).parts:
        return spec
    if _HUB_ID.fullmatch(spec) and not Path(spec).is_dir():
        return spec
    raise ClsgenError(
        f"{Path(path) / META_FILE} names base_model {spec!r}: a relative path, which clsgen does not follow "
        "from a model directory (it could point anywhere, e.g. '../../'); give the base model yourself: "
        "load_pretrained(path, base_model=...) or --base-model")


def save_full(model: Any, path: Path) -> None:
    from safetensors.torch import save_model

    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    save_model(model, str(path / "model.safetensors"))


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise ClsgenError(f"{path} is not a clsgen model directory (no {META_FILE}); train one with "
                          "`clsgen train` or pass the right --model")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        reason = e.msg if isinstance(e, json.JSONDecodeError) else str(e) or type(e).__name__
        raise ClsgenError(f"{meta_file} is corrupt ({reason}); re-save the model") from None
    problems = meta_problems(meta)
    if problems:
        raise ClsgenError(f"{meta_file} is not a valid clsgen model file: {'; '.join(problems)}; re-save the "
                          "model with clsgen (or correct the value)")
    if meta.get("format", 0) > FORMAT_VERSION:
        raise ClsgenError(f"{path} was written by a newer clsgen (format {meta['format']}); upgrade clsgen")
    return meta


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_META_CHECKS: dict[str, tuple[str, Any]] = {
    # key: (what it must be, test); a model directory is untrusted input
    "format": ("a whole number >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "threshold": ("a finite number in [0, 1]", lambda v: _is_number(v) and 0 <= v <= 1),
    "temperature": ("a finite number > 0", lambda v: _is_number(v) and v > 0),
    "hidden_size": ("a whole number >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "merged": ("true or false", lambda v: isinstance(v, bool)),
    "dtype": ("a dtype name (auto, float32, bfloat16, float16)",
              lambda v: isinstance(v, str) and v in ("auto", "float32", "bfloat16", "float16")),
    "base_model": ("text", lambda v: isinstance(v, str)),
    "task": ("an object with name, system, template and two verbalizers", lambda v: isinstance(v, dict)
             and all(isinstance(v.get(k), str) for k in ("name", "system", "template"))
             and isinstance(v.get("verbalizers"), list) and len(v["verbalizers"]) == 2
             and all(isinstance(x, str) for x in v["verbalizers"])
             and (_is_int(v.get("max_prompt_tokens", 1)) and v.get("max_prompt_tokens", 1) >= 1)),
    "lora": ("an object", lambda v: isinstance(v, dict)),
    "calibration": ("an object", lambda v: isinstance(v, dict)),
    "head": ("an object {layer: null | an integer >= 0 | 'mix', pooling: 'last' | 'mean', num_layers}",
             lambda v: _valid_head(v)),
}


def _valid_head(v: Any) -> bool:
    if not isinstance(v, dict) or set(v) - {"layer", "pooling", "num_layers"}:
        return False
    layer, pooling, n = v.get("layer"), v.get("pooling", "last"), v.get("num_layers")
    return ((layer is None or layer == "mix" or (_is_int(layer) and layer >= 0))
            and pooling in ("last", "mean") and (n is None or (_is_int(n) and n > 0))
            and (layer != "mix" or n is not None))


_META_REQUIRED = ("task", "hidden_size")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def meta_problems(meta: Any) -> list[str]:
    """What is wrong in a clsgen.json (types, ranges, finite numbers), one entry per key at fault."""
    if not isinstance(meta, dict):
        return [f"the file must hold a JSON object, got {type(meta).__name__}"]
    problems = [f"'{key}' is missing" for key in _META_REQUIRED if key not in meta]
    for key, (expected, ok) in _META_CHECKS.items():
        if key in meta and not ok(meta[key]):
            problems.append(f"'{key}' must be {expected}, got {_shown(meta[key])}")
    problems += [f"'{where}' is {value}, not a finite number" for where, value in _non_finite(meta)
                 if where not in _META_CHECKS]
    return problems


def _non_finite(value: Any, where: str = "") -> Iterator[tuple[str, float]]:
    """(dotted key, value) of every NaN or infinity inside a JSON value."""
    if isinstance(value, float) and not math.isfinite(value):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _non_finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _non_finite(v, f"{where}.{i}" if where else str(i))


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, allow_nan=True)
    return text if len(text) <= 40 else text[:37] + "..."



def check_weights_file(file: str | Path) -> None:
    """One clear error for a safetensors file that is truncated or corrupt (its header, its size)."""
    problem = weights_file_problem(file)
    if problem is not None:
        raise ClsgenError(f"{file} is truncated or corrupt ({problem}); copy the model again or re-save it")


def weights_file_problem(file: str | Path) -> str | None:
    """Why safetensors cannot read `file` (one line), or None when its header and size are sound."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            f.keys()
    except Exception as e:  # SafetensorError and friends: the file, not clsgen, is at fault
        return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return None

