"""Guards between the book and the package, in both directions.

Every snippet section in minigpt/ is shown by some page (no orphaned code that
the book claims to teach but never shows), and every include on a page resolves
to a file and a section that exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MARKER = re.compile(r"#\s*--8<--\s*\[(start|end):([^\]]*)\]")
INCLUDE = re.compile(r'^\s*(?:-{1,}8<-{1,}|;?-{2,}8<-{2,})\s*"([^"]+)"', re.M)
SECTION_NAME = re.compile(r"[a-z][-_0-9a-z]*\Z")


def shown(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if ROOT in path.parents else str(path)


def sections_in(path: Path) -> list[str]:
    """Section names defined in a source file, checked to be balanced."""
    opened, names = [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = MARKER.search(line)
        if not match:
            continue
        kind, name = match.groups()
        where = f"{shown(path)}:{lineno}"
        assert SECTION_NAME.match(name), f"{where}: section name {name!r} is not kebab"
        if kind == "start":
            assert name not in names, f"{where}: section {name!r} defined twice"
            opened.append(name)
            names.append(name)
        else:
            assert name in opened, f"{where}: [end:{name}] without a matching start"
            opened.remove(name)
    assert not opened, f"{shown(path)}: unclosed section(s) {opened}"
    return names


def includes() -> list[tuple[Path, str, str | None]]:
    """(page, file, section or None) for every snippet include in docs/."""
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for target in INCLUDE.findall(page.read_text(encoding="utf-8")):
            file, _, section = target.partition(":")
            found.append((page, file, section or None))
    return found


def source_files() -> list[Path]:
    return sorted((ROOT / "minigpt").rglob("*.py"))


def test_the_book_includes_something():
    assert includes(), "no page includes any snippet: the include pattern is broken"


@pytest.mark.parametrize("path", source_files(), ids=lambda p: p.name)
def test_every_section_is_included_by_some_page(path):
    rel = path.relative_to(ROOT).as_posix()
    included = {(file, section) for _, file, section in includes()}
    if (rel, None) in included:
        return  # the whole file is on a page, every section with it
    missing = [s for s in sections_in(path) if (rel, s) not in included]
    assert not missing, f"{rel}: sections no page includes: {missing}"


@pytest.mark.parametrize("page, file, section", includes(),
                         ids=lambda v: v.name if isinstance(v, Path) else str(v))
def test_every_include_resolves(page, file, section):
    target = ROOT / file
    where = f"{page.relative_to(ROOT)} includes {file}:{section}"
    assert target.is_file(), f"{where}, but {file} does not exist"
    if section is not None:
        assert section in sections_in(target), f"{where}, but there is no such section"


def test_guards_see_an_unbalanced_section(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("# --8<-- [start:one]\nx = 1\n# --8<-- [end:one]\n")
    assert sections_in(source) == ["one"]
    source.write_text("# --8<-- [start:one]\nx = 1\n")
    with pytest.raises(AssertionError, match="unclosed"):
        sections_in(source)


def test_include_pattern_matches_the_forms_pages_use():
    text = ('```python\n--8<-- "minigpt/layers.py:softmax-stable"\n```\n'
            '    --8<-- "a.py"\n')
    assert INCLUDE.findall(text) == ["minigpt/layers.py:softmax-stable", "a.py"]
