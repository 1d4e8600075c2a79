"""Hosts on one machine: Linux network namespaces joined by veth pairs and a bridge, with links
that can be cut, partitioned, shaped and delayed. Used by tests/test_multihost.py and bench/wan.py.

Shaping: `tc` token-bucket filters (tbf) on both ends of each host's veth, so every host has the
given bandwidth up and down. Delay: this kernel has no netem, so each host runs a relay
(bench/relay.py) in its namespace in front of its peer: the peer binds 127.0.0.1:port, the relay
listens on the host's address and forwards both directions after the one-way delay. Needs root
and iproute2; HostsUnavailable says why not.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

RELAY = Path(__file__).resolve().parent / "relay.py"     # run as a script: it imports nothing of bench


class HostsUnavailable(RuntimeError):
    """Network namespaces (or tc) cannot be used here."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


class Hosts:
    """N namespaces plus a switch namespace holding two bridges (br1: the far side of a
    partition); close() removes them all, and stops the relays."""

    def __init__(self, n: int, subnet: int = 77):
        tag = f"{os.getpid() % 10000}"
        self.tag = tag
        self.switch = f"p2psw{tag}"
        self.names = [f"p2ph{tag}x{i}" for i in range(n)]
        self.addrs = [f"10.{subnet}.{os.getpid() % 200 + 1}.{i + 1}" for i in range(n)]
        self.created: list[str] = []
        self.relays: list[subprocess.Popen] = []
        try:
            self._create()
        except (subprocess.CalledProcessError, OSError) as e:
            self.close()
            raise HostsUnavailable(f"cannot create network namespaces here ({getattr(e, 'stderr', e)!s:.120}); "
                                   f"this needs root and iproute2") from None

    def _port(self, i: int) -> str:
        return f"p2pv{i}a{self.tag}"

    def _create(self) -> None:
        ip("netns", "add", self.switch)
        self.created.append(self.switch)
        for br in ("br0", "br1"):
            ip("-n", self.switch, "link", "add", br, "type", "bridge")
            ip("-n", self.switch, "link", "set", br, "up")
        for i, (ns, addr) in enumerate(zip(self.names, self.addrs)):
            ip("netns", "add", ns)
            self.created.append(ns)
            ip("link", "add", self._port(i), "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("link", "set", self._port(i), "netns", self.switch)
            ip("-n", self.switch, "link", "set", self._port(i), "master", "br0")
            ip("-n", self.switch, "link", "set", self._port(i), "up")
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")

    # ------------------------------------------------------------------ faults
    def cut(self, i: int) -> None:
        ip("-n", self.names[i], "link", "set", "eth0", "down")

    def heal(self, i: int) -> None:
        ip("-n", self.names[i], "link", "set", "eth0", "up")

    def partition(self, minority: list[int]) -> None:
        """The minority's ports move to a bridge of their own: they still reach each other, nobody else."""
        for i in minority:
            ip("-n", self.switch, "link", "set", self._port(i), "master", "br1")

    def rejoin(self, minority: list[int]) -> None:
        for i in minority:
            ip("-n", self.switch, "link", "set", self._port(i), "master", "br0")

    def block(self, frm: int, to: int) -> None:
        """A one-way link: host `frm` routes every packet for host `to` into a blackhole (TCP's
        acknowledgements too), while `to`'s packets still reach `frm`."""
        ip("-n", self.names[frm], "route", "add", "blackhole", f"{self.addrs[to]}/32")

    def unblock(self, frm: int, to: int) -> None:
        ip("-n", self.names[frm], "route", "del", "blackhole", f"{self.addrs[to]}/32", check=False)

    # ------------------------------------------------------------------ links
    def shape(self, mbit: float) -> None:
        """Every host: mbit up (its eth0) and down (the switch's end of its veth)."""
        for i, ns in enumerate(self.names):
            for where, dev in ((("-n", ns), "eth0"), (("-n", self.switch), self._port(i))):
                cmd = ["tc", *where, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{mbit}mbit",
                       "burst", "128kb", "limit", "4mb"]
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
                if out.returncode:
                    raise HostsUnavailable(f"tc tbf failed: {out.stderr.strip()[:200]}")

    def delay(self, port: int, one_way_ms: float) -> None:
        """A relay in every host, in front of its peer on `port`, delaying each direction."""
        for ns, addr in zip(self.names, self.addrs):
            self.relays.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, str(RELAY), "--listen", f"{addr}:{port}",
                 "--to", f"127.0.0.1:{port}", "--delay-ms", str(one_way_ms)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))

    def peers(self, port: int, delayed: bool):
        """The [[peers]] of a run on these hosts: advertised at the host's address; bound to
        127.0.0.1 behind a relay when delayed, else to every address."""
        from p2pfed import config
        return tuple(config.PeerSpec(id=i, host=addr, port=port, bind="127.0.0.1" if delayed else "0.0.0.0")
                     for i, addr in enumerate(self.addrs))

    def exec(self, i: int, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.names[i], *argv]

    def close(self) -> None:
        for r in self.relays:
            if r.poll() is None:
                r.kill()
            r.wait()
        self.relays = []
        for ns in reversed(self.created):
            ip("netns", "del", ns, check=False)
        self.created = []
