"""Root conftest: the book's pages are tests too (see tools/pages_plugin.py)."""

import os
import tempfile

# page blocks that plot must not need a screen
os.environ.setdefault("MPLBACKEND", "Agg")
# chapter 23's machine code is compiled afresh into a folder of this run's own
os.environ.setdefault("MINIGPT_CACHE", tempfile.mkdtemp(prefix="minigpt-cache-"))

pytest_plugins = ["tools.pages_plugin"]
