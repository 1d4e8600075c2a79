"""Configuration: peers.toml as frozen dataclasses, plus overrides. Imports nothing of p2pfed.

    schema.py    one dataclass per section; every field has a default and a one-line comment
    parse.py     TOML -> Config (unknown keys and bad values raise ConfigError naming the key),
                 overrides, local peers, fault specs
    validate.py  checks across keys
    text.py      a Config as TOML, and the key tables of docs/configuration.md

Every layer may read a Config (attribute access); only run/ builds one.
"""
from .parse import (from_dict, load, local_peers, override, parse_fault, parse_slow, replace_faults, replace_peers,
                    to_dict)
from .schema import (SECTIONS, SECURE_MIN_MEMBERS, AveragingConfig, Config, ConfigError, DataConfig, Fault, ModelConfig, OutputConfig,
                     PeerSpec, SecurityConfig, TrainConfig)
from .text import dumps_toml, markdown_table

__all__ = ["SECTIONS", "SECURE_MIN_MEMBERS", "AveragingConfig", "Config", "ConfigError", "DataConfig", "Fault", "ModelConfig",
           "OutputConfig", "PeerSpec", "SecurityConfig", "TrainConfig", "dumps_toml", "from_dict", "load",
           "local_peers", "markdown_table", "override", "parse_fault", "parse_slow", "replace_faults", "replace_peers", "to_dict"]
