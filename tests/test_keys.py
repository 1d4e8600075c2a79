"""Secure by default across hosts: keys for every peer of a config, and a warning when a
config exposes ports without CURVE."""
import subprocess
import sys

from p2pfed import config
from p2pfed.run.node import keys as security

CONFIG = """# my cluster
[security]
curve = false                # keep this comment
secret_key_file = ""         # and this one, "{id}" too

[[peers]]
id = 0
host = "10.0.0.1"            # first host
port = 5550
bind = "0.0.0.0"

[[peers]]
id = 1
host = "10.0.0.2"
port = 5551
public_key = "stale"
"""


def test_keygen_writes_a_key_pair_per_peer_and_their_public_keys_into_the_config(tmp_path):
    path = tmp_path / "peers.toml"
    path.write_text(CONFIG)
    assert "anyone who can reach these ports" in security.exposure_warning(config.load(path))
    out = subprocess.run([sys.executable, "-m", "p2pfed", "keygen", "--config", str(path), "--out",
                          str(tmp_path / "keys")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cfg = config.load(path)
    assert cfg.security.curve and security.exposure_warning(cfg) is None
    for pid in (0, 1):
        keys = security.load_keys(cfg, pid)          # the secret file matches the listed public key
        assert keys.peers[pid] == cfg.peer(pid).public_key.encode() and len(cfg.peer(pid).public_key) == 40
    assert cfg.peer(0).public_key != cfg.peer(1).public_key
    text = path.read_text()
    assert "# my cluster" in text and "# keep this comment" in text and "# first host" in text
    assert (tmp_path / "keys" / "peer-1.key_secret").stat().st_mode & 0o077 == 0
    # a second run keeps the existing keys
    before = {p.id: p.public_key for p in cfg.peers}
    subprocess.run([sys.executable, "-m", "p2pfed", "keygen", "--config", str(path), "--out", str(tmp_path / "keys")],
                   check=True, capture_output=True, timeout=120)
    assert {p.id: p.public_key for p in config.load(path).peers} == before


def test_loopback_only_or_curve_on_gives_no_warning():
    local = config.from_dict({"peers": [{"id": 0, "host": "127.0.0.1", "port": 5550},
                                        {"id": 1, "host": "localhost", "port": 5551}]})
    assert security.exposure_warning(local) is None
    named = config.from_dict({"peers": [{"id": 0, "host": "node-a.example", "port": 5550}]})
    assert "node-a.example" in security.exposure_warning(named)
