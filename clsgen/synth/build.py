"""Building the explanation set: ask the teacher, accept or retry, append to a JSONL that survives kills.

`synthesize(examples, task, teacher, out_path)` asks the teacher why each example's gold label is right
(`prompts.py`), judges each reply (`judge`), retries rejected ones with sampling up to
`max_attempts`, and appends one record per example to `out_path`:

    {"id", "label", "explanation", "verdict", "text", "attempts", "teacher", "fields", "seconds",
     "tokens", "rejections", "rejected_texts", "faults", "created"}

`explanation` is the accepted reply's body (the verdict line removed) or null when every attempt was
rejected: the example is kept, so training still uses its label. `teacher` is the hash of the
settings that shape the outputs; the settings themselves are in `<out>.teacher.json`.

Never losing paid work:
* each record is one `write` of one line on an append-only file, flushed and fsynced as results
  arrive; a rerun skips the ids already there;
* a torn last line (a kill in the middle of a write) is cut off on the next run, and ignored by
  `read_synth`;
* an example whose requests all failed in transport (server down) gets no record, so the next run
  asks again; after `max_consecutive_failures` such failures in a row the run stops: it sends nothing
  more, waits for the requests in flight, keeps every record they finish, writes the report, and
  raises a `ClsgenError` saying to rerun (the CLI exits with code 2);
* records made with other settings are never mixed in silently: the run stops naming the settings
  that differ, unless `force_new=True` moves the old file aside (renamed, never deleted).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config import TeacherConfig
from ..data import Example
from ..errors import ClsgenError
from ..files import atomic_write_json
from ..metrics import explanation_quality
from ..task import Task
from ..verdict import parse_verdict, split_verdict
from .prompts import TeacherPrompt, settings_hash
from .store import SynthStore
from .teacher import TRANSPORT_FAULTS, Reply, Request, Teacher
from .teachers import make_teacher

CONTENT_FAULTS = ("empty", "too_long", "missing_verdict", "wrong_verdict", "text_after_verdict",
                  "degenerate", "too_short", "ungrounded_number", "http_4xx", "missing_reference")
"""Why a reply is rejected (a new attempt follows while the budget lasts)."""
FAULT_KINDS = TRANSPORT_FAULTS + CONTENT_FAULTS


# ============================================================================ acceptance


@dataclass(frozen=True)
class Acceptance:
    """When a teacher's reply is accepted (besides: its verdict is the gold label, stated last)."""

    min_words: int = 8
    """Fewer words in the body is too short ('TRUE.', 'The answer is TRUE.')."""
    max_words: int = 250
    """More words in the body is too long (replies cut at max_new_tokens are always too long)."""
    grounded_numbers: bool = True
    """Reject a body citing a number (12, 0.41, 95%) that the example's input does not contain."""


@dataclass
class Judgement:
    accepted: bool
    verdict: int | None
    explanation: str | None
    reason: str | None


def _numbers(text: str) -> set[str]:
    import re

    return {m.rstrip(".").lstrip("0") or "0" for m in re.findall(r"\d+(?:[.,]\d+)?", text)}


def judge(reply: Reply, label: int, task: Task, fields: Mapping[str, str],
          rules: Acceptance = Acceptance()) -> Judgement:
    """Accept `reply` only if its last line states the gold label and its body reads as an explanation."""
    text = reply.text
    if reply.error is not None:
        return Judgement(False, None, None, reply.error)
    if text is None or not text.strip():
        return Judgement(False, None, None, "empty")
    verdict = parse_verdict(text, task.verbalizers)
    body, _ = split_verdict(text)
    quality = explanation_quality(text, verdict)

    def reject(reason: str) -> Judgement:
        return Judgement(False, verdict, None, reason)

    if reply.finish == "loop":
        return reject("degenerate")
    if reply.finish == "length":
        return reject("too_long")
    if verdict is None:
        return reject("missing_verdict")
    if verdict != label or parse_verdict(body, task.verbalizers) not in (None, label):
        return reject("wrong_verdict")
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    last_states = parse_verdict(lines[-1], task.verbalizers) is not None or (
        len(lines) > 1 and parse_verdict(lines[-2], task.verbalizers) is None
        and parse_verdict("\n".join(lines[-2:]), task.verbalizers) is not None)
    if not last_states:
        return reject("text_after_verdict")
    if quality["empty"]:
        return reject("empty")
    if quality["degenerate"]:
        return reject("degenerate")
    words = len(body.split())
    if quality["not_prose"] or words < rules.min_words:
        return reject("too_short")
    if words > rules.max_words:
        return reject("too_long")
    if rules.grounded_numbers:
        source = _numbers(" ".join(str(v) for v in fields.values()))
        if _numbers(body) - source:
            return reject("ungrounded_number")
    return Judgement(True, verdict, body, None)


# ============================================================================ the report


@dataclass
class SynthReport:
    """What a synth run did; per-class figures cover every record of the requested examples."""

    out: str
    teacher: dict[str, Any]
    settings_hash: str
    strategy: str
    examples: int
    skipped: int
    """Examples already in the file (done by an earlier run)."""
    written: int
    """Records written by this run."""
    unfinished: int
    """Examples with no record because their requests failed in transport (rerun to finish)."""
    per_class: dict[str, dict[str, Any]]
    accepted: int
    acceptance: float | None
    attempts: dict[str, Any]
    tokens: int
    """Tokens generated in this run."""
    seconds: float
    """Wall time of this run."""
    faults: dict[str, int]
    """This run's transport faults (retried or not) and rejections, by kind."""
    samples: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary_line(self) -> str:
        classes = ", ".join(f"{c['verbalizer']} {c['accepted']}/{c['n']}" for c in self.per_class.values())
        rate = f"{100 * self.acceptance:.1f}%" if self.acceptance is not None else "-"
        return (f"{self.accepted}/{self.examples} accepted ({rate}; {classes}); {self.written} written, "
                f"{self.skipped} already done, {self.unfinished} unfinished; {self.seconds:.0f} s")

    def format(self) -> str:
        lines = [f"synth -> {self.out}",
                 f"teacher: {self.teacher.get('kind')} {self.teacher.get('model', self.teacher.get('field', ''))}"
                 f" (settings {self.settings_hash})",
                 f"strategy: {self.strategy}",
                 f"examples: {self.examples} ({self.skipped} already done, {self.written} written now, "
                 f"{self.unfinished} unfinished)", "acceptance by class:"]
        for label, c in self.per_class.items():
            rate = f"{100 * c['rate']:.1f}%" if c["rate"] is not None else "-"
            lines.append(f"  {label} {c['verbalizer']:<10} {c['accepted']:>5}/{c['n']:<5} {rate:>7}")
        rate = f"{100 * self.acceptance:.1f}%" if self.acceptance is not None else "-"
        lines.append(f"  all{'':12}{self.accepted:>5}/{self.examples:<5} {rate:>7}")
        a = self.attempts
        lines.append(f"attempts: {a['total_run']} this run; per example mean {a['mean']}, "
                     f"histogram {a['histogram']} (accepted at attempt {a['accepted_at']})")
        rate = f", {self.tokens / self.seconds:.1f} tok/s" if self.seconds > 0 and self.tokens else ""
        lines.append(f"tokens generated: {self.tokens}; time: {self.seconds:.1f} s{rate}")
        lines.append("faults: " + ", ".join(f"{k} {v}" for k, v in self.faults.items()))
        for note in self.notes:
            lines.append(f"note: {note}")
        for s in self.samples:
            lines.append(f"--- sample {s['id']} (label {s['label']}, attempt {s['attempts']})")
            lines.append(s["text"].strip())
        return "\n".join(lines)


def _report(out: Path, examples: Sequence[Example], records: dict[str, dict[str, Any]], task: Task,
            teacher: Teacher, digest: str, skipped: int, written: int, unfinished: int, attempts_run: int,
            tokens: int, seconds: float, faults: Counter, notes: list[str], n_samples: int) -> SynthReport:
    mine = [records[ex.id] for ex in examples if ex.id in records]
    per_class = {}
    for label in (0, 1):
        n = sum(1 for ex in examples if ex.label == label)
        acc = sum(1 for r in mine if r["label"] == label and r.get("explanation") is not None)
        per_class[str(label)] = {"verbalizer": task.verbalizers[label], "n": n, "accepted": acc,
                                 "rate": round(acc / n, 4) if n else None}
    accepted = sum(1 for r in mine if r.get("explanation") is not None)
    histogram = Counter(int(r.get("attempts", 0)) for r in mine)
    accepted_at = Counter(int(r.get("attempts", 0)) for r in mine if r.get("explanation") is not None)
    samples, by_label = [], {0: [], 1: []}
    for r in mine:
        if r.get("explanation") is not None and r["label"] in by_label:
            by_label[r["label"]].append(r)
    for i in range(n_samples):  # alternate classes
        pool = by_label[i % 2] or by_label[1 - i % 2]
        if pool:
            r = pool.pop(0)
            samples.append({"id": r["id"], "label": r["label"], "attempts": r["attempts"], "text": r["text"]})
    strategy = _STRATEGY.get(teacher.kind, "")
    return SynthReport(
        out=str(out), teacher=teacher.settings(), settings_hash=digest, strategy=strategy,
        examples=len(examples), skipped=skipped, written=written, unfinished=unfinished, per_class=per_class,
        accepted=accepted, acceptance=round(accepted / len(examples), 4) if examples else None,
        attempts={"total_run": attempts_run,
                  "mean": round(sum(int(r.get("attempts", 0)) for r in mine) / len(mine), 3) if mine else None,
                  "histogram": {str(k): histogram[k] for k in sorted(histogram)},
                  "accepted_at": {str(k): accepted_at[k] for k in sorted(accepted_at)}},
        tokens=tokens, seconds=round(seconds, 2), faults={k: int(faults.get(k, 0)) for k in FAULT_KINDS},
        samples=samples, notes=notes)


_STRATEGY = {
    "local": "label-conditioned prompt (the gold verdict wording is in the request); first attempt greedy, "
             "retries sampled; the reply is accepted only as written (nothing appended or forced)",
    "openai": "label-conditioned prompt (the gold verdict wording is in the request); first attempt at "
              "temperature 0, retries sampled; the reply is accepted only as written (nothing appended or forced)",
    "reference": "an existing human rationale, formatted as the explanation followed by the gold verdict "
                 "line (the verdict is added by construction, not stated by a model)",
}


# ============================================================================ the run


@dataclass
class _State:
    example: Example
    attempts: int = 0
    tokens: int = 0
    seconds: float = 0.0
    rejections: list[str] = field(default_factory=list)
    rejected_texts: list[str | None] = field(default_factory=list)
    faults: Counter = field(default_factory=Counter)
    last: Reply | None = None
    last_verdict: int | None = None


def _record(s: _State, j: Judgement | None, digest: str) -> dict[str, Any]:
    ex = s.example
    text = s.last.text if s.last is not None else None
    return {"id": ex.id, "label": ex.label, "explanation": j.explanation if j else None,
            "verdict": j.verdict if j else s.last_verdict, "text": text, "attempts": s.attempts,
            "teacher": digest, "fields": dict(ex.fields), "seconds": round(s.seconds, 3),
            "tokens": s.tokens, "rejections": s.rejections, "rejected_texts": s.rejected_texts,
            "faults": dict(s.faults),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _check_examples(examples: Sequence[Example]) -> None:
    unlabelled = [ex.id for ex in examples if ex.label not in (0, 1)]
    if unlabelled:
        raise ClsgenError(f"{len(unlabelled)} examples have no 0/1 label (e.g. {unlabelled[:3]}); the teacher "
                          "explains gold labels, so synth needs labelled examples")
    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:
            raise ClsgenError(f"duplicate example id {ex.id!r}; ids key the synth output")
        seen.add(ex.id)


def synthesize(
    examples: Sequence[Example],
    task: Task,
    teacher: Teacher | TeacherConfig,
    out_path: str | Path,
    *,
    prompt: TeacherPrompt | str | None = None,
    demos: bool = True,
    max_attempts: int | Sequence[int] | None = None,
    acceptance: Acceptance | None = None,
    force_new: bool = False,
    progress: bool = True,
    n_samples: int = 0,
    max_consecutive_failures: int = 20,
) -> SynthReport:
    """Explain every example's gold label with `teacher`; append records to `out_path`; return the report.

    `teacher` is a `Teacher` or a `TeacherConfig` (then `prompt`, `demos` and `max_attempts` default
    to its `prompt`, `demos` and `max_attempts`). `prompt` is a `TeacherPrompt` or an instruction
    string (see `prompts.py`). `acceptance` defaults to `Acceptance()`, without the grounded-numbers
    rule for the reference teacher (a human rationale may cite what the input leaves out). A rerun
    skips examples already in the file. The report is also written to `<out_path>.report.json`;
    it holds `n_samples` sample explanations (default none: they quote the data's text).
    """
    if isinstance(teacher, TeacherConfig):
        cfg = teacher
        prompt = prompt if prompt is not None else cfg.prompt
        demos = getattr(cfg, "demos", demos)
        if max_attempts is None:
            max_attempts = cfg.class_attempts or cfg.max_attempts
        teacher = make_teacher(cfg, task.name)
    max_attempts = 3 if max_attempts is None else max_attempts
    if isinstance(max_attempts, int):
        max_attempts = [max_attempts, max_attempts]
    max_attempts = [int(a) for a in max_attempts]
    if len(max_attempts) != 2 or min(max_attempts) < 1:
        raise ClsgenError(f"max_attempts (teacher.max_attempts / teacher.class_attempts) must be >= 1 for "
                          f"each label, got {max_attempts}")
    if not isinstance(prompt, TeacherPrompt):
        prompt = TeacherPrompt.for_task(task, prompt, demos=demos)
    if acceptance is None:
        acceptance = Acceptance(grounded_numbers=teacher.kind != "reference")
    _check_examples(examples)
    out = Path(out_path)
    # one count when both labels get the same: records written before per-label counts stay valid
    attempts_setting: int | list[int] = max_attempts[0] if max_attempts[0] == max_attempts[1] else max_attempts
    settings = {"teacher": teacher.settings(), "prompt": prompt.describe(), "max_attempts": attempts_setting,
                "acceptance": asdict(acceptance)}
    if teacher.kind == "reference":  # nothing is generated: the prompt plays no part
        settings["prompt"] = {"template": task.template, "verbalizers": list(task.verbalizers)}
    digest = settings_hash(settings)
    store = SynthStore(out)
    notes: list[str] = []
    stale = store.stale(settings, digest, force_new)
    done = {} if stale else {r["id"]: r for r in store.existing()}
    _check_labels(examples, done, out)
    todo = [ex for ex in examples if ex.id not in done]
    started = time.perf_counter()
    faults: Counter = Counter()
    counters = {"attempts": 0, "tokens": 0, "written": 0}
    unfinished: list[str] = []
    stopped: BaseException | None = None
    try:
        if todo:
            teacher.check(todo)  # fail fast: before the file is touched
            notes.extend(getattr(teacher, "notes", []))
        if stale:
            notes.append(f"records made with other settings were moved to {store.archive()}")
        done = {r["id"]: r for r in store.open(settings, digest)}
        if store.torn_bytes:
            notes.append(f"cut a torn last line ({store.torn_bytes} bytes) left by an interrupted run")
        todo = [ex for ex in examples if ex.id not in done]
        skipped = len(examples) - len(todo)
        if todo:
            stopped = _run(todo, prompt, teacher, task, acceptance, max_attempts, digest, store, done, faults,
                           counters, unfinished, progress, max_consecutive_failures)
    finally:
        store.close()
        teacher.close()
    if unfinished:
        notes.append(f"{len(unfinished)} examples have no record yet (no reply from the teacher, e.g. "
                     f"{unfinished[:3]}); rerun to finish them")
    if stopped is not None:
        notes.append(f"the run stopped early: {stopped}")
    report = _report(out, examples, done, task, teacher, digest, skipped, counters["written"], len(unfinished),
                     counters["attempts"], counters["tokens"], time.perf_counter() - started, faults, notes,
                     n_samples)
    atomic_write_json(store.report_path, report.to_dict())
    if stopped is not None:
        if isinstance(stopped, ClsgenError):  # now naming the report too
            raise ClsgenError(f"{stopped}\nThe report so far: {store.report_path}") from stopped
        raise stopped
    return report


def _check_labels(examples: Sequence[Example], done: Mapping[str, dict[str, Any]], out: Path) -> None:
    clash = [ex.id for ex in examples if ex.id in done and done[ex.id].get("label") != ex.label]
    if clash:
        raise ClsgenError(f"{out} has records whose label differs from the data's for {len(clash)} examples "
                          f"(e.g. {clash[:3]}); the data (or its binarization) changed: write to a new --out")


def _run(todo: list[Example], prompt: TeacherPrompt, teacher: Teacher, task: Task, rules: Acceptance,
         max_attempts: Sequence[int], digest: str, store: SynthStore, done: dict[str, dict[str, Any]],
         faults: Counter,
         counters: dict[str, int], unfinished: list[str], progress: bool,
         max_consecutive_failures: int) -> BaseException | None:
    """The scheduler: up to `teacher.parallel` generate calls in flight, each on up to
    `teacher.batch_size` requests; retries go to the front of the queue so examples finish early.

    Returns None when every example was tried, or why the run stopped early (too many transport
    failures in a row, the teacher refusing the run, an error in a teacher call). A stopping run sends
    no new request but waits for those in flight and saves every record they finish; the examples left
    are listed in `unfinished`."""
    from collections import deque

    from tqdm.auto import tqdm

    pending: deque[_State] = deque(_State(ex) for ex in todo)
    results: queue.Queue = queue.Queue()
    in_flight = 0
    consecutive = 0
    accepted = 0
    bar = tqdm(total=len(todo), desc="synth", unit="ex", disable=not progress, dynamic_ncols=True)

    def call(batch: list[_State]) -> None:
        try:
            requests = [Request(s.example, s.attempts, prompt) for s in batch]
            results.put((batch, teacher.generate(requests), None))
        except BaseException as e:  # surfaced in the main thread
            results.put((batch, None, e))

    stop: BaseException | None = None
    try:
        while (pending and stop is None) or in_flight:
            while pending and stop is None and in_flight < teacher.parallel:
                batch = [pending.popleft() for _ in range(min(teacher.batch_size, len(pending)))]
                threading.Thread(target=call, args=(batch,), daemon=True).start()
                in_flight += 1
            try:
                batch, replies, error = results.get(timeout=0.5)
            except queue.Empty:
                continue
            in_flight -= 1
            if error is not None:
                if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit: at once
                    raise error
                stop = stop or error
                unfinished.extend(s.example.id for s in batch)
                bar.update(len(batch))
                continue
            finished: list[dict[str, Any]] = []
            retry: list[_State] = []
            for s, reply in zip(batch, replies):
                faults.update(reply.faults)
                s.faults.update(reply.faults)
                s.tokens += reply.tokens
                s.seconds += reply.seconds
                counters["tokens"] += reply.tokens
                if reply.error in TRANSPORT_FAULTS:  # no answer at all: leave it for a rerun
                    consecutive += 1
                    unfinished.append(s.example.id)
                    bar.update(1)
                    continue
                consecutive = 0
                s.attempts += 1
                counters["attempts"] += 1
                s.last = reply
                j = judge(reply, s.example.label, task, s.example.fields, rules)
                s.last_verdict = j.verdict
                if j.accepted:
                    finished.append(_record(s, j, digest))
                    accepted += 1
                    continue
                s.rejections.append(j.reason or "rejected")
                s.rejected_texts.append(reply.text)  # paid for: kept for audit and prompt tuning
                if not reply.faults.get(j.reason):  # an http_4xx is already counted by the teacher
                    faults[j.reason or "rejected"] += 1
                if s.attempts < max_attempts[s.example.label] and not reply.final:
                    retry.append(s)
                else:
                    finished.append(_record(s, None, digest))
            pending.extendleft(reversed(retry))
            if finished:
                store.append(finished)
                for r in finished:
                    done[r["id"]] = r
                counters["written"] += len(finished)
                bar.update(len(finished))
            bar.set_postfix(accepted=f"{accepted}/{counters['written']}",
                            faults=sum(v for k, v in faults.items() if k in TRANSPORT_FAULTS), refresh=False)
            if consecutive >= max_consecutive_failures and stop is None:
                stop = ClsgenError(f"the teacher failed {consecutive} requests in a row (last faults: "
                                   f"{dict(replies[-1].faults)}); no more requests are sent; the records "
                                   f"finished so far are saved in {store.path}; fix the server and rerun the "
                                   "same command to resume")
        if stop is not None:
            unfinished.extend(s.example.id for s in pending)  # never sent, or rejected with budget left
    finally:
        bar.close()
    return stop
