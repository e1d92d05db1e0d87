"""Files that are never half-written (atomic writes, atomic directories, several files as one unit),
clear errors when the storage fails (full disk, read-only folder), and the user cache."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import ClsgenError


def cache_dir(*parts: str) -> Path:
    """The user cache (CLSGEN_CACHE_DIR, else $XDG_CACHE_HOME/clsgen, else ~/.cache/clsgen)."""
    root = os.environ.get("CLSGEN_CACHE_DIR")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "clsgen")
    return Path(root, *parts)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _writable_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ClsgenError(f"cannot create directory {path.parent}: {e.strerror}; choose another "
                          "output path") from None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    atomic_write_files([(path, data)])


def atomic_write_files(files: Sequence[tuple[str | Path, bytes]]) -> None:
    """Write several files as one unit: every one to a temporary file first, then all renamed in order.

    A failure while writing (full disk, read-only folder) leaves every old file as it was and no
    temporary file behind. A kill during the renames (microseconds) can leave the first files new and
    the last ones old, so put the file whose presence marks the set as complete last.
    """
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in files:
            path = Path(path)
            _writable_parent(path)
            try:
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            except OSError as e:
                raise write_error(path, e) from None
            staged.append((tmp, path))
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from other users
            except OSError as e:
                raise write_error(path, e, "the previous file, if any, is intact") from None
        for tmp, path in staged:
            try:
                os.replace(tmp, path)
            except OSError as e:
                raise write_error(path, e, "the previous file, if any, is intact") from None
        staged = []
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, finite: bool = True) -> None:
    """Write `obj` as JSON; with `finite`, a NaN or infinity (which JSON has no word for) becomes null.
    `finite=False` keeps them, in Python's own notation, for files only clsgen reads back."""
    text = json.dumps(finite_json(obj) if finite else obj, indent=2, ensure_ascii=False, allow_nan=not finite)
    atomic_write_text(path, text + "\n")


def finite_json(obj: Any) -> Any:
    """`obj` with every float NaN or infinity, at any depth, replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


@contextlib.contextmanager
def atomic_dir(path: str | Path, check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path` in one rename.

    `check(tmp)`, when given, runs once the folder is written and before anything at `path` is touched;
    its error leaves `path` as it was."""
    path = Path(os.path.abspath(path))  # '.' has no name to build a sibling's from
    _writable_parent(path)
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as e:
        raise write_error(path, e) from None
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if check is not None:
            check(tmp)
        _share_like_umask(tmp)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: Path, path: Path) -> None:
    """Put the folder `new` at `path` in one rename; a folder already at `path` is renamed to a hidden
    name of its own (never one a user's file could hold) and then deleted."""
    path = Path(os.path.abspath(path))
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
        os.replace(path, old)  # over the empty folder just made: the name is ours alone
    os.replace(new, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- output folders


def check_output_dir(path: str | Path, marker: str, *, overwrite: bool = False, flag: str = "--out",
                     sources: Sequence[str | Path] = ()) -> Path:
    """Refuse an output folder whose replacement would destroy something clsgen did not write, before
    any slow work. Accepted: a missing path, an empty folder, or (with `overwrite`) a folder that
    holds `marker`, the file clsgen writes into every folder of this kind. Never a folder that is, holds
    or lies inside one of `sources` (the inputs of the command)."""
    path = Path(path)
    here = Path(os.path.abspath(path))
    for src in sources:
        src = Path(os.path.abspath(src))
        if here == src or src in here.parents or here in src.parents:
            rel = "is" if here == src else ("lies inside" if src in here.parents else "holds")
            raise ClsgenError(f"{flag} {path} {rel} the input {src}; clsgen never writes over its input: "
                              f"choose another {flag}")
    if not os.path.lexists(here):
        return path
    if here.is_symlink() or not here.is_dir():
        raise ClsgenError(f"{flag} {path} exists and is not a folder; choose another {flag}")
    entries = sorted(os.listdir(here))
    if not entries:
        return path
    if marker not in entries:
        raise ClsgenError(f"{flag} {path} is a folder that clsgen did not write (it holds {_listing(entries)}, "
                          f"and no {marker}); clsgen never replaces such a folder: choose a new or empty {flag}")
    if not overwrite:
        raise ClsgenError(f"{flag} {path} already holds a model written by clsgen; pass --overwrite to "
                          f"replace it, or choose another {flag}")
    return path


def check_run_dir(path: str | Path, markers: Sequence[str], *, flag: str = "--out") -> Path:
    """Refuse a non-empty folder that holds none of `markers` (the files clsgen writes into every run
    folder of this kind): writing into it could replace a user's file of the same name."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return path
    entries = sorted(os.listdir(path))
    if entries and not set(markers) & set(entries):
        raise ClsgenError(f"{flag} {path} is a folder that clsgen did not write (it holds {_listing(entries)}, "
                          f"and none of {', '.join(markers)}); clsgen writes only into a new or empty folder or one "
                          f"of its own runs: choose another {flag}")
    return path


def _listing(entries: Sequence[str], shown: int = 5) -> str:
    more = len(entries) - shown
    return ", ".join(entries[:shown]) + (f" and {more} more" if more > 0 else "")


def foreign_entries(folder: Path, own: Sequence[str]) -> list[str]:
    """Entries of `folder` that are not in `own` (the names clsgen writes there)."""
    try:
        return sorted(set(os.listdir(folder)) - set(own))
    except FileNotFoundError:
        return []


def _share_like_umask(folder: Path) -> None:
    """Give files that a writer created private (safetensors writes 0600) the umask's permissions, as
    any other file of the user's: a model folder must be readable by whoever may read its config."""
    mode = 0o666 & ~_umask()
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink() and (p.stat().st_mode & 0o777) == 0o600 != mode:
            os.chmod(p, mode)


# ----------------------------------------------------------------------------- write failures

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
STORAGE_ERRNOS = frozenset(_NO_SPACE + _NOT_WRITABLE + (errno.EIO, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                                                       errno.ENAMETOOLONG))
"""errno values that mean the output location, not clsgen, is at fault."""


def storage_cause(exc: BaseException) -> tuple[str, int | None] | None:
    """Why a write failed, as (words, errno), when `exc` says that the storage is at fault; else None.

    Besides `OSError`, this reads the errors of writers that do not raise one: safetensors
    ("I/O error: No space left on device (os error 28)") and torch.save ("unexpected pos 576 vs 534",
    a short write; "open file failed with strerror: Read-only file system")."""
    if isinstance(exc, OSError):
        if exc.errno is not None:
            return (exc.strerror or os.strerror(exc.errno)), exc.errno
        return None
    text = str(exc)
    m = re.search(r"os error (\d+)", text)
    if m:
        return os.strerror(int(m.group(1))), int(m.group(1))
    m = re.search(r"strerror: ([^\n]+)", text)
    if m:
        words = m.group(1).strip().rstrip(".")
        code = next((c for c in STORAGE_ERRNOS if os.strerror(c) == words), None)
        return words, code
    if re.search(r"unexpected pos \d+ vs \d+|file write failed|failed writing", text):
        return ("the write came up short (no space left on device, or the file size limit `ulimit -f` was "
                "reached)"), errno.ENOSPC
    return None


def storage_hint(path: Path, code: int | None) -> str:
    """What to do about a storage failure with errno `code` at `path`."""
    if code == errno.EFBIG:
        limit = ""
        with contextlib.suppress(ImportError, OSError, ValueError):
            import resource

            soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
            if soft != resource.RLIM_INFINITY:
                limit = f", {soft} bytes here"
        return (f"a file would outgrow the file size limit (`ulimit -f`{limit}) or the file system's largest "
                "file; raise the limit or choose another output folder, then rerun")
    if code in _NO_SPACE:
        free = ""
        with contextlib.suppress(OSError):
            st = os.statvfs(next((p for p in (path, *path.parents) if p.exists()), Path(".")))
            free = f" ({st.f_bavail * st.f_frsize / 2**20:.1f} MiB free there now)"
        return f"free some space{free} or choose another output folder, then rerun"
    if code in _NOT_WRITABLE:
        return "choose a writable output folder (--out) or fix its permissions"
    if code in (errno.ENOTDIR, errno.EEXIST):
        return "a file stands where a folder is expected; remove it or choose another output folder"
    return "check the output folder, its permissions and free space"


def write_error(path: str | Path, exc: BaseException, intact: str | None = None) -> ClsgenError:
    """A `ClsgenError` for a failed write of `path`: the path, the cause and what to do."""
    path = Path(path)
    cause = storage_cause(exc)
    words, code = cause if cause is not None else (str(exc).strip().splitlines()[0] if str(exc).strip()
                                                   else type(exc).__name__, None)
    msg = f"cannot write {path}: {words}; {storage_hint(path, code)}"
    return ClsgenError(msg + (f"; {intact}" if intact else ""))


@contextlib.contextmanager
def writing(path: str | Path, intact: str | None = None) -> Iterator[None]:
    """Turn a storage failure inside the block (full disk, read-only folder, file size limit) into one
    clear `ClsgenError` naming `path`; any other error passes unchanged."""
    try:
        yield
    except ClsgenError:
        raise
    except Exception as e:  # only storage failures are rewritten
        if storage_cause(e) is None:
            raise
        raise write_error(path, e, intact) from None


def check_writable(folder: str | Path, what: str = "output folder") -> Path:
    """Create `folder` (and parents) and prove that a file can be created in it, before slow work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".clsgen-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        where, top = Path(os.path.abspath(e.filename or folder)), Path(os.path.abspath(folder))
        shown = f" ({e.filename})" if where != top and top not in where.parents else ""  # not the probe's name
        raise ClsgenError(f"the {what} {folder} is not writable: {e.strerror or e}{shown}; "
                          f"{storage_hint(folder, e.errno)}") from None
    return folder
