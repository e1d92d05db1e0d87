"""User-facing errors: each names what was given, what was expected and how to fix it.

The CLI turns any `ClsgenError` into one clear message and exit code 2, never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class ClsgenError(Exception):
    """An error caused by user input (a file, a config, a flag), with a message that says how to fix it."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One problem found while validating input: where it is and what is wrong."""

    message: str
    file: str | None = None
    row: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(str(self.file))
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field:
            where.append(f"field '{self.field}'")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class ValidationError(ClsgenError):
    """Several problems reported together, so the user can fix them all in one pass."""

    max_shown = 20

    def __init__(self, problems: list[Problem], what: str = "input"):
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[: self.max_shown])
        more = len(self.problems) - self.max_shown
        if more > 0:
            shown += f"\n  ... and {more} more"
        n = len(self.problems)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} in {what}:\n{shown}")


class DataError(ValidationError):
    """Problems in a data file (missing field, empty text, unknown label, duplicate id, bad syntax)."""

    def __init__(self, problems: list[Problem]):
        super().__init__(problems, what="the data")


class ConfigError(ValidationError):
    """Problems in a configuration (unknown key, wrong type, a value that cannot work)."""

    def __init__(self, problems: list[Problem]):
        super().__init__(problems, what="the configuration")


class UndefinedMetricError(ValueError):
    """The metric does not exist for these data (e.g. only one class present); `compute_metrics` reports
    it as a value of None with a note."""
