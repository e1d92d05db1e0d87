"""Crash and resume, end to end: `clsgen synth`, `clsgen train` and `clsgen experiment` are killed with
SIGKILL at several seeded points on the tiny model, rerun until they finish, and compared with an
uninterrupted run of the same command.

Each command runs in a real child process (`helpers.WarmLauncher`: forked from a parent that imported
torch & co. once, then `clsgen.cli.main(argv)`), so a kill can land on any instruction: in a write, a
rename, between two files of a checkpoint. The kill points are of two kinds:
  * time-based: a seeded random delay after the start (anywhere: loading, synth, a step, a save);
  * progress-based: when an observable event has happened (the JSONL holds k records, the training log
    reached step k, an evaluation finished), plus a seeded random delay, so the kill lands at a random
    point between two events.
After every kill, nothing a later step reads may be corrupt or partial (`helpers.unreadable_outputs`:
every JSON and JSONL line parses, every safetensors file loads; a checkpoint that counts as complete
has all its files), and the rerun must end with exactly the uninterrupted run's outputs: the same
records once each, the same weights (within 1e-5), the same log and metrics.

The last tests pin the bugs this harness found: each kills a run at the one spot that used to break.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest
import torch

from helpers import (
    WarmLauncher,
    kill_when,
    unreadable_outputs,
    write_notes,
    write_train_records,
)

SEED = int(os.environ.get("CLSGEN_CRASH_SEED", "9"))
"""The kill points are drawn from this seed (issue 9)."""
KILLS_PER_COMMAND = int(os.environ.get("CLSGEN_CRASH_KILLS", "3"))
"""Kills per command; set CLSGEN_CRASH_KILLS=20 (and vary CLSGEN_CRASH_SEED) for a stress run."""
TASK = ["--dataset", "notes.jsonl", "--set", "task.template='Note: {text}'", "--set", "task.max_prompt_tokens=64"]
FIGURES: dict[str, dict] = {}
"""What each test survived (printed at the end of the module: the figures of docs/reliability.md)."""


@pytest.fixture(scope="module")
def launcher():
    with WarmLauncher() as launcher:
        yield launcher
    if FIGURES:
        print("\ncrash/resume figures:", json.dumps(FIGURES, indent=1))


@pytest.fixture
def workdirs(tmp_path):
    """Two folders with the same inputs: `ref` (uninterrupted) and `crash` (killed and rerun)."""
    for name in ("ref", "crash"):
        (tmp_path / name).mkdir()
        write_notes(tmp_path / name)
    return tmp_path / "ref", tmp_path / "crash"


def run_to_end(launcher: WarmLauncher, argv: list[str], cwd: Path):
    run = launcher.run(argv, cwd, timeout=300)
    assert run.returncode == 0, run.output()
    assert "Traceback" not in run.stderr, run.output()
    return run


def kill_plan(rng: random.Random, ref_seconds: float, progress, limit: int, jitter: float):
    """Kill points spread over a run: kill 0 (and every third) after a random delay from the start (or
    at the end of its slice of progress, if that comes first); the others when `progress()` (records
    written, steps logged, ...) reaches a random target in the kill's own slice of [0, `limit`], plus
    a random delay of up to `jitter` seconds."""

    def point(number):
        start = time.monotonic()
        now = progress()
        if number % 3 == 0:  # time-based, with a progress bound so that it never comes after the end
            delay = rng.uniform(0.1, 0.5 * ref_seconds) if number == 0 else rng.uniform(0.05, 0.2 * ref_seconds)
            bound = max(now + 1, (number + 1) * limit // KILLS_PER_COMMAND)
            return (lambda: time.monotonic() - start >= delay or progress() >= bound), 0.0
        low, high = number / KILLS_PER_COMMAND * limit, (number + 1) / KILLS_PER_COMMAND * limit
        target = min(limit, max(now + 1, round(rng.uniform(low, high))))
        return (lambda: progress() >= target), rng.uniform(0.0, jitter)

    return [point] * KILLS_PER_COMMAND


def crash_and_resume(launcher: WarmLauncher, argv: list[str], cwd: Path, plan, check, rerun_argv=None):
    """Run `argv` in `cwd`, SIGKILL it at each point of `plan`, rerun after each kill, then run it to the
    end. `plan`: functions `(kill_number) -> (ready, jitter)`, called just after each start. `check()`
    runs after every kill. Returns what each kill left (seconds after start, the check's note)."""
    kills = []
    for number, point in enumerate(plan):
        run = launcher.start(rerun_argv if (number and rerun_argv) else argv, cwd)
        ready, jitter = point(number)
        killed = kill_when(run, ready, jitter=jitter)
        assert killed, f"kill {number + 1} came too late: the command had finished\n{run.output()}"
        kills.append({"after_s": round(time.monotonic() - run.started, 2), **(check() or {})})
    final = run_to_end(launcher, rerun_argv or argv, cwd)
    return kills, final


# ---------------------------------------------------------------------------- clsgen synth


def synth_records(path: Path) -> list[dict]:
    from clsgen.synth import read_synth

    keys = ("id", "label", "explanation", "verdict", "text", "attempts", "rejections", "rejected_texts",
            "teacher", "fields", "tokens", "faults")
    return [{k: r.get(k) for k in keys} for r in read_synth(path)]


SYNTH = ["synth", *TASK, "--split", "train", "--limit", "24", "--teacher", "local", "--model", "tiny",
         "--max-new-tokens", "20", "--max-attempts", "2", "--set", "teacher.batch_size=1", "--out", "synth.jsonl",
         "--no-progress"]
"""The tiny local teacher: greedy first attempt, a seeded sampled retry. One request per batch: the
retry's seed hashes the ids of its whole batch, so with bigger batches a resumed run (other batches)
samples other retries than an uninterrupted one."""


def test_synth_killed_three_times_gives_every_record_exactly_once(launcher, workdirs):
    ref_dir, dir_ = workdirs
    rng = random.Random(SEED)
    t0 = time.monotonic()
    run_to_end(launcher, SYNTH, ref_dir)
    ref_seconds = time.monotonic() - t0
    want = {r["id"]: r for r in synth_records(ref_dir / "synth.jsonl")}
    assert len(want) == 24
    out = dir_ / "synth.jsonl"

    def lines() -> int:
        return out.read_bytes().count(b"\n") if out.exists() else 0

    seen: list[int] = []

    def check():
        assert unreadable_outputs(dir_) == []
        got = synth_records(out) if out.exists() else []
        ids = [r["id"] for r in got]
        assert len(ids) == len(set(ids)), "an example was recorded twice"
        for r in got:  # every record on disk is final: exactly the uninterrupted run's record
            assert r == want[r["id"]], r["id"]
        assert not seen or len(got) >= seen[-1], "records were lost"
        seen.append(len(got))
        torn = out.exists() and not out.read_bytes().endswith(b"\n") and out.stat().st_size > 0
        if len(seen) == 2 and not torn:  # the worst case of a kill: a half-written last line
            with out.open("ab") as f:
                f.write(b'{"id": "r2", "label": 0, "explanation": "The no')
            torn = True
        return {"records": len(got), "torn_last_line": torn}

    plan = kill_plan(rng, ref_seconds, lines, limit=len(want) - 4, jitter=0.25)
    kills, _ = crash_and_resume(launcher, SYNTH, dir_, plan, check)
    got = synth_records(out)
    assert {r["id"]: r for r in got} == want
    assert len(got) == len(want) and out.read_bytes().endswith(b"\n")  # the torn line was cut
    assert json.loads((dir_ / "synth.jsonl.report.json").read_text())["examples"] == 24
    FIGURES["synth"] = {"kills_survived": len(kills), "kills": kills, "records": len(got)}


# ---------------------------------------------------------------------------- clsgen train


TRAIN = ["train", *TASK, "--model", "tiny", "--data", "train.jsonl", "--out", "model", "--no-progress",
         "--set", "train.max_steps=16", "--set", "train.batch_size=4", "--set", "train.max_length=96",
         "--set", "train.save_every=2", "--set", "train.eval_every=3", "--set", "train.log_every=1",
         "--set", "train.warmup_ratio=0.2", "--set", "train.lr=5e-3", "--set", "lora.r=4",
         "--set", "lora.dropout=0.1"]
"""16 steps over 32 examples (two epochs), a checkpoint every 2 steps and a dev evaluation every 3 (so a
best model can belong to steps a kill loses), LoRA dropout (the RNG state must resume too)."""
LOG_KEYS = ("step", "event", "epoch", "loss", "cls_loss", "lm_loss", "lr", "head_lr", "grad_norm", "dev_auroc",
            "dev_cls_loss", "dev_lm_loss", "dev_brier", "dev_n", "best")
MODEL_FILES = ("adapter_model.safetensors", "head.safetensors")
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.bin", "random_states_0.pkl", "model/clsgen.json",
                    "model/adapter_model.safetensors", "model/head.safetensors", "model/adapter_config.json")


def log_records(path: Path) -> list[dict]:
    return [{k: r.get(k) for k in LOG_KEYS} for r in map(json.loads, path.read_text().splitlines())]


def assert_same_weights(a: Path, b: Path, atol: float = 1e-5) -> float:
    from safetensors.torch import load_file

    worst = 0.0
    for name in MODEL_FILES:
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert x.keys() == y.keys(), name
        for k in x:
            worst = max(worst, float((x[k] - y[k]).abs().max()))
            torch.testing.assert_close(x[k], y[k], rtol=0, atol=atol, msg=f"{name} {k}")
    return worst


def assert_same_log(got: list[dict], want: list[dict]) -> None:
    assert [(r["step"], r["event"]) for r in got] == [(r["step"], r["event"]) for r in want]
    for g, w in zip(got, want):
        for k in LOG_KEYS:
            if isinstance(w[k], float):
                assert g[k] == pytest.approx(w[k], rel=1e-5, abs=1e-6), (w["step"], k)
            else:
                assert g[k] == w[k], (w["step"], k)


def checkpoint_problems(model_dir: Path) -> list[str]:
    """Checkpoints that count as complete (the loader would resume from them) but lack a file, and a
    model folder whose clsgen.json says complete but that lacks a file."""
    from clsgen.checkpoints import CHECKPOINTS, list_checkpoints

    problems = [f"{c.name}/{f}" for c in list_checkpoints(model_dir / CHECKPOINTS) for f in CHECKPOINT_FILES
                if not (c / f).is_file()]
    if (model_dir / "clsgen.json").is_file():
        problems += [f for f in MODEL_FILES + ("adapter_config.json",) if not (model_dir / f).is_file()]
    return problems


def max_logged_step(path: Path) -> int:
    if not path.exists():
        return 0
    steps = [0]
    for line in path.read_text(errors="replace").splitlines():
        try:
            steps.append(json.loads(line).get("step", 0))
        except ValueError:
            pass
    return max(steps)


def test_train_killed_three_times_reaches_the_same_weights(launcher, workdirs):
    ref_dir, dir_ = workdirs
    for d in workdirs:
        write_train_records(d)
    rng = random.Random(SEED + 1)
    t0 = time.monotonic()
    run_to_end(launcher, TRAIN, ref_dir)
    ref_seconds = time.monotonic() - t0
    model = dir_ / "model"
    log = model / "train_log.jsonl"

    checks = []
    number_of_kills = lambda: len(checks)

    def check():
        from clsgen.checkpoints import CHECKPOINTS, list_checkpoints

        checks.append(1)

        assert unreadable_outputs(dir_) == []
        assert checkpoint_problems(model) == []
        note = {"logged_step": max_logged_step(log),
                "checkpoint": list_checkpoints(model / CHECKPOINTS)[-1].name if list_checkpoints(model / CHECKPOINTS)
                else None}
        if number_of_kills() == 2 and log.exists() and log.read_bytes().endswith(b"\n"):
            # the worst case of a kill in a write: a torn last line in the log
            with log.open("ab") as f:
                f.write(b'{"step": 99, "epoch": 1.2, "lo')
        return note

    plan = kill_plan(rng, ref_seconds, lambda: max_logged_step(log), limit=14, jitter=0.1)
    kills, _ = crash_and_resume(launcher, TRAIN, dir_, plan, check, rerun_argv=[*TRAIN, "--resume"])
    ref = ref_dir / "model"
    worst = assert_same_weights(ref, model)
    assert_same_log(log_records(log), log_records(ref / "train_log.jsonl"))
    a, b = (json.loads((d / "train_summary.json").read_text()) for d in (ref, model))
    for k in ("steps", "best_step", "best_value", "stopped_early", "tokens", "n_train", "n_dev"):
        assert b[k] == a[k], k
    names = lambda d: sorted(p.name for p in (d / "checkpoints").iterdir() if not p.name.startswith("."))
    assert names(model) == names(ref)
    for folder in (model, model / "checkpoints"):  # what the kills left half-written was cleaned up
        assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == [], folder
    FIGURES["train"] = {"kills_survived": len(kills), "kills": kills, "max_weight_diff": worst}


# ---------------------------------------------------------------------------- clsgen experiment


EXPERIMENT = ["experiment", *TASK, "--set", "model.name=tiny", "--set", "teacher.kind=reference",
              "--set", "teacher.reference_field=rationale", "--set", "train.max_steps=10",
              "--set", "train.batch_size=4", "--set", "train.max_length=96", "--set", "train.save_every=2",
              "--set", "train.eval_every=2", "--set", "lora.r=4", "--set", "eval.explain=4",
              "--set", "eval.max_new_tokens=8", "--set", "eval.n_bootstrap=20", "--set", "eval.batch_size=4",
              "--out", "exp", "--methods", "clsgen,prompting,tfidf"]


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())["methods"]


def assert_same_metrics(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for method in want:
        g, w = got[method]["metrics"], want[method]["metrics"]
        assert g.keys() == w.keys(), method
        for name in w:
            for field in ("value", "low", "high", "n"):
                if isinstance(w[name].get(field), float):
                    assert g[name][field] == pytest.approx(w[name][field], abs=1e-6), (method, name, field)
                else:
                    assert g[name].get(field) == w[name].get(field), (method, name, field)


def test_experiment_killed_three_times_gives_the_same_results(launcher, workdirs):
    ref_dir, dir_ = workdirs
    rng = random.Random(SEED + 2)
    t0 = time.monotonic()
    run_to_end(launcher, EXPERIMENT, ref_dir)
    ref_seconds = time.monotonic() - t0
    exp = dir_ / "exp"

    def progress() -> int:
        """Training steps checkpointed (0-10), then 10 more per method evaluated."""
        steps = [int(p.name[5:]) for p in (exp / "models/clsgen/checkpoints").glob("step-*") if p.name[5:].isdigit()]
        return max(steps, default=0) + 10 * len(list(exp.glob("eval/*/metrics.json")))

    def check():
        assert unreadable_outputs(dir_) == []
        assert checkpoint_problems(exp / "models" / "clsgen") == []
        done = sorted(p.parent.name for p in exp.glob("eval/*/metrics.json"))
        for method in done:  # an evaluation counts as done only with all three of its files
            assert (exp / "eval" / method / "report.html").is_file(), method
            assert (exp / "eval" / method / "predictions.jsonl").is_file(), method
        return {"progress": progress(), "evaluated": done,
                "model_installed": (exp / "models/clsgen/clsgen.json").is_file()}

    plan = kill_plan(rng, ref_seconds, progress, limit=30, jitter=0.2)
    kills, _ = crash_and_resume(launcher, EXPERIMENT, dir_, plan, check)
    ref = ref_dir / "exp"
    assert_same_metrics(results(exp), results(ref))
    assert (exp / "results.md").read_text() == (ref / "results.md").read_text()
    assert synth_records(exp / "synth/train.jsonl") == synth_records(ref / "synth/train.jsonl")
    worst = assert_same_weights(ref / "models/clsgen", exp / "models/clsgen")
    a, b = (json.loads((d / "models/clsgen/clsgen.json").read_text()) for d in (ref, exp))
    assert b["threshold"] == pytest.approx(a["threshold"], abs=1e-6)
    assert b["temperature"] == pytest.approx(a["temperature"], abs=1e-6)
    for method in ("clsgen", "prompting", "tfidf"):
        p, q = ([json.loads(line)["probability"] for line in (d / "eval" / method / "predictions.jsonl").open()]
                for d in (ref, exp))
        assert q == pytest.approx(p, abs=1e-6), method
    FIGURES["experiment"] = {"kills_survived": len(kills), "kills": kills, "max_weight_diff": worst}


# ---------------------------------------------------------------------------- the kill windows that broke


class Killed(BaseException):
    """Stands for SIGKILL at one exact spot (a BaseException: no `except Exception` handles it)."""


def test_a_kill_while_the_report_renders_leaves_no_finished_looking_evaluation(tmp_path, monkeypatch):
    """evaluate() used to write predictions.jsonl and metrics.json, then render report.html: a kill (or a
    full disk) in between left a new metrics.json with an old or missing report, and the experiment
    runner, which takes metrics.json to mean "done", skipped the method for good."""
    import clsgen.evaluate
    import clsgen.report
    from clsgen.data import Example
    from clsgen.evaluate import evaluate

    examples = [Example(f"e{i}", {"text": str(i)}, i % 2) for i in range(12)]

    class Stub:
        name = "stub"

        def __init__(self, shift):
            self.shift = shift

        def predict_proba(self, xs):
            return [min(1.0, 0.3 + 0.4 * x.label + self.shift * int(x.id[1:]) / 100) for x in xs]

    out = tmp_path / "eval"
    evaluate(Stub(0.0), examples, out, validation=examples, n_bootstrap=10)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["metrics.json", "predictions.jsonl", "report.html"]

    def killed(**kwargs):
        raise Killed

    for module in (clsgen.evaluate, clsgen.report):
        monkeypatch.setattr(module, "render_report", killed, raising=False)
    with pytest.raises(Killed):
        evaluate(Stub(0.5), examples, out, validation=examples, n_bootstrap=10)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # all old, none new: no mix
    with pytest.raises(Killed):
        evaluate(Stub(0.5), examples, tmp_path / "fresh", validation=examples, n_bootstrap=10)
    assert not (tmp_path / "fresh" / "metrics.json").exists()


def test_a_kill_between_evaluation_and_storing_the_calibration_is_repaired_on_rerun(tmp_path, monkeypatch):
    """The experiment stores the dev threshold and temperature in the model's clsgen.json after
    evaluating; a kill in between used to leave the model without them forever (the rerun saw
    metrics.json and skipped the step), so `clsgen predict` and `serve` used threshold 0.5, T = 1."""
    import clsgen.experiment
    from clsgen.config import load_config
    from clsgen.experiment import run_experiment

    write_notes(tmp_path)
    sets = [a for a in EXPERIMENT[EXPERIMENT.index("--set"):EXPERIMENT.index("--out")] if a != "--set"]
    sets = [x.replace("train.max_steps=10", "train.max_steps=2") for x in sets]
    cfg = load_config(None, [f"data.dataset={tmp_path / 'notes.jsonl'}", "task.template='Note: {text}'",
                             "task.max_prompt_tokens=64", *sets, f"experiment.out_dir={tmp_path / 'exp'}"])
    store = clsgen.experiment._store_calibration
    calls = []

    def killed(*args, **kwargs):
        calls.append(args)
        raise Killed

    monkeypatch.setattr(clsgen.experiment, "_store_calibration", killed)
    with pytest.raises(Killed):
        run_experiment(cfg, methods=["clsgen"], log=lambda _: None)
    model = tmp_path / "exp" / "models" / "clsgen"
    evaluated = json.loads((tmp_path / "exp" / "eval" / "clsgen" / "metrics.json").read_text())
    meta = json.loads((model / "clsgen.json").read_text())
    assert calls and (meta["threshold"], meta["temperature"]) == (0.5, 1.0)  # the defaults: not calibrated
    assert (evaluated["threshold"], evaluated["temperature"]) != (0.5, 1.0)
    monkeypatch.setattr(clsgen.experiment, "_store_calibration", store)
    logs: list[str] = []
    run_experiment(cfg, methods=["clsgen"], log=logs.append)
    assert any("done earlier" in line for line in logs)
    meta = json.loads((model / "clsgen.json").read_text())
    assert (meta["threshold"], meta["temperature"]) == (evaluated["threshold"], evaluated["temperature"])
