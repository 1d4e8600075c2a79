"""Rewrite the docs' generated tables from the code (after adding a config key or a stage):
`python tests/make_doc_tables.py`. tests/test_config.py and tests/test_docs.py check they match.

    docs/configuration.md  one key table per section, from the config's dataclasses
    docs/architecture.md   the stage table, from run/node/stages.py
"""
import re
import sys
from pathlib import Path

from p2pfed import config
from p2pfed.run.node import stages

ROOT = Path(__file__).resolve().parents[1]
STAGE_TABLE = re.compile(r"\| stage \| what the peer is doing \| may move to \|\n\|---\|---\|---\|\n(?:\| `[^\n]*\n)+")


def config_tables(text: str) -> str:
    for name, cls in {"peers": config.PeerSpec, "faults": config.Fault, **config.SECTIONS}.items():
        table = config.markdown_table(cls, name)
        pattern = re.compile(r"\| key \| type \| default \| meaning \|\n\|---\|---\|---\|---\|\n(?:\| `" + re.escape(name)
                             + r"\.[^\n]*\n)+")
        text, n = pattern.subn(lambda m: table + "\n", text)
        if n != 1:
            sys.exit(f"docs/configuration.md: found {n} tables for [{name}]; add one by hand first")
    return text


def stage_table(text: str) -> str:
    text, n = STAGE_TABLE.subn(lambda m: stages.markdown_table() + "\n", text)
    if n != 1:
        sys.exit(f"docs/architecture.md: found {n} stage tables; add one by hand first")
    return text


def main() -> None:
    for name, rewrite in (("configuration.md", config_tables), ("architecture.md", stage_table)):
        path = ROOT / "docs" / name
        path.write_text(rewrite(path.read_text()))


if __name__ == "__main__":
    main()
