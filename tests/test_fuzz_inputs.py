"""Bad input, fuzzed (issue 9): property-based tests over the data readers, the task template renderer,
the verdict parser and the config loader.

Each property says: for any input of its kind, the result is either correct (well-formed inputs read
back exactly as written) or a `ClsgenError` whose message names the file (and the row and field for a
row-level problem) -- never another exception, never a hang. Error messages never quote a text field
(clinical text). Every test is deterministic (`derandomize=True`, no example database) and bounded
(`max_examples`); `_time_limit` turns a hang into a failure.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import signal
import string
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from clsgen.cli import main
from clsgen.config import Config, load_config, parse_override
from clsgen.data import DEFAULT_LABEL_MAP, examples_from_rows, map_label, read_rows, rows_from_records
from clsgen.errors import ClsgenError, ConfigError, DataError
from clsgen.task import ELLIPSIS, Task, _water_fill
from clsgen.verdict import _last_marker, parse_verdict, split_verdict, verdict_line

REPO = Path(__file__).resolve().parent.parent


def fuzz(n: int, **kw):
    """Hypothesis settings for one property: `n` examples, deterministic, no database, no deadline
    (the machine is shared; `_time_limit` catches real hangs)."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large, HealthCheck.large_base_example],
                    **kw)


class Hang(BaseException):
    """Raised by `_time_limit`; a BaseException so that no `except Exception` in the code under test
    turns a hang into an ordinary error."""


@contextmanager
def _time_limit(seconds: float):
    """Fail (raise `Hang`) when the block runs longer than `seconds` of wall-clock time."""
    def on_alarm(signum, frame):
        raise Hang(f"still running after {seconds} s: a hang on this input")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


LIMIT_S = 20.0  # per call: generous for a loaded 2-core machine; the inputs here take milliseconds


def _clean(fn, *args, **kw):
    """Run `fn`: its result, or the `ClsgenError` it raised; any other exception fails the test."""
    with _time_limit(LIMIT_S):
        try:
            return fn(*args, **kw)
        except ClsgenError as e:
            assert e.exit_code == 2
            return e


def _load_examples(path, **kw):
    kw.setdefault("text_fields", ["text"])
    return examples_from_rows(read_rows(path), source=str(path), **kw)


def _assert_names_file(err: DataError, path: Path, n_rows: int | None = None) -> None:
    """Every problem names the file; row numbers, where given, point into the file."""
    assert isinstance(err, DataError), err
    assert err.problems
    for p in err.problems:
        assert p.file == str(path), p
        if p.row is not None and n_rows is not None:
            assert 1 <= p.row <= n_rows, p
    assert str(path) in str(err)
    assert len(str(err)) < 20_000  # bounded: at most 20 problems are shown, each short


# ---------------------------------------------------------------------------- strategies

SUFFIXES = [".jsonl", ".json", ".csv", ".tsv", ".parquet"]

# Text a UTF-8 file can hold (no lone surrogates), with unicode, RTL marks, emoji, NUL and controls.
SAFE_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
NONBLANK_TEXT = SAFE_TEXT.filter(lambda s: s.strip() != "")
NASTY_CHARS = st.sampled_from(['"', "'", ",", "\t", "\n", "\r", "\r\n", "\\", "\x00", "\ufeff", "\u202e",
                               "😀", "é", "{", "}", "#", " ", "NaN", "null", "NA", "中"])
NASTY_TEXT = st.lists(st.one_of(NASTY_CHARS, SAFE_TEXT), max_size=8).map("".join)
NASTY_NONBLANK = NASTY_TEXT.filter(lambda s: s.strip() != "")

# Raw label values and the 0/1 they must read back as through the default mapping (None: an error).
# (Pairs, not a dict: True, 1 and 1.0 are one dict key.)
GOOD_LABELS = [
    (0, 0), (1, 1), ("0", 0), ("1", 1), ("yes", 1), ("no", 0), ("YES", 1), (" No ", 0), ("true", 1),
    ("False", 0), (True, 1), (False, 0), (1.0, 1), (0.0, 0), ("1.0", 1), ("0.0", 0), ("positive", 1),
    ("negative", 0),
]
GOOD_RAW = [raw for raw, _ in GOOD_LABELS]


def _expected(raw):
    """The 0/1 a good raw label reads back as (None when `raw` is not one of GOOD_LABELS)."""
    return next((e for r, e in GOOD_LABELS if type(r) is type(raw) and r == raw), None)

BAD_LABELS = [2, -1, "2", "-1", "maybe", "1.5", 0.5, "yes!", "Infinity", "nan"]

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)), max_leaves=12)


@st.composite
def good_records(draw, min_size=1, max_size=8):
    """Well-formed records: unique ids, non-blank text, labels from GOOD_LABELS."""
    n = draw(st.integers(min_size, max_size))
    ids = draw(st.lists(st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=8),
                        min_size=n, max_size=n, unique=True))
    texts = draw(st.lists(st.one_of(NONBLANK_TEXT, NASTY_NONBLANK), min_size=n, max_size=n))
    labels = draw(st.lists(st.sampled_from(GOOD_RAW), min_size=n, max_size=n))
    return [{"id": i, "text": t, "label": lab} for i, t, lab in zip(ids, texts, labels)]


def _write_records(path: Path, records: list[dict], how: dict) -> None:
    """Write records in the format of `path`'s suffix; `how` picks quoting, line ends and BOMs."""
    suffix = path.suffix
    bom = "\ufeff" if how.get("bom") else ""
    if suffix == ".jsonl":
        lines = [json.dumps(r, ensure_ascii=how.get("ascii", True)) for r in records]
        sep = "\r\n" if how.get("crlf") else "\n"
        path.write_text(bom + sep.join(lines) + sep * how.get("trailing", 1), encoding="utf-8", newline="")
    elif suffix == ".json":
        data = {"data": records} if how.get("wrapped") else records
        path.write_text(bom + json.dumps(data, ensure_ascii=how.get("ascii", True)), encoding="utf-8")
    elif suffix in (".csv", ".tsv"):
        buf = io.StringIO()
        quoting = how.get("quoting", csv.QUOTE_MINIMAL)
        if not how.get("crlf") and any("\r" in r["text"] for r in records):
            quoting = csv.QUOTE_ALL  # the csv module leaves a lone \r unquoted unless it ends lines
        writer = csv.writer(buf, delimiter="\t" if suffix == ".tsv" else ",", quoting=quoting,
                            lineterminator="\r\n" if how.get("crlf") else "\n")
        writer.writerow(["id", "text", "label"])
        for r in records:
            writer.writerow([r["id"], r["text"], r["label"]])
        path.write_text(bom + buf.getvalue(), encoding="utf-8", newline="")
    else:
        frame = pd.DataFrame({"id": [r["id"] for r in records], "text": [r["text"] for r in records],
                              "label": [str(r["label"]) for r in records]})
        if how.get("category"):
            frame["text"] = frame["text"].astype("category")
        frame.to_parquet(path)


# ---------------------------------------------------------------------------- readers: well-formed

@fuzz(120)
@given(records=good_records(), suffix=st.sampled_from(SUFFIXES),
       how=st.fixed_dictionaries({}, optional={
           "bom": st.booleans(), "crlf": st.booleans(), "ascii": st.booleans(), "wrapped": st.booleans(),
           "trailing": st.integers(0, 3), "category": st.booleans(),
           "quoting": st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC])}))
def test_well_formed_files_read_back_exactly(tmp_path_factory, records, suffix, how):
    """Any well-formed file (any text: quotes, delimiters, line breaks in fields, NUL, BOM, emoji, RTL;
    any accepted label spelling) reads back as exactly the examples written."""
    path = tmp_path_factory.mktemp("rt") / f"data{suffix}"
    _write_records(path, records, how)
    out = _clean(_load_examples, path)
    assert not isinstance(out, ClsgenError), str(out)
    assert [ex.id for ex in out] == [r["id"] for r in records]
    assert [ex.fields["text"] for ex in out] == [r["text"] for r in records]
    assert [ex.label for ex in out] == [_expected(r["label"]) for r in records]


# ---------------------------------------------------------------------------- readers: garbage

@fuzz(150)
@given(content=st.one_of(
    st.binary(max_size=600),
    NASTY_TEXT.map(lambda s: s.encode("utf-8")),
    st.tuples(st.sampled_from(["latin-1", "utf-16", "utf-16-le", "utf-32", "cp1252"]),
              st.text(string.printable + "éàü€ß", max_size=80))
    .map(lambda e: f'{{"id": 1, "text": "{e[1]}", "label": 1}}\nid,text,label\n1,"{e[1]}",1\n'
         .encode(e[0], "replace")),
), suffix=st.sampled_from(SUFFIXES + [".txt", ".jsonl.gz", ""]))
@example(content=b"", suffix=".csv")
@example(content=b"", suffix=".jsonl")
@example(content=b"\xff\xfe{\x00}\x00", suffix=".jsonl")
@example(content=b"[" * 100_000 + b"]" * 100_000, suffix=".json")
@example(content=b"[" * 100_000, suffix=".jsonl")
@example(content=b'{"id": 1, "text": "a", "label": ' + b"9" * 5000 + b"}\n", suffix=".jsonl")
@example(content=b"PAR1" + bytes(range(256)) + b"PAR1", suffix=".parquet")
def test_random_bytes_give_examples_or_a_data_error_naming_the_file(tmp_path_factory, content, suffix):
    """Random bytes, other encodings (latin-1, UTF-16/32, cp1252), deep nesting, huge numbers, torn
    Parquet, unsupported suffixes: a DataError naming the file, or rows that validate cleanly."""
    path = tmp_path_factory.mktemp("bytes") / f"data{suffix}"
    path.write_bytes(content)
    out = _clean(_load_examples, path)
    if isinstance(out, ClsgenError):
        _assert_names_file(out, path)
    else:
        assert all(ex.fields["text"].strip() and ex.label in (0, 1) for ex in out)


@st.composite
def messy_csv(draw):
    """CSV/TSV text built cell by cell *without* proper quoting: embedded and unterminated quotes,
    delimiters and line breaks inside fields, ragged rows, missing columns, blank lines."""
    sep = draw(st.sampled_from([",", "\t"]))
    header = draw(st.lists(st.sampled_from(["id", "text", "label", "note", "", "text", '"text"', "lab el"]),
                           min_size=1, max_size=4))
    cell = st.one_of(NASTY_TEXT, st.sampled_from(['"', '""', '"a', 'a"b', '"a""b"', '"x\ny"', sep, "", "1",
                                                  "yes", "NaN", "nan", "1.0", "TRUE", "-1", "2"]))
    rows = draw(st.lists(st.lists(cell, min_size=0, max_size=len(header) + 2), max_size=6))
    end = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = end.join([sep.join(header)] + [sep.join(r) for r in rows]) + draw(st.sampled_from(["", end]))
    return sep, text


@fuzz(150)
@given(messy=messy_csv())
def test_messy_csv_and_tsv(tmp_path_factory, messy):
    """Hand-made CSV/TSV with quoting edge cases: clean examples or a DataError naming the file (and
    row and field for row-level problems)."""
    sep, text = messy
    path = tmp_path_factory.mktemp("csv") / ("data.tsv" if sep == "\t" else "data.csv")
    path.write_text(text, encoding="utf-8", newline="")
    out = _clean(_load_examples, path)
    if isinstance(out, ClsgenError):
        _assert_names_file(out, path)
        for p in out.problems:
            if p.field is not None:
                assert p.row is not None  # a field-level problem also says which row
    else:
        assert all(ex.fields["text"].strip() and ex.label in (0, 1) for ex in out)


@fuzz(80)
@given(records=good_records(min_size=2), sep=st.sampled_from([",", "\t"]), data=st.data())
def test_ragged_rows_are_named_not_shifted(tmp_path_factory, records, sep, data):
    """Rows with more or fewer fields than the header (a trailing delimiter, a dropped cell) are each
    reported by row number; none is silently padded or shifted (pandas made the first column an index
    when the first row had one field too many)."""
    ragged = data.draw(st.sets(st.integers(0, len(records) - 1), min_size=1))
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=sep, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(["id", "text", "label"])
    for i, r in enumerate(records):
        cells = [r["id"], r["text"], r["label"]]
        if i in ragged:
            cells = cells + [data.draw(st.sampled_from(["", "x", "1"]))] if data.draw(st.booleans()) else cells[:2]
        writer.writerow(cells)
    path = tmp_path_factory.mktemp("ragged") / ("data.tsv" if sep == "\t" else "data.csv")
    path.write_text(buf.getvalue(), encoding="utf-8", newline="")
    out = _clean(_load_examples, path)
    assert isinstance(out, DataError)
    _assert_names_file(out, path, n_rows=len(records))
    assert sorted(p.row for p in out.problems) == sorted(i + 1 for i in ragged)
    assert all("fields, the header has 3" in p.message for p in out.problems)


def test_an_extra_field_does_not_shift_the_columns(tmp_path):
    """Found by the fuzzing above: pandas read 'text,label' + 'chest pain,no,1' as text 'no', label 1
    (the extra field made the first column an index), a silently wrong example."""
    path = tmp_path / "shift.csv"
    path.write_text("text,label\nchest pain,no,1\nfever,yes,0\n")
    with pytest.raises(DataError) as e:
        _load_examples(path, id_field=None)
    assert [(p.row, p.field) for p in e.value.problems] == [(1, None), (2, None)]
    assert "has 3 fields, the header has 2" in str(e.value)


@fuzz(120)
@given(lines=st.lists(st.one_of(
    JSON_VALUES.map(lambda v: json.dumps(v)),  # NaN, Infinity, nested objects and arrays, any scalar
    st.dictionaries(st.sampled_from(["id", "text", "label", "x"]), JSON_VALUES, max_size=4).map(json.dumps),
    st.builds(lambda t, lab, i: json.dumps({"id": i, "text": t, "label": lab}),
              st.one_of(SAFE_TEXT, JSON_VALUES), st.one_of(JSON_VALUES, st.sampled_from(BAD_LABELS)),
              st.one_of(st.integers(0, 3), JSON_VALUES)),
    st.just('{"id": 1, "text": "\\ud800 lone surrogate", "label": 1}'),
    st.just('{"id": "\\udfff", "text": "ok", "label": 1}'),
    NASTY_TEXT.filter(lambda s: "\n" not in s and "\r" not in s),  # not JSON at all
), max_size=8))
def test_jsonl_with_random_json_values(tmp_path_factory, lines):
    """JSONL lines holding any JSON value (NaN, Infinity, nested, huge ints, lone surrogates, wrong
    types for text, label and id): clean examples or a DataError naming file, row and field."""
    path = tmp_path_factory.mktemp("jsonl") / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = _clean(_load_examples, path)
    if isinstance(out, ClsgenError):
        _assert_names_file(out, path, n_rows=len(lines))
        assert all(p.row is not None for p in out.problems)  # every problem here is in one line
    else:
        for ex in out:
            assert isinstance(ex.fields["text"], str) and ex.fields["text"].strip()
            assert ex.label in (0, 1)
            ex.fields["text"].encode("utf-8")  # nothing a UTF-8 file or a tokenizer refuses


@fuzz(200)
@given(raw=st.one_of(st.sampled_from(GOOD_RAW + BAD_LABELS), JSON_VALUES,
                     st.sampled_from([np.int64(1), np.float32(0.0), np.bool_(True), np.float64("nan"),
                                      pd.NA, pd.NaT, np.array([1, 2]), b"1", pd.Timestamp(0), 1 + 0j])),
       label_map=st.one_of(st.none(), st.dictionaries(st.sampled_from(["1", "0", "yes", "TRUE", "1.0", "x"]),
                                                      st.sampled_from([0, 1]), min_size=1)))
def test_any_label_value_maps_to_0_1_or_a_row_level_problem(raw, label_map):
    """NaN, empty, '1.0', 'yes', 2, -1, true/false, numpy/pandas scalars, pd.NA, arrays, objects: the
    label is 0 or 1 or there is exactly one problem, at row 1, field 'label'."""
    with _time_limit(LIMIT_S):
        assert map_label(raw, label_map) in (0, 1, None)
        rows = rows_from_records([{"id": "a", "text": "a clinical note", "label": raw}])
        out = _clean(examples_from_rows, rows, source="mem", text_fields=["text"], label_map=label_map)
    if isinstance(out, ClsgenError):
        assert [(p.file, p.row, p.field) for p in out.problems] == [("mem", 1, "label")]
        assert len(str(out)) < 400
    else:
        assert out[0].label in (0, 1)
        if label_map is None and _expected(raw) is not None:
            assert out[0].label == _expected(raw)


@fuzz(80)
@given(columns=st.fixed_dictionaries({}, optional={
    "int_nullable": st.just(pd.array([1, None, 0], dtype="Int64")),
    "bool_nullable": st.just(pd.array([True, None, False], dtype="boolean")),
    "float32_nan": st.just(np.array([1.0, np.nan, 0.0], dtype="float32")),
    "category": st.just(pd.Categorical(["yes", "no", "yes"])),
    "datetime": st.just(pd.to_datetime(["2020-01-01", None, "2021-01-01"])),
    "timedelta": st.just(pd.to_timedelta([1, 2, None], unit="s")),
    "lists": st.just([[1, 2], [], None]),
    "structs": st.just([{"a": 1}, {"a": 2}, None]),
    "binary": st.just([b"\x00\xff", b"", None]),
    "strings": st.just(pd.array(["a", None, "c"], dtype="string")),
    "text_blank": st.just(["  ", "", "\n"]),
}), text_col=st.sampled_from(["strings", "category", "int_nullable", "lists", "structs", "binary", "text_blank",
                              "datetime", "float32_nan"]),
    label_col=st.sampled_from(["int_nullable", "bool_nullable", "float32_nan", "category", "lists", "structs",
                               "binary", "strings", "datetime", "timedelta"]),
    id_col=st.sampled_from(["int_nullable", "lists", "category", "structs", "float32_nan"]))
def test_parquet_with_odd_dtypes(tmp_path_factory, columns, text_col, label_col, id_col):
    """Parquet columns of any dtype (nullable ints and bools, float32 NaN, categoricals, dates, lists,
    structs, bytes) as text, label or id: clean examples or row-level DataErrors naming the file."""
    assume(text_col in columns and label_col in columns and id_col in columns)
    frame = pd.DataFrame(columns)
    frame["text"], frame["label"], frame["id"] = frame[text_col], frame[label_col], frame[id_col]
    path = tmp_path_factory.mktemp("pq") / "data.parquet"
    frame.to_parquet(path)
    out = _clean(_load_examples, path)
    if isinstance(out, ClsgenError):
        _assert_names_file(out, path, n_rows=3)
        assert all(p.row is not None and p.field in ("text", "label", "id") for p in out.problems)
    else:
        assert all(ex.fields["text"].strip() and ex.label in (0, 1) for ex in out)


@fuzz(40)
@given(name=st.one_of(st.text(min_size=1, max_size=40), st.just("x" * 300 + ".csv"),
                      st.just("a\x00b.csv"), st.just("😀.jsonl")))
def test_any_path_gives_a_data_error_naming_it(tmp_path_factory, name):
    """A missing file, a name too long for the file system, a NUL byte: a DataError naming the path."""
    path = tmp_path_factory.mktemp("paths") / name.replace("/", "_")
    out = _clean(read_rows, path)
    assert isinstance(out, DataError)
    assert str(path) in str(out)


# ---------------------------------------------------------------------------- privacy

SECRET = st.text(string.ascii_uppercase, min_size=12, max_size=16).map(lambda s: f"PHI{s}")


@fuzz(100)
@given(secret=SECRET, suffix=st.sampled_from([".jsonl", ".csv", ".json", ".parquet"]),
       fault=st.sampled_from(["label", "nan_label", "dup_id", "missing_col", "bad_json", "nested_text",
                              "torn_csv", "blank_other", "surrogate"]),
       before=SAFE_TEXT, after=SAFE_TEXT)
def test_errors_never_quote_the_text(tmp_path_factory, secret, suffix, fault, before, after):
    """A marker planted in a text field never appears in the error, whatever the fault in the file:
    messages name file, row and field, and quote at most a short label or id."""
    text = f"{before} {secret} {after}"
    records = [{"id": "a", "text": text, "other": "x", "label": 1},
               {"id": "b", "text": f"second {secret}", "other": "y", "label": 0}]
    if fault == "label":
        records[1]["label"] = "maybe"
    elif fault == "nan_label":
        records[1]["label"] = float("nan")
    elif fault == "dup_id":
        records[1]["id"] = "a"
    elif fault == "missing_col":
        pass  # text_fields below asks for a column that is not there
    elif fault == "nested_text":
        records[1]["text"] = {"note": secret}
    elif fault == "blank_other":
        records[1]["other"] = " "
    elif fault == "surrogate" and suffix == ".jsonl":
        records[1]["text"] = f"{secret}\ud800"
    path = tmp_path_factory.mktemp("phi") / f"data{suffix}"
    if suffix == ".jsonl":
        lines = [json.dumps(r) for r in records]
        if fault == "bad_json":
            lines[1] = lines[1][:-1] + f" {secret}"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif suffix == ".json":
        body = json.dumps(records)
        path.write_text(body[:-1] + f' "{secret}' if fault == "bad_json" else body, encoding="utf-8")
    elif suffix == ".csv":
        frame = pd.DataFrame([{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()}
                              for r in records])
        body = frame.to_csv(index=False)
        if fault in ("torn_csv", "bad_json"):
            body += f'c,"{secret}\n'
        path.write_text(body, encoding="utf-8")
    else:
        frame = pd.DataFrame([{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()}
                              for r in records])
        frame["label"] = frame["label"].astype(str)
        frame.to_parquet(path)
    fields = ["text", "missing"] if fault == "missing_col" else ["text"]
    out = _clean(_load_examples, path, text_fields=fields,
                 meta_fields=["other"])
    if fault == "blank_other":
        out = _clean(_load_examples, path, text_fields=["text", "other"])
    if isinstance(out, ClsgenError):
        assert secret not in str(out)
        assert secret[:8] not in str(out)


# ---------------------------------------------------------------------------- through the CLI

CLI_TEMPLATE = "task.template=Note: {text}"


@fuzz(25)
@given(content=st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"\xff\xfeid,text,label\n", "id,text,label\n1,caf\xe9,1\n".encode("latin-1"),
                     b'{"id": 1, "text": NaN, "label": NaN}\n', b'[{"id": 1}]', b"[" * 50_000,
                     b'id,text,label\n1,"unterminated,1\n2,x,1\n', b"id,text,label\n1,a,b,c,d\n"]),
), suffix=st.sampled_from([".jsonl", ".csv", ".json", ".tsv", ".parquet"]),
    override=st.sampled_from([((), None), (("--set", "train.lr=nan"), "train.lr"),
                              (("--set", "data.label_map={1: 7}"), "data.label_map"),
                              (("--set", "task.template={text:>99999999999}"), "task.template"),
                              (("--set", "=1"), "override")]))
def test_cli_bad_files_exit_2_without_traceback(tmp_path_factory, capsys, content, suffix, override):
    """`clsgen data stats <bad file>` (in-process): exit 2 and one 'clsgen: error:' message naming the
    file or the setting, no traceback."""
    path = tmp_path_factory.mktemp("cli") / f"bad{suffix}"
    path.write_bytes(content)
    capsys.readouterr()
    args, needle = override
    with _time_limit(LIMIT_S):
        code = main(["data", "stats", str(path), "--no-tokens", "--json", "--set", CLI_TEMPLATE, *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if code == 0 and needle is None:  # the random bytes happened to be a valid (empty) file
        json.loads(out)
        return
    assert code == 2, err
    assert err.startswith("clsgen: error: ") and err.count("clsgen: error") == 1
    assert (needle or str(path)) in err


@pytest.mark.parametrize("name, content", [  # a few only: each process takes seconds to start
    ("latin1.jsonl", '{"id": 1, "text": "caf\xe9", "label": 1}\n'.encode("latin-1")),
    ("utf16.csv", "id,text,label\n1,note,1\n".encode("utf-16")),
    ("deep.json", b"[" * 100_000 + b"]" * 100_000),
])
def test_cli_subprocess_bad_files(tmp_path, name, content):
    """The real `clsgen` process on a few bad files: exit code 2, one message naming the file, no traceback."""
    path = tmp_path / name
    path.write_bytes(content)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "clsgen.cli", "data", "stats", str(path), "--no-tokens",
                           "--set", CLI_TEMPLATE], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("clsgen: error: ") and str(path) in proc.stderr


# ---------------------------------------------------------------------------- task templates

TEMPLATE_PIECES = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["{", "}", "{{", "}}", "{text}", "{claim}", "{x:>5}", "{x!r}", "{0}", "{}", "{a.b}",
                     "{a[0]}", "{text:{claim}}", "{ text }", "{é}", "{_}", "{if}", "\n", "😀", "{x!}",
                     "{x:}", "{{text}}", "{text}}", "{{{text}"]),
)


def _render_reference(template: str, values: dict[str, str]) -> str:
    out = []
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if name is not None:
            out.append(values[name])
    return "".join(out)


@fuzz(300)
@given(pieces=st.lists(TEMPLATE_PIECES, max_size=8), values=st.dictionaries(
    st.sampled_from(["text", "claim", "x", "é", "_", "if"]), st.one_of(NASTY_TEXT, st.integers(), st.none()),
    max_size=6))
def test_any_template_renders_or_is_refused_naming_it(pieces, values):
    """Random templates (braces, unknown fields, format specs, conversions, `{{ }}`, unicode) and field
    values: a ClsgenError naming task.template (or the missing field), or exactly the text with each
    field's value put in (values are never re-read as templates)."""
    template = "".join(pieces)
    task = _clean(Task, "t", "system", template, ("NO", "YES"))
    if isinstance(task, ClsgenError):
        assert "task.template" in str(task)
        return
    out = _clean(task.user_message, values)
    if isinstance(out, ClsgenError):
        missing = [f for f in task.fields if f not in values]
        assert missing and repr(missing[0]) in str(out)
        return
    assert out == _render_reference(template, {k: str(v) for k, v in values.items()})
    for f in task.fields:
        assert str(values[f]) in out


@pytest.fixture(scope="module")
def tokenizer():
    from clsgen.backbones import tiny_tokenizer

    return tiny_tokenizer()


LONG_TEXT = st.one_of(
    NONBLANK_TEXT,
    st.builds(lambda s, n: (s * n)[:20_000], NONBLANK_TEXT, st.integers(1, 400)),
    st.just("word " * 3000), st.just("😀" * 2000), st.just("\u202e\u0645\u0631\u062d\u0628\u0627 " * 500),
)


@fuzz(100)
@given(texts=st.lists(LONG_TEXT, min_size=1, max_size=3),
       truncation=st.sampled_from(["head", "tail", "head+tail"]), max_tokens=st.integers(1, 600),
       system=st.sampled_from(["", "Decide.", "A longer instruction. " * 20]))
def test_prompts_fit_the_budget_or_fail_naming_it(tokenizer, texts, truncation, max_tokens, system):
    """Any field texts (long, unicode, RTL, emoji, NUL), truncation side and token budget: the prompt
    fits `max_prompt_tokens`, is untouched when it fit already, keeps the instruction and the template's
    literal text, or a ClsgenError names task.max_prompt_tokens."""
    names = ["a", "b", "c"][: len(texts)]
    template = "\n".join(f"Field {n}: {{{n}}}" for n in names)
    fields = dict(zip(names, texts))
    task = Task("t", system, template, ("NO", "YES"), max_prompt_tokens=max_tokens, truncation=truncation)
    out = _clean(task.encode_prompt, tokenizer, fields)
    full = tokenizer(task.render_prompt(tokenizer, fields), add_special_tokens=False)["input_ids"]
    if isinstance(out, ClsgenError):  # only when the instruction and template alone do not fit
        assert "task.max_prompt_tokens" in str(out) and "fixed part" in str(out), str(out)
        assert len(full) > max_tokens
        return
    assert len(out.input_ids) <= max_tokens
    if len(full) <= max_tokens:
        assert out.input_ids == full and not out.truncated
        return
    assert out.truncated
    decoded = tokenizer.decode(out.input_ids)
    assert system in decoded
    for n in names:
        assert f"Field {n}: " in decoded
    assert ELLIPSIS.strip() in decoded


@fuzz(300)
@given(lengths=st.dictionaries(st.text(string.ascii_lowercase, min_size=1, max_size=3), st.integers(0, 10_000),
                               max_size=5), budget=st.integers(-100, 20_000))
def test_water_fill_shares_the_budget(lengths, budget):
    """Token quotas: never above a field's length, never more than the budget in all, and a field
    shorter than an equal share is kept whole."""
    quotas = _water_fill(lengths, budget)
    assert set(quotas) == set(lengths)
    assert all(0 <= quotas[f] <= lengths[f] for f in lengths)
    assert sum(quotas.values()) <= max(budget, 0)
    if lengths and budget > 0:
        share = budget // len(lengths)
        assert all(quotas[f] == lengths[f] for f in lengths if lengths[f] <= share)


@fuzz(40)
@given(value=st.one_of(st.just("a\ud800b"), st.just("\udfff")), where=st.sampled_from(["field", "system"]))
def test_lone_surrogates_are_refused_before_the_tokenizer(tokenizer, value, where):
    """Text no tokenizer takes (a lone surrogate, e.g. from a JSON '\\ud800' escape) is a ClsgenError,
    not the tokenizer's TypeError."""
    out = _clean(lambda: Task("t", value if where == "system" else "s", "N: {text}", ("NO", "YES"))
                 .encode_prompt(tokenizer, {"text": value if where == "field" else "ok"}))
    assert isinstance(out, ClsgenError) and "Unicode" in str(out)


# ---------------------------------------------------------------------------- verdict parser

# The reading of `answer:` anywhere in a line, as the regex it was before it became linear-time.
_OLD_INLINE = re.compile(r"(?<!\w)[*_`~]*(?:final[ \t]+)?answer[ \t*_`~]*[:\uff1a]", re.IGNORECASE)
_LINE = re.compile(
    r"^[ \t>#*_`~|+\u2022\u00b7-]*(?:\d+[.)][ \t]*)?(?:final[ \t]+)?answer[ \t*_`~]*[:\uff1a=\-\u2013\u2014]",
    re.IGNORECASE | re.MULTILINE)


def _old_last_marker(text):
    found = [m for p in (_OLD_INLINE, _LINE) for m in p.finditer(text)]
    return max(((m.end(), -m.start()) for m in found), default=None)


MARKER_TEXT = st.lists(st.sampled_from(
    ["answer", "Answer", "ANSWER", "final", "Final ", "final answer", " ", "\t", ":", "\uff1a", "*", "_", "`",
     "~", "**", "x", "1", "\n", "-", "=", "#", ">", "2.", "é", "ı", "K", "answering", "yes", "no"]),
    max_size=14).map("".join)


@fuzz(400)
@given(text=MARKER_TEXT)
def test_last_marker_is_the_same_as_the_old_regex(text):
    """The linear-time marker search finds the same last marker (start and end) as the original regex."""
    m = _last_marker(text)
    assert ((m.end, -m.start) if m else None) == _old_last_marker(text)


# Verbalizers: words (any script) with spaces, hyphens and a trailing ! or ? (YES vs YES! stay apart).
VERBALIZER = st.builds(
    lambda words, end: " ".join(words) + end,
    st.lists(st.text(st.sampled_from(string.ascii_letters + string.digits + "-éü中😀"), min_size=1,
                     max_size=6), min_size=1, max_size=3),
    st.sampled_from(["", "", "!", "?"]),
).filter(lambda v: re.search(r"[^\W_]", v) is not None and "answer" not in v.casefold())


def _distinct(v0, v1):
    return " ".join(v0.casefold().split()) != " ".join(v1.casefold().split())


@fuzz(300)
@given(text=st.one_of(st.text(max_size=200), MARKER_TEXT),
       verbalizers=st.lists(VERBALIZER, min_size=1, max_size=3))
def test_parse_verdict_never_raises(text, verbalizers):
    """Any text (unicode, many lines, markers anywhere): one verbalizer's index or None."""
    with _time_limit(LIMIT_S):
        out = parse_verdict(text, verbalizers)
        body, line = split_verdict(text)
    assert out is None or 0 <= out < len(verbalizers)
    assert isinstance(body, str) and (line is None or isinstance(line, str))


@fuzz(300)
@given(text=st.one_of(st.text(max_size=200), MARKER_TEXT), v0=VERBALIZER, v1=VERBALIZER,
       label=st.integers(0, 1), style=st.sampled_from(["Answer: {}", "answer: {}", "**Answer:** {}",
                                                       "Final answer: {}.", "ANSWER:{}", "Answer: {}<|eot_id|>"]),
       junk=st.sampled_from(["", "\n", "\n\n  ", "<|eot_id|>", "\n</s>", "\n<|im_end|>\n"]))
def test_a_final_verdict_line_decides(text, v0, v1, label, style, junk):
    """Any text, then a verdict line (in any of the styles models write), then end-of-text junk: the
    parse is that line's verbalizer."""
    assume(_distinct(v0, v1))
    verbalizers = [v0, v1]
    out = parse_verdict(text + "\n" + style.format(verbalizers[label]) + junk, verbalizers)
    assert out == label
    assert parse_verdict(text + "\n" + verdict_line(verbalizers[label]), verbalizers) == label


@fuzz(200)
@given(text=st.text(max_size=100), v0=VERBALIZER, v1=VERBALIZER,
       joiner=st.sampled_from([" or ", " / ", ", ", " and "]))
def test_both_verbalizers_state_nothing(text, v0, v1, joiner):
    """A verdict line naming both verbalizers (as separate words) is None."""
    words0, words1 = (tuple(re.findall(r"[^\W_]+", v.casefold())) for v in (v0, v1))
    assume(_distinct(v0, v1) and words0 != words1 and not {"or", "and", "not"} & set(words0 + words1))
    inside = lambda a, b: any(b[i:i + len(a)] == a for i in range(len(b) - len(a) + 1))  # noqa: E731
    assume(not inside(words0, words1) and not inside(words1, words0))
    assert parse_verdict(f"{text}\nAnswer: {v0}{joiner}{v1}", [v0, v1]) is None


@pytest.mark.parametrize("text", [
    "*" * 300_000, "*_" * 150_000, "answer " * 50_000, "answer" + " " * 300_000, "<|" * 150_000,
    "<" + "a" * 300_000, "Answer: " + "yes " * 100_000, "-" * 300_000 + "\n" + "1" * 300_000,
    ("final " * 50_000) + "answer:", "\n" * 300_000 + "Answer: yes",
])
def test_pathological_verdict_texts_are_linear(text):
    """Long runs of markdown, markers without colons, unclosed special tokens, repeated verbalizers:
    parsed in well under a second each (the old marker regex took minutes on a run of `*`)."""
    start = time.perf_counter()
    with _time_limit(LIMIT_S):
        out = parse_verdict(text, ["yes", "yes yes"])
        split_verdict(text)
    assert out in (None, 0, 1)
    assert time.perf_counter() - start < 5.0


# ---------------------------------------------------------------------------- config loader

def _known_paths():
    import dataclasses
    import typing

    out = []
    for section in dataclasses.fields(Config):
        tp = typing.get_type_hints(Config)[section.name]
        if not dataclasses.is_dataclass(tp):  # a top-level setting such as output_dir
            continue
        for f in dataclasses.fields(tp):
            out.append((section.name, f.name))
    return out


KNOWN = _known_paths()
YAML_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-2**40, 2**40), st.just(10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=15),
    st.sampled_from(["auto", "head", "cosine", "float32", "tiny", "NO", "YES", "1e-4", ".nan", "-.inf"]))
YAML_VALUES = st.recursive(YAML_SCALARS, lambda kids: st.one_of(
    st.lists(kids, max_size=3), st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), kids, max_size=3)),
    max_leaves=8)


@st.composite
def config_documents(draw):
    """Nested dicts mostly over the real sections and keys, with values of any type, and unknown keys."""
    doc: dict = {}
    for _ in range(draw(st.integers(0, 6))):
        section, key = draw(st.sampled_from(KNOWN))
        if draw(st.integers(0, 9)) == 0:
            section = draw(st.sampled_from([section, "nosuch", "", "train "]))
        if draw(st.integers(0, 9)) == 0:
            key = draw(st.text(max_size=8))
        if not isinstance(doc.get(section), dict):
            doc[section] = {}
        doc[section][key] = draw(YAML_VALUES)
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.sampled_from(["model", "train", "x"]))] = draw(YAML_VALUES)
    return doc


def _assert_config_error(err, source: str | None = None):
    assert isinstance(err, ConfigError), err
    assert err.problems and len(str(err)) < 20_000
    for p in err.problems:
        assert p.file or p.field, p  # every problem says where: the file or the key
        if source is not None and p.file is not None:
            assert p.file.startswith(source)


@fuzz(200)
@given(doc=config_documents())
def test_random_config_documents(tmp_path_factory, doc):
    """Any YAML document over the config's sections (wrong types, unknown keys, NaN, huge numbers,
    bools for ints): a valid Config, or a ConfigError naming the file and each bad key."""
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    out = _clean(load_config, path)
    if isinstance(out, ClsgenError):
        _assert_config_error(out, str(path))
        for p in out.problems:
            if p.field:  # names a key of the document, as written ('' and ' x' quoted)
                named = {k if isinstance(k, str) and k and k.strip() == k else repr(k) for k in doc}
                assert p.field.split(".")[0].split("[")[0] in named, p
        return
    assert isinstance(out, Config) and out.validate() == []
    for section, values in doc.items():
        for key, value in values.items():
            got = getattr(getattr(out, section), key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert got == value or (isinstance(value, int) and got == float(value))


@fuzz(150)
@given(text=st.one_of(st.text(max_size=120), MARKER_TEXT,
                      st.binary(max_size=120).map(lambda b: b.decode("latin-1")),
                      st.lists(st.sampled_from(["train:", "\n", "  ", "lr: ", "1", "[", "]", "{", "}", "&a ", "*a",
                                                "!!python/object:os.system", "? ", "- ", "---", "...", "%YAML 1.1",
                                                "!!binary ", "!!set ", "<<: ", "\t", "'", '"']),
                               max_size=16).map("".join)),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]))
def test_random_yaml_text(tmp_path_factory, text, encoding):
    """Any text as a config file, in any encoding (anchors, aliases, merge keys, tags, tabs, broken
    flow collections): a Config or a ConfigError naming the file."""
    path = tmp_path_factory.mktemp("cfgtext") / "run.yaml"
    try:
        data = text.encode(encoding, "surrogatepass")
    except UnicodeEncodeError:
        data = text.encode(encoding, "replace")
    path.write_bytes(data)
    out = _clean(load_config, path)
    if isinstance(out, ClsgenError):
        _assert_config_error(out, str(path))
        assert str(path) in str(out)


SENTINEL_DIR = Path("/tmp") / f"clsgen-fuzz-{os.getpid()}"


@pytest.mark.parametrize("tag", [
    f"!!python/object/apply:os.mkdir ['{SENTINEL_DIR}']",
    f"!!python/object/new:os.mkdir ['{SENTINEL_DIR}']",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/object:clsgen.config.Config {}",
    f"!python/object/apply:os.mkdir ['{SENTINEL_DIR}']",
])
@pytest.mark.parametrize("where", ["file", "override"])
def test_yaml_tags_are_refused_never_run(tmp_path, tag, where):
    """Python object tags in a config file or in `--set` are refused (safe_load semantics); the code
    they name is never run."""
    if where == "file":
        path = tmp_path / "evil.yaml"
        path.write_text(f"train:\n  lr: {tag}\n")
        out = _clean(load_config, path)
    else:
        out = _clean(load_config, None, [f"train.lr={tag}", f"task.system={tag}"])
    assert not SENTINEL_DIR.exists()
    if where == "file":
        _assert_config_error(out)
        assert "not valid YAML" in str(out)
    else:
        assert isinstance(out, ConfigError) and "train.lr" in str(out)


@fuzz(300)
@given(key=st.one_of(st.sampled_from([f"{s}.{k}" for s, k in KNOWN]), st.text(max_size=20),
                     st.sampled_from(["train", "train.", ".lr", "train..lr", "train.lr.x", "a.b.c.d", " ", ""])),
       value=st.one_of(st.text(max_size=30),
                       YAML_SCALARS.map(lambda v: yaml.safe_dump(v).strip().removesuffix("...").strip()),
                       st.sampled_from(["[", "{a: 1", "[" * 3000, "9" * 5000, ".nan", ".inf",
                                        "!!python/name:os.system",
                                        "&a [*a]", "~", "null", "'quoted'", '"\\ud83d\\ude00"', '"\\ud800"'])),
       equals=st.booleans())
def test_random_overrides(key, value, equals):
    """Any `--set key=value`: a valid Config, or a ConfigError naming the key (or the override)."""
    override = f"{key}={value}" if equals else key
    out = _clean(load_config, None, [override])
    if isinstance(out, ClsgenError):
        _assert_config_error(out)
        assert all(p.field for p in out.problems)
        section = override.split("=", 1)[0].strip().split(".")[0]
        named = {p.field for p in out.problems}
        heads = {h for f in named for h in (f.split(".")[0], f.split(".")[0].split("[")[0])}
        assert "--set" in named or section in heads or repr(section) in heads, named
    else:
        assert isinstance(out, Config)


TEXT_KEYS = ["task.system", "task.template", "model.name", "data.dataset", "teacher.prompt", "data.id_field"]


@fuzz(200)
@given(key=st.sampled_from(TEXT_KEYS), text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_text_overrides_keep_the_text(key, text):
    """`--set task.system=<any text>` sets exactly that text (stripped): no YAML folding of line breaks,
    no '# comment' dropped, no mapping for 'Note: {text}'; quoted values are YAML strings."""
    stripped = text.strip()
    assume(stripped not in ("", "null", "~") and stripped[:1] not in ("'", '"'))
    out = _clean(parse_override, f"{key}={text}")
    assert not isinstance(out, ClsgenError)
    assert out == (key.split("."), stripped)


@fuzz(100)
@given(x=st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
       n=st.integers(1, 10**6))
def test_numeric_overrides_round_trip(x, n):
    cfg = load_config(None, [f"train.lr={x!r}", f"train.batch_size={n}", f"train.head_lr={x:.6e}"])
    assert cfg.train.lr == x and cfg.train.batch_size == n
    assert math.isclose(cfg.train.head_lr, x, rel_tol=1e-6, abs_tol=1e-300)


def test_default_label_map_is_all_0_1():
    assert set(DEFAULT_LABEL_MAP.values()) == {0, 1}


# ---------------------------------------------------------------------------- found by the fuzzing

_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdef", "bcdefg")) + \
    "lora: {target_modules: [*g, *g, *g, *g, *g, *g, *g, *g, *g]}\n"


@pytest.mark.parametrize("content, overrides, needle", [
    ("- a\n- b\n", ["train.lr=1"], "expected a mapping of sections"),  # was AttributeError
    ("just text\n", ["train.lr=1"], "expected a mapping of sections"),  # was AttributeError
    ("task:\n  system: caf\xe9\n".encode("latin-1"), [], "not UTF-8"),  # was UnicodeDecodeError
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", [], "nested too deeply"),  # was RecursionError
    ("train:\n  batch_size: " + "9" * 5000 + "\n", [], "too many digits"),  # was ValueError
    (_LAUGHS, [], "unknown key"),  # aliases: the error message took 27 s to print the value
    ("train:\n  lr: .nan\n", [], "finite"),  # NaN was accepted as a learning rate
    ("train:\n  epochs: .inf\n", [], "finite"),
    ("eval:\n  n_bootstrap: " + "9" * 400 + "\n", [], "64 bits"),
    ("data:\n  label_map: {yes: 2, no: 0}\n", [], "0 or 1"),  # labels of 2 reached training
])
def test_config_inputs_found_by_fuzzing(tmp_path, content, overrides, needle):
    path = tmp_path / "run.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with _time_limit(5):
        out = _clean(load_config, path, overrides)
    assert isinstance(out, ConfigError) and needle in str(out) and str(path) in str(out), out


@pytest.mark.parametrize("override, expected", [
    ("task.system=Say yes or no.\nBe brief.", "Say yes or no.\nBe brief."),  # YAML folded the line break
    ("task.system=Is it positive? # be strict", "Is it positive? # be strict"),  # YAML dropped a comment
    ("task.template=#{text}", "#{text}"),  # was None (all comment)
    ('data.dataset="notes\\ud83d\\ude00.jsonl"', "notes\U0001F600.jsonl"),  # json.dumps of an emoji name
])
def test_text_overrides_found_by_fuzzing(override, expected):
    section, key = override.split("=", 1)[0].split(".")
    assert getattr(getattr(load_config(None, [override]), section), key) == expected


@pytest.mark.parametrize("template", ["{x:{y}}", "{x:d}", "{x!z}", "{x:>99999999999}", "{x:>999999999}"])
def test_format_specs_are_refused(template):
    """These raised KeyError / ValueError at render time, or built a 1 GB string."""
    with pytest.raises(ClsgenError) as e:
        Task("t", "", template, ("NO", "YES"))
    assert "task.template" in str(e.value)
