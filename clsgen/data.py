"""Examples and the readers that turn JSONL, CSV, Parquet or in-memory rows into validated examples.

Validation reports every problem at once, each naming file, row and field: a missing field, an empty
text, a label outside the mapping, a duplicate id, a line that is not JSON, an unreadable file.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import DataError, Problem

DEFAULT_LABEL_MAP: dict[str, int] = {
    "0": 0, "1": 1, "false": 0, "true": 1, "no": 0, "yes": 1, "negative": 0, "positive": 1,
}


@dataclass
class Example:
    """One input to classify: its text fields, gold label (None when unknown) and metadata."""

    id: str
    fields: dict[str, str]
    label: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "fields": self.fields, "label": self.label, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Example:
        return cls(id=str(d["id"]), fields=dict(d["fields"]), label=d.get("label"),
                   meta=dict(d.get("meta") or {}))


@dataclass
class Row:
    """A raw record and where it came from (for error messages)."""

    number: int
    values: Mapping[str, Any]


def read_rows(path: str | Path) -> list[Row]:
    """Read a JSONL, JSON (list of objects), CSV or Parquet file into rows; raise `DataError`."""
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise DataError([Problem("file not found (or not a file)", file=name)])
    suffix = "".join(s for s in path.suffixes[-2:] if s != ".gz").lower() or path.suffix.lower()
    try:
        if suffix.endswith(".jsonl"):
            return _read_jsonl(path)
        if suffix.endswith(".json"):
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if not isinstance(data, list):
                raise DataError([Problem("expected a JSON list of objects (or {'data': [...]})", file=name)])
            return _check_objects(data, name, first_row=1)
        if suffix.endswith((".csv", ".tsv")):
            import pandas as pd

            frame = pd.read_csv(path, dtype=str, keep_default_na=False,
                                sep="\t" if suffix.endswith(".tsv") else ",")
            return [Row(i + 1, r) for i, r in enumerate(frame.to_dict("records"))]
        if suffix.endswith(".parquet"):
            import pandas as pd

            frame = pd.read_parquet(path)
            return [Row(i + 1, r) for i, r in enumerate(frame.to_dict("records"))]
    except DataError:
        raise
    except UnicodeDecodeError as e:
        raise DataError([Problem(f"not UTF-8 text ({e.reason} at byte {e.start}); re-save it as UTF-8",
                                 file=name)]) from None
    except (OSError, ValueError, json.JSONDecodeError) as e:  # pandas' ParserError is a ValueError
        raise DataError([Problem(f"cannot be read as {suffix.lstrip('.')}: {_first_line(e)}",
                                 file=name)]) from None
    except Exception as e:  # pyarrow raises its own types for corrupt Parquet
        raise DataError([Problem(f"cannot be read: {type(e).__name__}: {_first_line(e)}",
                                 file=name)]) from None
    raise DataError([Problem(f"unsupported file type {path.suffix!r}; use .jsonl, .json, .csv, .tsv "
                             "or .parquet", file=name)])


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _read_jsonl(path: Path) -> list[Row]:
    rows, problems = [], []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(Problem(f"not valid JSON ({e.msg} at column {e.colno}); a truncated "
                                        "or partly written line?", file=str(path), row=number))
                continue
            if not isinstance(obj, dict):
                problems.append(Problem(f"expected a JSON object, got {type(obj).__name__}",
                                        file=str(path), row=number))
                continue
            rows.append(Row(number, obj))
    if problems:
        raise DataError(problems)
    return rows


def _check_objects(items: Sequence[Any], name: str, first_row: int) -> list[Row]:
    bad = [Problem(f"expected an object, got {type(o).__name__}", file=name, row=i + first_row)
           for i, o in enumerate(items) if not isinstance(o, Mapping)]
    if bad:
        raise DataError(bad)
    return [Row(i + first_row, o) for i, o in enumerate(items)]


def rows_from_records(records: Iterable[Mapping[str, Any]]) -> list[Row]:
    """Rows from in-memory records: a list of dicts, a pandas DataFrame or a `datasets.Dataset`."""
    if hasattr(records, "to_dict") and hasattr(records, "columns"):  # pandas.DataFrame
        records = records.to_dict("records")  # type: ignore[union-attr]
    elif hasattr(records, "to_list"):  # datasets.Dataset
        records = records.to_list()  # type: ignore[union-attr]
    return _check_objects(list(records), "records", first_row=1)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def map_label(value: Any, label_map: Mapping[str, int] | None) -> int | None:
    """Map a raw label to 0/1 via `label_map` (keys compared as lower-case text); None if unmapped."""
    if _is_missing(value):
        return None
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    key = str(value).strip().lower()
    mapping = {str(k).strip().lower(): v for k, v in (label_map or DEFAULT_LABEL_MAP).items()}
    return mapping.get(key)


def examples_from_rows(
    rows: Sequence[Row],
    *,
    source: str,
    text_fields: Sequence[str],
    label_field: str | None = "label",
    id_field: str | None = "id",
    label_map: Mapping[str, int] | None = None,
    meta_fields: Sequence[str] = (),
    require_label: bool = True,
    field_map: Mapping[str, str] | None = None,
) -> list[Example]:
    """Validate rows and build examples; every problem is collected and raised together.

    `field_map` renames columns to task field names ({task_field: column}).
    """
    problems: list[Problem] = []
    examples: list[Example] = []
    seen: dict[str, int] = {}
    field_map = dict(field_map or {})
    for row in rows:
        values = row.values
        fields: dict[str, str] = {}
        for name in text_fields:
            column = field_map.get(name, name)
            value = values.get(column)
            if column not in values:
                problems.append(Problem("missing field (column not present)", source, row.number, column))
            elif _is_missing(value) or (isinstance(value, str) and not value.strip()):
                problems.append(Problem("empty text", source, row.number, column))
            elif not isinstance(value, (str, int, float)):
                problems.append(Problem(f"expected text, got {type(value).__name__}", source, row.number,
                                        column))
            else:
                fields[name] = str(value)
        label: int | None = None
        if label_field is not None:
            if label_field not in values or _is_missing(values.get(label_field)) or values.get(label_field) == "":
                if require_label:
                    problems.append(Problem("missing label", source, row.number, label_field))
            else:
                label = map_label(values[label_field], label_map)
                if label is None:
                    allowed = ", ".join(sorted((label_map or DEFAULT_LABEL_MAP).keys()))
                    problems.append(Problem(f"label {values[label_field]!r} is not in the label mapping "
                                            f"({allowed}); set data.label_map", source, row.number,
                                            label_field))
        if id_field is not None and id_field in values and not _is_missing(values[id_field]):
            ex_id = str(values[id_field])
        else:
            ex_id = str(row.number)
        if ex_id in seen:
            problems.append(Problem(f"duplicate id {ex_id!r} (first at row {seen[ex_id]})", source,
                                    row.number, id_field or "id"))
        seen.setdefault(ex_id, row.number)
        meta = {m: values[m] for m in meta_fields if m in values and not _is_missing(values[m])}
        examples.append(Example(ex_id, fields, label, meta))
    if problems:
        raise DataError(problems)
    return examples


def stratified_sample(examples: Sequence[Example], n: int | None, seed: int = 0) -> list[Example]:
    """At most `n` examples keeping the class balance; order is preserved. None/too large: all."""
    if n is None or n >= len(examples):
        return list(examples)
    rng = random.Random(seed)
    by_label: dict[Any, list[int]] = {}
    for i, ex in enumerate(examples):
        by_label.setdefault(ex.label, []).append(i)
    chosen: list[int] = []
    total = len(examples)
    groups = sorted(by_label.items(), key=lambda kv: str(kv[0]))
    quotas = {k: max(1, round(n * len(v) / total)) for k, v in groups}
    while sum(quotas.values()) > n:  # rounding overshoot: trim the largest group
        k = max(quotas, key=lambda q: quotas[q])
        quotas[k] -= 1
    for k, idx in groups:
        chosen.extend(rng.sample(idx, min(quotas[k], len(idx))))
    return [examples[i] for i in sorted(chosen)]


def class_balance(examples: Sequence[Example]) -> dict[str, int]:
    counts = Counter(ex.label for ex in examples)
    return {str(k): counts[k] for k in sorted(counts, key=str)}
