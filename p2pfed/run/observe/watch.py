"""`p2pfed watch`: one small page that shows a federation while it runs (docs/observability.md).

Two sources, one JSON schema (federation.py):
  RUN_DIR             the status files every peer of a local run writes (RUN_DIR/status/peer-K.json),
                      merged: a peer whose file stops changing without a final state is dead;
  --peer HOST:PORT    one peer's /status on its metrics port (output.metrics_port): the federation
                      as that peer sees it, from any host that can reach the port.
The server answers GET / (the page, which fetches status.json every second) and GET /status.json,
nothing else; it binds 127.0.0.1 unless --bind says otherwise, and reads only what the peers
already publish, so watching never slows or changes a run.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

from ...net.httpserve import HttpServer
from . import federation
from .status import STATUS_EVERY_S

STALE_S = 5 * STATUS_EVERY_S      # a status file older than this, with no final state, is a dead peer's
FETCH_TIMEOUT_S = 2.0
MAX_STATUS_BYTES = 16 * 1024 * 1024
JSON = "application/json"
HTML = "text/html; charset=utf-8"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None          # a peer's status port never redirects: the 3xx is reported as an error


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


class WatchError(ValueError):
    """A watch source is wrong: the message names it."""


def _empty(source: str, error: str) -> dict:
    return {"t": time.time(), "source": source, "error": error, "run": {"peers": [], "rounds": 0, "epochs": 0},
            "peers": [], "accuracy": [], "rounds": [], "faults": []}


class RunDirSource:
    def __init__(self, run_dir: str | Path, stale_s: float = STALE_S):
        self.run_dir, self.stale_s = Path(run_dir), stale_s
        if not self.run_dir.is_dir():
            raise WatchError(f"{self.run_dir} is not a directory; pass a run directory (output.run_dir, "
                             f"launch.py --run-dir)")

    def view(self) -> dict:
        snaps = []
        for f in sorted((self.run_dir / "status").glob("peer-*.json")):
            try:
                snaps.append(json.loads(f.read_text()))
            except (OSError, ValueError):      # being replaced, or not ours: the next second will do
                continue
        source = f"run dir {self.run_dir}"
        if not snaps:
            return _empty(source, f"no peer status in {self.run_dir / 'status'} yet: are the peers started (with "
                                  f"this run dir)?")
        return federation.merge(snaps, time.time(), self.stale_s, source)


class PeerSource:
    def __init__(self, address: str, timeout_s: float = FETCH_TIMEOUT_S):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise WatchError(f"--peer {address!r} is not HOST:PORT; give a peer's host and its metrics port "
                             f"(output.metrics_port + its index on that host)")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"                       # an IPv6 address
        self.url = f"http://{host}:{int(port)}/status"
        self.address, self.timeout_s = address, timeout_s

    def view(self) -> dict:
        deadline = time.monotonic() + self.timeout_s
        try:
            body = b""
            with _OPENER.open(self.url, timeout=self.timeout_s) as r:
                while chunk := r.read(1 << 16):
                    body += chunk
                    if len(body) > MAX_STATUS_BYTES:
                        raise ValueError(f"more than {MAX_STATUS_BYTES} bytes")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"no complete answer within {self.timeout_s} s")
            view = json.loads(body)
            if not isinstance(view, dict) or not isinstance(view.get("peers"), list):
                raise ValueError("not a p2pfed status")
            return view
        except (OSError, ValueError) as e:     # URLError and timeouts are OSErrors
            return _empty(f"peer at {self.address}", f"cannot read {self.url}: {e}; is the peer running with "
                                                     f"output.metrics_port set, and is the port reachable?")


def page() -> bytes:
    return resources.files(__package__).joinpath("watch.html").read_bytes()


def serve(source, port: int = 8765, bind: str = "127.0.0.1") -> HttpServer:
    """Start the watch server (daemon threads); close() it when done."""
    html = page()
    return HttpServer(bind, port, {"/": lambda: (HTML, html), "/index.html": lambda: (HTML, html),
                                   "/status.json": lambda: (JSON, json.dumps(source.view()).encode())},
                      name="watch").start()
