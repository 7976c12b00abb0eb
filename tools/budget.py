"""The size budget of a chapter: at most 3,000 words of prose, 300 lines of Python.

Counted on the page as the site shows it: prose is the text of the rendered page
without code blocks, math, or exercise solutions (`??? success` blocks); Python is the
non-blank lines of the Python code blocks outside solutions, snippet includes
expanded. A notebook page (a jupytext `.py`) counts its markdown cells as prose and
its code cells as Python.

As an MkDocs hook (mkdocs.yml `hooks:`), it fails the build on the first chapter
page past the budget, naming it. From the shell it reports pages:

    python -m tools.budget docs/chapters/*.md docs/chapters/*.py
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from bs4 import BeautifulSoup

MAX_WORDS = 3000
MAX_PYTHON_LINES = 300
ROOT = Path(__file__).resolve().parent.parent


def importable() -> None:
    """Let `tools.*` import: MkDocs loads a hook by its path, not as a package."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
CHAPTER = re.compile(r"^chapters/\d\d-[^/]+\.(md|py)$")


@dataclass(frozen=True)
class Size:
    words: int
    python_lines: int

    def over(self) -> list[str]:
        """What is past the budget, in words."""
        out = []
        if self.words > MAX_WORDS:
            out.append(f"{self.words} words of prose (budget {MAX_WORDS})")
        if self.python_lines > MAX_PYTHON_LINES:
            out.append(f"{self.python_lines} lines of Python "
                       f"(budget {MAX_PYTHON_LINES})")
        return out


def words(text: str) -> int:
    """Words as a reader counts them: runs of letters or digits."""
    return len(re.findall(r"[A-Za-z0-9][\w'’.-]*", text))


def python_lines(code: str) -> int:
    return sum(1 for line in code.split("\n") if line.strip())


def html_size(html: str) -> Size:
    """The prose words and Python lines of a rendered Markdown page."""
    soup = BeautifulSoup(html, "html.parser")
    for solution in soup.select("details.success"):
        solution.decompose()
    lines = 0
    for block in soup.select("div.highlight"):
        if "language-python" in block.get("class", []) or block.select(
                "code.language-python"):
            lines += python_lines(block.get_text())
        block.decompose()
    for node in soup.select("pre, script, style, .arithmatex, a.headerlink"):
        node.decompose()
    return Size(words(soup.get_text(" ")), lines)


def notebook_size(path: Path) -> Size:
    """The prose words and Python lines of a jupytext notebook page."""
    import jupytext
    import markdown

    notebook = jupytext.read(path)
    prose, lines = [], 0
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            prose.append(markdown.markdown(cell.source, extensions=["admonition",
                                                                   "pymdownx.details"]))
        elif cell.cell_type == "code":
            lines += python_lines(cell.source)
    size = html_size("\n".join(prose))
    return Size(size.words, lines)


def page_size(path: Path, root: Path = ROOT) -> Size:
    """A page's size as the site shows it (figures rendered, snippets expanded)."""
    if path.suffix == ".py":
        return notebook_size(path)
    import markdown
    from mkdocs.config import load_config

    importable()
    from tools.pages_plugin import expand, rendered, snippet_settings

    config = load_config(str(root / "mkdocs.yml"))
    settings, _ = snippet_settings(root)
    text = expand(path, root, settings, rendered(path, root))
    md = markdown.Markdown(extensions=config["markdown_extensions"],
                           extension_configs=config["mdx_configs"])
    return html_size(md.convert(text))


# -- the MkDocs hook ---------------------------------------------------------

def on_page_content(html: str, page, config, files) -> str:
    """Fail the build on a chapter page past the budget."""
    from mkdocs.exceptions import PluginError

    src = page.file.src_uri
    if CHAPTER.match(src):
        path = Path(page.file.abs_src_path)
        size = notebook_size(path) if path.suffix == ".py" else html_size(html)
        if size.over():
            raise PluginError(f"docs/{src} is past the chapter budget: "
                              + "; ".join(size.over()))
    return html


def main(argv: list[str]) -> int:
    status = 0
    for name in argv:
        size = page_size(Path(name).resolve())
        flag = "  OVER: " + "; ".join(size.over()) if size.over() else ""
        print(f"{name}: {size.words} words, {size.python_lines} Python lines{flag}")
        status |= bool(size.over())
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
