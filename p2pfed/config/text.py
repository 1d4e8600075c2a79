"""A config as text: TOML for run dirs, and the Markdown key tables of docs/configuration.md."""
from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from typing import Any, Literal

from .parse import to_dict
from .schema import SECTIONS, Config


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
    for name in SECTIONS:
        out.append(f"[{name}]")
        out += [f"{k} = {val(v)}" for k, v in d[name].items()]
        out.append("")
    for table in ("peers", "faults"):
        for item in d[table]:
            out.append(f"[[{table}]]")
            out += [f"{k} = {val(v)}" for k, v in item.items()]
            out.append("")
    return "\n".join(out)


def markdown_table(cls: type, section: str) -> str:
    """The docs/configuration.md table of one section: key, type, default, and the field's comment."""
    comments = dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.*)$", inspect.getsource(cls), re.M))
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        name = getattr(typ, "__name__", None) if typing.get_origin(typ) is None else None
        if typing.get_origin(typ) is Literal:
            name = "one of " + ", ".join(f'"{a}"' for a in typing.get_args(typ))
        elif typing.get_origin(typ) is tuple:
            name = "list of str" if typing.get_args(typ)[0] is str else "int or list of int"
        default = "(required)" if f.default is dataclasses.MISSING else f.default
        if isinstance(default, tuple):
            default = list(default)
        shown = "(required)" if default == "(required)" else (
            str(default).lower() if isinstance(default, bool) else repr(default).replace("'", '"'))
        rows.append(f"| `{section}.{f.name}` | {name} | `{shown}` | {comments.get(f.name, '')} |")
    return "\n".join(rows)
