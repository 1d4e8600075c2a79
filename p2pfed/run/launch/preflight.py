"""What launch.py checks before it starts any peer: the flags, the config, the data, the run
directory and the ports. A mistake is one line that names the flag or key and what to do, exit
code 2, no peer started and no report. The data is made ready here, once, so the peers find it:
CIFAR-10 is downloaded (or found) and an image-folder archive is unpacked (once per machine).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

from ...config import ConfigError
from ...learning import fetch, folders


class PreflightError(ConfigError):
    """A launch cannot start; the message names the flag or key."""


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n ports that were free a moment ago (each bound once, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def check_ports(cfg) -> None:
    """Every local peer's port can be bound now."""
    for p in cfg.peers:
        s = socket.socket()
        try:
            s.bind((p.bind or p.host, p.port))
        except OSError as e:
            raise PreflightError(f"peer {p.id}: cannot listen on {p.host}:{p.port} ({e.strerror}); another program "
                                 f"uses it: stop it, or give peer {p.id} another port") from None
        finally:
            s.close()


def _bindable(host: str, port: int) -> OSError | None:
    """None if an HTTP server could bind host:port now (as it does: SO_REUSEADDR, so a port whose
    last connections linger in TIME_WAIT counts as free)."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
        return None
    except OSError as e:
        return e
    finally:
        s.close()


def check_metrics_ports(cfg) -> None:
    """output.metrics_port: every local peer's metrics port (the base + its index) can be bound now."""
    base = cfg.output.metrics_port
    for k, p in enumerate(sorted(cfg.peers, key=lambda p: p.id)):
        e = base and _bindable(cfg.output.metrics_bind, base + k)
        if e:
            raise PreflightError(f"output.metrics_port = {base}: peer {p.id} cannot serve metrics on "
                                 f"{cfg.output.metrics_bind}:{base + k} ({e.strerror}); another program uses it: "
                                 f"choose another --metrics-port")


def check_watch_port(port: int | None) -> None:
    e = port and _bindable("127.0.0.1", port)
    if e:
        raise PreflightError(f"--watch {port}: cannot serve the live page on 127.0.0.1:{port} ({e.strerror}); "
                             f"choose another port, or 0 for any free one")


def check_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise PreflightError(f"--run-dir {run_dir} is a file, not a directory; pass a new directory name")
    parent = next((p for p in [run_dir, *run_dir.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PreflightError(f"--run-dir {run_dir}: {parent} is not writable; pass a directory you can write to")


def check_data(dcfg) -> None:
    """The data the peers will read exists and has the image-folder layout; an archive is
    unpacked now (once per machine; the peers then reuse it)."""
    if dcfg.dataset == "cifar10":
        if not fetch.have_cifar10(dcfg.data_dir):
            print(f"p2pfed: fetching CIFAR-10 ({fetch.CIFAR10_MB} MB) into {dcfg.data_dir}/, once, before the "
                  f"peers start", flush=True)
        try:
            fetch.cifar10(dcfg.data_dir)
        except folders.DataError as e:
            raise PreflightError(str(e)) from None
        return
    if dcfg.dataset != "folder":
        return          # synthetic needs nothing
    if dcfg.partition == "own":
        return          # sites.own_folders has listed every peer's folder by its class names
    path = Path(dcfg.data_dir)
    if not path.exists():
        raise PreflightError(f"--data-dir {path} does not exist (data.data_dir); pass an image folder "
                             f"(train/<class>/*, test/<class>/*) or a .tar.xz of one")
    try:
        for split in ("train", "test"):
            folders.list_split(str(path), split, dcfg.cache_dir)
    except folders.DataError as e:
        raise PreflightError(f"--data-dir {path}: {e}") from None


def check_all(cfg, run_dir: Path) -> None:
    check_run_dir(run_dir)
    check_data(cfg.data)
    check_ports(cfg)
    check_metrics_ports(cfg)
