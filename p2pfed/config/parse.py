"""Reading a config: TOML -> dataclasses, checked key by key; overrides; peers and faults."""
from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

from .schema import SECTIONS, Config, ConfigError, Fault, PeerSpec, TrainConfig
from .validate import validate


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
    if origin is tuple and typing.get_args(typ)[0] is str:
        items = value if isinstance(value, (list, tuple)) else [value]
        if any(not isinstance(v, str) or not v for v in items):
            raise ConfigError(f"{where} = {value!r} must be a list of non-empty strings")
        if len(set(items)) != len(items):
            dup = sorted({v for v in items if items.count(v) > 1})
            raise ConfigError(f"{where} names {dup} more than once; each name once")
        return tuple(items)
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


def _local_steps_auto(table: dict) -> dict:
    """train.local_steps = "auto" spells local_steps at its default with train.auto_steps = true."""
    value = table.get("local_steps")
    if not isinstance(value, str):
        return table
    if value != "auto":
        raise ConfigError(f'train.local_steps = {value!r} must be an integer, a non-empty list of integers, or "auto"')
    if table.get("auto_steps") is False:
        raise ConfigError('train.local_steps = "auto" turns train.auto_steps on, but the table also sets '
                          'auto_steps = false; remove one of the two')
    if table.get("local_epochs"):
        raise ConfigError(f'train.local_steps = "auto" and train.local_epochs = {table["local_epochs"]!r} are both '
                          f'set; set exactly one of the two')
    return {**table, "local_steps": list(TrainConfig.local_steps), "auto_steps": True}    # the field's default


def _build(cls: type, where: str, table: Any) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"[{where}] must be a table, got {type(table).__name__}")
    if cls is TrainConfig:
        table = _local_steps_auto(table)
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


def from_dict(raw: dict, check: bool = True) -> Config:
    """Build and validate a Config from a parsed TOML document (check=False: every value is
    checked, but not the config as a whole, which its caller completes and then validates)."""
    allowed = ["peers", "faults", *SECTIONS]
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"unknown top-level key {key!r}; allowed: {', '.join(allowed)}")
    peers = tuple(_build(PeerSpec, "peers", p) for p in raw.get("peers", []))
    faults = tuple(_build(Fault, "faults", f) for f in raw.get("faults", []))
    sections = {name: _build(cls, name, raw.get(name, {})) for name, cls in SECTIONS.items()}
    cfg = Config(peers=peers, faults=faults, **sections)
    if check:
        validate(cfg)
    return cfg


def load(path: str | os.PathLike, placed_later: bool = False) -> Config:
    """Read peers.toml; errors name the file. placed_later: the peers' hosts and ports come from
    elsewhere (`p2pfed peer --from-slurm`): a [[peers]] entry may leave its host, port and
    public_key out, and the config is validated after they are filled in."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; copy peers.toml from the repo root") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    try:
        # placed later: the whole is validated once the step has placed every peer (run/launch/slurm.py)
        return from_dict(raw, check=not placed_later)
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
        if section == "train" and values.get("local_steps") == "auto" and values.get("auto_steps") is None:
            raw[section]["auto_steps"] = True           # "auto" turns it on, whatever cfg had
        for key, value in values.items():
            if value is not None:
                raw[section][key] = value
    return from_dict(raw)


def local_peers(n: int, ports: list[int], host: str = "127.0.0.1") -> tuple[PeerSpec, ...]:
    """N peers on one host, ids 0..n-1."""
    return tuple(PeerSpec(id=i, host=host, port=ports[i]) for i in range(n))


def replace_peers(cfg: Config, peers: tuple[PeerSpec, ...]) -> Config:
    new = dataclasses.replace(cfg, peers=peers)
    validate(new)
    return new


def replace_faults(cfg: Config, faults: tuple[Fault, ...]) -> Config:
    new = dataclasses.replace(cfg, faults=faults)
    validate(new)
    return new


def parse_slow(spec: str) -> Fault:
    """Parse 'IDxFACTOR' or 'ID@ROUNDxFACTOR', as given to launch.py --slow: from ROUND (default 1)
    on, peer ID's local steps take FACTOR times as long."""
    try:
        who, factor = spec.lower().split("x", 1)
        who, _, rnd = who.partition("@")
        return Fault(peer=int(who), round=int(rnd or 1), phase="train", action="slow", slow_factor=float(factor))
    except ValueError:
        raise ConfigError(f"--slow {spec!r} must look like IDxFACTOR or ID@ROUNDxFACTOR, e.g. 2x3 (peer 2 at a "
                          f"third of its speed)") from None


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
