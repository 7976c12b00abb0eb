"""Pytest plugin: run every code block of every page of the book, snippets expanded.

pytest-codeblocks alone would see only the literal `--8<--` line of an include,
drop fences with attributes (```python title="x"), give every block fresh
globals and never run `if __name__ == "__main__":` bodies. So this plugin:

1. renders the figures of a page that opts in (`render_macros: true`) through
   tools/figures.py, with mkdocs.yml's macros settings, as the build does, then
   expands it with pymdownx.snippets, configured from mkdocs.yml exactly as the site
   build is (so a misspelled section or figure key fails here as in the build);
2. parses the expanded text with pytest-codeblocks' own parser, so its `cont`,
   `expected-output`, `importorskip` and `pytest.mark` comments keep working;
3. runs the python blocks of one page in order, in ONE fresh namespace whose
   `__name__` is "__main__", as a reader pasting them into a Python session would;
   sh/bash blocks run in the repository root with this Python's folder on PATH;
4. reports a failure as `docs/page.md::line N`, with the page line that raised.

It also refuses what would silently not run: a python fence it cannot collect
(```pycon, ~~~python) and a skip with no stated reason. And after a page's blocks,
one more item checks that every function and method the page shows was run by the
page itself: a listing that is shown and then bypassed (the package's copy called one
level down instead) fails as `docs/page.md::definitions run`. A page may exempt a
definition it shows only to be read with `<!-- shown-not-run: name: why -->`.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import io
import os
import re
import subprocess
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path

import markdown
import pytest
import yaml
from pytest_codeblocks.main import CodeBlock, extract_from_buffer

from tools.figures import FigureError, render_markdown

RUNNABLE = {"python": "python", "py": "python", "python3": "python",
            "sh": "sh", "bash": "bash", "shell": "bash"}
# Fence languages that look like Python but that a reader could not paste and run.
UNRUNNABLE_PYTHON = {"pycon", "ipython", "ipython3", "python-repl", "pyi"}
TILDE_PYTHON = re.compile(r"^\s*~{3,}\s*\{?\.?(python|py|python3)\b")
SKIP_MARK = re.compile(r"pytest\.mark\.(skip|skipif|xfail)\b")
EXEMPT = re.compile(r"<!--\s*shown-not-run:\s*([\w.]+)\s*:\s*(\S[^\n]*?)\s*-->")


class PageError(Exception):
    """A page cannot be collected: a bad fence, or a skip without a reason."""


class _Loader(yaml.SafeLoader):
    """Reads mkdocs.yml without importing the `!!python/name:` objects it names."""


_Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda *_: None)
_Loader.add_multi_constructor("!", lambda *_: None)


def snippet_settings(root: Path) -> tuple[dict, Path]:
    """The pymdownx.snippets settings and docs_dir of root's mkdocs.yml."""
    config = yaml.load((root / "mkdocs.yml").read_text(encoding="utf-8"), _Loader)
    for ext in config.get("markdown_extensions", []):
        if isinstance(ext, dict) and "pymdownx.snippets" in ext:
            return dict(ext["pymdownx.snippets"] or {}), root / config.get(
                "docs_dir", "docs")
    raise PageError(f"{root / 'mkdocs.yml'} does not configure pymdownx.snippets")


def rendered(page: Path, root: Path) -> str:
    """The page's markdown with its figures rendered, as the site build renders it."""
    text = page.read_text(encoding="utf-8")
    try:
        return render_markdown(text, page.relative_to(root).as_posix(), root)
    except FigureError as exc:
        raise PageError(str(exc)) from None


def expand(page: Path, root: Path, settings: dict, text: str | None = None) -> str:
    """The page's markdown (or text) with every snippet include expanded."""
    md = markdown.Markdown(extensions=["pymdownx.snippets"],
                           extension_configs={"pymdownx.snippets": settings})
    if text is None:
        text = page.read_text(encoding="utf-8")
    # snippets resolves base_path against the working directory, as mkdocs does.
    with working_directory(root):
        lines = md.preprocessors["snippet"].run(text.split("\n"))
    return "\n".join(lines)


@contextlib.contextmanager
def working_directory(path: Path):
    """contextlib.chdir, which Python 3.10 lacks."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def line_map(original: str, expanded: str) -> list[int]:
    """For each expanded line (0-based), the 1-based page line it came from."""
    a, b = original.split("\n"), expanded.split("\n")
    mapping = [0] * (len(b) + 1)
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for tag, i1, _, j1, j2 in matcher.get_opcodes():
        for j in range(j1, j2):
            # an included line maps to the include line that produced it
            i = i1 + (j - j1) if tag == "equal" else min(i1, len(a) - 1)
            mapping[j] = i + 1
    mapping[len(b)] = len(a)
    return mapping


def check_fences(expanded: str, mapping: list[int], rel: str) -> None:
    """Refuse python fences that pytest-codeblocks' parser would silently drop."""
    for j, line in enumerate(expanded.split("\n")):
        stripped = line.strip()
        lang = re.split(r"[\s{}]+", stripped.lstrip("`").strip().lstrip("{."))[0]
        if stripped.startswith("```") and lang.lower() in UNRUNNABLE_PYTHON:
            raise PageError(f"{rel}:{mapping[j]}: a ```{lang} fence would not be run; "
                            "use ```python (or ```text for output)")
        if TILDE_PYTHON.match(line):
            raise PageError(f"{rel}:{mapping[j]}: a ~~~ python fence would not be "
                            "run; use backticks")


def normalise(block: CodeBlock) -> str | None:
    """The runnable language of a fence info string (`python title="x"` -> python)."""
    info = (block.syntax or "").strip().lstrip("{").lstrip(".")
    first = re.split(r"[\s{}]", info, maxsplit=1)[0].lower() if info else ""
    return RUNNABLE.get(first)


class PageFile(pytest.File):
    """One page: its blocks share a namespace and run in page order."""

    def collect(self):
        root = self.config.rootpath
        settings, _ = snippet_settings(root)
        rel = self.path.relative_to(root).as_posix()
        text = rendered(self.path, root)
        expanded = expand(self.path, root, settings, text)
        # page line of each expanded line, through the rendering (a figure written
        # over several lines renders as one) and then the includes
        to_page = line_map(self.path.read_text(encoding="utf-8"), text)
        mapping = [to_page[k - 1] for k in line_map(text, expanded)]
        check_fences(expanded, mapping, rel)
        self.namespace: dict = {"__name__": "__main__"}
        for block in extract_from_buffer(io.StringIO(expanded)):
            language = normalise(block)
            if language is None:
                continue
            lineno = mapping[block.lineno - 1]
            item = PageBlock.from_parent(self, name=f"line {lineno}")
            item.setup_block(block, language, lineno,
                             [mapping[block.lineno + k] for k in range(
                                 block.code.count("\n") + 1)])
            for mark in block.marks:
                if SKIP_MARK.match(mark) and "reason=" not in mark:
                    raise PageError(f"{rel}:{lineno}: <!--{mark}--> needs a reason=")
                item.add_marker(eval(mark, {"sys": sys, "pytest": pytest}))
            yield item
        self.executed: set[tuple[str, int, str]] = set()
        self.defined: list[Definition] = []
        self.incomplete = False
        self.exempt = dict(EXEMPT.findall(text))
        yield PageCoverage.from_parent(self, name="definitions run")


class PageBlock(pytest.Item):
    """One code block of a page, run in the page's shared namespace."""

    def setup_block(self, block: CodeBlock, language: str, lineno: int,
                    lines: list[int]) -> None:
        self.block, self.language, self.lineno, self.lines = (
            block, language, lineno, lines)
        self.filename = f"{self.parent.path.name}:block-at-line-{lineno}"

    def runtest(self) -> None:
        self.parent.incomplete = True  # until this block has run to the end
        if self.block.importorskip:
            pytest.importorskip(self.block.importorskip)
        if self.language == "python":
            output = self.run_python()
        else:
            output = self.run_shell()
        expected = self.block.expected_output
        if expected is not None and not same_output(
                output, expected, self.block.expected_output_ignore_whitespace):
            diff = "\n".join(difflib.unified_diff(
                expected.rstrip("\n").split("\n"), output.rstrip("\n").split("\n"),
                "shown on the page", "printed", lineterm=""))
            raise BlockFailure(f"printed output differs from the page:\n{diff}")
        self.parent.incomplete = False

    def run_python(self) -> str:
        # dont_inherit: a reader's fresh session has none of this module's
        # `from __future__` flags, so neither may the page's code.
        code = compile(self.block.code, self.filename, "exec", dont_inherit=True)
        self.parent.defined += definitions_in(self.block.code, self.filename,
                                              self.lines)
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), working_directory(
                self.config.rootpath), calls_recorded(self.parent.executed):
            try:
                exec(code, self.parent.namespace)
            except Exception as exc:
                raise BlockFailure(self.explain(exc)) from exc
        return buffer.getvalue()

    def run_shell(self) -> str:
        env = dict(os.environ)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
        shell = "/bin/bash" if self.language == "bash" else None
        result = subprocess.run(self.block.code, shell=True, executable=shell,
                                cwd=self.config.rootpath, env=env, text=True,
                                capture_output=True, timeout=900)
        if result.returncode != 0:
            raise BlockFailure(f"exit status {result.returncode}\n{result.stderr}")
        return result.stdout

    def explain(self, exc: Exception) -> str:
        """The exception, with the page line of the innermost frame in this block."""
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if f.filename == self.filename]
        where = ""
        if frames and frames[-1].lineno:
            k = frames[-1].lineno - 1
            page_line = self.lines[k] if k < len(self.lines) else self.lineno
            source = self.block.code.split("\n")[k].strip()
            where = f"at {self.parent.name}:{page_line}: {source}\n"
        return f"{where}{type(exc).__name__}: {exc}"

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, BlockFailure):
            return (f"{self.nodeid} failed\n{excinfo.value}\n"
                    f"--- block (page line {self.lineno}) ---\n{self.block.code}")
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, self.lineno - 1, self.name


@dataclass(frozen=True)
class Definition:
    """A function or method that a page's code block defines."""
    name: str        # qualified: `KVCache.append`
    filename: str    # the block's code object filename
    first_line: int  # of the def or its first decorator, in the block
    page_line: int


def definitions_in(code: str, filename: str, lines: list[int]) -> list[Definition]:
    """The functions and methods a block defines at its top level, stubs aside."""
    found = []

    def visit(body, prefix):
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if not is_stub(node):
                    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                    page_line = lines[first - 1] if first - 1 < len(lines) else 0
                    found.append(Definition(f"{prefix}{node.name}", filename,
                                            first, page_line))
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                visit(node.body, prefix)

    try:
        visit(ast.parse(code).body, "")
    except SyntaxError:
        return []
    return found


def is_stub(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A body of only a docstring, `...` or `pass` (a Protocol's method, say)."""
    return all(isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(
        s.value, ast.Constant)) for s in node.body)


@contextlib.contextmanager
def calls_recorded(executed: set[tuple[str, int, str]]):
    """Record (filename, first line, name) of each page-defined code object called."""
    prefix = ":block-at-line-"

    def tracer(frame, event, arg):
        code = frame.f_code
        if prefix in code.co_filename:
            executed.add((code.co_filename, code.co_firstlineno, code.co_name))

    before, before_threads = sys.gettrace(), threading.gettrace()
    sys.settrace(tracer)
    threading.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(before)
        threading.settrace(before_threads)


def compiled_and_called() -> set[tuple[str, int, str]]:
    """Page functions that Numba compiled and called: they run no Python frames."""
    import gc

    found = set()
    for obj in gc.get_objects():
        module = type(obj).__dict__.get("__module__") or ""
        if not isinstance(module, str) or not module.startswith("numba."):
            continue
        try:
            code, called = obj.py_func.__code__, bool(obj.signatures)
        except Exception:  # numba objects that are not dispatchers
            continue
        if called:
            found.add((code.co_filename, code.co_firstlineno, code.co_name))
    return found


class PageCoverage(pytest.Item):
    """Every function and method a page shows is run by the page's own code."""

    def runtest(self) -> None:
        page = self.parent
        if page.incomplete:
            pytest.skip("a block of this page did not run to the end")
        ran = page.executed | compiled_and_called()
        missing = []
        for d in page.defined:
            if d.name in page.exempt:
                continue
            if (d.filename, d.first_line, d.name.rsplit(".", 1)[-1]) not in ran:
                missing.append(f"{d.name} (page line {d.page_line})")
        unused = sorted(set(page.exempt) - {d.name for d in page.defined})
        if unused:
            raise BlockFailure(f"shown-not-run names no definition here: {unused}")
        if missing:
            raise BlockFailure(
                "the page shows these but its own code never calls them (a check "
                "that reaches the package's copy instead?); call them, or say why "
                "with <!-- shown-not-run: name: why -->:\n  " + "\n  ".join(missing))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, BlockFailure):
            return f"{self.nodeid} failed\n{excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, self.name


class BlockFailure(Exception):
    """A page's code block raised or printed something other than the page shows."""


def same_output(output: str, expected: str, ignore_whitespace: bool) -> bool:
    if ignore_whitespace:
        return output.split() == expected.split()
    strip = lambda s: [line.rstrip() for line in s.rstrip("\n").split("\n")]  # noqa: E731
    return strip(output) == strip(expected)


def pytest_collect_file(file_path: Path, parent):
    if file_path.suffix != ".md":
        return None
    root = parent.config.rootpath
    if not (root / "mkdocs.yml").exists():
        return None
    _, docs_dir = snippet_settings(root)
    if docs_dir in file_path.parents:
        return PageFile.from_parent(parent, path=file_path)
    return None
