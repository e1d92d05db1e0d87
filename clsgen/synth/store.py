"""`SynthStore`: the append-only JSONL of one synth run (one fsynced line per record, a torn last line
cut off on the next run, the settings beside it, a lock against two writers), `read_synth`, and the
shareable form of a run's explanations (`write_shareable`, `explanations_path` for the shipped ones)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import ClsgenError
from ..files import atomic_write_json


def _scan(data: bytes, name: str) -> tuple[list[dict[str, Any]], int]:
    """Records of a synth JSONL and the byte length of its intact part (a torn last line excluded)."""
    records: list[dict[str, Any]] = []
    good = 0
    lines = data.split(b"\n")
    for number, line in enumerate(lines[:-1], start=1):  # lines[-1]: after the last newline (torn or b"")
        if line.strip():
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict) or "id" not in obj:
                    raise ValueError("not a record")
            except ValueError:
                if not any(rest.strip() for rest in lines[number:]):
                    break  # a broken last line: torn by a kill, then perhaps closed by an editor
                raise ClsgenError(f"{name} line {number} is not a synth record (invalid JSON in the middle of "
                                  "the file); fix or remove that line, or write to a new --out") from None
            records.append(obj)
        good += len(line) + 1
    return records, good


def read_synth(path: str | Path) -> list[dict[str, Any]]:
    """The records of a synth JSONL, in file order; a torn last line (killed writer) is ignored."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ClsgenError(f"cannot read {path}: {e.strerror}") from None
    return _scan(data, str(path))[0]


SHARED_KEYS = ("id", "label", "verdict", "explanation")
"""What a shareable explanations file keeps of each accepted record: no input text, no rejected reply."""
SHIPPED_PREFIX = "clsgen:"
"""`clsgen:NAME` names an explanations file shipped in the package's `explanations/` folder."""


def write_shareable(records: Iterable[Mapping[str, Any]], path: str | Path) -> int:
    """Write the accepted explanations of synth `records` as JSONL of `SHARED_KEYS` (atomically), a file
    that can be shipped or shared without the data's text; returns how many records it holds."""
    from ..files import atomic_write_text

    kept = [{k: r.get(k) for k in SHARED_KEYS} for r in records
            if isinstance(r.get("explanation"), str) and r["explanation"].strip()]
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    return len(kept)


def explanations_path(spec: str | Path) -> Path:
    """The file an explanations setting names: a path, or `clsgen:NAME` for one shipped with clsgen."""
    text = str(spec)
    if not text.startswith(SHIPPED_PREFIX):
        return Path(spec)
    folder = Path(__file__).resolve().parent.parent / "explanations"
    path = folder / text[len(SHIPPED_PREFIX):]
    if not path.is_file():
        shipped = sorted(f"{SHIPPED_PREFIX}{f.name}" for f in folder.glob("*.jsonl"))
        raise ClsgenError(f"no explanations file {text!r} ships with clsgen; shipped: {', '.join(shipped) or 'none'}")
    return path


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


class SynthStore:
    """The append-only JSONL of one synth run, with its settings file and a lock against two writers
    (`filelock`: a sibling '<name>.lock' file, which works on POSIX and Windows alike)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.settings_path = self.path.with_name(self.path.name + ".teacher.json")
        self.report_path = self.path.with_name(self.path.name + ".report.json")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.fd: int | None = None
        self._lock: Any = None

    def existing(self) -> list[dict[str, Any]]:
        return read_synth(self.path) if self.path.exists() else []

    def archive(self) -> str:
        """Move the file and its sidecars aside (renamed with a timestamp, never deleted)."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        archive = self.path.with_name(f"{self.path.stem}.{stamp}{self.path.suffix}")
        os.replace(self.path, archive)
        for p in (self.settings_path, self.report_path):
            if p.exists():
                os.replace(p, archive.with_name(archive.name + p.name[len(self.path.name):]))
        return str(archive)

    def stale(self, settings: dict[str, Any], digest: str, force_new: bool) -> bool:
        """True when the file holds records made with other settings and `force_new` allows moving it
        aside; without `force_new` such records stop the run with an error naming the settings."""
        records = self.existing()
        old_hashes = {r.get("teacher") for r in records}
        if not records or old_hashes == {digest}:
            return False
        if force_new:
            return True
        old: dict[str, Any] = {}
        if self.settings_path.exists():
            try:
                old = json.loads(self.settings_path.read_text(encoding="utf-8")).get("settings", {})
            except (OSError, ValueError):
                old = {}
        new_flat, old_flat = _flatten(settings), _flatten(old)
        diff = [f"{k}: {_short(old_flat.get(k, '<unset>'))} -> {_short(new_flat.get(k, '<unset>'))}"
                for k in sorted(set(new_flat) | set(old_flat)) if new_flat.get(k) != old_flat.get(k)]
        if not old:
            diff = [f"settings hash {', '.join(sorted(str(h) for h in old_hashes))} -> {digest} "
                    f"({self.settings_path.name} missing, so the differing setting is unknown)"]
        shown = "\n  ".join(diff[:12]) + ("\n  ..." if len(diff) > 12 else "")
        raise ClsgenError(f"{self.path} holds {len(records)} records made with other teacher settings:\n  {shown}\n"
                          "Use the same settings to resume, write to a new --out, or pass --force-new "
                          "(force_new=True) to move the old file aside and start afresh.")

    def open(self, settings: dict[str, Any], digest: str) -> list[dict[str, Any]]:
        """Lock the file for appending, cut a torn last line, write the settings; return the records."""
        from filelock import FileLock, Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.lock_path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise ClsgenError(f"another process is writing {self.path} (clsgen synth still running?); wait "
                              f"for it or choose another --out (lock: {self.lock_path})") from None
        self._lock = lock
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        data = self.path.read_bytes()
        try:
            records, good = _scan(data, str(self.path))
            if good < len(data) and not self.settings_path.exists():
                raise ClsgenError(f"--out {self.path} ends with a line that is not a synth record, and no "
                                  f"{self.settings_path.name} says that clsgen wrote it; clsgen cuts a torn "
                                  "line only from its own files: choose a new --out")
        except ClsgenError:
            os.close(self.fd)
            self.fd = None
            raise
        if good < len(data):
            os.ftruncate(self.fd, good)  # a line torn by a kill: its example is simply asked again
            os.fsync(self.fd)
        self.torn_bytes = len(data) - good
        atomic_write_json(self.settings_path, {"hash": digest, "settings": settings})
        return records

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        assert self.fd is not None
        for r in records:
            line = (json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8")
            written = os.write(self.fd, line)
            if written != len(line):
                raise ClsgenError(f"short write to {self.path} (disk full?); rerun to resume")
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
