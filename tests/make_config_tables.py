"""Rewrite the key tables of docs/configuration.md from the config's dataclasses (after adding or
changing a key): `python tests/make_config_tables.py`. tests/test_config.py checks they match."""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2pfed import config  # noqa: E402


def main() -> None:
    path = ROOT / "docs" / "configuration.md"
    text = path.read_text()
    for name, cls in {"peers": config.PeerSpec, "faults": config.Fault, **config.SECTIONS}.items():
        table = config.markdown_table(cls, name)
        pattern = re.compile(r"\| key \| type \| default \| meaning \|\n\|---\|---\|---\|---\|\n(?:\| `" + re.escape(name)
                             + r"\.[^\n]*\n)+")
        text, n = pattern.subn(lambda m: table + "\n", text)
        if n != 1:
            sys.exit(f"docs/configuration.md: found {n} tables for [{name}]; add one by hand first")
    path.write_text(text)


if __name__ == "__main__":
    main()
