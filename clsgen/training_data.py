"""Training examples: the data file or records a run trains on, with the teacher's explanations.

`load_training_examples` reads a synth JSONL (`clsgen synth` records), a data file or in-memory items
into `TrainExample`s; `join_explanations` joins the explanations of a file (a synth JSONL, or records
`{id, explanation[, label, verdict]}` such as a `clsgen:NAME` file) to examples by id. An explanation
whose record states the other label is dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import Example, map_label, read_rows, rows_from_records, short_repr
from .errors import ClsgenError, DataError, Problem


@dataclass
class TrainExample:
    """An example with the teacher's explanation of its gold label (None: classification only)."""

    id: str
    fields: dict[str, str]
    label: int
    explanation: str | None = None


def load_training_examples(source: str | Path | Iterable[Any]) -> list[TrainExample]:
    """Training examples from a synth JSONL (`clsgen synth` records), a data file or in-memory items.

    Accepted items: synth records `{id, label, fields, explanation, verdict, ...}`, example dicts
    `{id, fields, label, meta}` (explanation in `meta.explanation`, if any), flat rows
    `{id, label, <field>: text, ...}`, `Example` and `TrainExample` objects. An explanation whose
    record states a verdict other than the gold label is dropped (the example trains the head only).
    Every problem is reported together.
    """
    if source is None:
        raise ClsgenError("no training examples given; pass the synth JSONL (--data)")
    if isinstance(source, (str, Path)):
        rows, name = read_rows(source), str(source)
    else:
        items = list(source)
        if all(isinstance(x, TrainExample) for x in items):
            return list(items)
        rows = rows_from_records([_as_record(x) for x in items])
        name = "examples"
    reserved = {"id", "label", "explanation", "verdict", "attempts", "teacher", "seconds", "meta", "split"}
    out: list[TrainExample] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for row in rows:
        v = row.values
        label = map_label(v.get("label"), None)
        if label is None:
            problems.append(Problem(f"label {short_repr(v.get('label'))} is not 0/1 (or true/false, yes/no)", name,
                                    row.number, "label"))
        fields = v.get("fields")
        if fields is None:
            fields = {k: x for k, x in v.items() if k not in reserved}
        if not isinstance(fields, Mapping) or not fields:
            problems.append(Problem("expected a 'fields' object with the example's text fields", name,
                                    row.number, "fields"))
            fields = {}
        bad = [str(k) for k, x in fields.items() if not isinstance(x, (str, int, float))]
        if bad:
            problems.append(Problem(f"expected text, got {type(fields[bad[0]]).__name__}", name, row.number,
                                    f"fields.{bad[0]}"))
        explanation = v.get("explanation")
        if explanation is None and isinstance(v.get("meta"), Mapping):
            explanation = v["meta"].get("explanation")
        if explanation is not None and not isinstance(explanation, str):
            problems.append(Problem(f"expected text or null, got {type(explanation).__name__}", name,
                                    row.number, "explanation"))
            explanation = None
        verdict = v.get("verdict")
        if (explanation and isinstance(verdict, (int, bool)) and label is not None
                and int(verdict) != label):
            explanation = None  # the explanation argues for the other label: keep the head's example only
        ex_id = str(v.get("id", row.number))
        if ex_id in seen:
            problems.append(Problem(f"duplicate id {short_repr(ex_id)} (first at row {seen[ex_id]})", name, row.number,
                                    "id"))
        seen.setdefault(ex_id, row.number)
        out.append(TrainExample(ex_id, {str(k): str(x) for k, x in fields.items()}, label or 0,
                                explanation if explanation and explanation.strip() else None))
    if problems:
        raise DataError(problems)
    return out


def join_explanations(examples: Sequence[Any], source: str | Path | Iterable[Any]) -> list[TrainExample]:
    """The examples with the explanations of `source` joined by id: a synth JSONL, or any file of
    records `{id, explanation[, label, verdict]}` (e.g. `clsgen:NAME`, a file shipped with clsgen).

    An example without a record, or whose record has no accepted explanation, keeps None (it trains on
    its verdict line alone). A record whose label differs from the example's means the data changed:
    an error naming the ids. Explanations stating the other label are dropped.
    """
    records = load_explanation_records(source)
    clash = [str(ex.id) for ex in examples if str(ex.id) in records
             and records[str(ex.id)].get("label") not in (None, ex.label)]
    if clash:
        raise ClsgenError(f"{source}: the label of {len(clash)} examples differs from the data's (e.g. "
                          f"{clash[:3]}); the explanations were made for other data or another binarization")
    return [TrainExample(str(ex.id), {k: str(v) for k, v in ex.fields.items()}, int(ex.label),
                         _accepted(records.get(str(ex.id)), ex.label)) for ex in examples]


def load_explanation_records(source: str | Path | Iterable[Any]) -> dict[str, dict[str, Any]]:
    """{id: record} of an explanations file or of in-memory records (each needs an id)."""
    if isinstance(source, (str, Path)):
        from .synth.store import explanations_path

        source = explanations_path(source)
    rows = read_rows(source) if isinstance(source, Path) else rows_from_records(list(source))
    out: dict[str, dict[str, Any]] = {}
    problems = []
    for row in rows:
        v = row.values
        if v.get("id") is None:
            problems.append(Problem("every explanation record needs an id", str(source), row.number, "id"))
            continue
        label = map_label(v.get("label"), None) if v.get("label") is not None else None
        out[str(v["id"])] = {"explanation": v.get("explanation"), "verdict": v.get("verdict"), "label": label}
    if problems:
        raise DataError(problems)
    return out


def _accepted(record: Mapping[str, Any] | None, label: int) -> str | None:
    if not record:
        return None
    text, verdict = record.get("explanation"), record.get("verdict")
    if not isinstance(text, str) or not text.strip():
        return None
    if isinstance(verdict, (int, bool)) and int(verdict) != label:
        return None
    return text


def _as_record(x: Any) -> Any:
    if isinstance(x, TrainExample):
        return dataclasses.asdict(x)
    if isinstance(x, Example):
        return {"id": x.id, "fields": x.fields, "label": x.label, "meta": x.meta}
    return x
