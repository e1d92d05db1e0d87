"""Tests for clsgen.files: atomic writes and directories never leave half-written files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from clsgen import files
from clsgen.errors import ClsgenError
from clsgen.files import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text, cache_dir


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_writes(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01")  # parents are created
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    atomic_write_text(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    atomic_write_json(tmp_path / "j.json", {"k": [1, 2], "é": None})
    assert json.loads((tmp_path / "j.json").read_text(encoding="utf-8")) == {"k": [1, 2], "é": None}
    atomic_write_text(tmp_path / "t.txt", "replaced")
    assert (tmp_path / "t.txt").read_text() == "replaced"
    assert _names(tmp_path) == ["a", "j.json", "t.txt"]  # no temp files


def test_failed_replace_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    atomic_write_json(path, {"step": 1})

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(ClsgenError) as e:
        atomic_write_json(path, {"step": 2})
    assert str(path) in str(e.value) and "intact" in str(e.value)
    assert json.loads(path.read_text()) == {"step": 1}
    assert _names(tmp_path) == ["state.json"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "notes.txt"
    atomic_write_text(path, "old")

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(files.os, "fsync", broken_fsync)
    with pytest.raises(ClsgenError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert _names(tmp_path) == ["notes.txt"]


def test_unwritable_places_are_clsgen_errors(tmp_path, monkeypatch):
    """The same paths as a read-only directory, simulated (a read-only directory does not stop root)."""
    path = tmp_path / "keep.txt"
    path.write_text("old")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files.tempfile, "mkstemp", denied)
    with pytest.raises(ClsgenError) as e:
        atomic_write_text(path, "new")
    assert str(path) in str(e.value) and "Permission denied" in str(e.value)
    assert path.read_text() == "old"
    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(ClsgenError) as e:
        atomic_write_text(tmp_path / "sub" / "x.txt", "new")
    assert "cannot create directory" in str(e.value) and str(tmp_path / "sub") in str(e.value)
    assert _names(tmp_path) == ["keep.txt"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions, not root")
def test_read_only_directory(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "keep.txt").write_text("old")
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(ClsgenError) as e:
            atomic_write_text(folder / "keep.txt", "new")
        assert "keep.txt" in str(e.value) and "permissions" in str(e.value)
        with pytest.raises(ClsgenError) as e:
            atomic_write_text(folder / "sub" / "x.txt", "new")
        assert "cannot create directory" in str(e.value)
        assert (folder / "keep.txt").read_text() == "old"
        assert _names(folder) == ["keep.txt"]
    finally:
        folder.chmod(stat.S_IRWXU)


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        assert tmp != target and tmp.parent == tmp_path and not target.exists()
        (tmp / "weights.bin").write_bytes(b"v1")
    assert _names(target) == ["weights.bin"] and (target / "weights.bin").read_bytes() == b"v1"

    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "weights.bin").write_bytes(b"half")
            (tmp / "extra.bin").write_bytes(b"x")
            raise RuntimeError("interrupted")
    assert _names(target) == ["weights.bin"] and (target / "weights.bin").read_bytes() == b"v1"
    assert _names(tmp_path) == ["model"]  # the temporary directory is gone

    with atomic_dir(target) as tmp:
        (tmp / "new.bin").write_bytes(b"v2")
    assert _names(target) == ["new.bin"]  # replaced whole, not merged
    assert _names(tmp_path) == ["model"]  # no '.model.old' left


def test_atomic_dir_interrupted_by_keyboard(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "f").write_text("x")
            raise KeyboardInterrupt
    assert _names(tmp_path) == []


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CLSGEN_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir("data", "x") == tmp_path / "c" / "data" / "x"
    monkeypatch.delenv("CLSGEN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "clsgen"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir("m") == Path(os.path.expanduser("~/.cache")) / "clsgen" / "m"


def test_atomic_dir_gives_private_files_the_umask_permissions(tmp_path):
    """safetensors writes 0600 files; a saved model folder must be as readable as its config files."""
    import os

    import torch
    from safetensors.torch import save_file

    with atomic_dir(tmp_path / "model") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "head.safetensors"))
        (tmp / "clsgen.json").write_text("{}")
    mask = os.umask(0)
    os.umask(mask)
    for name in ("head.safetensors", "clsgen.json"):
        assert (tmp_path / "model" / name).stat().st_mode & 0o777 == 0o666 & ~mask
