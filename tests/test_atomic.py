"""A process killed while writing a file leaves the previous version whole (real SIGKILL)."""
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from p2pfed.outputs import atomic

    def slow(f):
        for _ in range(1000):          # 1,000 x 64 KiB, flushed, far slower than the test waits
            f.write(b"N" * 65536)
            f.flush()
            time.sleep(0.01)

    atomic.write_atomic(sys.argv[1], slow)
""")


def test_kill_during_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"OLD" * 1000)
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(ROOT)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:      # wait until the new version is half-written
            parts = list(tmp_path.glob(".checkpoint.pt.tmp-*"))
            if parts and parts[0].stat().st_size > 5 * 65536:
                break
            assert p.poll() is None, "the writer exited before it was killed"
            time.sleep(0.02)
        else:
            raise AssertionError("the writer never started writing")
        p.kill()
        p.wait(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert target.read_bytes() == b"OLD" * 1000
    # the dead writer's temporary is swept; a live writer's and another host's are not
    from p2pfed.outputs import atomic
    left = list(tmp_path.glob(".checkpoint.pt.tmp-*"))
    assert len(left) == 1
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine_live = tmp_path / f".summary.json.tmp-{atomic._HOST}-{live.pid}"
        other_host = tmp_path / f".summary.json.part-{atomic._HOST}x-{p.pid}"
        mine_live.write_bytes(b"x")
        other_host.write_bytes(b"x")
        assert atomic.sweep_stale(tmp_path) == left
    finally:
        live.kill()
        live.wait()
    assert {f.name for f in tmp_path.iterdir()} == {other_host.name, mine_live.name, "checkpoint.pt"}


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    from p2pfed.outputs import atomic
    target = tmp_path / "summary.json"
    target.write_text("old")

    def broken(f):
        f.write(b"partial")
        raise OSError("disk full")
    try:
        atomic.write_atomic(target, broken)
    except OSError:
        pass
    else:
        raise AssertionError("the error was swallowed")
    assert target.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["summary.json"]
