"""The site's build settings; a raising notebook or a misspelled figure fails it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tools.pages_plugin import _Loader

ROOT = Path(__file__).resolve().parent.parent
MKDOCS = Path(sys.executable).with_name("mkdocs")


def config() -> dict:
    return yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), _Loader)


def plugin(name: str) -> dict:
    for entry in config()["plugins"]:
        if isinstance(entry, dict) and name in entry:
            return entry[name]
    raise AssertionError(f"plugin {name} is not configured")


def test_build_is_strict_and_offline():
    cfg = config()
    assert cfg["strict"] is True
    assert cfg["theme"]["font"] is False, "Google Fonts would be fetched from a CDN"
    for asset in cfg["extra_javascript"] + cfg["extra_css"]:
        assert "://" not in asset, f"{asset} is loaded from another host"
        assert (ROOT / "docs" / asset).exists(), f"{asset} missing (make install)"


def test_notebooks_execute_and_errors_fail():
    jupyter = plugin("mkdocs-jupyter")
    assert jupyter["execute"] is True
    assert jupyter["allow_errors"] is False
    assert jupyter["cache"] is False, "the cache is keyed on the notebook, not minigpt/"


def test_a_notebook_that_raises_fails_the_build(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# t\n")
    (tmp_path / "docs" / "broken.py").write_text(textwrap.dedent("""\
        # %%
        raise RuntimeError("this cell fails on purpose")
        """))
    (tmp_path / "mkdocs.yml").write_text(textwrap.dedent("""\
        site_name: t
        strict: true
        plugins:
          - mkdocs-jupyter:
              execute: true
              allow_errors: false
              cache: false
              include: ["*.py"]
        """))
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([str(MKDOCS), "build", "--strict", "-q"], cwd=tmp_path,
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0
    assert "this cell fails on purpose" in result.stdout + result.stderr


def test_figures_are_bound_and_opt_in():
    macros = plugin("macros")
    assert macros["render_by_default"] is False, "a page opts in: `{{` in code is safe"
    assert macros["on_undefined"] == "strict"
    assert macros["on_error_fail"] is True
    assert (ROOT / f"{macros['module_name']}.py").is_file()
    names = [next(iter(e)) if isinstance(e, dict) else e for e in config()["plugins"]]
    assert names.index("macros") < names.index("mkdocs-jupyter")


BOUND_SITE = """\
site_name: t
strict: true
plugins:
  - macros:
      module_name: {module}
      render_by_default: false
      on_undefined: strict
      on_error_fail: true
  - mkdocs-jupyter:
      execute: false
      cache: false
      include: ["*.py"]
"""

BOUND_PAGE = """\
---
render_macros: true
---
# Page

BLAS ran at {{ fig("speed", "gflops", ".3f") }} GFLOPS.
"""

BOUND_NOTEBOOK = """\
# ---
# jupyter:
#   render_macros: true
# ---

# %% [markdown]
# # Notebook
#
# BLAS ran at {{ fig("speed", "gflops", ".3f") }} GFLOPS.
#
# {{ measured("speed") }}

# %%
print({"a": {"b": 1}})
"""


def bound_site(tmp_path: Path, gflops: float) -> tuple[Path, dict]:
    """A two-page site (Markdown and notebook) bound to a results folder."""
    (tmp_path / "docs").mkdir(exist_ok=True)
    (tmp_path / "docs" / "index.md").write_text(BOUND_PAGE)
    (tmp_path / "docs" / "nb.py").write_text(BOUND_NOTEBOOK)
    (tmp_path / "mkdocs.yml").write_text(BOUND_SITE.format(
        module=ROOT / "tools" / "figures"))
    (tmp_path / "results").mkdir(exist_ok=True)
    (tmp_path / "results" / "speed.json").write_text(
        '{"command": "make bench", "date": "2026-01-02T03:04:05+00:00", "machine": '
        '{"cpu": "Test CPU", "cores": 2, "python": "3", "numpy": "2", "blas": "b"}, '
        f'"results": {{"gflops": {gflops!r}}}}}')
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
           "MINIGPT_RESULTS": str(tmp_path / "results")}
    return tmp_path, env


def build(site: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(MKDOCS), "build", "--strict", "-q"], cwd=site,
                          capture_output=True, text=True, env=env, timeout=300)


def test_a_new_benchmark_run_rebinds_pages_and_notebooks(tmp_path):
    """`make build` after `make bench`: both kinds of page quote the new figure."""
    site, env = bound_site(tmp_path, 53.16125)
    for gflops in (53.16125, 72.83091):  # `make bench` wrote new results
        bound_site(tmp_path, gflops)
        result = build(site, env)
        assert result.returncode == 0, result.stdout + result.stderr
        page = (site / "site" / "index.html").read_text()
        notebook = (site / "site" / "nb" / "index.html").read_text()
        assert f"BLAS ran at {gflops:.3f} GFLOPS." in page
        assert f"BLAS ran at {gflops:.3f} GFLOPS." in notebook
        assert "How these figures were measured" in notebook
        assert "Test CPU" in notebook


@pytest.mark.parametrize("name, old", [("index.md", '"gflops", ".3f"'),
                                       ("nb.py", '"gflops", ".3f"')])
def test_a_misspelled_figure_fails_the_build(tmp_path, name, old):
    site, env = bound_site(tmp_path, 53.16)
    path = site / "docs" / name
    path.write_text(path.read_text().replace(old, '"glops", ".3f"'))
    result = build(site, env)
    assert result.returncode != 0
    assert f"docs/{name}: topic 'speed' has no figure 'glops'" in (
        result.stdout + result.stderr)
