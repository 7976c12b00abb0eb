"""Every chapter's code as a script and a notebook, made from the blocks the tests run.

A chapter page's runnable blocks (snippets expanded, figures rendered, exactly as
tools/pages_plugin.py collects them) become a jupytext percent script; jupytext turns
that script into a notebook. A block the tests skip without a package (PyTorch, say)
runs in both only when the package is there. Shell blocks run through `subprocess`
with this Python's folder first on PATH, as the tests run them.

As an MkDocs hook it adds `chapters/NN-name.py` and `chapters/NN-name.ipynb` to the
site and links them under each chapter's title. From the shell:

    python -m tools.downloads docs/chapters/02-tensors.md OUT_DIR
"""

from __future__ import annotations

import ast
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def importable() -> None:
    """Let `tools.*` import: MkDocs loads a hook by its path, not as a package."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
CHAPTER = re.compile(r"^chapters/(\d\d-[^/]+)\.md$")
FUTURE = re.compile(r"^from __future__ import ")
NOTEBOOK_CHAPTER = re.compile(r"^chapters/(\d\d-[^/]+)\.py$")
SHELL_HELPER = '''\
import os as _os
import subprocess as _subprocess
import sys as _sys


def _sh(command: str) -> None:
    """Run a shell block of the page, with this Python's folder first on PATH."""
    path = _os.path.dirname(_sys.executable) + _os.pathsep + _os.environ["PATH"]
    _subprocess.run(command, shell=True, check=True, env={**_os.environ, "PATH": path})
'''
TO_ROOT = '''\
# The book's code runs from the repository root, the folder that holds minigpt/.
import os as _os
from pathlib import Path as _Path

while not (_Path.cwd() / "minigpt").is_dir() and _Path.cwd() != _Path.cwd().parent:
    _os.chdir("..")
'''


@dataclass(frozen=True)
class Cell:
    language: str          # "python" or a shell
    code: str
    condition: str | None  # Python expression: run the cell only when true


def page_cells(page: Path, root: Path = ROOT) -> list[Cell]:
    """The page's runnable blocks in order, as the tests run them."""
    from pytest_codeblocks.main import extract_from_buffer

    importable()
    from tools.pages_plugin import expand, normalise, rendered, snippet_settings

    settings, _ = snippet_settings(root)
    expanded = expand(page, root, settings, rendered(page, root))
    cells = []
    for block in extract_from_buffer(io.StringIO(expanded)):
        language = normalise(block)
        if language is None:
            continue
        condition = None
        if block.importorskip:
            condition = ('__import__("importlib.util").util.find_spec('
                         f'"{block.importorskip}")')
        for mark in block.marks:
            condition = mark_condition(mark, condition)
        if condition != "False":
            cells.append(Cell(language, block.code.rstrip("\n"), condition))
    return cells


def mark_condition(mark: str, condition: str | None) -> str | None:
    """The run condition a pytest mark adds: skipif(c) runs when not c; skip never."""
    call = ast.parse(mark, mode="eval").body
    name = getattr(getattr(call, "func", call), "attr", "")
    if name == "skip":
        return "False"
    if name == "skipif" and isinstance(call, ast.Call) and call.args:
        new = f"not ({ast.unparse(call.args[0])})"
        return new if condition is None else f"({condition}) and {new}"
    return condition


def indented(code: str) -> str:
    return "\n".join("    " + line if line.strip() else line
                     for line in code.split("\n"))


def script_text(page: Path, cells: list[Cell], title: str) -> str:
    """A jupytext percent script: one `# %%` cell per block of the page."""
    out = [f"# %% [markdown]\n# # {title}\n#\n# The code of `{page.name}`, block by "
           "block, as the book's tests run it.\n# Run it from the repository root "
           "(the folder that holds `minigpt/`)."]
    # a script takes `from __future__` imports only at its top, where a session
    # takes them anywhere: they move up, and apply from there on
    future = sorted({line for c in cells if c.language == "python"
                     for line in c.code.split("\n") if FUTURE.match(line)})
    cells = [Cell(c.language, "\n".join(line for line in c.code.split("\n")
                                        if not FUTURE.match(line)), c.condition)
             for c in cells]
    out.append("# %%\n" + "".join(f + "\n" for f in future) + TO_ROOT)
    if any(c.language != "python" for c in cells):
        out.append("# %%\n" + SHELL_HELPER)
    for cell in cells:
        code = cell.code
        if cell.language != "python":
            code = f"_sh({code!r})"
        if cell.condition:
            code = f"if {cell.condition}:  # needs an optional package\n" + indented(
                code)
        out.append("# %%\n" + code)
    return "\n\n".join(out) + "\n"


def notebook_text(script: str) -> str:
    """The same cells as a Jupyter notebook (nbformat 4 JSON)."""
    import jupytext

    notebook = jupytext.reads(script, fmt="py:percent")
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    notebook.metadata.pop("jupytext", None)
    return jupytext.writes(notebook, fmt="ipynb")


def title_of(page: Path) -> str:
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return page.stem


def downloads(page: Path, root: Path = ROOT) -> tuple[str, str]:
    """(script, notebook) for one chapter page; a notebook page is its own script."""
    if page.suffix == ".py":
        script = page.read_text(encoding="utf-8")
    else:
        script = script_text(page, page_cells(page, root), title_of(page))
    return script, notebook_text(script)


# -- the MkDocs hook ---------------------------------------------------------

def on_files(files, config):
    """Add each chapter's script and notebook to the site."""
    from mkdocs.structure.files import File

    for file in list(files):
        match = CHAPTER.match(file.src_uri) or NOTEBOOK_CHAPTER.match(file.src_uri)
        if match:
            script, notebook = downloads(Path(file.abs_src_path))
            made = {".py": script, ".ipynb": notebook}
            if file.src_uri.endswith(".py"):
                del made[".py"]  # mkdocs-jupyter serves the page's own source
            for suffix, content in made.items():
                files.append(File.generated(config, f"chapters/{match[1]}{suffix}",
                                            content=content))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Link the downloads under the chapter's title."""
    match = CHAPTER.match(page.file.src_uri)
    if not match:
        return markdown
    links = (f'\n<p class="downloads">This chapter\'s code: '
             f'<a href="../{match[1]}.ipynb" download>notebook</a> · '
             f'<a href="../{match[1]}.py" download>script</a></p>\n')
    return re.sub(r"^(# .*)$", lambda m: m[1] + "\n" + links, markdown, count=1,
                  flags=re.M)


def main(argv: list[str]) -> int:
    page, out = Path(argv[0]).resolve(), Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    script, notebook = downloads(page)
    (out / f"{page.stem}.py").write_text(script, encoding="utf-8")
    (out / f"{page.stem}.ipynb").write_text(notebook, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
