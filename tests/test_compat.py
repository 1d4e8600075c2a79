"""Compatible recipes (docs/protocol.md, "The recipe"): a peer of protocol 1, whose recipe text
lacks every option added since and whose `ready` has no protocol number, takes part while those
options are at their defaults, and is refused, with the key named, once one of them is set."""
import sys
import subprocess
from pathlib import Path

from helpers import make_config, peer_log, start_peer, story, summary, wait_all

from p2pfed import config
from p2pfed.consensus import recipe

OLD_PEER = Path(__file__).resolve().parent / "old_peer.py"


def start_old_peer(procs, cfg_path: Path, peer_id: int) -> subprocess.Popen:
    run_dir = cfg_path.parent / "run"
    run_dir.mkdir(exist_ok=True)
    err = open(run_dir / f"peer-{peer_id}.stderr", "ab")
    return procs.start([sys.executable, str(OLD_PEER), "peer", "--config", str(cfg_path), "--id", str(peer_id),
                        "--quiet"], stdout=subprocess.DEVNULL, stderr=err)


def test_options_at_their_default_leave_the_text_as_protocol_1_wrote_it():
    import old_peer
    cfg = config.Config()
    assert recipe.of(cfg) == old_peer.protocol1_text(cfg)
    for key in recipe.ADDED:                        # every added option is a real key of the config
        section, name = key.split(".")
        assert hasattr(getattr(cfg, section), name), key
    away = config.override(cfg, train={"batchnorm": "sync"})
    assert recipe.of(away) == ";".join(sorted(recipe.of(cfg).split(";") + ["train.batchnorm=sync"]))
    assert recipe.differences(recipe.of(away), old_peer.protocol1_text(away)) == \
        "train.batchnorm: sync here, (absent: at its default) there"


def test_a_protocol_1_peer_takes_part_and_agrees_every_round(tmp_path, procs):
    cfg, path = make_config(tmp_path, 3, train={"rounds": 4, "max_steps": 5})
    run = tmp_path / "run"
    ps = [start_peer(procs, path, 0), start_peer(procs, path, 1), start_old_peer(procs, path, 2)]
    assert wait_all(ps, 180, run) == [0, 0, 0], story(run, 3)
    rounds = summary(run)["rounds"]
    assert [r["members"] for r in rounds] == [[0, 1, 2]] * 4, story(run, 3)
    assert all(r["digests_agree"] for r in rounds)
    assert f"peer 2 speaks protocol 1, I speak {recipe.PROTOCOL}" in peer_log(run, 0)


def test_an_added_option_set_away_from_its_default_refuses_the_protocol_1_peer_by_name(tmp_path, procs):
    cfg, path = make_config(tmp_path, 3, train={"rounds": 3, "max_steps": 5}, data={"shards_per_peer": 3})
    run = tmp_path / "run"
    ps = [start_peer(procs, path, 0), start_peer(procs, path, 1), start_old_peer(procs, path, 2)]
    codes = wait_all(ps, 180, run)
    assert codes[:2] == [0, 0] and codes[2] != 0, (codes, story(run, 3))
    assert [r["members"] for r in summary(run)["rounds"]] == [[0, 1]] * 3
    assert "data.shards_per_peer: 3 here, (absent: at its default) there" in peer_log(run, 0)
    assert "data.shards_per_peer: (absent: at its default) here, 3 there" in peer_log(run, 2)
