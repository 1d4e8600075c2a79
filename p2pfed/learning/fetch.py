"""CIFAR-10 fetched from the internet into data.data_dir, once.

launch.py fetches it before any peer starts (run/launch/preflight.py), so its peers never
download at once. Peers that share a folder anyway (several `p2pfed peer` on one host, or one
home directory over NFS) take turns through a lock file in it: the first downloads and checks the
archive, the others then find it there. No torch until a download is needed: the launcher
checks for the data without importing it.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .folders import DataError, exclusive

log = logging.getLogger("p2pfed.learning.fetch")

CIFAR10_FOLDER = "cifar-10-batches-py"       # what torchvision's CIFAR10 unpacks into data_dir
CIFAR10_FILES = ("batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6)))
CIFAR10_MB = 163


def have_cifar10(data_dir: str) -> bool:
    """Every file of CIFAR-10 is in data_dir (torchvision checks their checksums when it reads them)."""
    return all((Path(data_dir) / CIFAR10_FOLDER / f).is_file() for f in CIFAR10_FILES)


def cifar10(data_dir: str) -> bool:
    """CIFAR-10 is in data_dir afterwards: downloaded (True) unless it was there (False).
    Offline, a DataError that says what to pass instead."""
    if have_cifar10(data_dir):
        return False
    with exclusive(Path(data_dir) / ".cifar10.lock", f"fetching CIFAR-10 into {data_dir}"):
        if have_cifar10(data_dir):           # another process fetched it while we waited
            return False
        import torchvision
        log.info("downloading CIFAR-10 (%d MB) into %s", CIFAR10_MB, data_dir)
        try:
            torchvision.datasets.CIFAR10(data_dir, train=True, download=True)
        except Exception as e:  # URLError, socket errors, a corrupted archive: offline or cut off
            raise DataError(f"CIFAR-10 is not in {data_dir}/ and could not be downloaded ({type(e).__name__}: "
                            f"{str(e)[:120]}). Offline, pass --dataset folder --data-dir <an image folder or a "
                            f".tar.xz of one> (e.g. ../shared/data/cifar10-dev.tar.xz), or --dataset synthetic "
                            f"for a smoke run") from None
    return True
