"""A full disk or a read-only output folder: one clear error (exit code 2, the path and the cause, no
traceback), and the outputs of earlier runs left exactly as they were.

Earlier runs of `clsgen train`, `evaluate`, `experiment` and `synth` fill a folder; then each command is
run again into it (or next to it) while the storage fails, in a real child process
(`helpers.WarmLauncher`):
  * full disk: RLIMIT_FSIZE in the child, so that every write past 20 kB fails with EFBIG ("File too
    large") in every writer, torch.save and safetensors included (a kernel limit, as a full disk is);
  * read-only: every create/write/rename/delete under the folder fails with EROFS (as root, chmod
    does not stop writes, so the child's os/io calls are made to fail as a read-only mount's would);
  * a regular file where the output folder should be (ENOTDIR / EEXIST).
The last test uses a real tmpfs when the machine lets us mount one (root with CAP_SYS_ADMIN): the
kernel's own ENOSPC and EROFS.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import WarmLauncher, unreadable_outputs, write_notes, write_train_records

TASK = ["--dataset", "notes.jsonl", "--set", "task.template='Note: {text}'", "--set", "task.max_prompt_tokens=64"]
FULL = 20_000
"""RLIMIT_FSIZE (bytes) of a 'full disk': JSON files fit, weights and reports do not."""
SMALL_TRAIN = ["--set", "train.max_steps=4", "--set", "train.batch_size=4", "--set", "train.max_length=96",
               "--set", "train.save_every=2", "--set", "train.eval_every=2", "--set", "lora.r=4"]
TRAIN = ["train", *TASK, "--model", "tiny", "--data", "train.jsonl", "--no-progress", *SMALL_TRAIN]
EVALUATE = ["evaluate", "--model", "model", *TASK, "--explain", "2", "--max-new-tokens", "4", "--n-bootstrap", "10",
            "--batch-size", "4"]
EXPERIMENT = ["experiment", *TASK, "--set", "model.name=tiny", "--set", "teacher.kind=reference",
              "--set", "teacher.reference_field=rationale", *SMALL_TRAIN, "--set", "eval.explain=2",
              "--set", "eval.max_new_tokens=4", "--set", "eval.n_bootstrap=10", "--set", "eval.batch_size=4"]
SYNTH = ["synth", *TASK, "--split", "train", "--teacher", "reference", "--reference-field", "rationale",
         "--no-progress"]
RERUN = {  # each command run again into the earlier outputs (or next to them)
    "train --resume": [*TRAIN, "--out", "model", "--resume"],
    "train (new --out)": [*TRAIN, "--out", "model2"],
    "evaluate": [*EVALUATE, "--out", "eval"],
    "experiment (one more method)": [*EXPERIMENT, "--out", "exp", "--methods", "clsgen,tfidf,cnn"],
    "synth (more examples)": [*SYNTH, "--limit", "16", "--out", "synth.jsonl"],
}
REWRITTEN = {"exp/synth/train.jsonl.report.json"}
"""Rewritten whole (atomically) by a rerun before it reaches the failing write: a report of the rerun."""


@pytest.fixture(scope="module")
def launcher():
    with WarmLauncher() as launcher:
        yield launcher


def ok(launcher, argv, cwd):
    run = launcher.run(argv, cwd)
    assert run.returncode == 0, run.output()
    return run


@pytest.fixture(scope="module")
def earlier(launcher, tmp_path_factory):
    """A folder holding the outputs of successful runs of every command."""
    d = tmp_path_factory.mktemp("earlier")
    write_notes(d)
    write_train_records(d)
    ok(launcher, [*TRAIN, "--out", "model"], d)
    ok(launcher, [*EVALUATE, "--out", "eval"], d)
    ok(launcher, [*EXPERIMENT, "--out", "exp", "--methods", "clsgen,tfidf"], d)
    ok(launcher, [*SYNTH, "--limit", "8", "--out", "synth.jsonl"], d)
    return d


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def assert_clear_error(run, *needles: str) -> str:
    assert run.returncode == 2, run.output()
    assert "Traceback" not in run.stderr, run.output()
    errors = [line for line in run.stderr.splitlines() if line.startswith("clsgen: error:")]
    assert len(errors) == 1, run.output()
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def assert_intact(folder: Path, before: dict[str, bytes], allowed: set[str] = frozenset()) -> None:
    """Every earlier file is there, byte for byte; new files may appear only in new folders; no
    temporary file is left behind; nothing unreadable."""
    after = snapshot(folder)
    changed = [k for k, v in before.items() if after.get(k) != v and k not in allowed]
    if "synth.jsonl" in changed and after["synth.jsonl"].startswith(before["synth.jsonl"]):
        changed.remove("synth.jsonl")  # appended to (maybe a torn line, cut on the next run): not changed
    assert changed == [], changed
    leftovers = [k for k in after if Path(k).name.startswith(".") and Path(k).name.endswith(".tmp")]
    assert leftovers == [], leftovers
    assert unreadable_outputs(folder) == []


@pytest.mark.parametrize("command", list(RERUN))
def test_full_disk_gives_one_clear_error_and_keeps_earlier_outputs(launcher, earlier, command):
    before = snapshot(earlier)
    fsize = FULL
    if command.startswith("synth"):  # room for one more record, not for two
        fsize = (earlier / "synth.jsonl").stat().st_size + 600
    run = launcher.run(RERUN[command], earlier, fsize=fsize)
    line = assert_clear_error(run)
    assert "File too large" in line or "disk full" in line or "short" in line, line
    assert str(earlier) in line or any(f" {name}" in line for name in ("model", "eval", "exp", "synth")), line
    assert_intact(earlier, before, REWRITTEN)


@pytest.mark.parametrize("command", list(RERUN))
def test_read_only_folder_gives_one_clear_error_and_keeps_earlier_outputs(launcher, earlier, command):
    before = snapshot(earlier)
    run = launcher.run(RERUN[command], earlier, readonly=earlier)
    line = assert_clear_error(run, "Read-only file system")
    assert any(name in line for name in ("model", "eval", "exp", "synth")), line
    assert_intact(earlier, before)


@pytest.mark.parametrize("command", ["train", "evaluate", "experiment", "synth"])
def test_a_file_where_the_output_folder_should_be(launcher, earlier, command, tmp_path):
    for name in ("notes.jsonl", "train.jsonl"):
        shutil.copy(earlier / name, tmp_path / name)
    (tmp_path / "blocker").write_text("a file, not a folder\n")
    if command == "evaluate":
        shutil.copytree(earlier / "model", tmp_path / "model")
    argv = {"train": [*TRAIN, "--out", "blocker/model"], "evaluate": [*EVALUATE, "--out", "blocker/eval"],
            "experiment": [*EXPERIMENT, "--out", "blocker/exp", "--methods", "tfidf"],
            "synth": [*SYNTH, "--limit", "4", "--out", "blocker/synth.jsonl"]}[command]
    line = assert_clear_error(launcher.run(argv, tmp_path), "blocker")
    assert "Not a directory" in line or "File exists" in line, line
    assert "a file stands where a folder is expected" in line, line
    assert (tmp_path / "blocker").read_text() == "a file, not a folder\n"


def test_after_the_disk_is_freed_the_same_commands_finish(launcher, earlier):
    """Nothing the failures left behind stops a rerun (the synth's torn line is cut, and so on)."""
    ok(launcher, RERUN["synth (more examples)"], earlier)
    from clsgen.synth import read_synth

    ids = [r["id"] for r in read_synth(earlier / "synth.jsonl")]
    assert len(ids) == len(set(ids)) == 16
    ok(launcher, RERUN["train --resume"], earlier)
    ok(launcher, RERUN["evaluate"], earlier)
    assert unreadable_outputs(earlier) == []


# ---------------------------------------------------------------------------- a real tmpfs


@pytest.fixture
def tmpfs(tmp_path):
    """A 4 MiB tmpfs mounted at tmp_path/disk, or a skip where mounting is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, check=False)


def test_real_full_disk_and_read_only_mount(launcher, earlier, tmpfs):
    for name in ("notes.jsonl", "train.jsonl"):
        shutil.copy(earlier / name, tmpfs / name)
    ok(launcher, [*TRAIN, "--out", "model"], tmpfs)
    ok(launcher, [*EVALUATE, "--out", "eval"], tmpfs)
    before = snapshot(tmpfs)
    with open(tmpfs / "filler", "wb", buffering=0) as f:  # fill the disk to the last byte (unbuffered:
        # a buffered file would fail again when closed, depending on how the free space aligns)
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    for argv in (RERUN["evaluate"], RERUN["train --resume"], [*TRAIN, "--out", "model2"]):
        line = assert_clear_error(launcher.run(argv, tmpfs), "No space left on device")
        assert "free some space" in line, line
        assert_intact(tmpfs, {**before, "filler": (tmpfs / "filler").read_bytes()})
    (tmpfs / "filler").unlink()
    shutil.rmtree(tmpfs / "model2", ignore_errors=True)
    before = snapshot(tmpfs)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    for argv in (RERUN["evaluate"], RERUN["train --resume"]):
        line = assert_clear_error(launcher.run(argv, tmpfs), "Read-only file system")
        assert "choose a writable output folder" in line, line
    assert snapshot(tmpfs) == before


# ---------------------------------------------------------------------------- the CLI's last line of defence


@pytest.mark.parametrize("error, words", [
    (OSError(28, "No space left on device", "/data/out/x.bin"), "/data/out/x.bin: No space left on device"),
    (OSError(30, "Read-only file system", "/data/out"), "/data/out: Read-only file system"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"), "came up short"),
    (RuntimeError("[enforce fail at inline_container.cc:747] . open file failed with strerror: "
                  "Read-only file system"), "a write failed: Read-only file system"),
    (Exception("Error while serializing: I/O error: No space left on device (os error 28)"),
     "a write failed: No space left on device"),
])
def test_cli_turns_any_storage_failure_into_one_clear_message(monkeypatch, capsys, error, words):
    """A storage failure that no command caught (torch.save and safetensors raise no OSError) still
    ends with exit code 2 and one line; any other error keeps its traceback (it is a bug)."""
    import argparse

    import clsgen.cli

    def parser_raising(exc):
        def build():
            p = argparse.ArgumentParser(prog="clsgen")
            sub = p.add_subparsers()
            boom = sub.add_parser("boom")
            boom.set_defaults(func=lambda args: (_ for _ in ()).throw(exc))
            return p
        return build

    monkeypatch.setattr(clsgen.cli, "build_parser", parser_raising(error))
    assert clsgen.cli.main(["boom"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("clsgen: error: ") and words in err, err
    assert "rerun the same command" in err
    monkeypatch.setattr(clsgen.cli, "build_parser", parser_raising(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        clsgen.cli.main(["boom"])
    monkeypatch.setattr(clsgen.cli, "build_parser", parser_raising(ConnectionRefusedError(111, "refused")))
    with pytest.raises(ConnectionRefusedError):
        clsgen.cli.main(["boom"])


def test_experiment_names_the_synth_file_when_appending_fails(monkeypatch, tmp_path):
    import clsgen.synth
    from clsgen.config import load_config
    from clsgen.errors import ClsgenError
    from clsgen.experiment import run_experiment

    write_notes(tmp_path)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")  # os.write: no file name

    monkeypatch.setattr(clsgen.synth, "synthesize", full)
    cfg = load_config(None, [f"data.dataset={tmp_path / 'notes.jsonl'}", "task.template='Note: {text}'",
                             "model.name=tiny", "teacher.kind=reference", "teacher.reference_field=rationale",
                             f"experiment.out_dir={tmp_path / 'exp'}"])
    with pytest.raises(ClsgenError, match=r"cannot write .*exp/synth/train.jsonl: No space left on device; "
                                          r"free some space.*records already in .* are intact"):
        run_experiment(cfg, methods=["clsgen"], log=lambda _: None)
