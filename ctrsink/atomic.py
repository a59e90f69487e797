"""Atomic file and directory writes: a reader sees the old version or the complete new one, never a half.

Temporary files and folders are created with the mode `open(path, "w")` and `mkdir` would use (0o666 / 0o777, the
kernel applies the umask at creation), so the result looks like a plain write. The process umask is never read
or changed: `os.umask` sets it process-wide, which races with other threads (the dashboard's) creating files.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not available on every platform, so best effort.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp_name(final: Path, suffix: str) -> Path:
    return final.parent / f".{final.name}.{secrets.token_hex(6)}{suffix}"


def _create_temp_file(final: Path) -> tuple[int, Path]:
    """(fd, path) of a new, exclusive temp file next to `final`, with open(path, "w")'s permissions."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = _temp_name(final, ".tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {final}")


def _create_temp_dir(final: Path, suffix: str = ".tmp") -> Path:
    """A new temp folder next to `final`, with mkdir's permissions."""
    for _ in range(100):
        tmp = _temp_name(final, suffix)
        try:
            tmp.mkdir(0o777)
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {final}")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp_file(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 text atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON atomically (stable bytes for hashing and diffs)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_dir(final_path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temp dir next to `final_path`; on success it replaces `final_path`, on error it is removed.

    An existing `final_path` is moved aside and deleted only after the new folder is in place, so at any
    moment one complete version exists. Parent folders created here are removed again if the block fails.
    """
    final = Path(final_path).absolute()
    created: list[Path] = []
    parent = final.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    for folder in reversed(created):
        folder.mkdir()
    tmp = _create_temp_dir(final)
    try:
        yield tmp
        old: Path | None = None
        if final.exists() or final.is_symlink():
            old = _create_temp_dir(final, ".old")
            old.rmdir()  # only the unique name is needed; rename needs the target not to exist
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            if old is not None:
                os.replace(old, final)
            raise
        _fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
