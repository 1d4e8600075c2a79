"""Peers on separate network hosts: Linux network namespaces joined by veth pairs and a bridge.

Each peer runs in its own namespace with its own address (10.77.<run>.<k>/24), binds 0.0.0.0 and
advertises its address. Skips where namespaces cannot be created (not root, no iproute2).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import check_round_exact, make_config, summary, wait_all
from p2pfed import config

pytestmark = pytest.mark.netns


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


class Hosts:
    """N namespaces h0..hN-1 plus a switch namespace holding a bridge; removed in close()."""
    def __init__(self, n: int):
        tag = f"{os.getpid() % 10000}"
        self.switch = f"p2psw{tag}"
        self.names = [f"p2ph{tag}x{i}" for i in range(n)]
        self.subnet = 77
        self.addrs = [f"10.{self.subnet}.{os.getpid() % 200 + 1}.{i + 1}" for i in range(n)]
        self.created: list[str] = []
        try:
            self._create()
        except (subprocess.CalledProcessError, OSError) as e:
            self.close()
            pytest.skip(f"cannot create network namespaces here ({getattr(e, 'stderr', e)!s:.120}); "
                        f"these tests need root and iproute2")

    def _create(self) -> None:
        _ip("netns", "add", self.switch)
        self.created.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i, (ns, addr) in enumerate(zip(self.names, self.addrs)):
            _ip("netns", "add", ns)
            self.created.append(ns)
            _ip("link", "add", f"p2pv{i}a{os.getpid() % 10000}", "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            a = f"p2pv{i}a{os.getpid() % 10000}"
            _ip("link", "set", a, "netns", self.switch)
            _ip("-n", self.switch, "link", "set", a, "master", "br0")
            _ip("-n", self.switch, "link", "set", a, "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def cut(self, i: int) -> None:
        _ip("-n", self.names[i], "link", "set", "eth0", "down")

    def heal(self, i: int) -> None:
        _ip("-n", self.names[i], "link", "set", "eth0", "up")

    def close(self) -> None:
        for ns in reversed(self.created):
            _ip("netns", "del", ns, check=False)
        self.created = []


@pytest.fixture
def hosts3():
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("network namespaces need root and iproute2 (ip)")
    h = Hosts(3)
    try:
        yield h
    finally:
        h.close()


def _config(tmp_path: Path, hosts: Hosts, **sections):
    cfg, path = make_config(tmp_path, len(hosts.names), **sections)
    peers = tuple(config.PeerSpec(id=i, host=addr, port=5550, bind="0.0.0.0") for i, addr in enumerate(hosts.addrs))
    cfg = config.replace_peers(cfg, peers)
    path.write_text(config.dumps_toml(cfg))
    return cfg, path


def _start(procs, hosts: Hosts, path: Path, i: int):
    run = path.parent / "run"
    run.mkdir(exist_ok=True)
    err = open(run / f"peer-{i}.stderr", "ab")
    return procs.start(["ip", "netns", "exec", hosts.names[i], sys.executable, "-m", "p2pfed", "peer", "--config",
                        str(path), "--id", str(i), "--quiet"], stdout=subprocess.DEVNULL, stderr=err)


def test_three_hosts_reach_exact_consensus(tmp_path, procs, hosts3):
    cfg, path = _config(tmp_path, hosts3, train={"rounds": 2})
    ps = [_start(procs, hosts3, path, i) for i in range(3)]
    assert wait_all(ps, 180) == [0, 0, 0]
    s = summary(tmp_path / "run")
    for r in s["rounds"]:
        assert r["members"] == [0, 1, 2] and r["digests_agree"]
        check_round_exact(tmp_path / "run", r["round"], r["members"], r["members"])


def test_cut_off_host_waits_then_rejoins_after_the_link_heals(tmp_path, procs, hosts3):
    cfg, path = _config(tmp_path, hosts3, train={"rounds": 5, "max_steps": 25, "local_epochs": 4.0})
    run = tmp_path / "run"
    ps = [_start(procs, hosts3, path, i) for i in range(3)]
    from p2pfed import metrics
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(
            r["type"] == "step" and r["round"] == 2 for r in metrics.read(run / "metrics-2.jsonl")):
        time.sleep(0.05)
    hosts3.cut(2)
    # heal once the others have committed round 2 without host 2 (bounded wait)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not any(r["type"] == "round" and r["round"] == 2
                                                  for r in metrics.read(run / "metrics-0.jsonl")):
        time.sleep(0.1)
    time.sleep(cfg.averaging.dead_after_s)          # and host 2 has been alone a while
    hosts3.heal(2)
    assert wait_all(ps, 240) == [0, 0, 0]
    s = summary(run)
    by_round = {r["round"]: r for r in s["rounds"]}
    assert by_round[2]["members"] == [0, 1]                # the majority carried on without host 2
    check_round_exact(run, 2, [0, 1], [0, 1])
    assert s["rounds"][-1]["members"] == [0, 1, 2]         # host 2 came back
    check_round_exact(run, 5, [0, 1, 2], [0, 1, 2])
    # the cut-off minority never committed a round of its own: it waited, then downloaded
    recs = metrics.read(run / "metrics-2.jsonl")
    own = {r["round"]: r["members"] for r in recs if r["type"] == "round"}
    assert all(m != [2] for m in own.values()), own
    assert any("synced round" in r.get("message", "") for r in recs)
    assert sum("wrote " in (run / f"peer-{i}.log").read_text() for i in range(3)) == 1
