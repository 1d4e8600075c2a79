"""Configuration: frozen dataclasses read from peers.toml, plus overrides.

Every section is a dataclass; every field has a default and a one-line comment.
Unknown keys and bad values raise ConfigError naming the key and what is allowed.
This module knows nothing about sockets or torch.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and the fix."""


@dataclass(frozen=True)
class PeerSpec:
    id: int                      # unique peer id, >= 0; the lowest live id proposes groups
    host: str = "127.0.0.1"      # address other peers connect to (advertised address)
    port: int = 0                # TCP port this peer listens on
    bind: str = ""               # address to bind; "" means the same as host (use 0.0.0.0 on multi-host)
    public_key: str = ""         # Z85 CURVE public key (from `p2pfed keygen`); required when security.curve


@dataclass(frozen=True)
class DataConfig:
    dataset: Literal["cifar10", "folder", "synthetic"] = "synthetic"  # which data set
    data_dir: str = "data"       # cifar10: download/cache dir; folder: root with train/ test/, or a .tar.xz
    cache_dir: str = ""          # where a .tar.xz is unpacked; "" = ~/.cache/p2pfed
    partition: Literal["iid", "dirichlet"] = "iid"  # how the training set is split across peers
    alpha: float = 0.5           # dirichlet concentration; smaller = more skewed label mix
    seed: int = 0                # seed for partitions, synthetic data, init and shuffling
    synthetic_train: int = 2000  # synthetic: number of training images
    synthetic_test: int = 500    # synthetic: number of test images
    train_limit: int = 0         # use a fixed random subset of N training images (0 = all), e.g. quick demos
    test_limit: int = 0          # evaluate on a fixed random subset of N test images (0 = all)


@dataclass(frozen=True)
class ModelConfig:
    width_mult: float = 1.0      # MobileNetV2 width multiplier (tests use 0.1)
    cifar_stem: bool = True      # first conv stride 1 instead of 2: much better on 32x32 inputs
    input_size: int = 32         # images are resized to this (224 to use ImageNet weights as designed)
    pretrained: bool = False     # start from torchvision's ImageNet weights (needs internet or cache)
    weights_file: str = ""       # start from a local state_dict file instead (backbone; head is replaced)
    num_classes: int = 10        # output classes; must match the data set


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 8.0          # run length: passes over the (average) partition; rounds follow from it
    rounds: int = 0              # > 0: run exactly this many rounds instead (tests, demos); 0 = from epochs
    local_steps: tuple[int, ...] = (1, 2, 4)  # local optimiser steps per round; a list grows k over equal parts of the run
    local_epochs: float = 0.0    # or: local epochs per round (fractions allowed); set exactly one of the two
    batch_size: int = 32         # local mini-batch size (per peer; the global batch is peers x this)
    optimizer: Literal["adamw", "sgd"] = "sgd"  # local optimizer (sgd: momentum 0.9, Nesterov)
    lr: float = 0.05             # peak learning rate at a global batch of lr_base_batch images
    lr_scaling: Literal["sqrt", "linear", "none"] = "linear"  # lr x the ratio global batch / lr_base_batch (SGD), x its square root (AdamW), or as given
    lr_base_batch: int = 128     # the global batch (peers x batch_size) at which `lr` applies as given
    label_smoothing: float = 0.1  # cross-entropy label smoothing
    weight_decay: float = 5e-4   # weight decay
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"  # LR over the whole run's steps
    augment: bool = True         # random crop (pad 4) + horizontal flip
    threads: int = 0             # torch threads per peer; 0 = cores / local peers
    max_steps: int = 0           # with local_epochs: cap local steps per round (0 = no cap); tests and demos
    eval_every: int = 0          # evaluate every N rounds; 0 = each time an epoch is completed (and the last round)
    eval_batch_size: int = 64    # batch size for evaluation (larger batches raise peak memory, not speed)
    bn_pool_images: int = 512    # images per peer for pooled BatchNorm statistics before eval/export; 0 = off
    outer_momentum: float = 0.0  # > 0: Nesterov outer momentum on each round's mean (SlowMo/DiLoCo); 0 = off
    outer_lr: float = 1.0        # outer learning rate, used when outer_momentum > 0
    average_optimizer_state: bool = False  # also average the optimizer's buffers (SGD momentum; AdamW moments)
    scaffold: bool = False       # SCAFFOLD control variates against client drift on skewed partitions (2x the bytes)


@dataclass(frozen=True)
class AveragingConfig:
    heartbeat_interval_s: float = 0.5  # transport thread sends a heartbeat this often
    dead_after_s: float = 4.0          # a peer silent this long is dead for the current attempt
    ready_timeout_s: float = 600.0     # leader waits this long for live peers to finish training
    exchange_timeout_s: float = 60.0   # max time for one all-reduce attempt (shards + digests)
    startup_timeout_s: float = 60.0    # how long to wait for peers to appear at start-up
    fetch_timeout_s: float = 60.0      # max time to download the consensus from a live peer
    max_attempts: int = 10             # attempts per round before giving up
    min_peers: int = 0                 # a round needs this many members; 0 = a majority of [[peers]]


@dataclass(frozen=True)
class SecurityConfig:
    curve: bool = False          # CURVE encryption + authentication; keys in [[peers]] public_key
    secret_key_file: str = ""    # this peer's secret key file; {id} is replaced by the peer id


@dataclass(frozen=True)
class OutputConfig:
    run_dir: str = "runs/latest"  # where logs, metrics, checkpoints and the consensus go
    writer: int = -1             # peer that writes consensus.pt and summary; -1 = lowest live id
    quantize: bool = False       # the writer also exports ONNX and quantizes to INT8 at the end
    calibration_images: int = 256  # images from the writer's partition used to calibrate INT8
    checkpoint_every: int = 0    # checkpoint every N rounds; 0 = at every evaluation (a restarted peer downloads anyway)
    dump_round_models: bool = False  # write each peer's model before and after averaging, per round (tests)


@dataclass(frozen=True)
class Fault:
    peer: int                    # which peer misbehaves
    round: int                   # in which round (1-based)
    phase: Literal["train", "exchange", "between-rounds"] = "train"  # where
    action: Literal["crash", "stall", "dissent"] = "crash"  # crash = os._exit; stall = sleep stall_s; dissent = corrupt my copy of the result (exchange only)
    stall_s: float = 30.0        # how long a stall lasts


@dataclass(frozen=True)
class Config:
    peers: tuple[PeerSpec, ...] = ()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    averaging: AveragingConfig = AveragingConfig()
    security: SecurityConfig = SecurityConfig()
    output: OutputConfig = OutputConfig()
    faults: tuple[Fault, ...] = ()

    def peer(self, peer_id: int) -> PeerSpec:
        for p in self.peers:
            if p.id == peer_id:
                return p
        raise ConfigError(f"peer id {peer_id} is not in [[peers]] (ids: {self.peer_ids}); "
                          f"pass one of those to --id")

    @property
    def peer_ids(self) -> list[int]:
        return sorted(p.id for p in self.peers)


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
             "averaging": AveragingConfig, "security": SecurityConfig, "output": OutputConfig}


def _coerce(where: str, typ: Any, value: Any) -> Any:
    """Check one value against its annotated type; return it (ints widen to float)."""
    origin = typing.get_origin(typ)
    if origin is Literal:
        allowed = typing.get_args(typ)
        if value not in allowed:
            raise ConfigError(f"{where} = {value!r} is not allowed; use one of {list(allowed)}")
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} = {value!r} must be true or false")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} = {value!r} must be an integer")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} = {value!r} must be a number")
        return float(value)
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        if not items or any(isinstance(v, bool) or not isinstance(v, int) for v in items):
            raise ConfigError(f"{where} = {value!r} must be an integer or a non-empty list of integers")
        return tuple(items)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} = {value!r} must be a string")
        return value
    raise AssertionError(f"unsupported config type {typ}")


# keys of which exactly one is set: setting one switches the other's default off
_EITHER = {"train": ("local_steps", "local_epochs")}
_UNSET = {"local_steps": (), "local_epochs": 0.0}


def _build(cls: type, where: str, table: Any) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"[{where}] must be a table, got {type(table).__name__}")
    pair = _EITHER.get(where)
    if pair:
        given = [k for k in pair if k in table]
        if len(given) == 1:
            other = pair[1 - pair.index(given[0])]
            table = {**table, other: _UNSET[other]}
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in table.items():
        if key not in names:
            raise ConfigError(f"unknown key {where}.{key}; allowed keys in [{where}]: {', '.join(names)}")
        unset = pair and key in pair and not isinstance(value, bool) and value in (0, [], ())
        kwargs[key] = _UNSET[key] if unset else _coerce(f"{where}.{key}", hints[key], value)
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    ids = [p.id for p in cfg.peers]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"[[peers]] ids must be unique, got {ids}")
    for p in cfg.peers:
        if p.id < 0:
            raise ConfigError(f"peers.id = {p.id} must be >= 0")
        if not 0 < p.port < 65536:
            raise ConfigError(f"peers.port = {p.port} for peer {p.id} must be in 1..65535")
        if cfg.security.curve and not p.public_key:
            raise ConfigError(f"security.curve is on but peer {p.id} has no public_key; "
                              f"run `p2pfed keygen` and list its public key")
    t = cfg.train
    if bool(t.local_steps) == bool(t.local_epochs):
        raise ConfigError(f"set exactly one of train.local_steps (optimiser steps per round) and train.local_epochs "
                          f"(epochs per round); got local_steps = {list(t.local_steps)}, local_epochs = "
                          f"{t.local_epochs}")
    if any(k < 1 for k in t.local_steps):
        raise ConfigError(f"train.local_steps = {list(t.local_steps)}: every entry must be >= 1")
    if t.local_epochs < 0:
        raise ConfigError(f"train.local_epochs = {t.local_epochs} must be > 0 (or 0 with train.local_steps set)")
    non_negative = [("train.rounds", t.rounds), ("train.bn_pool_images", t.bn_pool_images),
                    ("train.threads", t.threads), ("train.max_steps", t.max_steps),
                    ("train.eval_every", t.eval_every), ("train.weight_decay", t.weight_decay),
                    ("output.checkpoint_every", cfg.output.checkpoint_every)]
    for key, value in non_negative:
        if value < 0:
            raise ConfigError(f"{key} = {value} must be >= 0")
    if not 0 <= t.label_smoothing < 1:
        raise ConfigError(f"train.label_smoothing = {t.label_smoothing} must be in [0, 1)")
    if not 0 <= t.outer_momentum < 1:
        raise ConfigError(f"train.outer_momentum = {t.outer_momentum} must be in [0, 1) (0 = no outer step)")
    if not 0 < t.outer_lr <= 2:
        raise ConfigError(f"train.outer_lr = {t.outer_lr} must be in (0, 2]")
    if t.outer_lr != 1.0 and t.outer_momentum == 0:
        raise ConfigError(f"train.outer_lr = {t.outer_lr} has no effect without train.outer_momentum > 0; "
                          f"set both, or leave outer_lr at 1")
    positive = [("train.epochs", t.epochs), ("train.lr_base_batch", t.lr_base_batch),
                ("train.batch_size", t.batch_size), ("train.lr", t.lr),
                ("train.eval_batch_size", t.eval_batch_size), ("averaging.startup_timeout_s",
                                                                cfg.averaging.startup_timeout_s),
                ("averaging.fetch_timeout_s", cfg.averaging.fetch_timeout_s),
                ("averaging.heartbeat_interval_s", cfg.averaging.heartbeat_interval_s),
                ("averaging.dead_after_s", cfg.averaging.dead_after_s),
                ("averaging.ready_timeout_s", cfg.averaging.ready_timeout_s),
                ("averaging.exchange_timeout_s", cfg.averaging.exchange_timeout_s),
                ("averaging.max_attempts", cfg.averaging.max_attempts),
                ("model.width_mult", cfg.model.width_mult), ("model.input_size", cfg.model.input_size),
                ("data.alpha", cfg.data.alpha)]
    for key, value in positive:
        if value <= 0:
            raise ConfigError(f"{key} = {value} must be > 0")
    if cfg.averaging.dead_after_s < 2 * cfg.averaging.heartbeat_interval_s:
        raise ConfigError(f"averaging.dead_after_s ({cfg.averaging.dead_after_s}) must be at least twice "
                          f"averaging.heartbeat_interval_s ({cfg.averaging.heartbeat_interval_s})")
    if not 0 <= cfg.averaging.min_peers <= max(1, len(ids)):
        raise ConfigError(f"averaging.min_peers = {cfg.averaging.min_peers} must be in 0..{len(ids)} "
                          f"(0 = a majority of the {len(ids)} peers)")
    for f in cfg.faults:
        if f.peer not in ids:
            raise ConfigError(f"faults.peer = {f.peer} is not a peer id (ids: {sorted(ids)})")
        if f.round < 1 or (cfg.train.rounds and f.round > cfg.train.rounds):
            raise ConfigError(f"faults.round = {f.round} must be in 1..{cfg.train.rounds or 'the last round'}")
        if f.action == "dissent" and f.phase != "exchange":
            raise ConfigError(f"faults.action = \"dissent\" (peer {f.peer}, round {f.round}) needs phase = \"exchange\"")


def from_dict(raw: dict) -> Config:
    """Build and validate a Config from a parsed TOML document."""
    allowed = ["peers", "faults", *_SECTIONS]
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"unknown top-level key {key!r}; allowed: {', '.join(allowed)}")
    peers = tuple(_build(PeerSpec, "peers", p) for p in raw.get("peers", []))
    faults = tuple(_build(Fault, "faults", f) for f in raw.get("faults", []))
    sections = {name: _build(cls, name, raw.get(name, {})) for name, cls in _SECTIONS.items()}
    cfg = Config(peers=peers, faults=faults, **sections)
    _validate(cfg)
    return cfg


def load(path: str | os.PathLike) -> Config:
    """Read peers.toml; errors name the file."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; copy peers.toml from the repo root") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    try:
        return from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def to_dict(cfg: Config) -> dict:
    """Plain dict (for TOML/JSON output); empty lists are kept."""
    d = dataclasses.asdict(cfg)
    d["peers"] = list(d["peers"])
    d["faults"] = list(d["faults"])
    return d


def override(cfg: Config, **sections: dict) -> Config:
    """Return cfg with some section fields replaced, e.g. override(cfg, train={"rounds": 2}).

    Values are checked like TOML values; None values are ignored.
    """
    raw = to_dict(cfg)
    for section, values in sections.items():
        pair = _EITHER.get(section, ())
        given = [k for k in pair if values.get(k) is not None]
        if len(given) == 1:
            other = pair[1 - pair.index(given[0])]
            raw[section][other] = _UNSET[other]
        for key, value in values.items():
            if value is not None:
                raw[section][key] = value
    return from_dict(raw)


def dumps_toml(cfg: Config) -> str:
    """Serialise a Config as TOML (flat types only, which is all Config has)."""
    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    d = to_dict(cfg)
    out = []
    for name in _SECTIONS:
        out.append(f"[{name}]")
        out += [f"{k} = {val(v)}" for k, v in d[name].items()]
        out.append("")
    for table in ("peers", "faults"):
        for item in d[table]:
            out.append(f"[[{table}]]")
            out += [f"{k} = {val(v)}" for k, v in item.items()]
            out.append("")
    return "\n".join(out)


def local_peers(n: int, ports: list[int], host: str = "127.0.0.1") -> tuple[PeerSpec, ...]:
    """N peers on one host, ids 0..n-1."""
    return tuple(PeerSpec(id=i, host=host, port=ports[i]) for i in range(n))


def replace_peers(cfg: Config, peers: tuple[PeerSpec, ...]) -> Config:
    new = dataclasses.replace(cfg, peers=peers)
    _validate(new)
    return new


def replace_faults(cfg: Config, faults: tuple[Fault, ...]) -> Config:
    new = dataclasses.replace(cfg, faults=faults)
    _validate(new)
    return new


def parse_fault(spec: str, action: str = "crash") -> Fault:
    """Parse 'ID@ROUND:PHASE' (phase defaults to train), as given to launch.py --kill."""
    try:
        who, rest = spec.split("@", 1)
        rnd, _, phase = rest.partition(":")
        return Fault(peer=int(who), round=int(rnd), phase=_coerce("fault phase", typing.get_type_hints(Fault)["phase"],
                                                                    phase or "train"), action=action)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise ConfigError(f"fault {spec!r}: {e}") from None
        raise ConfigError(f"fault {spec!r} must look like ID@ROUND:PHASE, e.g. 2@2:exchange") from None


def markdown_table(cls: type, section: str) -> str:
    """The docs/configuration.md table of one section: key, type, default, and the field's comment."""
    import inspect
    import re
    comments = dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.*)$", inspect.getsource(cls), re.M))
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        name = getattr(typ, "__name__", None) if typing.get_origin(typ) is None else None
        if typing.get_origin(typ) is Literal:
            name = "one of " + ", ".join(f'"{a}"' for a in typing.get_args(typ))
        elif typing.get_origin(typ) is tuple:
            name = "int or list of int"
        default = "(required)" if f.default is dataclasses.MISSING else f.default
        if isinstance(default, tuple):
            default = list(default)
        shown = "(required)" if default == "(required)" else (
            str(default).lower() if isinstance(default, bool) else repr(default).replace("'", '"'))
        rows.append(f"| `{section}.{f.name}` | {name} | `{shown}` | {comments.get(f.name, '')} |")
    return "\n".join(rows)
