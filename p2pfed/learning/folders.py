"""Image folders on disk: `<root>/<split>/<class>/<image>`, or a .tar.xz/.tar.gz of that layout,
unpacked once per machine. No torch: launch.py checks the data with it before any peer starts.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tarfile
import time
from pathlib import Path

log = logging.getLogger("p2pfed.learning.folders")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DataError(RuntimeError):
    """The data cannot be found or read; the message says what to pass instead."""


class MissingSplit(DataError):
    """The folder has no <split>/ (e.g. a site without a test folder)."""


UNPACK_TIMEOUT_S = 1800.0   # the longest a process waits for another one's unpacking or download


@contextlib.contextmanager
def exclusive(lock_path: Path, what: str, timeout_s: float = UNPACK_TIMEOUT_S):
    """Hold an exclusive lock on lock_path (created if missing) while the block runs: one process
    at a time, released when the file closes, also if the holder crashes. Waiting longer than
    timeout_s is a DataError that names what waited and the lock file."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DataError(f"{what}: another process has held {lock_path} for over {timeout_s:.0f} s; "
                                    f"if none is still working on it, delete that file and retry") from None
                time.sleep(0.2)
        yield


def _cache_root(cache_dir: str) -> Path:
    return Path(cache_dir) if cache_dir else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "p2pfed"


def unpack_archive(archive: Path, cache_dir: str = "") -> Path:
    """Unpack a .tar.xz/.tar.gz once per machine into the cache (keyed by path, size and mtime);
    return the root dir. Safe when several processes ask at once: one unpacks under an exclusive
    lock while the others wait for it, and the tree appears by an atomic rename, so a crash never
    leaves half of one."""
    st = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    dest = _cache_root(cache_dir) / f"{archive.name.split('.')[0]}-{key}"
    if dest.is_dir():
        return dest
    with exclusive(dest.with_name(dest.name + ".lock"), f"unpacking {archive}"):
        if dest.is_dir():                          # another process unpacked it while we waited
            return dest
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        log.info("unpacking %s into %s (once per machine)", archive, dest)
        started = time.monotonic()
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        os.rename(tmp, dest)
        log.info("unpacked %s in %.1f s", archive.name, time.monotonic() - started)
    return dest


def _find_split_root(root: Path, split: str) -> Path:
    """root/<split>, or root/<single dir>/<split> (an archive's top folder)."""
    if (root / split).is_dir():
        return root / split
    subdirs = [d for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
    if len(subdirs) == 1 and (subdirs[0] / split).is_dir():
        return subdirs[0] / split
    raise MissingSplit(f"no {split}/ folder under {root}; an image folder needs {root}/{split}/<class>/<image> "
                    f"(or pass a .tar.xz of that layout)")


def class_folders(data_dir: str, split: str, cache_dir: str = "") -> tuple[Path, list[str]]:
    """The split's root and its class folder names, sorted (an archive is unpacked first)."""
    path = Path(data_dir)
    if not path.exists():
        raise DataError(f"the data folder {path} does not exist (data.data_dir, or a [[peers]] data_dir); pass "
                        f"--data-dir with an image folder or a .tar.xz of one (e.g. ../shared/data/cifar10-dev.tar.xz)")
    if path.is_file():
        path = unpack_archive(path, cache_dir)
    root = _find_split_root(path, split)
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise DataError(f"{root} has no class folders; expected {root}/<class>/<image>")
    return root, names


def class_index(folders: list[str], classes: tuple[str, ...] | list[str], where: str) -> dict[str, int]:
    """folder name -> output index, by name. classes: the federation's agreed list (data.classes);
    empty = the folders' own sorted order (a shared data set, the same on every peer). A folder
    that is not one of the classes is an error naming it, with the nearest name if it looks misspelt."""
    if not classes:
        return {name: i for i, name in enumerate(folders)}
    index = {name: i for i, name in enumerate(classes)}
    unknown = [f for f in folders if f not in index]
    if unknown:
        import difflib
        hints = []
        for f in unknown:
            near = difflib.get_close_matches(f, list(classes), n=1, cutoff=0.6)
            hints.append(f"{f!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        raise DataError(f"{where} has class folders {', '.join(hints)} that are not in data.classes {list(classes)}; "
                        f"rename the folder to one of those names, or add the class to data.classes on every peer "
                        f"(a class only one site knows would shift no label, but every peer must list it)")
    return index


def list_split(data_dir: str, split: str, cache_dir: str = "",
               classes: tuple[str, ...] | list[str] = ()) -> tuple[list[str], list[int], list[str]]:
    """(files, labels, classes) of `<root>/<split>/<class>/*`. Labels are the index of the folder's
    name in `classes` (data.classes, agreed by every peer), or of the sorted folder names when
    `classes` is empty; the returned class list is the one the labels index."""
    root, names = class_folders(data_dir, split, cache_dir)
    index = class_index(names, classes, str(root))
    files, labels = [], []
    for name in names:
        found = sorted(f for f in os.listdir(root / name)
                       if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
        files += [str(root / name / f) for f in found]
        labels += [index[name]] * len(found)
    return files, labels, list(classes) if classes else names
