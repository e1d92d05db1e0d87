"""Privacy: the text of the data (often clinical notes) never reaches logs, progress bars, error
messages or reports unless the user asks for it.

Every example below carries a unique marker string in its text (and, for training data, in its
explanation). A run then must not write the marker to the log (caplog, every logger at DEBUG), to
stdout/stderr (capfd: progress bars, warnings, printed summaries), to report.html, metrics.json or the
experiment's results; only the outputs the user asked for (predictions.jsonl's explanations, the
synth records) may hold text. The opt-ins --show-examples / --show-inputs put it back.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from clsgen.cli import main
from clsgen.data import Example
from clsgen.estimator import ClsgenClassifier
from clsgen.evaluate import evaluate
from clsgen.inference import Predictor
from clsgen.task import Task

from helpers import save_tiny_classifier

MARKER = "ZqxPrivate7731"
"""Stands for a patient's note: it must appear nowhere unless asked for."""
TASK = Task(name="notes", system="Did the patient die within 30 days?", template="Note: {text}",
            verbalizers=("NO", "YES"))


def _examples(n: int, prefix: str = "t") -> list[Example]:
    return [Example(f"{prefix}{i}", {"text": f"{MARKER} patient {i} was {'worse' if i % 2 else 'stable'}."},
                    label=i % 2) for i in range(n)]


class Echo:
    """An explaining classifier whose explanations quote the input, as a real model's often do."""

    name = "echo"
    task = TASK
    threshold = 0.5

    def fit(self, train, validation):
        return self

    def predict_proba(self, examples):
        return [0.8 if ex.label else 0.3 for ex in examples]

    def explain(self, examples, max_new_tokens=256):
        return [f"The note reads '{ex.fields['text']}'.\n\nAnswer: {'YES' if ex.label else 'NO'}"
                for ex in examples]


@pytest.fixture
def everything(caplog, capfd, recwarn):
    """Every log record (any logger, DEBUG), everything written to stdout/stderr (file descriptors:
    progress bars too) and every Python warning, as one text."""
    caplog.set_level(logging.DEBUG)

    def text() -> str:
        out, err = capfd.readouterr()
        return "\n".join([caplog.text, out, err, *(str(w.message) for w in recwarn)])
    return text


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text(errors="replace") for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix in (".json", ".jsonl", ".html", ".md", ".yaml", ".txt", ".log")}


# ------------------------------------------------------------------------------------ evaluate


def test_reports_hold_no_text_unless_asked(tmp_path, everything):
    examples = _examples(12)
    evaluate(Echo(), examples, tmp_path / "default", n_bootstrap=20)
    out = tmp_path / "default"
    assert MARKER not in (out / "report.html").read_text()
    assert MARKER not in (out / "metrics.json").read_text()
    assert "--show-examples" in (out / "report.html").read_text()
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert all("fields" not in r for r in rows)  # never the inputs; the explanations are the asked-for output
    assert all(MARKER in r["explanation"] for r in rows)
    assert MARKER not in everything()

    evaluate(Echo(), examples, tmp_path / "examples", n_bootstrap=20, show_examples=True)
    report = (tmp_path / "examples" / "report.html").read_text()
    assert "Most confident right" in report and MARKER in report  # the quoting explanation is shown
    assert "<details>" not in report  # but not the inputs themselves

    evaluate(Echo(), examples, tmp_path / "inputs", n_bootstrap=20, show_inputs=True)
    report = (tmp_path / "inputs" / "report.html").read_text()
    assert "<details>" in report and MARKER in report
    rows = [json.loads(x) for x in (tmp_path / "inputs" / "predictions.jsonl").read_text().splitlines()]
    assert all(MARKER in r["fields"]["text"] for r in rows)
    assert MARKER not in everything()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_classifier(TASK, tmp_path_factory.mktemp("privacy") / "model")


def test_tiny_model_evaluation_logs_and_reports_hold_no_text(tiny_dir, tmp_path, everything):
    clf = ClsgenClassifier(Predictor.from_pretrained(tiny_dir, max_new_tokens=4, batch_size=4, progress=True))
    evaluate(clf, _examples(8), tmp_path, validation=_examples(8, "v"), explain=4, max_new_tokens=4,
             n_bootstrap=20)
    files = _files(tmp_path)
    assert set(files) == {"predictions.jsonl", "metrics.json", "report.html"}
    assert not [name for name, text in files.items() if MARKER in text]
    assert MARKER not in everything()


def test_evaluate_command_opt_ins(tiny_dir, tmp_path, everything):
    data = tmp_path / "notes.jsonl"
    data.write_text("".join(json.dumps({"id": ex.id, "text": ex.fields["text"], "label": ex.label,
                                        "split": "validation" if i < 8 else "test"}) + "\n"
                            for i, ex in enumerate(_examples(16))))
    common = ["evaluate", "--model", str(tiny_dir), "--dataset", str(data), "--explain", "2",
              "--max-new-tokens", "3", "--n-bootstrap", "10"]
    assert main(common + ["--out", str(tmp_path / "a")]) == 0
    report = (tmp_path / "a" / "report.html").read_text()
    assert MARKER not in report and "Most confident" not in report
    assert not [n for n, text in _files(tmp_path / "a").items() if MARKER in text]
    assert main(common + ["--out", str(tmp_path / "b"), "--show-examples"]) == 0
    report = (tmp_path / "b" / "report.html").read_text()
    assert "Most confident" in report and MARKER not in report  # explanations, not inputs
    assert main(common + ["--out", str(tmp_path / "c"), "--show-inputs"]) == 0
    assert MARKER in (tmp_path / "c" / "report.html").read_text()
    assert MARKER in (tmp_path / "c" / "predictions.jsonl").read_text()
    assert MARKER not in everything()  # the printed metrics and paths, the progress bars


# ------------------------------------------------------------------------------------ experiment


def _rationale(i: int, label: int) -> str:
    return (f"The discharge note {MARKER} of patient {i} describes a course that "
            f"{'worsened steadily despite treatment' if label else 'improved steadily with treatment'}.")


def _write_notes(path: Path, n: int = 24) -> None:
    rows = []
    for i in range(n):
        label = i % 2
        split = "test" if i % 6 == 0 else "validation" if i % 6 == 1 else "train"
        rows.append({"id": f"r{i}", "text": f"{MARKER} the patient {'worsened' if label else 'improved'}",
                     "label": label, "split": split, "rationale": _rationale(i, label)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_experiment_synth_train_and_results_hold_no_text(tmp_path, everything):
    """synth (reference teacher: its explanations are the data's own rationale text), training (logs,
    progress bars, train_log.jsonl, checkpoints), evaluation and the results table."""
    from clsgen.config import load_config
    from clsgen.experiment import run_experiment

    data = tmp_path / "notes.jsonl"
    _write_notes(data)
    out = tmp_path / "run"
    cfg = load_config(None, [
        "model.name=tiny", f"data.dataset={data}", "task.template='Note: {text}'", "task.max_prompt_tokens=64",
        "teacher.kind=reference", "teacher.reference_field=rationale",
        "train.max_steps=1", "train.batch_size=8", "train.max_length=96", "train.save_every=1",
        "eval.explain=2", "eval.max_new_tokens=3", "eval.n_bootstrap=10", "eval.batch_size=4",
        f"experiment.out_dir={out}"])
    logs: list[str] = []
    run_experiment(cfg, methods=["clsgen", "tfidf"], log=logs.append)
    files = _files(out)
    assert {"results.md", "results.json", "results.html", "eval/clsgen/report.html",
            "models/clsgen/train_log.jsonl", "synth/train.jsonl.report.json"} <= set(files)
    asked_for = {"synth/train.jsonl"}  # the synth records: training data the user asked for
    leaked = [name for name, text in files.items() if MARKER in text and name not in asked_for]
    assert not leaked, f"{leaked} hold text of the data"
    assert MARKER in files["synth/train.jsonl"]
    assert MARKER not in "\n".join(logs) + everything()
    assert "Most confident" not in files["eval/clsgen/report.html"]

    # the opt-in: the evaluation step again (the model is kept), now with sample explanations
    (out / "eval" / "clsgen" / "metrics.json").unlink()
    run_experiment(cfg, methods=["clsgen"], log=logs.append, show_examples=True)
    assert "Most confident" in (out / "eval" / "clsgen" / "report.html").read_text()
    assert MARKER not in "\n".join(logs) + everything()


def test_synth_report_holds_no_text_by_default(tmp_path, everything):
    """The synth report (<out>.report.json and its printed form) shows sample explanations only when
    asked: for the reference teacher they are the data's own text. clsgen/synth/build.py keeps
    `n_samples=4` as its default today; the experiment runner passes 0 unless --show-examples."""
    from clsgen.synth import synthesize

    examples = [Example(f"r{i}", {"text": f"{MARKER} note {i}"}, label=i % 2,
                        meta={"rationale": _rationale(i, i % 2)}) for i in range(6)]
    from clsgen.config import TeacherConfig

    report = synthesize(examples, TASK, TeacherConfig(kind="reference", reference_field="rationale"),
                        tmp_path / "s.jsonl", progress=True, n_samples=0)
    assert MARKER not in (tmp_path / "s.jsonl.report.json").read_text()
    assert MARKER not in report.format() and MARKER not in report.summary_line()
    assert MARKER not in everything()
    shown = synthesize(examples, TASK, TeacherConfig(kind="reference", reference_field="rationale"),
                       tmp_path / "s.jsonl", progress=False, n_samples=2)
    assert MARKER in shown.format()  # the opt-in works


def test_synth_default_holds_no_text(tmp_path):
    from clsgen.config import TeacherConfig
    from clsgen.synth import synthesize

    examples = [Example(f"r{i}", {"text": f"{MARKER} note {i}"}, label=i % 2,
                        meta={"rationale": _rationale(i, i % 2)}) for i in range(4)]
    report = synthesize(examples, TASK, TeacherConfig(kind="reference", reference_field="rationale"),
                        tmp_path / "s.jsonl", progress=False)
    assert MARKER not in (tmp_path / "s.jsonl.report.json").read_text() and MARKER not in report.format()
