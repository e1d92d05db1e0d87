"""The `clsgen` command: a thin layer over the Python API.

Each sub-command lives in a module of this package with a `register(subparsers)` function that adds
its parser and sets `func`. Errors caused by input end with one clear message and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__
from ..errors import ClsgenError

COMMAND_MODULES = [
    "clsgen.cli.data",
    "clsgen.cli.generate",
    "clsgen.cli.synth",
    "clsgen.cli.experiment",
    "clsgen.cli.train",
    "clsgen.cli.export",
    "clsgen.cli.evaluate",
    "clsgen.cli.predict",
    "clsgen.cli.calibrate",
    "clsgen.cli.serve",
    "clsgen.cli.hub",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clsgen",
        description="Classify and explain: fine-tune a causal LLM with a classification head beside its "
                    "LM head (CLSGen), so one model gives a calibrated probability and a readable "
                    "explanation that agrees with it.",
    )
    parser.add_argument("--version", action="version", version=f"clsgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def storage_message(e: BaseException) -> str | None:
    """One line for an error that says the storage is at fault (no space, read-only, file size limit,
    permissions, a file where a folder should be), naming the path when the error carries it; None for
    any other error."""
    from pathlib import Path

    from ..files import STORAGE_ERRNOS, storage_cause, storage_hint

    cause = storage_cause(e)
    if cause is None:
        return None
    words, code = cause
    if isinstance(e, OSError) and code not in STORAGE_ERRNOS:
        return None  # e.g. a refused connection: not about the disk
    path = getattr(e, "filename", None)
    where = f"{path}: " if path else "a write failed: "
    return (f"{where}{words}; {storage_hint(Path(path or '.'), code)}; finished work is kept: rerun the "
            "same command to continue")


def _openmp_waits_passively_when_busy() -> None:
    """On a CPU already busy with other work, let idle OpenMP threads sleep instead of spinning.

    Measured on a 2-core machine (docs/benchmarks.md, "Hardware ceiling"): with other work running, a
    2-thread forward pass with spinning threads ran 12x slower than with sleeping ones; on the idle
    machine, sleeping threads cost 28%. So the policy follows the load when clsgen starts (the 1-minute
    load average at half the cores or more). Set before torch loads; the user's own setting wins.
    """
    try:
        busy = os.getloadavg()[0] >= 0.5 * (os.cpu_count() or 1)
    except (AttributeError, OSError):  # no load average on this platform
        return
    if busy:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    _openmp_waits_passively_when_busy()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by the commands that keep results
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ClsgenError as e:
        print(f"clsgen: error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # a full disk or a read-only folder is the user's to fix: say so
        message = storage_message(e)
        if message is None:
            raise  # a bug: the traceback is what a report needs
        print(f"clsgen: error: {message}", file=sys.stderr)
        return ClsgenError.exit_code
    except KeyboardInterrupt:
        print("clsgen: interrupted; finished work is saved, rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
