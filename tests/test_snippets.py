"""Guards between the book and the package, in both directions.

Every snippet section in minigpt/ is shown by some page (no orphaned code that
the book claims to teach but never shows), and every include on a page resolves
to a file and a section that exist.
"""

from __future__ import annotations

import ast
import functools
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


def listings() -> list[tuple[Path, str, str | None]]:
    """What pages show: the includes, and the sections notebooks carry as cells."""
    return includes() + list(notebook_copies())


def source_files() -> list[Path]:
    return sorted((ROOT / "minigpt").rglob("*.py"))


def test_the_book_includes_something():
    assert includes(), "no page includes any snippet: the include pattern is broken"


@pytest.mark.parametrize("path", source_files(), ids=lambda p: p.name)
def test_every_section_is_included_by_some_page(path):
    rel = path.relative_to(ROOT).as_posix()
    included = {(file, section) for _, file, section in listings()}
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


# --- No code hides, and a page runs the reader's code -------------------------

NOTEBOOK_SHOW = re.compile(r"^show\(([^)]*)\)", re.M)
FROM_IMPORT = re.compile(r"^\s*from\s+(minigpt(?:\.\w+)*)\s+import\s+\(?([^)\n]*)\)?",
                         re.M)
MODULE_ALIAS = re.compile(r"^\s*(?:import\s+(minigpt\.\w+)\s+as\s+(\w+)|"
                          r"from\s+minigpt\s+import\s+(\w+)(?:\s+as\s+(\w+))?)", re.M)


def section_lines(path: Path) -> dict[str, set[int]]:
    """For each section of a source file, the 1-based line numbers it shows."""
    open_at: dict[str, int] = {}
    ranges: dict[str, set[int]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = MARKER.search(line)
        if match and match.group(1) == "start":
            open_at[match.group(2)] = lineno
        elif match:
            start = open_at.pop(match.group(2))
            ranges[match.group(2)] = set(range(start + 1, lineno))
    return ranges


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*") if p.suffix in {".md", ".py"}
                  and "assets" not in p.parts)


def section_texts() -> dict[str, tuple[str, str]]:
    """The text of every section of minigpt/ (markers left out) -> (file, section)."""
    texts = {}
    for path in source_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        for name, numbers in section_lines(path).items():
            body = [lines[n - 1] for n in sorted(numbers)
                    if not MARKER.search(lines[n - 1])]
            texts["\n".join(body).strip()] = (path.relative_to(ROOT).as_posix(), name)
    return texts


@functools.cache
def notebook_copies() -> tuple[tuple[Path, str, str], ...]:
    """(page, file, section) for each code cell of a notebook page that is, verbatim,
    a section of minigpt/.

    A notebook cannot include a snippet, so it runs a copy of the section; a section
    counts as shown there only while some cell equals it, character for character.
    """
    import jupytext

    texts, found = section_texts(), []
    for page in pages():
        if page.suffix == ".py":
            for cell in jupytext.read(page).cells:
                if cell.cell_type == "code" and cell.source.strip() in texts:
                    found.append((page, *texts[cell.source.strip()]))
    return tuple(found)


def notebook_shown(page: Path) -> list[tuple[str, str]]:
    """(module, qualified name) of each object a notebook page prints with show()."""
    text = page.read_text(encoding="utf-8")
    aliases = {alias or name: f"minigpt.{name}"
               for _, _, name, alias in MODULE_ALIAS.findall(text) if name}
    aliases.update({alias: module for module, alias, _, _ in
                    MODULE_ALIAS.findall(text) if module})
    found = []
    for args in NOTEBOOK_SHOW.findall(text):
        for arg in args.replace("\n", " ").split(","):
            head, _, rest = arg.strip().partition(".")
            if head in aliases and rest:
                found.append((aliases[head], rest))
    return found


def shown_lines() -> dict[str, set[int]]:
    """For each file of minigpt/, the lines that some page shows."""
    shown_at: dict[str, set[int]] = {}
    for _, file, section in listings():
        path = ROOT / file
        if not path.is_file():
            continue
        if section is None:
            count = len(path.read_text(encoding="utf-8").splitlines())
            lines = set(range(1, count + 1))
        else:
            lines = section_lines(path).get(section, set())
        shown_at.setdefault(file, set()).update(lines)
    for page in DOCS.rglob("*.py"):
        for module, qualname in notebook_shown(page):
            path = ROOT / (module.replace(".", "/") + ".py")
            for name, node in definitions(path):
                if name == qualname or name.startswith(qualname + "."):
                    rel = path.relative_to(ROOT).as_posix()
                    shown_at.setdefault(rel, set()).update(
                        range(first_line(node), node.end_lineno + 1))
    return shown_at


def first_line(node) -> int:
    return min([node.lineno, *(d.lineno for d in node.decorator_list)])


def definitions(path: Path) -> list[tuple[str, object]]:
    """(qualified name, node) of every class, function and method in a file."""
    import ast

    found = []

    def visit(body, prefix):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{node.name}"
                found.append((name, node))
                if isinstance(node, ast.ClassDef):
                    visit(node.body, name + ".")
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                visit(node.body, prefix)

    visit(ast.parse(path.read_text(encoding="utf-8")).body, "")
    return found


def required_lines(path: Path, node) -> set[int]:
    """The lines that showing a definition whole must show (a class: its header)."""
    import ast

    text = path.read_text(encoding="utf-8").splitlines()
    lines = set(range(first_line(node), node.end_lineno + 1))
    if isinstance(node, ast.ClassDef):
        for child in node.body:
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                lines -= set(range(first_line(child), child.end_lineno + 1))
    return {n for n in lines if text[n - 1].strip() and not MARKER.search(text[n - 1])}


def hidden_definitions() -> list[str]:
    shown_at = shown_lines()
    hidden = []
    for path in source_files():
        rel = path.relative_to(ROOT).as_posix()
        for name, node in definitions(path):
            if not required_lines(path, node) <= shown_at.get(rel, set()):
                hidden.append(f"{rel}:{node.lineno} {name}")
    return hidden


def test_no_code_hides():
    """Every function, class (its header too) and method is shown whole on a page."""
    hidden = hidden_definitions()
    assert not hidden, (f"{len(hidden)} definitions no page shows whole:\n  "
                        + "\n  ".join(hidden))


def page_definitions(page: Path) -> dict[str, str]:
    """Module-level names that the listings included on a page define -> module."""
    import ast

    defined: dict[str, str] = {}
    for file, section in [(f, s) for p, f, s in listings() if p == page]:
        path = ROOT / file
        if not path.is_file() or path.suffix != ".py":
            continue
        lines = (set(range(1, 10**6)) if section is None
                 else section_lines(path).get(section, set()))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            names = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = (node.targets if isinstance(node, ast.Assign)
                           else [node.target])
                names = [t.id for t in targets if isinstance(t, ast.Name)]
            if names and node.lineno in lines:
                module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
                defined.update(dict.fromkeys(names, module))
    return defined


def peeks(page: Path) -> list[str]:
    """Imports from minigpt of names that the page's own listings define."""
    defined = page_definitions(page)
    text = page.read_text(encoding="utf-8")
    found = []
    for module, names in FROM_IMPORT.findall(text):
        for item in names.split(","):
            name = item.strip().split(" as ")[0].strip()
            if name in defined:
                found.append(f"from {module} import {name}")
            elif f"{module}.{name}" in set(defined.values()):
                # `from minigpt import tensor` then tensor.Tensor(...)
                used = re.findall(rf"\b{re.escape(name)}\.(\w+)", text)
                found += [f"{module}.{name}.{u}" for u in used if u in defined]
    for module, alias, _, _ in MODULE_ALIAS.findall(text):
        if module:
            used = re.findall(rf"\b{re.escape(alias)}\.(\w+)", text)
            found += [f"{module}.{u}" for u in used
                      if defined.get(u) == module]
    return sorted(set(found))


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
def test_a_page_runs_the_readers_code(page):
    """A page never imports from minigpt a name that its own listings define."""
    found = peeks(page)
    assert not found, (f"{page.relative_to(ROOT)} shows these and then imports the "
                       f"package's copy: {found}")


def drifted(notebook: Path) -> list[str]:
    """Names that a notebook defines in a cell equal to no section, although a
    module it copies sections from defines them too: a copy gone stale."""
    import jupytext

    copies, cells = section_texts(), jupytext.read(notebook).cells
    sources = {copies[c.source.strip()][0] for c in cells
               if c.cell_type == "code" and c.source.strip() in copies}
    names = {name for file in sources for name, _ in definitions(ROOT / file)
             if "." not in name}
    found = []
    for cell in cells:
        if cell.cell_type != "code" or cell.source.strip() in copies:
            continue
        for node in ast.parse(cell.source).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names:
                found.append(node.name)
    return found


@pytest.mark.parametrize("page", [p for p in pages() if p.suffix == ".py"],
                         ids=lambda p: p.name)
def test_a_notebook_copies_the_package_exactly(page):
    """A notebook cell that defines a name of minigpt/ is a section of it, verbatim:
    the code the notebook runs is the code the package holds."""
    found = drifted(page)
    assert not found, (f"{page.relative_to(ROOT)} defines {found} in cells that "
                       f"differ from every section of minigpt/: copy the section "
                       f"exactly, markers left out")


def test_a_drifted_notebook_copy_is_seen(tmp_path):
    """Change one character of a copied section and the guard names it."""
    text, (file, name) = next((t, fs) for t, fs in section_texts().items()
                              if t.startswith("def "))
    defined = text.split("(")[0].removeprefix("def ")
    notebook = tmp_path / "nb.py"
    notebook.write_text(f"# %%\n{text}\n\n# %%\n{text.replace(':', ': ', 1)}\n")
    assert drifted(notebook) == [defined], (file, name)


def test_hidden_code_is_seen(tmp_path, monkeypatch):
    """The guard notices a method that no section shows."""
    module = tmp_path / "mod.py"
    module.write_text("# --8<-- [start:a]\nclass A:\n    x = 1\n# --8<-- [end:a]\n\n"
                      "    def hidden(self):\n        return 1\n")
    (node_a, node_h) = [n for _, n in definitions(module)]
    assert required_lines(module, node_a) == {2, 3}
    shown = section_lines(module)["a"]
    assert required_lines(module, node_a) <= shown
    assert not required_lines(module, node_h) <= shown
