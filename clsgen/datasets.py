"""Built-in datasets (CliniFact, PubMedQA PQA-L, LCD) and user files, as train/validation/test splits.

A built-in dataset's files are looked up in `data_dir` (or CLSGEN_DATA_DIR) first, then in the user
cache, and are otherwise downloaded from their public source, pinned to a commit, checksum checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, DataConfig, TaskConfig
from .data import (
    Example,
    examples_from_rows,
    read_rows,
    rows_from_records,
    short_repr,
    stratified_sample,
)
from .errors import ClsgenError, DataError, Problem
from .files import atomic_write_bytes, cache_dir
from .task import Task

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass
class DatasetSplits:
    """A task and its examples, split three ways."""

    name: str
    task: Task
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    info: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[Example]:
        if name == "dev":
            name = "validation"
        if name not in SPLITS:
            raise ClsgenError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)


@dataclass(frozen=True)
class RemoteFile:
    """A file of a built-in dataset: where it lives locally and where to fetch it from."""

    name: str
    url: str
    checksum: str  # "sha256:<hex>" or "sha1:<hex>"


# ---------------------------------------------------------------------------- tasks

CLINIFACT_TASK = Task(
    name="clinifact",
    system=(
        "You are a clinical research assistant. You read a claim about the primary outcome of a "
        "clinical trial and the abstract of the trial's publication, and decide whether the abstract "
        "reports evidence that supports the claim. Explain your reasoning in a few sentences a "
        "clinician can check, then give your verdict on the last line as 'Answer: TRUE' or "
        "'Answer: FALSE'."
    ),
    template="Claim: {claim}\nAbstract: {article_abstract}",
    verbalizers=("FALSE", "TRUE"),
)

PUBMEDQA_TASK = Task(
    name="pubmedqa",
    system=(
        "You are a biomedical research assistant. You read a research question and the abstract of a "
        "study (without its conclusion), and decide whether the study's answer to the question is yes "
        "or no. Explain your reasoning in a few sentences, then give your verdict on the last line as "
        "'Answer: YES' or 'Answer: NO'."
    ),
    template="Question: {question}\nContext: {context}",
    verbalizers=("NO", "YES"),
)

LCD_TASK = Task(
    name="lcd",
    system=(
        "You are a clinical assistant. You read a hospital discharge summary and judge whether the "
        "patient is likely to die within 30 days after discharge. Explain your reasoning in a few "
        "sentences, then give your verdict on the last line as 'Answer: YES' or 'Answer: NO'."
    ),
    template="Discharge summary: {text}",
    verbalizers=("NO", "YES"),
    max_prompt_tokens=2048,
    truncation="tail",
)

BUILTIN_TASKS = {"clinifact": CLINIFACT_TASK, "pubmedqa": PUBMEDQA_TASK, "lcd": LCD_TASK}
"""The task of each built-in dataset, by dataset name."""


def _task_overrides(task_cfg: TaskConfig) -> dict[str, Any]:
    return dict(system=task_cfg.system, template=task_cfg.template, verbalizers=task_cfg.verbalizers,
                max_prompt_tokens=task_cfg.max_prompt_tokens, truncation=task_cfg.truncation,
                verdict_position=task_cfg.verdict_position)


def _file_task(dataset: str, task_cfg: TaskConfig, template: str) -> Task:
    """The task of a user's data file: `task_cfg` applied, with `template` rendering its rows."""
    base = Task(name=Path(dataset).stem, system=task_cfg.system or "", template=template,
                verbalizers=tuple(task_cfg.verbalizers or ("NO", "YES")))
    return base.with_overrides(**{**_task_overrides(task_cfg), "template": template})


def task_from_config(cfg: Config) -> Task:
    """The task of `cfg.data.dataset` (a built-in one, or one made of `cfg.task`) with `cfg.task` applied."""
    if cfg.data.dataset in BUILTIN_TASKS:
        return BUILTIN_TASKS[cfg.data.dataset].with_overrides(**_task_overrides(cfg.task))
    if not cfg.task.template:
        raise ClsgenError("a data file needs task.template (e.g. 'Note: {text}') and, optionally, "
                          "task.system and task.verbalizers")
    return _file_task(cfg.data.dataset, cfg.task, cfg.task.template)

# ---------------------------------------------------------------------------- sources

_CLINIFACT_URL = ("https://raw.githubusercontent.com/ds4dh/CliniFact/77f8c19844fd4113aa051f867b4d7a8ce5c3a879/"
                  "data/processed/primary_outcome_publication_dataset/")
_PUBMEDQA_URL = "https://raw.githubusercontent.com/pubmedqa/pubmedqa/1cbae8e92f72f20c8d3747cbb3bf5bc53554d997/data/"
_LCD_URL = ("https://raw.githubusercontent.com/Machine-Learning-for-Medical-Language/long-clinical-doc/"
            "dcb1cb2b8a30a70c705de074505c08ae446fb91d/out_hospital_mortality_30/")

SOURCES: dict[str, tuple[str, list[RemoteFile]]] = {
    "clinifact": ("clinifact", [
        RemoteFile("train_set.csv", _CLINIFACT_URL + "train_set.csv",
                   "sha256:314f199811ec02ffedf6d18a1c7d51583c71514c7f22896d408c5130c042cc90"),
        RemoteFile("validation_set.csv", _CLINIFACT_URL + "validation_set.csv",
                   "sha256:b4e7fddb6a1ca1b76be9ba2da54ccf360cd50ce45ae988df9657a429d5719431"),
        RemoteFile("test_set.csv", _CLINIFACT_URL + "test_set.csv",
                   "sha256:d935566ee0b025b5fe793cb57c56228e1a6939440713312d3d5a3e0acdb4671e"),
    ]),
    "pubmedqa": ("pubmedqa_pqal", [
        RemoteFile("ori_pqal.json", _PUBMEDQA_URL + "ori_pqal.json",
                   "sha256:8b3276be8942ebbd77f3ddcda12c1749bf0e490045a736fd8438ee40cf37a41d"),
        RemoteFile("test_ground_truth.json", _PUBMEDQA_URL + "test_ground_truth.json",
                   "sha256:939fe566f09017d13b1ca64d2ddfee0bc2374b366048152997669cccedc44d51"),
    ]),
    "lcd": ("lcd", [
        RemoteFile("labels.json", _LCD_URL + "labels.json",
                   "sha1:8f3d596892981316a990e4cd5853d1095716e867"),
    ]),
}

BUILTIN = ("clinifact", "pubmedqa", "lcd")


def _checksum_ok(path: Path, checksum: str) -> bool:
    algo, _, expected = checksum.partition(":")
    h = hashlib.new(algo)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest() == expected


def _download(file: RemoteFile, target: Path, timeout: float = 60.0) -> None:
    import httpx

    try:
        with httpx.stream("GET", file.url, timeout=timeout, follow_redirects=True) as r:
            r.raise_for_status()
            data = b"".join(r.iter_bytes())
    except httpx.HTTPError as e:
        raise ClsgenError(f"could not download {file.url}: {e}; without network, put the file at "
                          f"{target} or pass --data-dir with the dataset's folder") from None
    algo, _, expected = file.checksum.partition(":")
    got = hashlib.new(algo, data).hexdigest()
    if got != expected:
        raise ClsgenError(f"download of {file.url} has {algo} {got}, expected {expected}; the source "
                          "changed or the transfer was corrupted; nothing was saved")
    atomic_write_bytes(target, data)


def locate(name: str, data_dir: str | Path | None = None, download: bool = True) -> Path:
    """The local folder holding built-in dataset `name`'s files, fetching them when needed."""
    folder, files = SOURCES[name]
    roots = [Path(d) for d in (data_dir, os.environ.get("CLSGEN_DATA_DIR")) if d]
    for root in roots:
        if all((root / folder / f.name).is_file() for f in files):
            return root / folder
    cached = cache_dir("data", folder)
    missing = [f for f in files if not (cached / f.name).is_file()]
    if missing and not download:
        looked = ", ".join(str(r / folder) for r in roots + [cache_dir("data")])
        raise ClsgenError(f"dataset {name!r} not found (looked in {looked}); pass --data-dir")
    for f in missing:
        _download(f, cached / f.name)
    for f in files:
        if not _checksum_ok(cached / f.name, f.checksum):
            raise ClsgenError(f"{cached / f.name} does not match its checksum; delete it to fetch it again")
    return cached


# ---------------------------------------------------------------------------- loaders


def _clinifact(cfg: DataConfig) -> DatasetSplits:
    root = locate("clinifact", cfg.data_dir)
    binarization = cfg.binarization or "evidence-vs-rest"
    if binarization == "evidence-vs-rest":
        label_map = {"1": 1, "0": 0, "2": 0}
    elif binarization == "evidence-vs-inconclusive":
        label_map = {"1": 1, "0": 0}
    else:
        raise ClsgenError(f"data.binarization {binarization!r} is not one of clinifact's: "
                          "'evidence-vs-rest', 'evidence-vs-inconclusive'")
    splits: dict[str, list[Example]] = {}
    for split, file in zip(SPLITS, ("train_set.csv", "validation_set.csv", "test_set.csv")):
        rows = read_rows(root / file)
        if binarization == "evidence-vs-inconclusive":
            rows = [r for r in rows if str(r.values.get("label", "")).strip() != "2"]
        for r in rows:  # a stable id across splits, from the dataset's own unique index
            r.values = {**r.values, "id": f"clinifact-{r.values.get('index', r.number)}"}
        # pValues and statisticalMethods leak the label: they are never read into an example.
        splits[split] = examples_from_rows(
            rows, source=str(root / file), text_fields=["claim", "article_abstract"], label_map=label_map,
            meta_fields=["nctId", "PMID"])
        for ex, r in zip(splits[split], rows):
            ex.meta["original_label"] = str(r.values.get("label"))
    if cfg.split == "trial-disjoint":
        splits = group_resplit(splits, key=lambda ex: str(ex.meta.get("nctId")), seed=cfg.seed)
    return DatasetSplits("clinifact", CLINIFACT_TASK, splits["train"], splits["validation"], splits["test"],
                         {"binarization": binarization, "split": cfg.split, "source": str(root)})


def group_resplit(splits: dict[str, list[Example]], key: Callable[[Example], str],
                  seed: int = 0) -> dict[str, list[Example]]:
    """Re-split so that no group (e.g. trial) is in two splits, keeping the official split sizes."""
    everything = [ex for s in SPLITS for ex in splits[s]]
    groups: dict[str, list[Example]] = {}
    for ex in everything:
        groups.setdefault(key(ex), []).append(ex)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    targets = {s: len(splits[s]) for s in SPLITS}
    out: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for g in order:  # fill test, then validation, then train, to their official sizes
        dest = next((s for s in ("test", "validation") if len(out[s]) < targets[s]), "train")
        out[dest].extend(groups[g])
    return out


def _pubmedqa(cfg: DataConfig) -> DatasetSplits:
    root = locate("pubmedqa", cfg.data_dir)
    try:
        data = json.loads((root / "ori_pqal.json").read_text(encoding="utf-8"))
        test_ids = set(json.loads((root / "test_ground_truth.json").read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError([Problem(f"cannot be read: {e}", file=str(root))]) from None
    rows = []
    for pmid, d in data.items():
        if d.get("final_decision") not in ("yes", "no"):
            continue
        rows.append({
            "id": f"pubmedqa-{pmid}", "question": d.get("QUESTION", ""),
            "context": "\n".join(f"{lab}: {txt}" for lab, txt in zip(d.get("LABELS", []),
                                                                    d.get("CONTEXTS", []))),
            "label": d["final_decision"], "long_answer": d.get("LONG_ANSWER"), "pmid": pmid,
        })
    examples = examples_from_rows(rows_from_records(rows), source=str(root / "ori_pqal.json"),
                                  text_fields=["question", "context"], label_map={"yes": 1, "no": 0},
                                  meta_fields=["long_answer", "pmid"])
    test = [ex for ex in examples if ex.meta["pmid"] in test_ids]
    rest = [ex for ex in examples if ex.meta["pmid"] not in test_ids]
    validation = stratified_sample(rest, len(rest) // 5, seed=cfg.seed)
    val_ids = {ex.id for ex in validation}
    train = [ex for ex in rest if ex.id not in val_ids]
    return DatasetSplits("pubmedqa", PUBMEDQA_TASK, train, validation, test,
                         {"binarization": "yes-vs-no", "source": str(root),
                          "note": "validation = a stratified 20% of the official non-test half"})


def lcd_hash(note_id: str, text: str, seed: str = "Landmark Center 401 park drive") -> str:
    """The LCD benchmark's document id: XOR of SHA-256 digests of note id, normalised text and seed."""
    digests = [int(hashlib.sha256(s.encode("utf-8")).hexdigest(), 16) for s in (note_id, text, seed)]
    return hex(digests[0] ^ digests[1] ^ digests[2])[:32]


def lcd_normalise(text: str) -> str:
    """The LCD benchmark's text normalisation (newlines as <cr>, quotes and underscore runs removed)."""
    import re

    text = text.replace("&#039;", "'").replace("\n", " <cr> ").replace("\r", " <cr> ")
    text = text.replace("\t", " ").replace('"', "")
    text = re.sub(r"_{2,}\s*", "", text)
    return " ".join(text.split())


def _lcd(cfg: DataConfig) -> DatasetSplits:
    roots = [Path(d) / "lcd" for d in (cfg.data_dir, os.environ.get("CLSGEN_DATA_DIR")) if d]
    roots.append(cache_dir("data", "lcd"))
    notes = next((r / "discharge.csv" for r in roots if (r / "discharge.csv").is_file()), None)
    if notes is None:
        raise ClsgenError("LCD needs your own MIMIC-IV-Note discharge.csv (credentialed access, "
                          f"physionet.org); put it at one of: {', '.join(str(r) for r in roots)}")
    labels_path = notes.parent / "labels.json"
    if not labels_path.is_file():
        labels_path = locate("lcd", cfg.data_dir) / "labels.json"
    try:
        labels = json.loads(labels_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError([Problem(f"cannot be read as JSON: {e}", file=str(labels_path))]) from None
    task_key = "out_hospital_mortality_30"
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "dev": [], "test": []}
    problems: list[Problem] = []
    for row in read_rows(notes):
        v = row.values
        if "note_id" not in v or "text" not in v:
            problems.append(Problem("needs columns note_id and text (MIMIC-IV-Note discharge.csv)",
                                    str(notes), row.number))
            break
        text = lcd_normalise(str(v["text"]))
        gold = labels.get(lcd_hash(str(v["note_id"]), text))
        if gold is None:
            continue
        rows.setdefault(gold.get("data_type", "train"), []).append(
            {"id": str(v["note_id"]), "text": text, "label": gold.get(task_key)})
    if problems:
        raise DataError(problems)
    splits = {s: examples_from_rows(rows_from_records(rows[k]), source=str(notes), text_fields=["text"])
              for s, k in zip(SPLITS, ("train", "dev", "test"))}
    if not any(splits.values()):
        raise ClsgenError(f"no note in {notes} matches {labels_path}; is it MIMIC-IV-Note v2.2's "
                          "discharge.csv?")
    return DatasetSplits("lcd", LCD_TASK, splits["train"], splits["validation"], splits["test"],
                         {"source": str(notes), "labels": str(labels_path)})


def _file_dataset(cfg: DataConfig, task: Task) -> DatasetSplits:
    """A user's data: a file (with an optional 'split' column) or a folder of train/validation/test files."""
    path = Path(cfg.dataset)
    text_fields = cfg.text_fields or task.fields
    common: dict[str, Any] = dict(text_fields=text_fields, label_field=cfg.label_field, id_field=cfg.id_field,
                                  label_map=cfg.label_map)

    def other_columns(rows: Sequence[Any]) -> list[str]:
        """Columns besides text, label, id and split stay with the example as metadata (e.g. a
        reference rationale for `teacher.kind: reference`)."""
        used = {*text_fields, cfg.label_field, cfg.id_field, "split"}
        return sorted({k for r in rows for k in r.values} - used)

    splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
    if path.is_dir():
        for split in SPLITS:
            names = [split] + (["dev"] if split == "validation" else [])
            found = [p for n in names for p in sorted(path.glob(f"{n}.*"))]
            if found:
                rows = read_rows(found[0])
                if not rows:
                    raise ClsgenError(f"{found[0]} is empty: it holds no rows; add examples or remove the file")
                splits[split] = examples_from_rows(rows, source=str(found[0]), meta_fields=other_columns(rows),
                                                   **common)
        if not splits["train"] and not splits["test"]:
            raise ClsgenError(f"{path} has no train.* or test.* file (jsonl, csv or parquet)")
        if not splits["test"]:
            log.warning("%s has no test.* file: the test split is empty (evaluate with --split validation, or "
                        "add a test file)", path)
    else:
        rows = read_rows(path)
        if not rows:
            raise ClsgenError(f"{path} is empty: it holds no rows; add examples")
        common["meta_fields"] = other_columns(rows)
        if rows and "split" in rows[0].values:
            bad = [Problem(f"split {short_repr(r.values.get('split'))} is not train, validation (or dev) or "
                           "test", str(path), r.number, "split") for r in rows
                   if str(r.values.get("split")).strip().lower() not in {*SPLITS, "dev"}]
            if bad:  # a typo would otherwise drop the row silently
                raise DataError(bad)
            for split in SPLITS:
                names = {split, "dev"} if split == "validation" else {split}
                part = [r for r in rows if str(r.values.get("split")).strip().lower() in names]
                splits[split] = examples_from_rows(part, source=str(path), **common)
        else:
            splits["train"] = examples_from_rows(rows, source=str(path), **common)
    if splits["train"] and not splits["validation"]:
        held = stratified_sample(splits["train"], max(1, len(splits["train"]) // 6), seed=cfg.seed)
        ids = {ex.id for ex in held}
        splits["validation"] = held
        splits["train"] = [ex for ex in splits["train"] if ex.id not in ids]
    return DatasetSplits(path.stem, task, splits["train"], splits["validation"], splits["test"],
                         {"source": str(path)})


LOADERS: dict[str, Callable[[DataConfig], DatasetSplits]] = {
    "clinifact": _clinifact, "pubmedqa": _pubmedqa, "lcd": _lcd,
}


def load_dataset(data: DataConfig | str, task: TaskConfig | None = None) -> DatasetSplits:
    """Load a built-in dataset or a user file as splits, with the task overrides and subsampling applied."""
    cfg = DataConfig(dataset=data) if isinstance(data, str) else data
    task_cfg = task or TaskConfig()
    if cfg.dataset in LOADERS:
        ds = LOADERS[cfg.dataset](cfg)
        ds.task = ds.task.with_overrides(**_task_overrides(task_cfg))
    else:
        try:
            exists = Path(cfg.dataset).exists()
        except (OSError, ValueError):  # a name too long for the file system, an embedded NUL byte
            exists = False
        if not exists:
            raise ClsgenError(f"data.dataset {short_repr(cfg.dataset, 300)} is neither a built-in dataset "
                              f"({', '.join(BUILTIN)}) nor an existing file or folder")
        template = task_cfg.template
        if template is None and _has_column(Path(cfg.dataset), "text"):
            template = "{text}"  # the one field a file plainly offers
        if template is None:
            raise ClsgenError("a data file without a 'text' column needs task.template (e.g. "
                              "'Claim: {claim}') and, optionally, task.system and task.verbalizers")
        ds = _file_dataset(cfg, _file_task(cfg.dataset, task_cfg, template))
    ds.train = stratified_sample(ds.train, cfg.max_train, seed=cfg.seed)
    max_validation = cfg.max_validation if cfg.max_validation is not None else cfg.max_eval
    ds.validation = stratified_sample(ds.validation, max_validation, seed=cfg.seed)
    ds.test = stratified_sample(ds.test, cfg.max_eval, seed=cfg.seed)
    ds.info.update(max_train=cfg.max_train, max_validation=max_validation, max_eval=cfg.max_eval)
    return ds


def _has_column(path: Path, name: str) -> bool:
    """Whether the data file (or a folder's train/test file) has a column `name` in its first row."""
    files = [path] if path.is_file() else [p for n in ("train", "test") for p in sorted(path.glob(f"{n}.*"))][:1]
    for file in files:
        rows = read_rows(file)
        if not rows:
            raise ClsgenError(f"{file} is empty: it holds no rows; add examples")
        return name in rows[0].values
    return False


def shared_ids(a: Sequence[Example], b: Sequence[Example], key: str) -> set[str]:
    """Values of meta `key` present in both lists (e.g. trials shared by train and test)."""
    return {str(x.meta.get(key)) for x in a} & {str(x.meta.get(key)) for x in b}
