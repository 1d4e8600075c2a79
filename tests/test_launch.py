"""launch.py checks what it can before any peer starts: a mistake is one line naming the flag or
key, exit code 2, no peer started and no report. And its live view shows one consensus accuracy."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from p2pfed.run.launch import liveview, preflight

ROOT = Path(__file__).resolve().parents[1]


def _launch(tmp_path, *args):
    p = subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("args, names", [
    (["--peers", "0"], "--peers"),
    (["--dataset", "folder", "--data-dir", "no/such/dir"], "--data-dir"),
    (["--partition", "random"], "--partition"),
    (["--kill", "two@x"], "two@x"),
    (["--restart", "9@2"], "--restart"),
    (["--epochs", "-1"], "train.epochs"),
    (["--config", "missing.toml"], "missing.toml"),
], ids=["no-peers", "missing-data", "bad-partition", "bad-kill", "unknown-restart", "negative-epochs",
        "missing-config"])
def test_a_mistake_is_one_line_exit_2_and_nothing_starts(tmp_path, args, names):
    run = tmp_path / "run"
    data = [] if "--dataset" in args else ["--dataset", "synthetic"]
    code, out, err = _launch(tmp_path, *args, *data, "--run-dir", str(run))
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], err
    assert "Traceback" not in err and out == ""
    assert not run.exists()                            # no peer started, no report rendered


def test_a_run_dir_that_is_a_file_is_named(tmp_path):
    f = tmp_path / "taken"
    f.write_text("x")
    code, out, err = _launch(tmp_path, "--peers", "2", "--dataset", "synthetic", "--run-dir", str(f))
    assert code == 2 and err.strip().splitlines() == [f"error: --run-dir {f} is a file, not a directory; pass a new "
                                                      f"directory name"], err
    assert f.read_text() == "x"


def test_a_port_in_use_is_named_before_any_peer_starts():
    from p2pfed import config
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        port = s.getsockname()[1]
        cfg = config.replace_peers(config.Config(), config.local_peers(2, [port, preflight.free_ports(1)[0]]))
        with pytest.raises(preflight.PreflightError, match=f"peer 0: cannot listen on 127.0.0.1:{port}"):
            preflight.check_ports(cfg)
    finally:
        s.close()


def _metrics(path: Path, records: list[dict]) -> None:
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def test_the_live_view_shows_one_consensus_accuracy_and_never_a_round_past_the_last(tmp_path):
    views = {p: liveview.PeerView(p) for p in range(3)}
    for p in range(3):
        _metrics(tmp_path / f"metrics-{p}.jsonl", [
            {"type": "plan", "round": 0, "rounds": 4, "epochs": 1.0, "total_steps": 4},
            {"type": "round", "round": 4, "epoch": 1.0, "members": [0, 1, 2], "correct": 10 * (p + 1), "total": 50},
            {"type": "phase", "round": 5, "phase": "done"}])
    # a torn last line (still being written) is left for the next read
    with open(tmp_path / "metrics-0.jsonl", "a") as f:
        f.write('{"type": "step", "round"')
    for v in views.values():
        v.poll(tmp_path)
    lines = liveview.LiveView(views, out=open("/dev/null", "w")).lines()
    assert lines[0] == "peer 0: epoch  1.00/1  step 0/4  round 4/4 done     [####################]", lines
    assert lines[-1] == "consensus: 40.00% on the test split after round 4"     # (10 + 20 + 30) / 150
    assert sum("%" in line for line in lines) == 1
    assert views[0].offset < (tmp_path / "metrics-0.jsonl").stat().st_size


def test_a_peer_that_is_still_starting_is_printed_once_in_a_log(tmp_path):
    import io
    out = io.StringIO()
    view = liveview.LiveView({0: liveview.PeerView(0)}, out=out)
    for _ in range(5):
        view.render()
    assert out.getvalue().splitlines() == ["peer 0: starting"]


def test_offline_the_first_run_fails_once_before_any_peer_with_what_to_do(tmp_path):
    """No data and no way to fetch it (a proxy on a closed port stands in for no internet): one
    line saying so and what to pass instead, last; no peer started, no run directory, no report."""
    closed = preflight.free_ports(1)[0]
    proxy = f"http://127.0.0.1:{closed}"
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--peers", "5", "--dataset", "cifar10",
                        "--run-dir", str(run)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**os.environ, "https_proxy": proxy, "http_proxy": proxy,
                            "HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "no_proxy": "", "NO_PROXY": ""})
    assert p.returncode == 2, (p.stdout, p.stderr)
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: CIFAR-10 is not in data/"), p.stderr
    assert "--dataset folder --data-dir" in err[0] and "--dataset synthetic" in err[0]
    assert p.stdout.strip().splitlines() == ["p2pfed: fetching CIFAR-10 (163 MB) into data/, once, before the "
                                             "peers start"], p.stdout
    assert "Traceback" not in p.stderr and "Warning" not in p.stderr
    assert not run.exists()


def test_peers_sharing_a_folder_fetch_cifar10_once(tmp_path, monkeypatch):
    """Processes that share a data folder take turns: one downloads, the others find its files."""
    import threading
    import time

    import torchvision

    from p2pfed.learning import fetch
    calls, inside, most = [], [0], [0]

    def fake_cifar10(root, train=True, download=False):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        calls.append(root)
        time.sleep(0.3)
        folder = Path(root) / fetch.CIFAR10_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        for f in fetch.CIFAR10_FILES:
            (folder / f).write_bytes(b"x")
        inside[0] -= 1

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    got = []
    threads = [threading.Thread(target=lambda: got.append(fetch.cifar10(str(tmp_path / "data"))))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(got) == [False, False, False, True]          # one download, three found it
    assert len(calls) == 1 and most[0] == 1


def test_a_run_in_which_no_peer_trained_gets_no_report(tmp_path, monkeypatch, capsys):
    """Peers that all stop before their first step (here: a stand-in launcher) leave no summary.md
    and no `report:` line; the run's verdict is the last thing printed."""
    import warnings

    from p2pfed.run.launch import launcher
    from p2pfed.outputs import report

    class NoSteps:
        def __init__(self, cfg, run_dir, *a, **k):
            self.run_dir = run_dir

        def run(self):
            self.run_dir.mkdir(parents=True)
            (self.run_dir / "metrics-0.jsonl").write_text(json.dumps({"type": "start", "t": 1.0}) + "\n")
            print("p2pfed: failed: no consensus")
            return 1

    monkeypatch.setattr(launcher, "Launcher", NoSteps)
    run = tmp_path / "run"
    code = launcher.main(["--peers", "2", "--dataset", "synthetic", "--run-dir", str(run)])
    out = capsys.readouterr().out
    assert code == 1 and out.strip().splitlines()[-1] == "p2pfed: failed: no consensus", out
    assert "report:" not in out and not (run / "summary.md").exists()
    with warnings.catch_warnings():                  # and the report of such a run, asked for, warns nothing
        warnings.simplefilter("error")
        assert report.render(run).exists()
