"""Examples and the readers that turn JSONL, CSV, Parquet or in-memory rows into validated examples.

Validation reports every problem at once, each naming file, row and field: a missing field, an empty
text, a label outside the mapping, a duplicate id, a line that is not JSON, an unreadable file.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import numbers
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

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
    try:
        is_file = path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, an embedded NUL byte
        is_file = False
    if not is_file:
        raise DataError([Problem(_not_a_file(path), file=name)])
    suffix = "".join(s for s in path.suffixes[-2:] if s != ".gz").lower() or path.suffix.lower()
    try:
        if suffix.endswith((".jsonl", ".json", ".csv", ".tsv")):
            _check_not_utf16(path, name)
        if suffix.endswith(".jsonl"):
            return _read_jsonl(path)
        if suffix.endswith(".json"):
            try:
                with _open_text(path) as f:
                    data = json.loads(f.read(), object_pairs_hook=_unique_keys)
            except RecursionError:
                raise DataError([Problem("JSON nested too deeply to be a list of records", file=name)]) from None
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if not isinstance(data, list):
                raise DataError([Problem("expected a JSON list of objects (or {'data': [...]})", file=name)])
            return _check_objects(data, name, first_row=1)
        if suffix.endswith((".csv", ".tsv")):
            return _read_delimited(path, "\t" if suffix.endswith(".tsv") else ",")
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


def _open_text(path: Path, newline: str | None = None) -> IO[str]:
    """A UTF-8 text file (gzip-compressed when it ends in .gz); a leading byte-order mark is skipped."""
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline=newline)
    return path.open(encoding="utf-8-sig", newline=newline)


def _csv_records(path: Path, sep: str, strict: bool) -> list[list[str]]:
    limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # a long discharge summary is one field
    try:
        with _open_text(path, newline="") as f:
            return [r for r in csv.reader(f, delimiter=sep, strict=strict) if r]  # blank lines are skipped
    finally:
        csv.field_size_limit(limit)


def _read_delimited(path: Path, sep: str) -> list[Row]:
    """CSV/TSV rows as text. A row whose field count differs from the header's is a problem (pandas
    would shift or pad it silently), as is a quote left open to the end of the file."""
    name = str(path)
    try:
        records = _csv_records(path, sep, strict=True)
    except csv.Error as e:
        if "unexpected end of data" not in str(e):  # e.g. '"a"b': read as pandas does, leniently
            try:
                records = _csv_records(path, sep, strict=False)
            except csv.Error as e2:
                raise DataError([Problem(f"cannot be read as CSV: {_first_line(e2)}", file=name)]) from None
        else:
            raise DataError([Problem("a quoted field is never closed (a stray '\"'?): the file ends inside it",
                                     file=name)]) from None
    if not records:
        raise DataError([Problem("is empty: no header line", file=name)])
    header, problems, rows = _unique_names(records[0]), [], []
    for number, record in enumerate(records[1:], start=1):
        if len(record) != len(header):
            problems.append(Problem(f"has {len(record)} fields, the header has {len(header)} (a delimiter, "
                                    "quote or line break in an unquoted field?)", file=name, row=number))
            continue
        rows.append(Row(number, dict(zip(header, record))))
    if problems:
        raise DataError(problems)
    return rows


def _unique_names(header: list[str]) -> list[str]:
    """Column names as pandas makes them: an empty one is 'Unnamed: <i>', a repeated one 'name.1'."""
    out: list[str] = []
    for i, h in enumerate(header):
        h = h or f"Unnamed: {i}"
        base, k = h, 0
        while h in out:
            k += 1
            h = f"{base}.{k}"
        out.append(h)
    return out


def _check_not_utf16(path: Path, name: str) -> None:
    """A UTF-16 (or UTF-32) text file, as some editors save, gets a message that says so."""
    with path.open("rb") as f:
        head = f.read(4)
    if head.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")):
        raise DataError([Problem("is UTF-16/UTF-32 text (it starts with that byte-order mark); re-save it as "
                                 "UTF-8", file=name)])


def short_repr(value: Any, limit: int = 40) -> str:
    """`repr(value)` cut to `limit` characters, for error messages that must stay short (and must not
    echo a long text, which may be clinical)."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    r.maxlist = r.maxdict = r.maxtuple = r.maxset = 3
    r.maxlevel = 2
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_jsonl(path: Path) -> list[Row]:
    rows, problems = [], []
    with _open_text(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line, object_pairs_hook=_unique_keys)
            except DuplicateKeyError as e:
                problems.append(Problem(f"{e}; give each key once", file=str(path), row=number))
                continue
            except json.JSONDecodeError as e:
                problems.append(Problem(f"not valid JSON ({e.msg} at column {e.colno}); a truncated "
                                        "or partly written line?", file=str(path), row=number))
                continue
            except RecursionError:
                problems.append(Problem("JSON nested too deeply", file=str(path), row=number))
                continue
            except ValueError as e:  # e.g. an integer with more digits than Python converts
                problems.append(Problem(f"not valid JSON ({_first_line(e)[:120]})", file=str(path), row=number))
                continue
            if not isinstance(obj, dict):
                problems.append(Problem(f"expected a JSON object, got {type(obj).__name__}",
                                        file=str(path), row=number))
                continue
            rows.append(Row(number, obj))
    if problems:
        raise DataError(problems)
    return rows


class DuplicateKeyError(ValueError):
    """A JSON object that gives one key twice (JSON parsers keep the last silently)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(f"the key {short_repr(key)} appears twice in one object")
        out[key] = value
    return out


def _not_a_file(path: Path) -> str:
    """Why `path` cannot be read as a data file: missing, a folder, or a pipe or device (`/dev/stdin`)."""
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, ValueError):
        return "file not found (the name is not a valid path)"
    if not exists:
        return "file not found"
    if is_dir:
        return "is a folder, not a file"
    return ("is not a regular file (a pipe, a device such as /dev/stdin, a socket); clsgen reads a data file "
            "twice and by its extension: save the data to a .jsonl, .csv or .parquet file first")


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
    """None, a NaN of any float type, pandas' NA and NaT."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return True
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        try:
            return math.isnan(value)
        except (TypeError, ValueError, OverflowError):
            return False
    return False


def _is_scalar(value: Any) -> bool:
    """Text, a number or a bool (Python's or numpy's): what a label or an id can be."""
    return isinstance(value, (str, bool, numbers.Real)) or type(value).__name__ == "bool_"  # numpy's bool


def _is_blank(value: Any) -> bool:
    return _is_missing(value) or (isinstance(value, str) and not value.strip())


def lone_surrogate_at(text: str) -> int | None:
    """Position of the first lone surrogate in `text` (text that no UTF-8 file holds and tokenizers
    refuse), else None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def map_label(value: Any, label_map: Mapping[str, int] | None) -> int | None:
    """Map a raw label to 0/1 via `label_map` (keys compared as lower-case text); None if unmapped.

    A bool is looked up as true/false, then as 1/0; a whole number written as a decimal ("1.0", 1.0,
    as a CSV written from a float column holds) as its integer. Lists, objects and NaN map to None.
    """
    if _is_missing(value) or not _is_scalar(value):
        return None
    mapping = {str(k).strip().lower(): v for k, v in (label_map or DEFAULT_LABEL_MAP).items()}
    keys: list[str] = []
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        keys += [str(bool(value)).lower(), str(int(bool(value)))]
    elif isinstance(value, numbers.Integral):
        keys.append(str(int(value)))
    elif isinstance(value, numbers.Real):
        f = float(value)
        keys += [str(int(f))] if f.is_integer() else [str(value).strip().lower()]
    else:
        key = str(value).strip().lower()
        keys.append(key)
        try:
            f = float(key)
        except (ValueError, OverflowError):
            f = math.nan
        if math.isfinite(f) and f.is_integer() and len(key) < 40:
            keys.append(str(int(f)))
    for key in keys:
        if key in mapping:
            return mapping[key]
    return None


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

    `field_map` renames columns to task field names ({task_field: column}). Messages name file, row
    and field, and never quote a text field (it may be clinical text): at most a short label or id.
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
            elif _is_blank(value):
                problems.append(Problem("empty text", source, row.number, column))
            elif not isinstance(value, (str, int, float)):
                problems.append(Problem(f"expected text, got {type(value).__name__}", source, row.number,
                                        column))
            else:
                try:
                    text = str(value)
                except ValueError:  # an int with more digits than Python converts
                    problems.append(Problem("expected text, got a number too long to convert", source,
                                            row.number, column))
                    continue
                bad = lone_surrogate_at(text)
                if bad is not None:
                    problems.append(Problem(f"not valid Unicode text (a lone surrogate at character {bad}, "
                                            "e.g. a \\ud800 escape); fix or re-save the file as UTF-8",
                                            source, row.number, column))
                    continue
                fields[name] = text
        label: int | None = None
        if label_field is not None:
            raw = values.get(label_field)
            if label_field not in values or _is_blank(raw):
                if require_label:
                    problems.append(Problem("missing label", source, row.number, label_field))
            elif not _is_scalar(raw):
                problems.append(Problem(f"expected a label (text or number), got {type(raw).__name__}",
                                        source, row.number, label_field))
            else:
                label = map_label(raw, label_map)
                if label is None:
                    allowed = ", ".join(sorted(str(k) for k in (label_map or DEFAULT_LABEL_MAP)))
                    problems.append(Problem(f"label {short_repr(raw)} is not in the label mapping "
                                            f"({short_repr(allowed, 200)}); set data.label_map", source,
                                            row.number, label_field))
                elif label not in (0, 1):
                    problems.append(Problem(f"data.label_map maps label {short_repr(raw)} to {label!r}; "
                                            "labels must be 0 or 1", source, row.number, label_field))
                    label = None
        raw_id = values.get(id_field) if id_field is not None else None
        if raw_id is None or _is_missing(raw_id):
            ex_id = str(row.number)
        elif not _is_scalar(raw_id) or lone_surrogate_at(str(raw_id)) is not None:
            problems.append(Problem(f"expected an id (text or number), got {type(raw_id).__name__}", source,
                                    row.number, id_field))
            ex_id = str(row.number)
        else:
            ex_id = str(raw_id)
        if ex_id in seen:
            problems.append(Problem(f"duplicate id {short_repr(ex_id)} (first at row {seen[ex_id]})", source,
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
