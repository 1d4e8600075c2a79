"""Prometheus metrics for one peer, counted from its metrics records (metrics.py), plus what the
network knows now (live peers, bytes on the wire), read when scraped.

Every metric has the label peer="K". Counters match summary.json at the end of a run: a
peer's rounds_committed_total is the number of summary rounds it reported, its
exchange_bytes_sent_total the sum of its bytes_sent there, and its round_attempts_failed_total
the sum of (attempts - 1) over those rounds. At exit the peer writes the same text to
RUN_DIR/metrics/peer-K.prom (node_exporter's textfile format), so the last values outlive it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import atomic

prometheus_client.disable_created_metrics()     # no *_created series: they double the text and say nothing here

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
EXCHANGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
STAGES = ("start", "sync", "train", "wait", "exchange", "eval", "done", "quantize")


class PrometheusSink:
    """A metrics sink (MetricsWriter.add_sink). live() -> {"live_peers", "bytes_sent",
    "bytes_received"}: read at each scrape."""

    def __init__(self, peer: int, live: Callable[[], dict] | None = None):
        self.peer = str(peer)
        self.registry = r = CollectorRegistry(auto_describe=True)
        p = ["peer"]
        self.round = Gauge("p2pfed_round", "The round this peer is in", p, registry=r).labels(self.peer)
        self.epoch = Gauge("p2pfed_epoch", "Epochs over this peer's partition trained so far", p,
                           registry=r).labels(self.peer)
        self.stage = Gauge("p2pfed_stage", "1 for the stage this peer is in, 0 for the others", p + ["stage"],
                           registry=r)
        self.loss = Gauge("p2pfed_train_loss", "Training loss of the last step", p, registry=r).labels(self.peer)
        self.committed = Counter("p2pfed_rounds_committed", "Rounds this peer committed as a member and reported "
                                 "(its rounds in summary.json)", p, registry=r).labels(self.peer)
        self.failed = Counter("p2pfed_round_attempts_failed", "Attempts of its committed rounds that failed before "
                              "the one that committed", p, registry=r).labels(self.peer)
        self.exchange_bytes = Counter("p2pfed_exchange_bytes_sent", "Bytes this peer sent to average its committed "
                                      "rounds", p, registry=r).labels(self.peer)
        self.accuracy = Gauge("p2pfed_consensus_accuracy", "Accuracy of the last evaluated consensus on the whole "
                              "test set, in [0, 1]", p, registry=r).labels(self.peer)
        self.faults = Counter("p2pfed_faults_injected", "Injected faults that fired in this peer", p,
                              registry=r).labels(self.peer)
        self.step_s = Histogram("p2pfed_step_seconds", "Seconds per local optimiser step", p, buckets=STEP_BUCKETS,
                                registry=r).labels(self.peer)
        self.exchange_s = Histogram("p2pfed_exchange_seconds", "Seconds of a committed round's exchange and "
                                    "agreement", p, buckets=EXCHANGE_BUCKETS, registry=r).labels(self.peer)
        self.wait_s = Histogram("p2pfed_wait_seconds", "Seconds a committed round waited for its group", p,
                                buckets=EXCHANGE_BUCKETS, registry=r).labels(self.peer)
        for s in STAGES:
            self.stage.labels(self.peer, s).set(0)
        if live is not None:
            r.register(_Live(self.peer, live))

    def __call__(self, rec: dict) -> None:
        kind = rec.get("type")
        if isinstance(rec.get("round"), int) and kind in ("step", "phase", "round"):
            self.round.set(rec["round"])
        if kind == "step":
            self.loss.set(rec["loss"])
            self.epoch.set(rec.get("epoch", 0))
            if isinstance(rec.get("step_s"), (int, float)):
                self.step_s.observe(rec["step_s"])
        elif kind == "phase":
            for s in STAGES:
                self.stage.labels(self.peer, s).set(1 if s == rec["phase"] else 0)
        elif kind == "round":
            self.committed.inc()
            self.failed.inc(rec.get("attempt", 0))
            self.exchange_bytes.inc(rec.get("bytes_sent", 0))
            self.exchange_s.observe(rec.get("averaging_s", 0.0))
            self.wait_s.observe(rec.get("wait_s", 0.0))
            self.epoch.set(rec.get("epoch", 0))
        elif kind == "consensus":
            self.accuracy.set(rec["accuracy"])
        elif kind == "fault":
            self.faults.inc()

    def text(self) -> bytes:
        """The Prometheus text exposition of every metric now."""
        return generate_latest(self.registry)

    def write_file(self, path: str | Path) -> Path:
        return atomic.write_bytes(path, self.text())


class _Live:
    """What the network knows at scrape time (a custom collector: read, never stored)."""

    def __init__(self, peer: str, live: Callable[[], dict]):
        self.peer, self.live = peer, live

    def describe(self):
        return []

    def collect(self):
        now = self.live()
        g = GaugeMetricFamily("p2pfed_live_peers", "Peers this peer hears from now, itself included",
                              labels=["peer"])
        g.add_metric([self.peer], now["live_peers"])
        yield g
        for name, key, what in (("p2pfed_network_bytes_sent", "bytes_sent", "sent"),
                                ("p2pfed_network_bytes_received", "bytes_received", "received")):
            c = CounterMetricFamily(name, f"Bytes this peer {what} on the wire: rounds, heartbeats, reports",
                                    labels=["peer"])
            c.add_metric([self.peer], now[key])
            yield c
