"""Helpers shared by several test modules: the tasks and the tiny model that talks (also served as
fixtures by conftest.py), a toy training set and config, loopback servers (in a thread, in a process),
an SSE parser and the crash harness."""

from __future__ import annotations

import random
import socket
import threading
import time

from clsgen.config import Config, DataConfig, LoraConfig, ModelConfig, TaskConfig, TrainConfig
from clsgen.task import Task
from clsgen.training_data import TrainExample

NOTE_TASK = Task(name="note", system="Decide whether the patient dies within 30 days.",
                 template="Note: {text}", verbalizers=("NO", "YES"))
"""A one-field task (a clinical note)."""
PAIR_TASK = Task(name="pair", system="Does the abstract support the claim?",
                 template="Claim: {claim}\nAbstract: {article_abstract}", verbalizers=("FALSE", "TRUE"))
"""A two-field task, with CliniFact's field names."""


POS = ["improved", "survival", "significant", "benefit"]
NEG = ["placebo", "difference", "no", "outcome"]


def toy(n: int, seed: int, null_every: int = 0) -> list[TrainExample]:
    """n examples of a learnable note task (positive / negative words), short explanations (None on
    every `null_every`-th row)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        y = i % 2
        words = [rng.choice(POS if y else NEG) for _ in range(rng.randint(2, 6))]
        expl = "Patients improved." if y else "No difference."
        if null_every and i % null_every == 0:
            expl = None
        out.append(TrainExample(f"{seed}-{i}", {"text": " ".join(words)}, y, expl))
    return out


def make_cfg(lora_dropout: float = 0.0, **train) -> Config:
    """A tiny-model training config for `toy`, with `train.*` overrides."""
    base = dict(batch_size=8, lr=1e-2, head_lr=2e-2, warmup_ratio=0.0, max_length=128, log_every=1,
                save_every=1000, eval_every=1000)
    return Config(model=ModelConfig(name="tiny", dtype="float32"), data=DataConfig(dataset="toy.jsonl"),
                  lora=LoraConfig(r=4, alpha=8, dropout=lora_dropout),
                  task=TaskConfig(template="Note: {text}", system="Is the note positive?"),
                  train=TrainConfig(**{**base, **train}))


class ThreadServer:
    """uvicorn serving `app` on 127.0.0.1 and a free port, in a daemon thread."""

    def __init__(self, app):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)


def randomize_lora(model, seed: int = 0, scale: float = 0.5):
    """Random LoRA B weights, so the (otherwise silent) tiny model's greedy text varies with the input."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.lm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def talking_model(task: Task = NOTE_TASK):
    """The tiny model for `task` with random (not zero) LoRA B weights, so that greedy text varies: a
    fresh adapter leaves the random base LM repeating one whitespace token."""
    from clsgen.backbones import tiny_model
    from clsgen.model import DualHeadModel

    return randomize_lora(DualHeadModel.from_backbone(tiny_model(), task))


def save_tiny_classifier(task, path):
    """A saved tiny model for `task` whose head weights are random (normal, std 2), so its
    probabilities spread out; returns the path."""
    import torch

    from clsgen.backbones import tiny_model
    from clsgen.model import DualHeadModel

    model = DualHeadModel.from_backbone(tiny_model(), task)
    torch.manual_seed(0)
    with torch.no_grad():
        model.head.linear.weight.normal_(0, 2.0)
    return model.save_pretrained(path)

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sse(text: str) -> list[tuple[str | None, object]]:
    """Parse a text/event-stream body into (event name, decoded data)."""
    import json

    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        payload = "\n".join(data)
        events.append((name, payload if payload == "[DONE]" else json.loads(payload)))
    return events


class ServerProcess:
    """`clsgen serve` in a subprocess on 127.0.0.1, its output in a file; waits for /health (bounded)."""

    def __init__(self, model_dir, log_file, *args: str, env: dict[str, str] | None = None):
        import os
        import subprocess
        import sys
        from pathlib import Path

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_file = Path(log_file)
        self._log = open(log_file, "wb")
        command = [sys.executable, "-m", "clsgen.cli", "serve", "--model", str(model_dir),
                   "--port", str(self.port), *args]
        self.proc = subprocess.Popen(command, cwd=Path(__file__).resolve().parent.parent, stdout=self._log,
                                     stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the server did not answer /health within {timeout} s:\n{self.output()}")

    def health(self) -> dict:
        import httpx

        return httpx.get(self.base + "/health", timeout=10).json()

    def stop(self, timeout: float = 15) -> int:
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_file.read_text(errors="replace")


# ---------------------------------------------------------------------------- crash harness

_WARM_PARENT = r'''
import json, os, sys, traceback
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch, transformers, peft, accelerate, safetensors  # the slow imports, paid once
import clsgen.cli, clsgen.cli.synth, clsgen.cli.train, clsgen.cli.evaluate, clsgen.cli.experiment
import clsgen.train, clsgen.experiment, clsgen.synth, clsgen.evaluate, clsgen.inference, clsgen.backbones
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
torch.set_num_threads(1)


def _read_only(root):
    """Make the folder `root` behave as on a read-only file system for this process: every call that
    would create, change or delete something under it fails with EROFS, as the kernel's would. (As root,
    chmod does not stop writes; writers that bypass Python's os/io, such as torch.save or safetensors,
    write into folders that must first be made through os.mkdir, which fails.)"""
    import builtins, errno, io

    root = os.path.realpath(root)

    def under(p):
        if isinstance(p, int):
            return False
        p = os.fsdecode(os.fspath(p))
        real = os.path.realpath(p)
        return real == root or real.startswith(root + os.sep)

    def deny(p):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(os.fspath(p)))

    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    real_open, real_io_open, real_mkdir = os.open, io.open, os.mkdir

    def ro_open(path, flags, *a, **k):
        if flags & writes and k.get("dir_fd") is None and under(path):
            deny(path)
        return real_open(path, flags, *a, **k)

    def ro_io_open(file, mode="r", *a, **k):
        if not isinstance(file, int) and any(c in mode for c in "wax+") and under(file):
            deny(file)
        return real_io_open(file, mode, *a, **k)

    def ro_mkdir(path, *a, **k):
        if k.get("dir_fd") is None and under(path):
            if os.path.lexists(path):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(os.fspath(path)))
            deny(path)
        return real_mkdir(path, *a, **k)

    os.open, io.open, builtins.open, os.mkdir = ro_open, ro_io_open, ro_io_open, ro_mkdir
    for name in ("rmdir", "unlink", "remove", "truncate"):
        def one(path, *a, _real=getattr(os, name), **k):
            if k.get("dir_fd") is None and under(path):
                deny(path)
            return _real(path, *a, **k)
        setattr(os, name, one)
    for name in ("replace", "rename"):
        def two(src, dst, *a, _real=getattr(os, name), **k):
            if under(src) or under(dst):
                deny(dst)
            return _real(src, dst, *a, **k)
        setattr(os, name, two)


out = sys.stdout
for line in sys.stdin:
    req = json.loads(line)
    out.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: the clsgen command, as `python -m clsgen.cli ARGV` would run it
        code = 1
        try:
            for fd, name in ((1, req["stdout"]), (2, req["stderr"])):
                f = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(f, fd)
                os.close(f)
            os.chdir(req["cwd"])
            if req.get("fsize") is not None:
                import resource
                resource.setrlimit(resource.RLIMIT_FSIZE, (req["fsize"], req["fsize"]))
            if req.get("readonly"):
                _read_only(req["readonly"])
            sys.argv = ["clsgen", *req["argv"]]
            try:
                code = clsgen.cli.main(req["argv"])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                traceback.print_exc()
                code = 1
        finally:
            try:
                sys.stdout.flush(); sys.stderr.flush()
            finally:
                os._exit(code)
    out.write(json.dumps({"pid": pid}) + "\n"); out.flush()
    _, status = os.waitpid(pid, 0)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    out.write(json.dumps({"exit": code}) + "\n"); out.flush()
'''


class ClsgenRun:
    """One `clsgen` command running in a child process (see `WarmLauncher.start`)."""

    def __init__(self, launcher: WarmLauncher, pid: int, stdout, stderr, started: float):
        self.launcher, self.pid, self.stdout_path, self.stderr_path = launcher, pid, stdout, stderr
        self.started = started
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            msg = self.launcher._message(timeout=0)
            if msg is not None:
                self.returncode = msg["exit"]
        return self.returncode

    def wait(self, timeout: float = 300) -> int:
        if self.returncode is None:
            msg = self.launcher._message(timeout=timeout)
            if msg is None:
                self.kill()
                raise TimeoutError(f"clsgen (pid {self.pid}) ran over {timeout} s:\n{self.output()}")
            self.returncode = msg["exit"]
        return self.returncode

    def kill(self) -> int:
        """SIGKILL the command (by its own pid) and wait for it: returns -9 (or its exit code if it
        had already finished)."""
        import os
        import signal

        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.wait(60)

    @property
    def stdout(self) -> str:
        return open(self.stdout_path, encoding="utf-8", errors="replace").read()

    @property
    def stderr(self) -> str:
        return open(self.stderr_path, encoding="utf-8", errors="replace").read()

    def output(self) -> str:
        return f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


class WarmLauncher:
    """Runs `clsgen ARGV` commands, one at a time, each in its own child process forked from a warm
    parent that imported torch, transformers, peft, accelerate and clsgen once.

    A child is a real process (its own pid, killable with SIGKILL at any instruction, output in
    files) that runs `clsgen.cli.main(argv)` exactly as `python -m clsgen.cli` does, minus the
    4-8 s of imports per start. `fsize` sets RLIMIT_FSIZE in the child (a full disk: writes past
    that size fail with EFBIG; Python ignores SIGXFSZ); `readonly` makes a folder read-only for the
    child (EROFS; see `_read_only` in the parent's source). Use as a context manager.
    """

    def __init__(self, env: dict | None = None):
        import os
        import queue
        import subprocess
        import sys
        from pathlib import Path

        repo = Path(__file__).resolve().parent.parent
        environ = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo),
                   "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-c", _WARM_PARENT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=environ, text=True, bufsize=1)
        self.messages: queue.Queue = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.count = 0
        self.current: ClsgenRun | None = None
        import tempfile

        self.logs = Path(tempfile.mkdtemp(prefix="clsgen-runs-"))  # stdout/stderr of each command

    def _read(self) -> None:
        import json

        for line in self.proc.stdout:
            self.messages.put(json.loads(line))
        self.messages.put(None)  # the parent is gone

    def _message(self, timeout: float):
        import queue

        try:
            msg = self.messages.get(timeout=timeout) if timeout else self.messages.get_nowait()
        except queue.Empty:
            return None
        if msg is None:
            raise RuntimeError(f"the warm parent exited (code {self.proc.wait()})")
        return msg

    def start(self, argv, cwd, fsize: int | None = None, readonly=None) -> ClsgenRun:
        import json

        if self.current is not None and self.current.returncode is None:
            raise RuntimeError("one command at a time: wait for or kill the running one first")
        self.count += 1
        out, err = self.logs / f"{self.count}.out", self.logs / f"{self.count}.err"
        self.proc.stdin.write(json.dumps({"argv": [str(a) for a in argv], "cwd": str(cwd), "stdout": str(out),
                                          "stderr": str(err), "fsize": fsize,
                                          "readonly": str(readonly) if readonly else None}) + "\n")
        self.proc.stdin.flush()
        msg = self._message(timeout=120)
        if msg is None:
            raise RuntimeError("the warm parent did not start the command")
        self.current = ClsgenRun(self, msg["pid"], out, err, time.monotonic())
        return self.current

    def run(self, argv, cwd, timeout: float = 300, fsize: int | None = None, readonly=None) -> ClsgenRun:
        run = self.start(argv, cwd, fsize=fsize, readonly=readonly)
        run.wait(timeout)
        return run

    def close(self) -> None:
        if self.current is not None and self.current.returncode is None:
            self.current.kill()
        self.proc.stdin.close()
        self.proc.wait(30)
        import shutil

        shutil.rmtree(self.logs, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def kill_when(run: ClsgenRun, ready, jitter: float = 0.0, timeout: float = 120, poll: float = 0.01) -> bool:
    """SIGKILL `run` once `ready()` is true, after a further `jitter` seconds (a random point between two
    observable events). Returns True when it was killed, False when it finished first."""
    deadline = time.monotonic() + timeout
    while run.poll() is None:
        if ready():
            if jitter:
                end = time.monotonic() + jitter
                while time.monotonic() < end and run.poll() is None:
                    time.sleep(min(poll, jitter))
            if run.poll() is not None:
                return False
            return run.kill() == -9
        if time.monotonic() > deadline:
            run.kill()
            raise TimeoutError(f"the kill condition never held within {timeout} s:\n{run.output()}")
        time.sleep(poll)
    return False


def unreadable_outputs(root, torn_ok=("train_log.jsonl",)) -> list[str]:
    """Files under `root` that a reader would read back but cannot: every JSON must parse, every JSONL
    line must parse, every safetensors file must load. A torn *last* line is allowed only where the
    reader drops it by design: a synth JSONL (cut on the next run, ignored by `read_synth`) and the
    files named in `torn_ok` (a resumed training drops its log's torn line). Temporary names
    (`.name.*.tmp`, `.name.old`) are skipped: no reader opens them."""
    import json
    from pathlib import Path

    bad = []
    root = Path(root)
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        try:
            if path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix == ".jsonl":
                lines = path.read_bytes().split(b"\n")
                for line in lines[:-1]:
                    if line.strip():
                        json.loads(line)
                if (lines[-1].strip() and path.name not in torn_ok
                        and not path.with_name(path.name + ".teacher.json").exists()):
                    raise ValueError("torn last line outside a synth JSONL")
            elif path.suffix == ".safetensors":
                from safetensors.torch import load_file

                load_file(str(path))
            elif path.suffix in (".yaml", ".yml"):
                import yaml

                yaml.safe_load(path.read_text(encoding="utf-8"))
        except Exception as e:  # noqa: BLE001 - reported
            bad.append(f"{rel}: {type(e).__name__}: {e}")
    return bad


TOY_WORDS = ["stable", "discharged", "placebo", "treatment", "outcome", "follow-up", "dose", "week"]


def write_notes(folder, n: int = 48) -> None:
    """`folder/notes.jsonl`: a toy dataset with a learnable signal ('improved' / 'worsened'), both classes
    in every split (32 train / 8 validation / 8 test) and a `rationale` field for the reference teacher."""
    import json
    import random
    from pathlib import Path

    rng = random.Random(0)
    rows = []
    for i in range(n):
        label = i % 2
        key = "improved" if label else "worsened"
        text = " ".join(rng.sample(TOY_WORDS, 4) + [key] + rng.sample(TOY_WORDS, 3))
        split = "test" if (i // 2) % 6 == 0 else "validation" if (i // 2) % 6 == 1 else "train"
        rows.append({"id": f"r{i}", "text": text, "label": label, "split": split,
                     "rationale": f"The note says the patient {key}, so the outcome follows from it."})
    (Path(folder) / "notes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_train_records(folder) -> None:
    """`folder/train.jsonl`: synth-style training records (explanation = rationale) of notes.jsonl's
    train split, as `clsgen synth --teacher reference` would write them."""
    import json
    from pathlib import Path

    rows = [json.loads(line) for line in (Path(folder) / "notes.jsonl").read_text().splitlines()]
    records = [{"id": r["id"], "label": r["label"], "fields": {"text": r["text"]}, "verdict": r["label"],
                "explanation": r["rationale"]} for r in rows if r["split"] == "train"]
    (Path(folder) / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
