"""The docs describe the code as it is: every package's map lists its modules, docs/architecture.md
names every module, every source path the docs and docstrings name exists, and the stage table
and the fault points come from the code (tests/make_doc_tables.py rewrites the tables)."""
import ast
import re
import subprocess
from pathlib import Path

import pytest

from p2pfed.consensus.faultpoints import FaultPoint
from p2pfed.run.node import stages

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.parent for p in [*(ROOT / "p2pfed").rglob("__init__.py"), ROOT / "bench" / "__init__.py"]
                  if p.exists())
MAP_LINE = re.compile(r"^ {4}([\w.]+/|[\w]+\.(?:py|html))\s")
SOURCE_PATH = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w-]+\.(?:py|html|sh))\b")


def _parts(pkg: Path) -> set[str]:
    """What a package's map must list: its modules (not __init__/__main__), data files it ships, sub-packages."""
    mods = {p.name for p in pkg.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    mods |= {p.name for p in pkg.glob("*.html")}
    return mods | {f"{d.name}/" for d in pkg.iterdir() if (d / "__init__.py").exists()}


@pytest.mark.parametrize("pkg", PACKAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_package_map_lists_exactly_its_modules(pkg):
    first = ast.parse((pkg / "__init__.py").read_text()).body[0]
    doc = first.value.value if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) else ""
    listed = {m.group(1) for line in doc.splitlines() if (m := MAP_LINE.match(line))}
    if pkg == ROOT / "p2pfed":                      # the top map lists the layers, config/ among them
        listed = {x for x in listed if x.endswith("/")}
    have = _parts(pkg)
    assert not have - listed, f"{pkg.relative_to(ROOT)}/__init__.py: its map lacks {sorted(have - listed)}"
    assert not listed - have, f"{pkg.relative_to(ROOT)}/__init__.py: its map names {sorted(listed - have)}, " \
                              f"which do not exist"


def test_the_architecture_module_map_names_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text()
    mapped = set(re.findall(r"`((?:\w+/)+[\w]+\.(?:py|html))`", text))
    modules = {str(p.relative_to(ROOT / "p2pfed")) for p in (ROOT / "p2pfed").rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py")}
    missing = sorted(modules - mapped)
    assert not missing, f"docs/architecture.md's module map lacks {missing}"


def _tracked() -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return set(out) | {str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if ".venv" not in p.parts}


def _texts():
    """The docs (not docs/history/, a record of what was, with the paths of its day) and the code."""
    for md in sorted([*(ROOT / "docs").glob("*.md"), ROOT / "README.md"]):
        yield md, md.read_text()
    for py in sorted([*(ROOT / "p2pfed").rglob("*.py"), *(ROOT / "bench").glob("*.py")]):
        yield py, py.read_text()


def test_every_source_path_the_docs_and_docstrings_name_exists():
    files = _tracked()
    names = {Path(f).name for f in files}
    stale = []
    for path, text in _texts():
        for n, line in enumerate(text.splitlines(), 1):
            for m in SOURCE_PATH.finditer(line):
                ref = m.group(1)
                if re.search(r"\b[A-Z][A-Z_]+\b", ref):       # a placeholder: bench/NAME.py, RUN_DIR/...
                    continue
                if "/" in ref:
                    ok = any(f == ref or f.endswith("/" + ref) for f in files) or (path.parent / ref).exists()
                else:
                    ok = ref in names
                if not ok:
                    stale.append(f"{path.relative_to(ROOT)}:{n}: {ref}")
    assert not stale, "paths that do not exist:\n" + "\n".join(stale)


def test_the_stage_table_is_generated_from_the_code():
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert stages.markdown_table() in text, "docs/architecture.md: run `python tests/make_doc_tables.py`"


def test_every_list_of_fault_points_names_them_all():
    """In the docs, a list of the peer's points (in parentheses, with `between-rounds` and two more, or
    after "Points:") names every one. (The code derives its lists from FaultPoint.)"""
    points = [p.value for p in FaultPoint]

    def lacks(text: str) -> list[str]:
        return [p for p in points if not re.search(rf"(?<![\w-]){re.escape(p)}(?![\w-])", text)]

    short = []
    for path, text in _texts():
        if path.suffix != ".md":
            continue
        flat = " ".join(text.split())
        lists = re.findall(r"\(([^()]*)\)", flat) + re.findall(r"Points: (.*?`between-rounds`)", flat)
        for group in lists:
            if "between-rounds" in group and len(points) - len(lacks(group)) >= 3 and lacks(group):
                short.append(f"{path.relative_to(ROOT)}: lacks {lacks(group)} in: ({group[:100]})")
    faults_md = " ".join((ROOT / "docs" / "faults.md").read_text().split())
    assert re.search(r"Points: .*?`between-rounds`", faults_md), "docs/faults.md lists the points after 'Points:'"
    assert not short, "\n".join(short)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_every_relative_link_in_the_docs_resolves():
    """[text](path) and [text](path#anchor) in README.md and docs/ (history included) name a file
    that exists and, with an anchor, a heading or an id in it."""
    broken = []
    for md in sorted([*(ROOT / "docs").rglob("*.md"), ROOT / "README.md"]):
        for n, line in enumerate(md.read_text().splitlines(), 1):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"[a-z]+:", target):
                    continue                                   # http:, https:, mailto:
                path, _, anchor = target.partition("#")
                dest = (md.parent / path).resolve() if path else md
                if not dest.exists():
                    broken.append(f"{md.relative_to(ROOT)}:{n}: {target} (no such file)")
                    continue
                if anchor and dest.suffix == ".md":
                    text = dest.read_text()
                    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
                    anchors |= set(re.findall(r'id="([^"]+)"', text))
                    if anchor not in anchors:
                        broken.append(f"{md.relative_to(ROOT)}:{n}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)
