"""Watching a federation (docs/observability.md): TensorBoard event files, the Prometheus
endpoint, the status files and `p2pfed watch`'s page, read back by the tools people use:
tensorboard's event reader, prometheus_client's parser, and headless Chromium."""
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import add_faults, make_config, start_peer, story, summary, wait_all
from p2pfed.net import wire
from p2pfed.net.httpserve import HttpServer
from p2pfed.outputs import tensorboard_sink
from p2pfed.outputs.metrics import MetricsWriter
from p2pfed.outputs.prometheus_sink import PrometheusSink
from p2pfed.run.observe import federation, watch
from p2pfed.run.launch.preflight import free_ports
from p2pfed.run.observe.status import StatusBoard

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _get(url: str, timeout: float = 3.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def _samples(text: str) -> dict[str, float]:
    """name{labels} -> value, from Prometheus text (parsed by prometheus_client's parser)."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "peer")
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


# ---------------------------------------------------------------------- pure views
def _stats(members, attempt=0, evaluated=True, correct=50, total=100, **kw):
    s = {"members": members, "digest": "d", "averaging_s": 0.1, "bytes_sent": 10, "attempt": attempt, "events": [],
         "train_loss": 1.0, "n_samples": 100, "train_s": 1.0, "wait_s": 0.2, "epoch": 1.0, **kw}
    if evaluated:
        s.update(correct=correct, total=total, loss_sum=50.0, eval_s=0.3)
    return s


def test_consensus_accuracy_needs_every_member_of_the_round():
    by = {0: _stats([0, 1], correct=60), 1: _stats([0, 1], correct=80)}
    assert federation.consensus(3, by)["accuracy"] == pytest.approx(0.7)
    assert federation.consensus(3, {0: by[0]}) is None                    # member 1 has not reported yet
    assert federation.consensus(3, {0: _stats([0], evaluated=False)}) is None


def test_timeline_names_who_was_left_out_and_why():
    reports = {1: {p: _stats([0, 1, 2]) for p in (0, 1, 2)},
               2: {p: _stats([0, 1], attempt=1, events=["attempt 0 failed: peer 2 silent"]) for p in (0, 1)}}
    rounds, acc = federation.timeline(reports, [0, 1, 2])
    assert [r["left_out"] for r in rounds] == [[], [2]] and rounds[1]["dropped"] == [2]
    assert rounds[1]["attempts"] == 2 and [a["round"] for a in acc] == [1, 2]
    assert federation.dropped_faults(rounds) == [{"round": 2, "peer": 2,
                                                  "what": "left out of round 2: attempt 0 failed: peer 2 silent"}]


def test_numbers_that_are_not_finite_never_reach_the_json():
    by = {0: _stats([0, 1], train_s=float("nan"), epoch=float("inf")), 1: _stats([0, 1], wait_s=float("-inf"))}
    rounds, acc = federation.timeline({1: by}, [0, 1])
    json.dumps({"rounds": rounds, "accuracy": acc}, allow_nan=False)          # raises on NaN or infinity
    assert rounds[0]["train_s"] == 1.0 and rounds[0]["epoch"] == 1.0 and rounds[0]["wait_s"] == 0.2


def _snap(me, t, state="running", heard=None, rounds=(), peers=(0, 1, 2)):
    heard = heard or {}
    rows = [{"id": p, "state": "live" if p == me else heard.get(p, ("starting", None))[0], "round": 3, "stage": "train",
             "committed": 2, "heard_s": 0.0 if p == me else heard.get(p, (None, None))[1], "epoch": 1.0} for p in peers]
    return {"t": t, "from": me, "state": state, "source": f"peer {me}", "run": {"peers": list(peers), "rounds": 9,
                                                                                   "epochs": 3.0},
            "peers": rows, "accuracy": [], "rounds": list(rounds), "faults": []}


def test_merge_tells_live_dead_and_finished_peers_apart():
    now = 1000.0
    snaps = [_snap(0, now - 0.5, heard={1: ("live", 0.3), 2: ("dead", 9.0)}),
             _snap(1, now - 0.4, state="finished"),
             _snap(2, now - 30.0)]                                # stale, never said it ended: killed
    view = federation.merge(snaps, now, stale_s=5.0)
    assert {r["id"]: r["state"] for r in view["peers"]} == {0: "live", 1: "finished", 2: "dead"}
    # a peer without a file of its own is what a fresh peer hears of it
    view = federation.merge([_snap(0, now - 0.5, heard={1: ("live", 0.3)}, peers=(0, 1))], now, stale_s=5.0)
    assert [r["state"] for r in view["peers"]] == ["live", "live"]


def test_a_heartbeat_row_keeps_only_well_typed_fields():
    row = federation.heartbeat_row(4, 0.2, 1.5, False, {"round": "7; drop", "phase": "<script>", "committed": 3}, None)
    assert row == {"id": 4, "state": "live", "round": None, "stage": None, "committed": 3, "heard_s": 0.2,
                   "epoch": None}
    assert federation.heartbeat_row(4, 2.0, 1.5, False, {}, None)["state"] == "dead"
    assert federation.heartbeat_row(4, 0.1, 1.5, True, {}, None)["state"] == "left"


def test_the_board_ignores_malformed_reports_and_tells_each_consensus_once():
    told = []
    board = StatusBoard(0, [0, 1], 1.5, on_consensus=told.append)
    board.report(wire.Message("report", 1, {"round": 1, "stats": {"members": "all"}}))      # malformed: ignored
    board.report(wire.Message("report", 1, {"round": 1, "stats": _stats([0, 1])}))
    assert told == []
    board.report(wire.Message("report", 0, {"round": 1, "stats": _stats([0, 1])}))
    board.report(wire.Message("report", 0, {"round": 1, "stats": _stats([0, 1])}))
    assert [c["round"] for c in told] == [1] and told[0]["accuracy"] == pytest.approx(0.5)
    snap = board.snapshot()
    assert [r["round"] for r in snap["rounds"]] == [1] and snap["peers"][1]["state"] == "starting"


# ---------------------------------------------------------------------- sinks and the server
def test_a_failing_sink_is_dropped_and_the_records_go_on(tmp_path):
    m = MetricsWriter(tmp_path / "m.jsonl", 0)
    seen = []
    m.add_sink(lambda rec: 1 / 0)
    m.add_sink(seen.append)
    m.write("step", round=1, loss=1.0)
    m.write("step", round=1, loss=0.5)
    m.close()
    assert len(seen) == 2 and len((tmp_path / "m.jsonl").read_text().splitlines()) == 2


def test_prometheus_counts_rounds_attempts_and_bytes():
    sink = PrometheusSink(3, live=lambda: {"live_peers": 2, "bytes_sent": 5, "bytes_received": 7})
    sink({"type": "step", "round": 1, "loss": 1.0, "epoch": 0.1, "step_s": 0.05})
    sink({"type": "round", "round": 1, "attempt": 0, "bytes_sent": 100, "averaging_s": 0.2, "wait_s": 0.1})
    sink({"type": "round", "round": 2, "attempt": 2, "bytes_sent": 50, "averaging_s": 0.3, "wait_s": 0.1})
    sink({"type": "phase", "round": 3, "phase": "exchange"})
    s = _samples(sink.text().decode())
    assert s["p2pfed_rounds_committed_total"] == 2 and s["p2pfed_round_attempts_failed_total"] == 2
    assert s["p2pfed_exchange_bytes_sent_total"] == 150 and s["p2pfed_round"] == 3
    assert s["p2pfed_stage{stage=exchange}"] == 1 and s["p2pfed_stage{stage=train}"] == 0
    assert s["p2pfed_live_peers"] == 2 and s["p2pfed_network_bytes_received_total"] == 7
    assert s["p2pfed_exchange_seconds_count"] == 2 and s["p2pfed_step_seconds_count"] == 1


def test_the_server_is_read_only_and_survives_a_broken_route():
    server = HttpServer("127.0.0.1", 0, {"/ok": lambda: ("text/plain", b"yes"), "/bad": lambda: 1 / 0}).start()
    try:
        for method, path, code in [("POST", "/ok", 405), ("PUT", "/ok", 405), ("DELETE", "/ok", 405),
                                   ("GET", "/nope", 404), ("GET", "/bad", 500)]:
            req = urllib.request.Request(server.url + path, method=method)
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=3)
            assert e.value.code == code, (method, path)
        assert _get(server.url + "/ok") == b"yes"                  # still serving
        assert server.bind == "127.0.0.1"
    finally:
        server.close()


def test_the_server_serves_a_bounded_number_of_connections_at_once():
    from p2pfed.net import httpserve
    server = HttpServer("127.0.0.1", 0, {"/ok": lambda: ("text/plain", b"yes")}).start()
    idle = []
    try:
        for _ in range(httpserve.MAX_CONNECTIONS):          # connected, never sending a request
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        time.sleep(0.3)
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.RemoteDisconnected)):
            _get(server.url + "/ok", timeout=3)                 # one too many: closed unanswered
        for s in idle:
            s.close()
        deadline = time.monotonic() + 10
        while True:                                             # the slots come back
            try:
                assert _get(server.url + "/ok") == b"yes"
                break
            except (urllib.error.URLError, ConnectionError, http.client.RemoteDisconnected):
                assert time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        for s in idle:
            s.close()
        server.close()


def test_a_restarted_peer_counts_on_from_its_first_life(tmp_path):
    from p2pfed import config
    from p2pfed.run.observe.observers import Observers
    cfg = config.override(config.replace_peers(config.Config(), config.local_peers(2, free_ports(2))),
                          output={"metrics_port": free_ports(1)[0], "tensorboard": False})
    first = MetricsWriter(tmp_path / "metrics-0.jsonl", 0)
    for r in (1, 2):
        first.write("round", round=r, members=[0, 1], attempt=r - 1, bytes_sent=100, averaging_s=0.1, wait_s=0.1)
    first.close()
    second = MetricsWriter(tmp_path / "metrics-0.jsonl", 0)
    obs = Observers(cfg, 0, tmp_path, second, resume=True)
    try:
        second.write("round", round=3, members=[0, 1], attempt=0, bytes_sent=100, averaging_s=0.1, wait_s=0.1)
        s = _samples(_get(obs.server.url + "/metrics").decode())
        assert s["p2pfed_rounds_committed_total"] == 3 and s["p2pfed_exchange_bytes_sent_total"] == 300
        assert s["p2pfed_round_attempts_failed_total"] == 1
    finally:
        obs.close("finished")
        second.close()
    assert json.loads((tmp_path / "status" / "peer-0.json").read_text())["state"] == "finished"
    assert _samples((tmp_path / "metrics" / "peer-0.prom").read_text())["p2pfed_rounds_committed_total"] == 3


def test_watch_names_a_bad_source(tmp_path):
    with pytest.raises(watch.WatchError, match="not a directory"):
        watch.RunDirSource(tmp_path / "missing")
    with pytest.raises(watch.WatchError, match="HOST:PORT"):
        watch.PeerSource("localhost")
    port = free_ports(1)[0]                                       # nobody serves there
    view = watch.PeerSource(f"127.0.0.1:{port}", timeout_s=1).view()
    assert view["peers"] == [] and "output.metrics_port" in view["error"]


# ---------------------------------------------------------------------- real peers
def test_a_metrics_port_in_use_fails_the_peer_at_start_in_one_line(tmp_path, procs):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        port = s.getsockname()[1]
        _, path = make_config(tmp_path, 2, output={"metrics_port": port})
        p = start_peer(procs, path, 0)
        assert p.wait(timeout=60) == 2
    finally:
        s.close()
    err = (tmp_path / "run" / "peer-0.stderr").read_text().strip().splitlines()
    assert len(err) == 1 and "output.metrics_port" in err[0] and f"127.0.0.1:{port}" in err[0], err
    assert "Traceback" not in err[0]


def test_a_run_serves_metrics_and_status_and_writes_tensorboard_events(tmp_path, procs):
    """3 peers: /metrics parses as Prometheus text during the run, /status feeds `watch --peer`,
    the final values match summary.json, and the event files hold every documented tag."""
    base = free_ports(1)[0]
    cfg, path = make_config(tmp_path, 3, train={"rounds": 6, "eval_every": 2, "max_steps": 8},
                            output={"metrics_port": base, "dump_round_models": False, "tensorboard": True})
    run = tmp_path / "run"
    ps = [start_peer(procs, path, i) for i in range(3)]
    scraped, viewed = [], []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(p.poll() is None for p in ps):
        try:
            scraped.append(_samples(_get(f"http://127.0.0.1:{base + 1}/metrics").decode()))
            viewed.append(watch.PeerSource(f"127.0.0.1:{base + 2}").view())
        except (OSError, ValueError):
            pass                      # not listening yet, or gone: the peers' exits are checked below
        time.sleep(0.3)
    assert wait_all(ps, 60, run) == [0, 0, 0], story(run, 3)
    assert any(s.get("p2pfed_rounds_committed_total", 0) >= 1 for s in scraped), scraped[-1:]
    assert max(s["p2pfed_live_peers"] for s in scraped) == 3
    during = [v for v in viewed if not v.get("error") and v["rounds"]]
    assert during and [r["id"] for r in during[-1]["peers"]] == [0, 1, 2]
    assert during[-1]["source"] == "peer 2"

    summ = summary(run)
    for k in range(3):
        final = _samples((run / "metrics" / f"peer-{k}.prom").read_text())
        mine = [r for r in summ["rounds"] if str(k) in r["digests"]]
        assert final["p2pfed_rounds_committed_total"] == len(mine) == 6
        assert final["p2pfed_exchange_bytes_sent_total"] == sum(r["bytes_sent"][str(k)] for r in mine)
        assert final["p2pfed_round_attempts_failed_total"] == sum(r["attempts"] - 1 for r in mine)
        assert final["p2pfed_consensus_accuracy"] == pytest.approx(summ["final"]["accuracy"])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    for k in range(3):
        ea = EventAccumulator(str(run / "tb" / f"peer-{k}"))
        ea.Reload()
        assert set(ea.Tags()["scalars"]) == set(tensorboard_sink.TAGS), k
        acc = [e.value for e in ea.Scalars("eval/consensus_accuracy")]
        assert acc == pytest.approx([e["accuracy"] for e in summ["evaluations"]])
        assert len(ea.Scalars("round/exchange_s")) == 6

    merged = watch.RunDirSource(run).view()
    assert [r["state"] for r in merged["peers"]] == ["finished"] * 3
    assert [a["round"] for a in merged["accuracy"]] == [e["round"] for e in summ["evaluations"]]


def _dom(url: str, profile: Path) -> str:
    p = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=4000",
                        "--dump-dom", url], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def _rows(dom: str) -> dict[int, tuple[str, int | None]]:
    """peer -> (state, round) from the page's peer rows."""
    import re
    out = {}
    for m in re.finditer(r'<tr class="peer" data-peer="(\d+)" data-state="(\w+)">(.*?)</tr>', dom, re.S):
        rnd = re.search(r'class="num round">(\d+)/', m.group(3))
        out[int(m.group(1))] = (m.group(2), int(rnd.group(1)) if rnd else None)
    return out


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium); "
                                             ".ci/run installs it where it can")
def test_the_live_page_in_a_browser_shows_rounds_advance_and_a_killed_peer_dead(tmp_path, procs):
    cfg, path = make_config(tmp_path, 3, train={"rounds": 14, "eval_every": 3, "max_steps": 6},
                            output={"dump_round_models": False})
    add_faults(path, {"peer": 2, "round": 6, "phase": "train", "action": "crash"})
    run = tmp_path / "run"
    ps = [start_peer(procs, path, i) for i in range(3)]
    server = watch.serve(watch.RunDirSource(run), port=0)
    seen = []
    try:
        deadline = time.monotonic() + 150
        dom = ""
        while time.monotonic() < deadline and any(p.poll() is None for p in ps[:2]):
            dom = _dom(server.url + "/", tmp_path / "profile")
            rows = _rows(dom)
            if rows:
                seen.append(rows)
            if rows.get(2, ("",))[0] == "dead" and rows[0][0] == "live":
                break
            time.sleep(0.5)
        shot = tmp_path / "watch.png"
        subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,1000",
                        "--virtual-time-budget=4000", f"--screenshot={shot}", server.url + "/"],
                       capture_output=True, timeout=60, check=True)
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("P2PFED_SCREENSHOTS"):
            shutil.copy(shot, Path(os.environ["P2PFED_SCREENSHOTS"]) / "watch-test.png")
        codes = wait_all(ps, 120, run)
    finally:
        server.close()
    assert codes[:2] == [0, 0] and codes[2] != 0, story(run, 3)
    assert seen and all(sorted(r) == [0, 1, 2] for r in seen), seen[-1:]
    rounds = [r[0][1] for r in seen if r[0][1] is not None]
    assert len(set(rounds)) >= 3 and rounds == sorted(rounds), rounds          # the page follows the rounds
    assert seen[-1][2][0] == "dead" and seen[-1][0][0] == "live", seen[-1]
    assert any(r[2][0] == "live" for r in seen)                                # it was live before it was killed
    assert '<li class="fault" data-peer="2">round 6, peer 2: injected crash at train</li>' in dom, dom[-3000:]
