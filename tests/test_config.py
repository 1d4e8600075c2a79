from pathlib import Path

import pytest

from p2pfed import config
from p2pfed.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_example_peers_toml_loads_with_five_local_peers():
    cfg = config.load(ROOT / "peers.toml")
    assert cfg.peer_ids == [0, 1, 2, 3, 4]
    assert all(p.host == "127.0.0.1" for p in cfg.peers)


def test_every_dataclass_field_is_documented_in_peers_toml_and_docs():
    text = (ROOT / "peers.toml").read_text()
    docs = (ROOT / "docs" / "configuration.md").read_text()
    import dataclasses
    for name, cls in config.SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f"\n{f.name} =" in text, f"peers.toml lacks {name}.{f.name}"
            assert f"`{name}.{f.name}`" in docs, f"docs/configuration.md lacks {name}.{f.name}"


def test_docs_key_tables_are_generated_from_the_code():
    docs = (ROOT / "docs" / "configuration.md").read_text()
    for name, cls in {"peers": config.PeerSpec, "faults": config.Fault, **config.SECTIONS}.items():
        assert config.markdown_table(cls, name) in docs, f"docs/configuration.md: regenerate the [{name}] table " \
            f"with config.markdown_table"


def test_unknown_key_is_named_with_the_allowed_keys():
    with pytest.raises(ConfigError, match=r"unknown key train\.epoch.*allowed keys in \[train\]: epochs, rounds"):
        config.from_dict({"train": {"epoch": 3}})


def test_bad_choice_names_key_and_allowed_values():
    with pytest.raises(ConfigError, match=r"data.partition = 'random' is not allowed; use one of \['iid', 'dirichlet', 'shards', 'own'\]"):
        config.from_dict({"data": {"partition": "random"}})


def test_wrong_type_and_range_are_rejected():
    with pytest.raises(ConfigError, match="train.rounds = 'two' must be an integer"):
        config.from_dict({"train": {"rounds": "two"}})
    with pytest.raises(ConfigError, match="train.rounds = -1 must be >= 0"):
        config.from_dict({"train": {"rounds": -1}})
    for key in ("threads", "max_steps", "eval_every"):
        with pytest.raises(ConfigError, match=f"train.{key} = -2 must be >= 0"):
            config.from_dict({"train": {key: -2}})
    with pytest.raises(ConfigError, match="output.checkpoint_every = -1 must be >= 0"):
        config.from_dict({"output": {"checkpoint_every": -1}})
    with pytest.raises(ConfigError, match=r"train.local_steps = \[4, 0\]: every entry must be >= 1"):
        config.from_dict({"train": {"local_steps": [4, 0]}})
    with pytest.raises(ConfigError, match="train.local_steps = 'x' must be an integer, a non-empty list of integers, or \"auto\""):
        config.from_dict({"train": {"local_steps": "x"}})
    with pytest.raises(ConfigError, match="ids must be unique"):
        config.from_dict({"peers": [{"id": 1, "port": 5000}, {"id": 1, "port": 5001}]})


def test_bad_toml_file_names_the_file(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("[train\nrounds=")
    with pytest.raises(ConfigError, match="x.toml is not valid TOML"):
        config.load(p)
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "missing.toml")


def test_dumps_toml_round_trips():
    cfg = config.override(config.load(ROOT / "peers.toml"), train={"rounds": 3}, data={"alpha": 0.1})
    cfg = config.replace_faults(cfg, (config.parse_fault("2@2:exchange"),))
    import tomllib
    again = config.from_dict(tomllib.loads(config.dumps_toml(cfg)))
    assert again == cfg


def test_parse_fault():
    f = config.parse_fault("3@2:between-rounds")
    assert (f.peer, f.round, f.phase, f.action) == (3, 2, "between-rounds", "crash")
    assert config.parse_fault("1@1").phase == "train"
    with pytest.raises(ConfigError, match="ID@ROUND:PHASE"):
        config.parse_fault("nonsense")
    with pytest.raises(ConfigError, match="not allowed"):
        config.parse_fault("1@1:lunch")


def test_launch_presets_apply_before_explicit_options(tmp_path):
    from p2pfed.run.launch import launcher
    cfg, _, _ = launcher.resolve_config(launcher.parse_args(["--preset", "seed", "--peers", "2",
                                                          "--run-dir", str(tmp_path)]))
    assert (cfg.model.pretrained, cfg.model.input_size, cfg.model.cifar_stem) == (True, 224, False)
    assert (cfg.train.rounds, cfg.train.local_epochs, cfg.train.local_steps) == (1, 1.0, ())
    cfg, _, _ = launcher.resolve_config(launcher.parse_args(["--preset", "seed", "--rounds", "4", "--peers", "3",
                                                          "--run-dir", str(tmp_path)]))
    assert cfg.train.rounds == 4 and len(cfg.peers) == 3 and len({p.port for p in cfg.peers}) == 3


def test_launch_lets_any_survivors_finish_on_one_host(tmp_path):
    from p2pfed.run.launch import launcher
    cfg, _, _ = launcher.resolve_config(launcher.parse_args(["--peers", "5", "--run-dir", str(tmp_path)]))
    assert cfg.averaging.min_peers == 1
    assert config.load(ROOT / "peers.toml").averaging.min_peers == 0     # multi-host default: a majority


def test_secure_aggregation_refuses_rounds_of_two_by_name(tmp_path):
    """Under secure aggregation a round of two would show each member its partner's update: a
    min_peers below 3, or fewer than 3 peers, is refused naming the keys; launch.py's one-host
    default becomes 3 instead of 1."""
    five = [{"id": i, "host": "127.0.0.1", "port": 9000 + i} for i in range(5)]
    with pytest.raises(ConfigError, match=r"averaging.min_peers = 2 with security.secure_aggregation = true.*at "
                                          r"least 3"):
        config.from_dict({"peers": five, "security": {"secure_aggregation": True}, "averaging": {"min_peers": 2}})
    with pytest.raises(ConfigError, match=r"needs at least 3 peers, and \[\[peers\]\] lists 2"):
        config.from_dict({"peers": five[:2], "security": {"secure_aggregation": True}})
    assert config.from_dict({"peers": five, "security": {"secure_aggregation": True}}).averaging.min_peers == 0
    from p2pfed.run.launch import launcher
    cfg, _, _ = launcher.resolve_config(launcher.parse_args(["--peers", "5", "--secure-aggregation", "--run-dir",
                                                          str(tmp_path)]))
    assert cfg.averaging.min_peers == 3
    with pytest.raises(ConfigError, match="needs at least 3 peers"):
        launcher.resolve_config(launcher.parse_args(["--peers", "2", "--secure-aggregation", "--run-dir",
                                                     str(tmp_path)]))
    for bad in ({"mask_degree": 9, "secure_aggregation": True}, {"mask_degree": 6, "secure_aggregation": True},
                {"mask_degree": 10}):
        with pytest.raises(ConfigError, match=r"security.mask_degree = \d+ must be 0 .* an even number >= 8"):
            config.from_dict({"peers": five, "security": bad})
    from p2pfed.consensus import recipe
    on = config.from_dict({"peers": five, "security": {"secure_aggregation": True}})
    sparse = config.from_dict({"peers": five, "security": {"secure_aggregation": True, "mask_degree": 10}})
    assert "mask_degree" not in recipe.of(on)                  # a peer of protocol 3 agrees while it is 0
    assert "security.mask_degree: 10 here, (absent: at its default) there" in recipe.differences(
        recipe.of(sparse), recipe.of(on))


def test_round_size_is_exactly_one_of_local_steps_and_local_epochs():
    # the default sizes rounds in steps; setting local_epochs alone switches that default off
    assert config.Config().train.local_steps and not config.Config().train.local_epochs
    cfg = config.from_dict({"train": {"local_epochs": 0.5}})
    assert (cfg.train.local_steps, cfg.train.local_epochs) == ((), 0.5)
    assert config.override(cfg, train={"local_steps": [2, 4]}).train.local_steps == (2, 4)
    assert config.from_dict({"train": {"local_steps": 3}}).train.local_steps == (3,)
    both = r"set exactly one of train.local_steps .* and train.local_epochs"
    with pytest.raises(ConfigError, match=both + r".*got local_steps = \[2\], local_epochs = 1.0"):
        config.from_dict({"train": {"local_steps": 2, "local_epochs": 1.0}})
    with pytest.raises(ConfigError, match=both + r".*got local_steps = \[\], local_epochs = 0.0"):
        config.from_dict({"train": {"local_steps": 0, "local_epochs": 0}})
