"""Everything that lets people watch one peer (docs/observability.md), started before the peer
loads its data and closed after its last record:

    RUN_DIR/status/peer-K.json   its status board, every second (always on; `p2pfed watch RUN_DIR`)
    RUN_DIR/tb/peer-K/           TensorBoard event files (output.tensorboard, if tensorboard is installed)
    /metrics and /status         on output.metrics_port + this peer's index among its host's peers
                                 (off by default), bound to output.metrics_bind (loopback by default)
    RUN_DIR/metrics/peer-K.prom  the last Prometheus values, written at exit (with the metrics port)

Nothing here can stop training: the sinks are dropped if they fail (metrics.py), the server and
the status file run on daemon threads, and only a metrics port that cannot be bound fails the
peer, at start, naming the key and the port.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ... import config
from ...net.httpserve import HttpServer
from ...outputs import tensorboard_sink
from ...outputs.metrics import MetricsWriter, read
from .status import StatusBoard, StatusFile

log = logging.getLogger("p2pfed.run.observe")

JSON = "application/json"


def metrics_port(cfg, peer_id: int) -> int:
    """The metrics port of this peer: output.metrics_port + its index among the peers of its host."""
    host = cfg.peer(peer_id).host
    local = sorted(p.id for p in cfg.peers if p.host == host)
    return cfg.output.metrics_port + local.index(peer_id)


class Observers:
    def __init__(self, cfg, peer_id: int, run_dir: str | Path, metrics: MetricsWriter, resume: bool = False):
        self.run_dir = Path(run_dir)
        self.id = peer_id
        self.server = self.prometheus = self.tensorboard = None
        try:
            self._start(cfg, metrics, resume)
        except BaseException:
            if self.server:
                self.server.close()
            raise

    def _start(self, cfg, metrics: MetricsWriter, resume: bool) -> None:
        peer_id = self.id
        self.board = StatusBoard(peer_id, cfg.peer_ids, cfg.averaging.dead_after_s,
                                 on_consensus=lambda c: metrics.write("consensus", **c))
        metrics.add_sink(self.board.sink)
        if cfg.output.metrics_port:
            from ...outputs.prometheus_sink import CONTENT_TYPE, PrometheusSink
            port = metrics_port(cfg, peer_id)
            self.prometheus = PrometheusSink(peer_id, live=self.board.live_counts)
            if resume:      # a restarted peer counts on from its first life, as summary.json does
                for rec in read(metrics.path):
                    if rec.get("type") in ("round", "fault", "consensus"):
                        self.prometheus(rec)
            try:
                self.server = HttpServer(cfg.output.metrics_bind, port, {
                    "/metrics": lambda: (CONTENT_TYPE, self.prometheus.text()),
                    "/status": lambda: (JSON, json.dumps(self.board.snapshot()).encode()),
                }, name=f"metrics-{peer_id}").start()
            except OSError as e:
                raise config.ConfigError(
                    f"output.metrics_port = {cfg.output.metrics_port}: cannot serve metrics on "
                    f"{cfg.output.metrics_bind}:{port} ({e.strerror or e}); another program uses that port: choose "
                    f"another output.metrics_port, or 0 to turn the endpoint off") from None
            metrics.add_sink(self.prometheus)
            log.info("metrics on %s/metrics, status on %s/status", self.server.url, self.server.url)
        self.tensorboard = tensorboard_sink.open_sink(self.run_dir, peer_id, cfg.output.tensorboard)
        if self.tensorboard:
            metrics.add_sink(self.tensorboard)
        self.status = StatusFile(self.board, self.run_dir).start()
        # an injected crash exits at once: its fault reaches the status file first
        metrics.add_sink(lambda rec: rec["type"] == "fault" and self.status.write())

    def close(self, state: str) -> None:
        """state: finished | failed. The last status, the last Prometheus values, the event files."""
        for step in (lambda: self.status.close(state),
                     lambda: self.prometheus and self.prometheus.write_file(self.run_dir / "metrics" /
                                                                            f"peer-{self.id}.prom"),
                     lambda: self.tensorboard and self.tensorboard.close(),
                     lambda: self.server and self.server.close()):
            try:
                step()
            except Exception as e:      # one broken output must not hide the others, or the exit code
                log.warning("closing the observers: %s: %s", type(e).__name__, e)
