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
(```pycon, ~~~python) and a skip with no stated reason.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import os
import re
import subprocess
import sys
import traceback
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


class PageBlock(pytest.Item):
    """One code block of a page, run in the page's shared namespace."""

    def setup_block(self, block: CodeBlock, language: str, lineno: int,
                    lines: list[int]) -> None:
        self.block, self.language, self.lineno, self.lines = (
            block, language, lineno, lines)
        self.filename = f"{self.parent.path.name}:block-at-line-{lineno}"

    def runtest(self) -> None:
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

    def run_python(self) -> str:
        # dont_inherit: a reader's fresh session has none of this module's
        # `from __future__` flags, so neither may the page's code.
        code = compile(self.block.code, self.filename, "exec", dont_inherit=True)
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), working_directory(
                self.config.rootpath):
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
