"""Root conftest: the book's pages are tests too (see tools/pages_plugin.py)."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")  # page blocks that plot must not need a screen

pytest_plugins = ["tools.pages_plugin"]
