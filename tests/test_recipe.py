"""The recipe in `ready`: a peer configured otherwise is left out, or stops, with the keys named."""
import time

from helpers import make_config, peer_log, start_peer, summary, wait_all

from p2pfed import config
from p2pfed.consensus import recipe


def test_the_recipe_holds_shared_options_only_and_names_differences():
    cfg = config.Config()
    text = recipe.of(cfg)
    keys = list(recipe.parse(text))
    assert keys == sorted(keys) and "train.scaffold" in keys and "model.width_mult" in keys
    assert "data.partition" in keys and "train.local_steps" in keys
    assert not {"data.data_dir", "data.cache_dir", "train.threads", "model.weights_file"} & set(keys)
    assert recipe.parse(text)["train.local_steps"] == "1,2,4"
    # per-host options do not change it; shared ones do
    assert recipe.of(config.override(cfg, train={"threads": 3}, data={"data_dir": "/elsewhere"})) == text
    other = recipe.of(config.override(cfg, train={"scaffold": True, "lr": 0.1}))
    assert recipe.differences(text, other) == "train.lr: 0.05 here, 0.1 there; train.scaffold: false here, true there"
    assert recipe.differences(text, text) == "none"
    assert recipe.differences("a=1", "garbage") == "a: 1 here, (absent) there; garbage: (absent) here,  there"
    assert len(text) < 4096


def test_a_peer_with_other_train_options_stops_with_the_keys_and_the_others_finish(tmp_path, procs):
    """3 peers; peer 2's copy of the config turns SCAFFOLD on. Peers 0 and 1 leave it out of every
    round (a majority of 3 suffices) and finish with a consensus; peer 2 is the minority and stops
    at once with an error naming train.scaffold, instead of failing rounds for everyone."""
    cfg, path = make_config(tmp_path, 3, train={"rounds": 3, "max_steps": 8})
    odd = tmp_path / "peer2.toml"
    odd.write_text(config.dumps_toml(config.override(cfg, train={"scaffold": True})))
    t0 = time.monotonic()
    ps = [start_peer(procs, path, 0), start_peer(procs, path, 1), start_peer(procs, odd, 2)]
    codes = wait_all(ps, 180)
    assert codes[:2] == [0, 0] and codes[2] == 1, codes
    run = tmp_path / "run"
    s = summary(run)
    assert [r["members"] for r in s["rounds"]] == [[0, 1]] * 3
    assert s["rounds"][-1]["digests_agree"]
    log2 = peer_log(run, 2)
    assert "trains with other options than peers [0, 1]" in log2
    assert "train.scaffold: true here, false there" in log2
    log0 = peer_log(run, 0)
    assert "peer 2 trains with other options (train.scaffold: false here, true there)" in log0
    # left out at once, not after ready_timeout_s (60 s in these tests) per round
    assert time.monotonic() - t0 < 55, time.monotonic() - t0


def test_two_peers_with_different_options_both_stop_naming_the_keys(tmp_path, procs):
    """A tie: neither side can claim the run, so both stop at once (not after their deadlines)."""
    cfg, path = make_config(tmp_path, 2, train={"rounds": 2, "max_steps": 5}, averaging={"min_peers": 1})
    odd = tmp_path / "peer1.toml"
    odd.write_text(config.dumps_toml(config.override(cfg, train={"lr": 0.02})))
    t0 = time.monotonic()
    ps = [start_peer(procs, path, 0), start_peer(procs, odd, 1)]
    assert wait_all(ps, 120) == [1, 1]
    assert "train.lr: 0.01 here, 0.02 there" in peer_log(tmp_path / "run", 0)
    assert "train.lr: 0.02 here, 0.01 there" in peer_log(tmp_path / "run", 1)
    assert time.monotonic() - t0 < 55
