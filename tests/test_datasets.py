"""Tests for clsgen.datasets: the real built-in datasets, download + cache, LCD join, user files."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import threading
from pathlib import Path

import pandas as pd
import pytest

import clsgen.datasets as datasets
from clsgen.config import DataConfig, TaskConfig
from clsgen.datasets import (
    CLINIFACT_TASK,
    LCD_TASK,
    RemoteFile,
    lcd_hash,
    lcd_normalise,
    load_dataset,
    locate,
    shared_ids,
)
from clsgen.errors import ClsgenError, DataError

SPLITS = ("train", "validation", "test")


def _sizes(ds):
    return tuple(len(ds.split(s)) for s in SPLITS)


def _positives(ds):
    return tuple(sum(ex.label == 1 for ex in ds.split(s)) for s in SPLITS)


@pytest.fixture
def no_env_data(monkeypatch, tmp_path):
    """No CLSGEN_DATA_DIR and an empty private cache: only what the test sets up is found."""
    monkeypatch.delenv("CLSGEN_DATA_DIR", raising=False)
    monkeypatch.setenv("CLSGEN_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "cache"


# ---------------------------------------------------------------------------- clinifact


@pytest.fixture(scope="module")
def clinifact(data_dir):
    return load_dataset(DataConfig(dataset="clinifact", data_dir=str(data_dir)))


def test_clinifact_official_split(clinifact):
    assert clinifact.name == "clinifact"
    assert _sizes(clinifact) == (1260, 316, 394)
    assert _positives(clinifact) == (366, 83, 113)
    assert clinifact.task.template == CLINIFACT_TASK.template
    assert clinifact.info["binarization"] == "evidence-vs-rest"
    assert clinifact.split("dev") is clinifact.validation
    with pytest.raises(ClsgenError):
        clinifact.split("holdout")


def test_clinifact_uses_only_claim_and_abstract(clinifact):
    everything = clinifact.train + clinifact.validation + clinifact.test
    assert all(set(ex.fields) == {"claim", "article_abstract"} for ex in everything)
    assert all(ex.fields["claim"].strip() and ex.fields["article_abstract"].strip() for ex in everything)
    for ex in everything:  # the leaking columns are nowhere, not even in the metadata
        assert not {"pValues", "statisticalMethods"} & (set(ex.meta) | set(ex.fields))
    assert len({ex.id for ex in everything}) == 1970
    assert {ex.meta["original_label"] for ex in everything} == {"0", "1", "2"}
    assert all((ex.label == 1) == (ex.meta["original_label"] == "1") for ex in everything)
    assert "Claim: {claim}" in clinifact.task.template and "{article_abstract}" in clinifact.task.template
    # the official row-level split shares trials between train and test (hence trial-disjoint)
    assert len(shared_ids(clinifact.train, clinifact.test, "nctId")) == 150


def test_clinifact_evidence_vs_inconclusive(data_dir):
    ds = load_dataset(DataConfig(dataset="clinifact", data_dir=str(data_dir),
                                 binarization="evidence-vs-inconclusive"))
    assert _sizes(ds) == (628, 150, 167)
    assert _positives(ds) == (366, 83, 113)
    assert all(ex.meta["original_label"] in ("0", "1") for s in SPLITS for ex in ds.split(s))


def test_clinifact_unknown_binarization(data_dir):
    with pytest.raises(ClsgenError) as e:
        load_dataset(DataConfig(dataset="clinifact", data_dir=str(data_dir), binarization="yes-vs-no"))
    assert "data.binarization" in str(e.value) and "evidence-vs-inconclusive" in str(e.value)


def test_clinifact_trial_disjoint(data_dir, clinifact):
    ds = load_dataset(DataConfig(dataset="clinifact", data_dir=str(data_dir), split="trial-disjoint"))
    splits = {s: ds.split(s) for s in SPLITS}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert shared_ids(splits[a], splits[b], "nctId") == set(), (a, b)
    ids = [ex.id for s in SPLITS for ex in splits[s]]
    assert len(ids) == len(set(ids)) == 1970
    assert set(ids) == {ex.id for s in SPLITS for ex in clinifact.split(s)}
    assert sum(_positives(ds)) == 562
    # close to the official sizes (whole trials move together)
    for got, want in zip(_sizes(ds), (1260, 316, 394)):
        assert abs(got - want) <= 25
    again = load_dataset(DataConfig(dataset="clinifact", data_dir=str(data_dir), split="trial-disjoint"))
    assert [ex.id for ex in again.test] == [ex.id for ex in ds.test]  # deterministic by seed
    other = load_dataset(DataConfig(dataset="clinifact", data_dir=str(data_dir), split="trial-disjoint", seed=1))
    assert {ex.id for ex in other.test} != {ex.id for ex in ds.test}


def test_max_train_and_max_eval(data_dir):
    ds = load_dataset(DataConfig(dataset="clinifact", data_dir=str(data_dir), max_train=100, max_eval=50))
    assert _sizes(ds) == (100, 50, 50)
    assert _positives(ds)[0] == 29  # 366/1260 of 100, rounded
    assert ds.info["max_train"] == 100 and ds.info["max_eval"] == 50
    again = load_dataset(DataConfig(dataset="clinifact", data_dir=str(data_dir), max_train=100, max_eval=50))
    assert [ex.id for ex in again.train] == [ex.id for ex in ds.train]


def test_task_overrides_apply_to_builtin(data_dir):
    ds = load_dataset(DataConfig(dataset="clinifact", data_dir=str(data_dir)),
                      TaskConfig(system="Be brief.", verbalizers=["no", "yes"], max_prompt_tokens=512,
                                 truncation="tail"))
    assert ds.task.system == "Be brief." and ds.task.verbalizers == ("no", "yes")
    assert ds.task.max_prompt_tokens == 512 and ds.task.truncation == "tail"
    assert ds.task.template == CLINIFACT_TASK.template


# ---------------------------------------------------------------------------- pubmedqa


def test_pubmedqa(data_dir):
    ds = load_dataset(DataConfig(dataset="pubmedqa", data_dir=str(data_dir)))
    assert len(ds.test) == 445 and sum(ex.label for ex in ds.test) == 276
    rest = ds.train + ds.validation
    assert len(rest) == 445 and sum(ex.label for ex in rest) == 276
    assert len(ds.validation) == 89  # a stratified fifth
    assert not {ex.id for ex in ds.train} & {ex.id for ex in ds.validation}
    assert not {ex.meta["pmid"] for ex in rest} & {ex.meta["pmid"] for ex in ds.test}
    for ex in rest + ds.test:
        assert set(ex.fields) == {"question", "context"}
        assert ex.meta["long_answer"].strip()
    test_ids = set(json.loads((data_dir / "pubmedqa_pqal" / "test_ground_truth.json").read_text()))
    assert {ex.meta["pmid"] for ex in ds.test} <= test_ids


# ---------------------------------------------------------------------------- download and cache


class _Server:
    """A real HTTP server on 127.0.0.1 serving a folder, in a thread."""

    def __init__(self, root: Path):
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.requests: list[str] = []
        self.httpd.requests = self.requests  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        super().do_GET()


@pytest.fixture
def pubmedqa_server(data_dir, tmp_path, monkeypatch, no_env_data):
    served = tmp_path / "served"
    served.mkdir()
    for name in ("ori_pqal.json", "test_ground_truth.json"):
        shutil.copy(data_dir / "pubmedqa_pqal" / name, served / name)
    server = _Server(served)
    folder, files = datasets.SOURCES["pubmedqa"]
    local = [RemoteFile(f.name, server.url + f.name, f.checksum) for f in files]
    monkeypatch.setitem(datasets.SOURCES, "pubmedqa", (folder, local))
    yield server, served
    server.stop()


def test_download_then_cache(pubmedqa_server, no_env_data):
    server, _ = pubmedqa_server
    ds = load_dataset(DataConfig(dataset="pubmedqa"))
    assert len(ds.test) == 445 and sum(ex.label for ex in ds.test) == 276
    assert sorted(server.requests) == ["/ori_pqal.json", "/test_ground_truth.json"]
    cached = no_env_data / "data" / "pubmedqa_pqal"
    assert ds.info["source"] == str(cached)
    for f in datasets.SOURCES["pubmedqa"][1]:
        algo, _, expected = f.checksum.partition(":")
        assert hashlib.new(algo, (cached / f.name).read_bytes()).hexdigest() == expected
    assert sorted(p.name for p in cached.iterdir()) == ["ori_pqal.json", "test_ground_truth.json"]
    server.stop()  # the second load needs no network
    again = load_dataset(DataConfig(dataset="pubmedqa"))
    assert [ex.id for ex in again.test] == [ex.id for ex in ds.test]
    assert len(server.requests) == 2


def test_corrupted_download_is_rejected(pubmedqa_server, no_env_data):
    server, served = pubmedqa_server
    path = served / "ori_pqal.json"
    path.write_bytes(path.read_bytes().replace(b'"yes"', b'"no"', 1))
    with pytest.raises(ClsgenError) as e:
        load_dataset(DataConfig(dataset="pubmedqa"))
    msg = str(e.value)
    assert "ori_pqal.json" in msg and "sha256" in msg and "nothing was saved" in msg
    cached = no_env_data / "data" / "pubmedqa_pqal"
    assert not (cached / "ori_pqal.json").exists()
    assert not [p for p in cached.glob("*") if p.name.startswith(".")]  # no temp files left


def test_download_failure_explains_the_offline_fix(pubmedqa_server, no_env_data):
    server, _ = pubmedqa_server
    server.stop()
    with pytest.raises(ClsgenError) as e:
        load_dataset(DataConfig(dataset="pubmedqa"))
    assert "could not download" in str(e.value) and "--data-dir" in str(e.value)


def test_cached_file_with_wrong_checksum_is_refused(pubmedqa_server, no_env_data):
    load_dataset(DataConfig(dataset="pubmedqa"))
    cached = no_env_data / "data" / "pubmedqa_pqal" / "test_ground_truth.json"
    cached.write_text("{}")
    with pytest.raises(ClsgenError) as e:
        load_dataset(DataConfig(dataset="pubmedqa"))
    assert str(cached) in str(e.value) and "checksum" in str(e.value)


def test_data_dir_wins_and_env_var_works(data_dir, no_env_data, monkeypatch):
    assert locate("clinifact", data_dir) == data_dir / "clinifact"
    monkeypatch.setenv("CLSGEN_DATA_DIR", str(data_dir))
    assert locate("pubmedqa") == data_dir / "pubmedqa_pqal"
    monkeypatch.delenv("CLSGEN_DATA_DIR")
    with pytest.raises(ClsgenError) as e:
        locate("pubmedqa", download=False)
    assert "--data-dir" in str(e.value)
    assert not (no_env_data / "data" / "pubmedqa_pqal").exists()


# ---------------------------------------------------------------------------- LCD


def _lcd_fixture(root: Path, notes: list[tuple[str, str, int, str]], extra_notes: int = 0) -> Path:
    """A synthetic MIMIC-IV-Note-like discharge.csv and a matching labels.json in root/lcd."""
    folder = root / "lcd"
    folder.mkdir(parents=True)
    rows, labels = [], {}
    for i, (note_id, text, label, split) in enumerate(notes):
        rows.append({"note_id": note_id, "subject_id": 100 + i, "hadm_id": 200 + i, "note_type": "DS",
                     "note_seq": 1, "charttime": "2180-01-01 00:00:00", "storetime": "2180-01-02 00:00:00",
                     "text": text})
        labels[lcd_hash(note_id, lcd_normalise(text))] = {"out_hospital_mortality_30": label, "data_type": split}
    for j in range(extra_notes):  # notes outside the benchmark are ignored
        rows.append({"note_id": f"x-{j}", "subject_id": 1, "hadm_id": 1, "note_type": "DS", "note_seq": 1,
                     "charttime": "", "storetime": "", "text": f"Unrelated note {j}."})
    pd.DataFrame(rows).to_csv(folder / "discharge.csv", index=False)
    (folder / "labels.json").write_text(json.dumps(labels))
    return folder


def test_lcd_hash_and_normalise():
    assert lcd_normalise('Name: ___ \n"Plan":\tfollow&#039;up\r\n') == "Name: <cr> Plan: follow'up <cr> <cr>"
    h = lcd_hash("10000032-DS-21", "some text")
    assert h.startswith("0x") and len(h) == 32
    assert h == lcd_hash("10000032-DS-21", "some text") != lcd_hash("10000032-DS-22", "some text")


def test_lcd_joins_labels_with_discharge_notes(tmp_path, no_env_data):
    notes = [
        ("1-DS-1", 'Admitted with sepsis.\nDischarged "home" on ___ antibiotics.', 0, "train"),
        ("2-DS-1", "Metastatic cancer, comfort care.\nHospice.", 1, "train"),
        ("3-DS-1", "Elective knee replacement.", 0, "train"),
        ("4-DS-1", "Heart failure, EF 15%.", 1, "dev"),
        ("5-DS-1", "Appendectomy, uneventful.", 0, "dev"),
        ("6-DS-1", "Pneumonia in an elderly patient.", 1, "test"),
        ("7-DS-1", "Cellulitis, resolved.", 0, "test"),
    ]
    _lcd_fixture(tmp_path, notes, extra_notes=3)
    ds = load_dataset(DataConfig(dataset="lcd", data_dir=str(tmp_path)))
    assert ds.name == "lcd" and ds.task.template == LCD_TASK.template
    assert ds.task.max_prompt_tokens == 2048 and ds.task.truncation == "tail"  # the dataset's own
    assert [ex.id for ex in ds.train] == ["1-DS-1", "2-DS-1", "3-DS-1"]
    assert [ex.id for ex in ds.validation] == ["4-DS-1", "5-DS-1"]
    assert [ex.id for ex in ds.test] == ["6-DS-1", "7-DS-1"]
    assert [ex.label for ex in ds.train + ds.validation + ds.test] == [0, 1, 0, 1, 0, 1, 0]
    assert ds.train[0].fields == {"text": "Admitted with sepsis. <cr> Discharged home on antibiotics."}


def test_lcd_without_discharge_notes_explains_access(tmp_path, no_env_data):
    with pytest.raises(ClsgenError) as e:
        load_dataset(DataConfig(dataset="lcd", data_dir=str(tmp_path)))
    msg = str(e.value)
    assert "discharge.csv" in msg and "credentialed" in msg and "physionet" in msg
    assert str(tmp_path / "lcd") in msg


def test_lcd_notes_that_match_nothing(tmp_path, no_env_data):
    folder = _lcd_fixture(tmp_path, [("1-DS-1", "Some note.", 1, "train")])
    (folder / "labels.json").write_text(json.dumps({"0xdeadbeef": {"out_hospital_mortality_30": 1}}))
    with pytest.raises(ClsgenError) as e:
        load_dataset(DataConfig(dataset="lcd", data_dir=str(tmp_path)))
    assert "no note" in str(e.value) and "discharge.csv" in str(e.value)


# ---------------------------------------------------------------------------- user files


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_user_file_with_split_column(tmp_path):
    records = [{"id": f"n{i}", "text": f"note {i}", "label": ["no", "yes"][i % 2],
                "split": ["train", "train", "train", "dev", "test"][i % 5]} for i in range(20)]
    path = _write_jsonl(tmp_path / "notes.jsonl", records)
    ds = load_dataset(DataConfig(dataset=str(path)), TaskConfig(template="Note: {text}"))
    assert ds.name == "notes"
    assert _sizes(ds) == (12, 4, 4)
    assert ds.task.template == "Note: {text}" and ds.task.fields == ["text"]
    assert ds.task.verbalizers == ("NO", "YES") and ds.task.system == ""
    by_id = {r["id"]: r for r in records}
    for s, want in zip(SPLITS, ("train", "dev", "test")):
        for ex in ds.split(s):
            assert by_id[ex.id]["split"] == want
            assert ex.label == (by_id[ex.id]["label"] == "yes")
            assert ex.fields == {"text": by_id[ex.id]["text"]}


def test_user_file_unknown_split_value_is_reported(tmp_path):
    records = [{"id": 1, "text": "a", "label": 1, "split": "train"},
               {"id": 2, "text": "b", "label": 0, "split": "tran"},
               {"id": 3, "text": "c", "label": 0, "split": "Dev"},
               {"id": 4, "text": "d", "label": 1}]
    path = _write_jsonl(tmp_path / "typo.jsonl", records)
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(dataset=str(path)), TaskConfig(template="Note: {text}"))
    assert [(p.row, p.field) for p in e.value.problems] == [(2, "split"), (4, "split")]
    assert "'tran'" in str(e.value)


def test_user_file_without_split_holds_out_validation(tmp_path):
    records = [{"id": i, "text": f"note {i}", "label": i % 3 == 0} for i in range(60)]
    path = _write_jsonl(tmp_path / "all.jsonl", records)
    ds = load_dataset(DataConfig(dataset=str(path)), TaskConfig(template="Note: {text}"))
    assert _sizes(ds) == (50, 10, 0)
    assert not {ex.id for ex in ds.train} & {ex.id for ex in ds.validation}
    assert sum(ex.label for ex in ds.validation) in (3, 4)  # stratified: a third positive


def test_user_folder_of_split_files(tmp_path):
    folder = tmp_path / "mydata"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", [{"id": i, "body": f"t{i}", "y": "pos" if i % 2 else "neg"}
                                         for i in range(6)])
    pd.DataFrame([{"id": 10, "body": "d", "y": "pos"}, {"id": 11, "body": "e", "y": "neg"}]).to_csv(
        folder / "dev.csv", index=False)
    pd.DataFrame([{"id": 20, "body": "f", "y": "neg"}]).to_parquet(folder / "test.parquet")
    ds = load_dataset(DataConfig(dataset=str(folder), label_field="y", label_map={"pos": 1, "neg": 0}),
                      TaskConfig(template="Body: {body}", verbalizers=["neg", "pos"]))
    assert _sizes(ds) == (6, 2, 1)
    assert [ex.label for ex in ds.validation] == [1, 0]
    assert ds.task.verbalizers == ("neg", "pos")


def test_user_file_problems(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"id": 1, "text": "a", "label": 7}])
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(dataset=str(path)), TaskConfig(template="Note: {text}"))
    assert f"{path}, row 1, field 'label'" in str(e.value)
    claims = _write_jsonl(tmp_path / "claims.jsonl", [{"id": 1, "claim": "a", "label": 1}])
    with pytest.raises(ClsgenError) as e:  # no 'text' column: the template cannot be guessed
        load_dataset(DataConfig(dataset=str(claims)))
    assert "task.template" in str(e.value) and "'text' column" in str(e.value)
    with pytest.raises(DataError) as e:  # a 'text' column: '{text}' by default, so the label is read
        load_dataset(DataConfig(dataset=str(path)))
    assert f"{path}, row 1, field 'label'" in str(e.value)
    with pytest.raises(ClsgenError) as e:
        load_dataset(DataConfig(dataset=str(tmp_path / "missing.jsonl")), TaskConfig(template="{text}"))
    assert "missing.jsonl" in str(e.value) and "clinifact" in str(e.value)
