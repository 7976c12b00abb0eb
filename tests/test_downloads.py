"""Every chapter's script and notebook run top to bottom, fresh, from the root.

They are made (tools/downloads.py) from exactly the blocks the page tests run; here
each runs as a reader would run the download: the script in a new interpreter, the
notebook in a new Jupyter kernel, both started in the repository root.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.downloads import downloads, page_cells, script_text

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "docs" / "chapters").glob("[0-9][0-9]-*.md")) + sorted(
    (ROOT / "docs" / "chapters").glob("[0-9][0-9]-*.py"))


def env() -> dict:
    return {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize("page", CHAPTERS, ids=lambda p: p.name)
def test_the_script_runs(page, tmp_path):
    script, _ = downloads(page)
    path = tmp_path / f"{page.stem}.py"
    path.write_text(script, encoding="utf-8")
    result = subprocess.run([sys.executable, str(path)], cwd=ROOT, env=env(),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("page", CHAPTERS, ids=lambda p: p.name)
def test_the_notebook_runs(page, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    _, text = downloads(page)
    notebook = nbformat.reads(text, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT)}})
    os.environ.setdefault("MPLBACKEND", "Agg")
    client.execute()
    errors = [o for c in notebook.cells for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors


def test_a_download_holds_every_block_in_page_order(tmp_path):
    page = ROOT / "docs" / "chapters" / "08-linear-and-gelu.md"
    cells = page_cells(page)
    script = script_text(page, cells, "t")
    at = 0
    for cell in [c for c in cells if c.condition is None and c.language == "python"]:
        at = script.index(cell.code, at)  # each block whole, after the one before
    assert len(cells) > 5


def test_skipped_blocks_are_conditional_and_shell_blocks_run(tmp_path):
    page = tmp_path / "p.md"
    (tmp_path / "mkdocs.yml").write_text((ROOT / "mkdocs.yml").read_text())
    page.write_text("# T\n\n<!--pytest-codeblocks:importorskip(no_such_pkg)-->\n"
                    "```python\nraise SystemExit(3)\n```\n\n```bash\necho hi\n```\n\n"
                    '<!--pytest.mark.skip(reason="never")-->\n```python\n1/0\n```\n')
    cells = page_cells(page, tmp_path)
    assert [c.language for c in cells] == ["python", "bash"]
    script = tmp_path / "s.py"
    script.write_text(script_text(page, cells, "T"))
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "hi"
