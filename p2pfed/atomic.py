"""Atomic file writes: write a temporary file, fsync, rename. A kill mid-write leaves the old file."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable


def write_atomic(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call write(f) on a temporary file beside path, then atomically replace path with it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return write_atomic(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())


def save_torch(path: str | os.PathLike, obj) -> Path:
    import torch
    return write_atomic(path, lambda f: torch.save(obj, f))


def temp_path(path: str | os.PathLike) -> Path:
    """A temporary name beside path for a writer that needs a file name (e.g. an exporter)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.part-{os.getpid()}")


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """fsync a finished temporary file and atomically rename it to path."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(Path(path).parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return Path(path)
