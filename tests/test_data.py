"""Tests for clsgen.data: readers, validation that reports every problem, sampling, label mapping."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from clsgen.data import (
    DEFAULT_LABEL_MAP,
    Example,
    class_balance,
    examples_from_rows,
    map_label,
    read_rows,
    rows_from_records,
    stratified_sample,
)
from clsgen.errors import ClsgenError, DataError

RECORDS = [
    {"id": "a", "text": "first note", "label": "yes"},
    {"id": "b", "text": "second note", "label": "no"},
    {"id": "c", "text": "third note", "label": 1},
]


def _load(path, **kw):
    return examples_from_rows(read_rows(path), source=str(path), text_fields=kw.pop("text_fields", ["text"]), **kw)


def _check(examples):
    assert [ex.id for ex in examples] == ["a", "b", "c"]
    assert [ex.fields for ex in examples] == [{"text": "first note"}, {"text": "second note"},
                                              {"text": "third note"}]
    assert [ex.label for ex in examples] == [1, 0, 1]


# ---------------------------------------------------------------------------- readers


def test_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n")  # blank lines are skipped
    _check(_load(path))


def test_json_list_and_data_key(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(RECORDS))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": RECORDS}))
    _check(_load(tmp_path / "list.json"))
    _check(_load(tmp_path / "wrapped.json"))


def test_json_wrong_shapes(tmp_path):
    (tmp_path / "obj.json").write_text(json.dumps({"rows": RECORDS}))
    with pytest.raises(DataError) as e:
        read_rows(tmp_path / "obj.json")
    assert "obj.json" in str(e.value) and "list" in str(e.value)
    (tmp_path / "mixed.json").write_text(json.dumps([RECORDS[0], 3, "x"]))
    with pytest.raises(DataError) as e:
        read_rows(tmp_path / "mixed.json")
    assert [p.row for p in e.value.problems] == [2, 3]


def test_csv_and_tsv(tmp_path):
    pd.DataFrame(RECORDS).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(RECORDS).to_csv(tmp_path / "d.tsv", index=False, sep="\t")
    _check(_load(tmp_path / "d.csv"))
    _check(_load(tmp_path / "d.tsv"))


def test_csv_with_multiline_quoted_fields(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_text('id,text,label\n1,"line one\nline two, with a comma\n""quoted""",yes\n2,plain,no\n')
    rows = read_rows(path)
    assert len(rows) == 2
    examples = _load(path)
    assert examples[0].fields["text"] == 'line one\nline two, with a comma\n"quoted"'
    assert [ex.label for ex in examples] == [1, 0]
    assert [ex.id for ex in examples] == ["1", "2"]  # CSV values are read as text, ids never as 1.0


def test_parquet(tmp_path):
    frame = pd.DataFrame({"id": ["a", "b", "c"], "text": ["first note", "second note", "third note"],
                          "label": [1, 0, 1]})
    frame.to_parquet(tmp_path / "d.parquet")
    _check(_load(tmp_path / "d.parquet"))


def test_parquet_missing_values(tmp_path):
    frame = pd.DataFrame({"id": [1, 2, 3], "text": ["a", None, "c"], "label": [1.0, np.nan, 0.0]})
    frame.to_parquet(tmp_path / "d.parquet")
    with pytest.raises(DataError) as e:
        _load(tmp_path / "d.parquet")
    assert {(p.row, p.field) for p in e.value.problems} == {(2, "text"), (2, "label")}


@pytest.mark.parametrize("name, content, needle", [
    ("d.parquet", b"PAR1 this is not parquet", "cannot be read"),
    ("d.csv", b"id,text\n1,\xff\xfe\n", "UTF-8"),
    ("d.xlsx", b"whatever", "unsupported file type"),
])
def test_unreadable_files(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as e:
        read_rows(path)
    assert needle in str(e.value) and str(path) in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError) as e:
        read_rows(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in str(e.value) and "not found" in str(e.value)


# ---------------------------------------------------------------------------- validation


def test_truncated_jsonl_line_is_reported_with_file_and_row(tmp_path):
    path = tmp_path / "cut.jsonl"
    path.write_text('{"id": 1, "text": "ok", "label": 1}\n[1, 2]\n{"id": 3, "text": "ab')
    with pytest.raises(DataError) as e:
        read_rows(path)
    problems = e.value.problems
    assert [(p.file, p.row) for p in problems] == [(str(path), 2), (str(path), 3)]
    assert "expected a JSON object" in problems[0].message
    assert "not valid JSON" in problems[1].message and "truncated" in problems[1].message
    assert f"{path}, row 3:" in str(e.value)


def test_all_problems_collected_with_file_row_and_field(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(
        "id,text,label\n"
        "1,fine,yes\n"      # row 1: ok
        "2,,no\n"           # row 2: empty text
        "3,ok,7\n"          # row 3: label 7
        "1,dup,0\n"         # row 4: duplicate id 1
        "5,   ,\n"          # row 5: blank text and missing label
    )
    with pytest.raises(DataError) as e:
        _load(path, text_fields=["text", "title"])
    err = e.value
    assert isinstance(err, ClsgenError) and err.exit_code == 2
    got = {(p.row, p.field) for p in err.problems}
    assert got == {
        (1, "title"), (2, "title"), (3, "title"), (4, "title"), (5, "title"),  # missing column
        (2, "text"), (5, "text"),  # empty texts
        (3, "label"), (5, "label"),  # label 7, missing label
        (4, "id"),  # duplicate
    }
    assert all(p.file == str(path) for p in err.problems)
    msg = str(err)
    assert f"{path}, row 3, field 'label': label '7' is not in the label mapping" in msg
    assert f"{path}, row 2, field 'text': empty text" in msg
    assert f"{path}, row 1, field 'title': missing field" in msg
    assert "duplicate id '1' (first at row 1)" in msg
    assert "set data.label_map" in msg


def test_many_problems_are_summarised():
    rows = rows_from_records([{"id": i, "text": "", "label": 1} for i in range(50)])
    with pytest.raises(DataError) as e:
        examples_from_rows(rows, source="records", text_fields=["text"])
    assert len(e.value.problems) == 50
    assert str(e.value).startswith("50 problems in the data") and "and 30 more" in str(e.value)


def test_nan_label_and_unlabelled_rows():
    frame = pd.DataFrame({"id": [1, 2], "text": ["a", "b"], "label": [1.0, np.nan]})
    with pytest.raises(DataError) as e:
        examples_from_rows(rows_from_records(frame), source="records", text_fields=["text"])
    assert [(p.row, p.field, p.message) for p in e.value.problems] == [(2, "label", "missing label")]
    examples = examples_from_rows(rows_from_records(frame), source="records", text_fields=["text"],
                                  require_label=False)
    assert [ex.label for ex in examples] == [1, None]


def test_rows_from_records_list_and_dataframe():
    from_list = examples_from_rows(rows_from_records(RECORDS), source="records", text_fields=["text"])
    from_frame = examples_from_rows(rows_from_records(pd.DataFrame(RECORDS)), source="records",
                                    text_fields=["text"])
    _check(from_list)
    _check(from_frame)
    with pytest.raises(DataError) as e:
        rows_from_records([RECORDS[0], "not a dict"])
    assert e.value.problems[0].row == 2


def test_ids_default_to_row_numbers_and_meta_and_field_map():
    rows = rows_from_records([{"body": "x", "y": "true", "src": "s1"}, {"body": "z", "y": "false"}])
    examples = examples_from_rows(rows, source="records", text_fields=["text"], label_field="y",
                                  id_field=None, field_map={"text": "body"}, meta_fields=["src"])
    assert [ex.id for ex in examples] == ["1", "2"]
    assert [ex.fields for ex in examples] == [{"text": "x"}, {"text": "z"}]
    assert [ex.label for ex in examples] == [1, 0]
    assert examples[0].meta == {"src": "s1"} and examples[1].meta == {}


def test_example_round_trip():
    ex = Example("7", {"text": "a"}, 1, {"k": [1, 2]})
    assert Example.from_dict(json.loads(json.dumps(ex.to_dict()))) == ex


# ---------------------------------------------------------------------------- labels


@pytest.mark.parametrize("raw, expected", [
    ("yes", 1), ("no", 0), ("YES", 1), (" No ", 0), ("true", 1), ("False", 0), (True, 1), (False, 0),
    (1, 1), (0, 0), ("1", 1), ("0", 0), (1.0, 1), (0.0, 0), (np.int64(1), 1), (np.float64(0.0), 0),
    ("positive", 1), ("negative", 0),
    ("7", None), (7, None), ("maybe", None), (0.5, None), (None, None), (float("nan"), None),
])
def test_default_label_map(raw, expected):
    assert map_label(raw, None) == expected


def test_custom_label_map():
    mapping = {"Evidence": 1, "inconclusive": 0}
    assert map_label("evidence", mapping) == 1
    assert map_label("INCONCLUSIVE", mapping) == 0
    assert map_label("yes", mapping) is None  # the default map no longer applies
    assert DEFAULT_LABEL_MAP["yes"] == 1


# ---------------------------------------------------------------------------- sampling


def _balanced(n_pos, n_neg):
    labels = [1] * n_pos + [0] * n_neg
    order = np.random.default_rng(0).permutation(len(labels))
    return [Example(str(i), {"text": str(i)}, labels[j]) for i, j in enumerate(order)]


def test_stratified_sample_keeps_balance_and_order():
    examples = _balanced(300, 700)
    sample = stratified_sample(examples, 100, seed=1)
    assert len(sample) == 100
    assert class_balance(sample) == {"0": 70, "1": 30}
    positions = [int(ex.id) for ex in sample]
    assert positions == sorted(positions)  # original order kept
    assert len({ex.id for ex in sample}) == 100


def test_stratified_sample_is_deterministic():
    examples = _balanced(40, 160)
    a = [ex.id for ex in stratified_sample(examples, 30, seed=3)]
    b = [ex.id for ex in stratified_sample(examples, 30, seed=3)]
    c = [ex.id for ex in stratified_sample(examples, 30, seed=4)]
    assert a == b and a != c


def test_stratified_sample_edges():
    examples = _balanced(3, 97)
    assert stratified_sample(examples, None) == examples
    assert stratified_sample(examples, 500) == examples
    small = stratified_sample(examples, 10)
    assert len(small) == 10 and any(ex.label == 1 for ex in small)  # the rare class is kept
    assert len(stratified_sample(examples, 1)) == 1


def test_class_balance():
    assert class_balance(_balanced(2, 5)) == {"0": 5, "1": 2}
    assert class_balance([Example("1", {}, None), Example("2", {}, 1)]) == {"1": 1, "None": 1}
