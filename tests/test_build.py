"""The site's build settings, and that a notebook which raises fails the build."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

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
