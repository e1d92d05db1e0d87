"""Checking parsed values against the config dataclasses' annotations: each value of the right type
is kept (ints widened to floats), every wrong one recorded as a `Problem` naming its key."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal

from .data import short_repr
from .errors import Problem


def from_dict(cls: type, data: dict[str, Any], prefix: str, problems: list[Problem]) -> Any:
    """An instance of the dataclass `cls` from `data`; unknown keys and wrong values go to `problems`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = key if isinstance(key, str) and key.strip() == key and key else repr(key)  # '', ' x', None
        full = f"{prefix}.{name}" if prefix else name
        if key not in names:
            known = ", ".join(sorted(names))
            problems.append(Problem(f"unknown key; known keys here: {known}", field=full))
            continue
        kwargs[key] = _coerce(value, hints[key], full, problems)
    return cls(**{k: v for k, v in kwargs.items() if v is not None or _allows_none(hints[k])})


def _allows_none(tp: Any) -> bool:
    return type(None) in typing.get_args(tp)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, problems: list[Problem]) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widened to floats) or record a problem."""
    origin = typing.get_origin(tp)

    def bad() -> Problem:  # built only when recorded: printing a value can be costly (see short_repr)
        return Problem(f"expected {_type_name(tp)}, got {short_repr(value, 80)} ({type(value).__name__})",
                       field=key)

    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(bad())
            return tp()
        return from_dict(tp, value, key, problems)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        problems.append(bad())
        return None
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            trial: list[Problem] = []
            out = _coerce(value, arg, key, trial)
            if not trial:
                return out
        problems.append(bad())
        return None
    if tp is type(None):
        if value is None:
            return None
        problems.append(bad())
        return None
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append(bad())
            return []
        return [_coerce(v, item_tp, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        k_tp, v_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            problems.append(bad())
            return {}
        return {str(k): _coerce(v, v_tp, f"{key}.{k}", problems) for k, v in value.items()}
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an int too large for a float
                number = math.inf
        elif isinstance(value, str):  # YAML reads '1e-4' (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and not math.isfinite(number):
            problems.append(Problem(f"must be a finite number, got {short_repr(value, 80)}", field=key))
            return None
        if number is not None:
            return number
        problems.append(bad())
        return None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= 2**63:  # numpy and torch would overflow on it later
                problems.append(Problem(f"must fit in 64 bits, got {short_repr(value, 80)}", field=key))
                return None
            return value
        problems.append(bad())
        return None
    if tp is str and isinstance(value, str):
        try:  # YAML's "\ud83d\ude00" escapes (as json.dumps writes an emoji) give a surrogate pair: join it
            return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
        except UnicodeDecodeError as e:
            problems.append(Problem(f"not valid Unicode text (a lone surrogate at character {e.start // 2})",
                                    field=key))
            return None
    if tp is str or tp is bool:
        if isinstance(value, tp):
            return value
        problems.append(bad())
        return None
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")  # a bug in this module

