"""Atomic file writes: write a temporary file, fsync, rename. A kill mid-write leaves the old file.

Temporaries are named .NAME.tmp-HOST-PID (or .part-) beside the target, so that sweep_stale can
remove the ones whose writer on this host has died, and never touches another host's.
"""
from __future__ import annotations

import io
import os
import re
import socket
from pathlib import Path
from typing import Callable

_HOST = socket.gethostname().replace("/", "_")


def _temp(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{_HOST}-{os.getpid()}")


def write_atomic(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call write(f) on a temporary file beside path, then atomically replace path with it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp(path, "tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in this directory durable."""
    _fsync(directory)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return write_atomic(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())


def replace_text(path: str | os.PathLike, text: str) -> Path:
    """Atomic for readers (a rename), but not durable (no fsync): for views rewritten every
    second, such as a peer's status file, where a lost write costs nothing and fsync would."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp(path, "tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_torch(path: str | os.PathLike, obj) -> Path:
    import torch
    return write_atomic(path, lambda f: torch.save(obj, f))


def temp_path(path: str | os.PathLike) -> Path:
    """A temporary name beside path for a writer that needs a file name (e.g. an exporter)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _temp(path, "part")


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """fsync a finished temporary file and atomically rename it to path."""
    _fsync(Path(tmp))
    os.replace(tmp, path)
    _fsync_dir(Path(path).parent)
    return Path(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # someone else's process: alive
        pass
    return True


def sweep_stale(directory: str | os.PathLike) -> list[Path]:
    """Delete temporaries in directory left by writers on this host that no longer run (killed
    mid-write). A temporary whose PID is alive, or that another host wrote, is kept."""
    d = Path(directory)
    mine = re.compile(rf"\..+\.(?:tmp|part)-{re.escape(_HOST)}-(\d+)")
    removed = []
    for f in d.iterdir() if d.is_dir() else ():
        m = mine.fullmatch(f.name)
        if m and not _alive(int(m.group(1))):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed
