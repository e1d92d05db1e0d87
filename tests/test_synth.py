"""clsgen.synth: acceptance rules, the append-only store, the reference and local teachers, the CLI.

The OpenAI-compatible teacher (real HTTP against a fake server, kill -9 and resume) is tested in
test_synth_openai.py.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from clsgen.config import TeacherConfig
from clsgen.data import Example
from clsgen.errors import ClsgenError
from clsgen.synth import (
    Acceptance,
    LocalTeacher,
    ReferenceTeacher,
    Reply,
    Request,
    SynthStore,
    TeacherPrompt,
    judge,
    read_synth,
    synthesize,
)
from clsgen.synth.prompts import DEFAULT_INSTRUCTION
from clsgen.task import ELLIPSIS, Task

TASK = Task(name="fake", system="Decide whether the claim holds.", template="Claim: {claim}",
            verbalizers=("FALSE", "TRUE"))
FIELDS = {"claim": "Drug A lowered blood pressure by 12 mmHg against 3 mmHg with placebo (p<0.001)."}
BODY = "The abstract reports a 12 mmHg fall with drug A against 3 mmHg with placebo, a clear difference."


def verdict(text: str, label: int = 1, finish: str = "stop", **rules):
    return judge(Reply(text, finish=finish), label, TASK, FIELDS, Acceptance(**rules))


# ---------------------------------------------------------------------------- acceptance


def test_judge_accepts_an_explanation_ending_with_the_gold_verdict():
    j = verdict(f"{BODY}\n\nAnswer: TRUE")
    assert j.accepted and j.verdict == 1 and j.explanation == BODY and j.reason is None
    assert verdict(f"{BODY}\n**Answer:** true.").accepted
    assert verdict(f"{BODY}\nAnswer:\nTRUE").accepted  # the answer on the line after the marker


@pytest.mark.parametrize("text, finish, reason", [
    ("", "stop", "empty"),
    (f"{BODY}\n\nAnswer: TRUE", "length", "too_long"),
    (BODY, "stop", "missing_verdict"),  # a correct explanation without the verdict line is not fixed up
    (f"{BODY} So the verdict is TRUE.", "stop", "missing_verdict"),
    (f"{BODY}\n\nAnswer: FALSE", "stop", "wrong_verdict"),
    (f"{BODY}\nAnswer: FALSE\nOn reflection:\nAnswer: TRUE", "stop", "wrong_verdict"),
    (f"{BODY}\n\nAnswer: TRUE\nLet me know if you need more.", "stop", "text_after_verdict"),
    ("Answer: TRUE", "stop", "empty"),
    ("TRUE.\nAnswer: TRUE", "stop", "too_short"),
    ("The correct answer is TRUE.\nAnswer: TRUE", "stop", "too_short"),
    ("the trial the trial the trial the trial the trial the trial the trial the trial\nAnswer: TRUE", "stop",
     "degenerate"),
    ("The trial found no difference in walking distance (p=0.41), so the claim holds.\nAnswer: TRUE", "stop",
     "ungrounded_number"),
])
def test_judge_rejects(text, finish, reason):
    j = verdict(text, finish=finish)
    assert not j.accepted and j.explanation is None and j.reason == reason


def test_a_reply_stopped_in_a_loop_is_degenerate_and_the_loop_detector_is_exact():
    import torch

    from clsgen.synth.teachers import _LoopStop

    assert verdict(f"{BODY}\nAnswer: TRUE", finish="loop").reason == "degenerate"
    stop = _LoopStop(prompt_width=2, eos_ids=[0], window=12, max_period=4)
    ids = torch.tensor([[9, 9] + [1, 2, 3] * 5, [9, 9] + list(range(1, 16)), [9, 9] + [5] * 15,
                        [9, 9] + [7, 8] + [0] * 13])  # the last one ended (eos = pad = 0): not a loop
    assert stop(ids).tolist() == [True, False, True, False] and stop.stopped == {0: 15, 2: 15}
    assert not _LoopStop(2, window=12)(ids[:, :10]).any()  # too few new tokens to judge


def test_judge_rules_are_settings():
    long = ("The abstract reports that blood pressure fell with drug A. Placebo patients saw a smaller "
            "change. The difference was statistically significant and clinically relevant, which matches "
            "the claim as written.\nAnswer: TRUE")
    assert verdict(long).accepted and verdict(long, max_words=20).reason == "too_long"
    text = "The trial found a fall of 99 mmHg, which supports the claim.\nAnswer: TRUE"
    assert verdict(text).reason == "ungrounded_number" and verdict(text, grounded_numbers=False).accepted
    assert verdict(f"{BODY}\nAnswer: TRUE", min_words=50).reason == "too_short"


# ---------------------------------------------------------------------------- prompts


def test_prompt_is_label_conditioned_with_the_task_and_its_demos():
    prompt = TeacherPrompt.for_task(TASK)
    msgs = prompt.messages(FIELDS, 0)
    assert [m["role"] for m in msgs] == ["system", "user"]  # no built-in demos for this task
    assert msgs[0]["content"].startswith("Decide whether the claim holds.") and "FALSE or TRUE" in msgs[0]["content"]
    assert msgs[1]["content"].startswith(f"Claim: {FIELDS['claim']}")
    assert "Correct answer: FALSE" in msgs[1]["content"] and "'Answer: FALSE'" in msgs[1]["content"]

    from clsgen.datasets import CLINIFACT_TASK

    demo = TeacherPrompt.for_task(CLINIFACT_TASK).messages({"claim": "c", "article_abstract": "a"}, 1)
    assert [m["role"] for m in demo] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert demo[2]["content"].endswith("Answer: FALSE") and demo[4]["content"].endswith("Answer: TRUE")
    demo0 = TeacherPrompt.for_task(CLINIFACT_TASK).messages({"claim": "c", "article_abstract": "a"}, 0)
    assert demo0[2]["content"].endswith("Answer: TRUE") and demo0[4]["content"].endswith("Answer: FALSE")
    assert len(TeacherPrompt.for_task(CLINIFACT_TASK, demos=False).messages({"claim": "c", "article_abstract": "a"}, 1)) == 2

    custom = TeacherPrompt.for_task(TASK, "Explain to a nurse why it is {verbalizers}. Context: {task}")
    assert custom.system() == "Explain to a nurse why it is FALSE or TRUE. Context: Decide whether the claim holds."
    with pytest.raises(ClsgenError, match="teacher.prompt .* may use \\{task\\} and \\{verbalizers\\}"):
        TeacherPrompt.for_task(TASK, "Explain {label}")
    assert "{task}" in DEFAULT_INSTRUCTION


# ---------------------------------------------------------------------------- reference teacher + store


def ref_examples(n: int = 4) -> list[Example]:
    return [Example(f"r{i}", {"claim": f"claim number {i}"}, label=i % 2,
                    meta={"rationale": f"Rationale {i}: the study reports what the claim says about outcome {i}."})
            for i in range(n)]


def test_reference_teacher_formats_the_rationale_and_keeps_examples_without_one(tmp_path):
    exs = ref_examples(4)
    exs[3].meta.clear()
    report = synthesize(exs, TASK, ReferenceTeacher("rationale"), tmp_path / "s.jsonl", progress=False)
    records = {r["id"]: r for r in read_synth(tmp_path / "s.jsonl")}
    assert records["r0"]["text"] == "Rationale 0: the study reports what the claim says about outcome 0.\n\nAnswer: FALSE"
    assert records["r1"]["explanation"].startswith("Rationale 1") and records["r1"]["verdict"] == 1
    assert records["r3"]["explanation"] is None and records["r3"]["rejections"] == ["missing_reference"]
    assert records["r3"]["attempts"] == 1  # no retry can help
    assert report.accepted == 3 and report.faults["missing_reference"] == 1
    assert "by construction" in report.strategy
    with pytest.raises(ClsgenError, match="no example has the reference field 'nope'.*--reference-field"):
        synthesize(exs, TASK, ReferenceTeacher("nope"), tmp_path / "t.jsonl", progress=False)
    assert not (tmp_path / "t.jsonl").exists()


def test_reference_teacher_replies_with_the_verdict_last_when_the_task_states_it_first(tmp_path):
    # a teacher's reply always ends with the verdict; training moves it to the task's position
    task = dataclasses.replace(TASK, verdict_position="first")
    report = synthesize(ref_examples(2), task, ReferenceTeacher("rationale"), tmp_path / "s.jsonl", progress=False)
    assert report.accepted == 2
    r1 = {r["id"]: r for r in read_synth(tmp_path / "s.jsonl")}["r1"]
    assert r1["text"].endswith("\n\nAnswer: TRUE") and task.target_text(r1["explanation"], 1).startswith("Answer: TRUE\n\n")


def test_reference_teacher_on_pubmedqa_long_answers(tmp_path, data_dir):
    from clsgen.config import DataConfig
    from clsgen.datasets import load_dataset

    ds = load_dataset(DataConfig(dataset="pubmedqa", data_dir=str(data_dir)))
    exs = ds.train[:20]
    report = synthesize(exs, ds.task, TeacherConfig(kind="reference"), tmp_path / "p.jsonl", progress=False)
    assert report.accepted >= 18
    for r in read_synth(tmp_path / "p.jsonl"):
        if r["explanation"] is not None:
            assert r["text"].endswith(f"Answer: {ds.task.verbalizers[r['label']]}")


def test_torn_last_line_is_ignored_then_cut_and_the_run_resumes(tmp_path):
    out = tmp_path / "s.jsonl"
    exs = ref_examples(4)
    synthesize(exs[:2], TASK, ReferenceTeacher("rationale"), out, progress=False)
    with out.open("ab") as f:
        f.write(b'{"id": "r2", "label": 0, "explan')
    assert [r["id"] for r in read_synth(out)] == ["r0", "r1"]
    report = synthesize(exs, TASK, ReferenceTeacher("rationale"), out, progress=False)
    assert report.skipped == 2 and report.written == 2 and any("torn" in n for n in report.notes)
    lines = out.read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["r0", "r1", "r2", "r3"]

    with out.open("a") as f:  # a broken line in the middle is corruption, not a kill: refuse
        f.write("garbage\n" + lines[0] + "\n")
    with pytest.raises(ClsgenError, match="line 5 is not a synth record"):
        read_synth(out)


def test_changed_settings_are_refused_by_name_unless_force_new(tmp_path):
    out = tmp_path / "s.jsonl"
    exs = ref_examples(3)
    synthesize(exs[:2], TASK, ReferenceTeacher("rationale"), out, max_attempts=3, progress=False)
    with pytest.raises(ClsgenError, match=r"2 records made with other teacher settings:\n  max_attempts: 3 -> 2"):
        synthesize(exs, TASK, ReferenceTeacher("rationale"), out, max_attempts=2, progress=False)
    with pytest.raises(ClsgenError, match=r"teacher\.field: \"rationale\" -> \"other\""):
        synthesize(exs, TASK, ReferenceTeacher("other"), out, progress=False)
    assert len(read_synth(out)) == 2  # untouched
    with pytest.raises(ClsgenError, match="no example has the reference field"):  # checked before moving
        synthesize(exs, TASK, ReferenceTeacher("nope"), out, force_new=True, progress=False)
    assert len(read_synth(out)) == 2 and not list(tmp_path.glob("s.*.jsonl"))
    report = synthesize(exs, TASK, ReferenceTeacher("rationale"), out, max_attempts=2, force_new=True, progress=False)
    assert report.written == 3 and report.skipped == 0
    archived = [p for p in tmp_path.glob("s.*.jsonl")]
    assert len(archived) == 1 and len(read_synth(archived[0])) == 2  # moved aside, never deleted
    assert (tmp_path / f"{archived[0].name}.teacher.json").exists()


def test_label_clash_and_concurrent_writer_are_refused(tmp_path):
    out = tmp_path / "s.jsonl"
    exs = ref_examples(2)
    synthesize(exs, TASK, ReferenceTeacher("rationale"), out, progress=False)
    exs[0].label = 1 - exs[0].label
    with pytest.raises(ClsgenError, match="label differs.*'r0'"):
        synthesize(exs, TASK, ReferenceTeacher("rationale"), out, progress=False)
    exs[0].label = 1 - exs[0].label
    store = SynthStore(out)
    store.open({}, "x")
    try:
        with pytest.raises(ClsgenError, match="another process is writing"):
            synthesize(ref_examples(3), TASK, ReferenceTeacher("rationale"), out, progress=False)
    finally:
        store.close()
    with pytest.raises(ClsgenError, match="no 0/1 label"):
        synthesize([Example("u", {"claim": "x"})], TASK, ReferenceTeacher("rationale"), out, progress=False)


# ---------------------------------------------------------------------------- local teacher (tiny model)


def test_local_teacher_left_padded_batch_matches_one_by_one(tiny):
    teacher = LocalTeacher(backbone=tiny, max_new_tokens=10)
    prompt = TeacherPrompt.for_task(TASK)
    reqs = [Request(Example("a", {"claim": "short"}, 1), 0, prompt),
            Request(Example("b", {"claim": "a much longer claim about blood pressure and placebo " * 3}, 0), 0, prompt)]
    batched = teacher.generate(reqs)
    single = [teacher.generate([r])[0] for r in reqs]
    assert [r.text for r in batched] == [r.text for r in single]
    assert all(r.tokens >= 1 and r.finish in ("stop", "length") for r in batched)
    # sampled retries differ from the greedy first attempt and are reproducible
    sampled = teacher.generate([Request(reqs[0].example, 1, prompt)])[0]
    again = teacher.generate([Request(reqs[0].example, 1, prompt)])[0]
    assert sampled.text == again.text


def test_a_sampled_retry_does_not_depend_on_its_batch(tiny):
    """Each row samples from its own seeded generator: a resumed synth run, whose batches differ from
    the uninterrupted run's, samples the same retries."""
    teacher = LocalTeacher(backbone=tiny, max_new_tokens=12, temperature=1.0, top_p=1.0)
    prompt = TeacherPrompt.for_task(TASK)
    reqs = [Request(Example(f"e{i}", {"claim": f"claim number {i} about aspirin"}, i % 2), 1 + i % 2, prompt)
            for i in range(4)]
    batched = [r.text for r in teacher.generate(reqs)]
    single = [teacher.generate([r])[0].text for r in reqs]
    reordered = [r.text for r in teacher.generate(reqs[::-1])][::-1]
    assert batched == single == reordered
    assert len(set(batched)) > 1


def test_local_teacher_cuts_long_fields_to_the_task_budget(tiny):
    task = Task(name="fake", system="Decide.", template="Claim: {claim}", verbalizers=("FALSE", "TRUE"),
                max_prompt_tokens=60)
    teacher = LocalTeacher(backbone=tiny)
    prompt = TeacherPrompt.for_task(task)
    long = Request(Example("a", {"claim": "patients improved versus placebo " * 80}, 1), 0, prompt)
    ids = teacher.prompt_ids(long)
    full = teacher._encode(teacher._render(prompt, long.example.fields, 1))
    assert len(ids) < len(full) and ELLIPSIS.strip() in tiny.tokenizer.decode(ids)
    assert "Correct answer: TRUE" in tiny.tokenizer.decode(ids)  # the request survives the cut


def test_local_synth_keeps_rejected_examples_with_null_explanations(tiny, tmp_path):
    exs = [Example(f"e{i}", {"claim": f"claim {i}"}, label=i % 2) for i in range(5)]
    out = tmp_path / "s.jsonl"
    report = synthesize(exs, TASK, LocalTeacher(backbone=tiny, max_new_tokens=6, batch_size=2), out,
                        max_attempts=2, progress=False)
    records = read_synth(out)
    assert sorted(r["id"] for r in records) == [ex.id for ex in exs]
    assert all(r["explanation"] is None and r["attempts"] == 2 and len(r["rejections"]) == 2 for r in records)
    assert report.accepted == 0 and report.per_class["0"]["rate"] == 0.0 and report.attempts["total_run"] == 10
    assert report.tokens == sum(r["tokens"] for r in records) > 0
    assert report.teacher["model"] == "tiny" and report.teacher["first_attempt"] == "greedy"
    assert report.teacher["dtype"] == "float32"


# ---------------------------------------------------------------------------- CLI


def test_cli_synth_reference_and_a_clear_error(tmp_path, data_dir, capsys):
    from clsgen.cli import main

    out = tmp_path / "p.jsonl"
    code = main(["synth", "--dataset", "pubmedqa", "--data-dir", str(data_dir), "--split", "train",
                 "--teacher", "reference", "--limit", "6", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0 and "acceptance by class" in printed and "YES" in printed
    assert len(read_synth(out)) == 6 and (tmp_path / "p.jsonl.report.json").exists()

    code = main(["synth", "--dataset", "pubmedqa", "--data-dir", str(data_dir), "--teacher", "openai",
                 "--model", "m", "--limit", "2", "--out", str(tmp_path / "o.jsonl")])
    assert code == 2 and "teacher.base_url (--base-url)" in capsys.readouterr().err


def test_a_shareable_file_keeps_accepted_explanations_without_the_data_text(tmp_path, data_dir, capsys):
    from clsgen.cli import main
    from clsgen.synth.store import SHARED_KEYS, explanations_path
    from clsgen.training_data import join_explanations

    out, shared = tmp_path / "p.jsonl", tmp_path / "shared.jsonl"
    code = main(["synth", "--dataset", "pubmedqa", "--data-dir", str(data_dir), "--split", "train",
                 "--teacher", "reference", "--limit", "6", "--out", str(out), "--no-progress",
                 "--shareable", str(shared)])
    assert code == 0 and f"6 accepted explanations (id, label, verdict, explanation) -> {shared}" in capsys.readouterr().out
    full = {r["id"]: r for r in read_synth(out)}
    rows = [json.loads(line) for line in shared.read_text().splitlines()]
    assert len(rows) == 6 and all(tuple(r) == SHARED_KEYS for r in rows)
    assert all(r["explanation"] == full[r["id"]]["explanation"] for r in rows)
    some_input = next(iter(full.values()))["fields"]["question"]
    assert some_input not in shared.read_text()  # the input text stays behind

    exs = [Example(r["id"], {"question": "q"}, label=r["label"]) for r in rows]
    joined = join_explanations(exs, shared)
    assert [j.explanation for j in joined] == [r["explanation"] for r in rows]
    assert explanations_path(shared) == shared
    with pytest.raises(ClsgenError, match="no explanations file 'clsgen:nope.jsonl' ships with clsgen; shipped: clsgen:"):
        explanations_path("clsgen:nope.jsonl")


# ---------------------------------------------------------------------------- the real embedded teacher


@pytest.mark.slow
def test_embedded_teacher_on_clinifact(data_dir, tmp_path):
    from clsgen.config import DataConfig
    from clsgen.datasets import load_dataset
    from clsgen.verdict import parse_verdict

    ds = load_dataset(DataConfig(dataset="clinifact", data_dir=str(data_dir)))
    exs = [next(ex for ex in ds.train if ex.label == y) for y in (0, 1)]
    out = tmp_path / "s.jsonl"
    teacher = LocalTeacher("smollm2-135m", max_new_tokens=96, batch_size=2)  # bf16: the fast path on CPU
    report = synthesize(exs, ds.task, teacher, out, max_attempts=1, progress=False)
    records = read_synth(out)
    assert sorted(r["id"] for r in records) == sorted(ex.id for ex in exs) and report.attempts["total_run"] == 2
    assert report.tokens > 0 and report.teacher["model"] == "smollm2-135m"
    for r in records:
        assert r["text"]  # the model wrote something, accepted or not
        if r["explanation"] is not None:
            last = r["text"].strip().splitlines()[-1]
            assert parse_verdict(last, ds.task.verbalizers) == r["label"] == r["verdict"]
