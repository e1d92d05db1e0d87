"""Shared fixtures: the real data folder, the tiny random model, the embedded SmolLM2 model, the shared
tasks, a tiny model that talks, and a loopback server for an app.

The shared data is found through CLSGEN_DATA_DIR, else `<repo>/../shared/data`. Its absence is a
failure with a clear message, never a skip: a CI run that silently skipped the data tests would pass
without testing anything.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SYSTEM_TESTS = {
    "test_crash_resume", "test_disk_errors", "test_distributed", "test_fuzz_http", "test_fuzz_inputs",
    "test_hostile", "test_load", "test_privacy", "test_server_abuse", "test_server_process",
    "test_synth_faults", "test_synth_openai", "test_webpage",
}
"""The system layer: real processes, kills, full disks, fuzzing, abuse, load, a browser."""
WHOLE_RUN_TESTS = {"test_card", "test_evaluate", "test_experiment", "test_report", "test_train", "test_trunk"}
"""Unit tests of the layers that run whole trainings, evaluations and reports on the tiny model."""


def pytest_ignore_collect(collection_path, config):
    """Under `-m "not slow"` (make test-fast) the slow modules are not even imported."""
    if config.getoption("markexpr", "") == "not slow" and collection_path.suffix == ".py":
        return collection_path.stem in SYSTEM_TESTS | WHOLE_RUN_TESTS or None
    return None


def pytest_collection_modifyitems(config, items):
    """Mark the system tests `system`, and those and the whole-run tests `slow`: `make test-fast`
    (`-m "not slow"`) runs the rest, the edit loop's tests, in under a minute."""
    for item in items:
        module = item.path.stem
        if module in SYSTEM_TESTS:
            item.add_marker(pytest.mark.system)
        if module in SYSTEM_TESTS or module in WHOLE_RUN_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def one_cpu_thread():
    """One intra-op thread for the whole suite, and for the processes it starts.

    The tests run small models, several processes at once (servers, two-process training); with
    torch's default pool, threads spin against each other on a 2-core machine and were measured
    10x to 300x slower than one thread.
    """
    import torch

    before = torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data_dir() -> Path:
    env = os.environ.get("CLSGEN_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder holding the real built-in datasets (clinifact/, pubmedqa_pqal/)."""
    path = _data_dir()
    missing = [d for d in ("clinifact", "pubmedqa_pqal") if not (path / d).is_dir()]
    if missing:
        pytest.fail(
            f"the shared data folder {path} lacks {', '.join(missing)}; set CLSGEN_DATA_DIR to the folder "
            "holding clinifact/ and pubmedqa_pqal/ (default: <repo>/../shared/data)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def tiny():
    """A random small Llama with an in-process BPE tokenizer (ChatML template, pad == eos)."""
    from clsgen.backbones import tiny_model

    return tiny_model()


@pytest.fixture(scope="session")
def embedded():
    """The real embedded SmolLM2-135M-Instruct in float32 (converted once into the user cache)."""
    from clsgen.backbones import load_model

    return load_model("smollm2-135m", dtype="float32")


@pytest.fixture(scope="session")
def note_task():
    """A one-field task (a clinical note): helpers.NOTE_TASK."""
    from helpers import NOTE_TASK

    return NOTE_TASK


@pytest.fixture(scope="session")
def pair_task():
    """A two-field task (claim, article_abstract): helpers.PAIR_TASK."""
    from helpers import PAIR_TASK

    return PAIR_TASK


@pytest.fixture(scope="module")
def note_model():
    """The tiny model that talks (random LoRA B weights), for the note task; one per test module."""
    from helpers import NOTE_TASK, talking_model

    return talking_model(NOTE_TASK)


@pytest.fixture(scope="module")
def pair_model():
    """The tiny model that talks, for the two-field task; one per test module."""
    from helpers import PAIR_TASK, talking_model

    return talking_model(PAIR_TASK)


@pytest.fixture
def live_server():
    """Serve apps on 127.0.0.1 (uvicorn in a thread) for one test: `live_server(app)` returns the running
    server (`.base` is its URL); every server started is stopped after the test."""
    from helpers import ThreadServer

    started = []

    def start(app):
        server = ThreadServer(app).__enter__()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.__exit__(None, None, None)


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium for the browser tests (installed by scripts/ensure_chromium.sh when missing;
    never a downloaded browser); the tests skip, saying why, when it cannot be installed."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "ensure_chromium.sh"
    try:
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        pytest.skip("Chromium could not be installed: scripts/ensure_chromium.sh ran past 15 minutes")
    if done.returncode != 0:
        pytest.skip(f"Chromium could not be installed at {CHROMIUM} (scripts/ensure_chromium.sh): "
                    f"{(done.stderr or done.stdout).strip()[-400:]}")
    return CHROMIUM
