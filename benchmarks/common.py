"""What every benchmark shares: the machine it ran on, medians of repeated timings, and its section
of docs/benchmarks.md.

Each benchmark module in this folder exposes `run(quick: bool = False) -> Section` and can also be
run on its own (`python benchmarks/<name>.py [--quick]`), printing its section. `run_all.py` runs
them all and writes docs/benchmarks.md and docs/benchmarks.json.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Target:
    """One target of the benchmark: what, the measured ratio, the bound and whether it is met."""

    name: str
    ratio: float
    bound: str  # e.g. ">= 1.0" or "<= 1.05"

    @property
    def met(self) -> bool:
        op, value = self.bound.split()
        return self.ratio >= float(value) if op == ">=" else self.ratio <= float(value)

    def line(self) -> str:
        return f"{self.name}: ratio {self.ratio:.3f} (target {self.bound}) — {'met' if self.met else 'missed'}"


@dataclass
class Section:
    """A benchmark's result: a markdown section, its raw figures, and its targets."""

    title: str
    markdown: str
    figures: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    seconds: float = 0.0

    def render(self) -> str:
        parts = [f"## {self.title}", "", self.markdown.strip(), ""]
        if self.targets:
            parts += ["Targets:", ""] + [f"- {t.line()}" for t in self.targets] + [""]
        parts.append(f"_Ran in {self.seconds:.0f} s._")
        return "\n".join(parts) + "\n"


def data_dir() -> str | None:
    """The built-in datasets' folder: CLSGEN_DATA_DIR, else `../shared/data` beside the repository when
    it is there, else None (clsgen then downloads into its cache)."""
    env = os.environ.get("CLSGEN_DATA_DIR")
    if env:
        return env
    beside = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    return str(beside) if beside.is_dir() else None


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall seconds of `fn()` over `repeats` runs after `warmup` unmeasured ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, run alternately (a, b, a, b, ...) so that machine noise falls
    on both sides of a comparison alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def machine() -> dict[str, Any]:
    """The machine and software a run measured."""
    import torch
    import transformers

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = None
    try:
        with open("/proc/meminfo") as f:
            mem_gb = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; floats get 3 significant decimals."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def main(run: Callable[..., Section]) -> None:
    """Entry point for running one benchmark module as a script."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (a smoke run)")
    args = p.parse_args()
    t0 = time.perf_counter()
    section = run(quick=args.quick)
    section.seconds = time.perf_counter() - t0
    print(section.render())
