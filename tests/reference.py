"""Access to the independent references (PyTorch, transformers, tiktoken, safetensors).

On a reader's laptop without them, the reference tests skip with a clear reason.
In CI (`MINIGPT_REQUIRE_REFERENCE=1`, set by .ci/run) a missing reference is a
failure, so a comparison can never silently stop running.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

REQUIRED = os.environ.get("MINIGPT_REQUIRE_REFERENCE") == "1"


def require(module: str) -> ModuleType:
    """Import a reference library, or skip (fail, in CI) saying which one is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        message = (
            f"reference library {module!r} is not installed "
            f"(install with: pip install -c constraints.txt -e '.[ref]'): {exc}"
        )
        if REQUIRED:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def require_file(path: str | os.PathLike, how: str) -> str:
    """A reference data file (never committed), or skip (fail, in CI) naming it."""
    if os.path.isfile(path):
        return os.fspath(path)
    message = f"reference file {os.fspath(path)!r} is missing ({how})"
    if REQUIRED:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def missing(message: str) -> None:
    """Skip (fail, in CI) because a reference tool or file is not here."""
    if REQUIRED:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def logits_of(model, ids):
    """A transformers model's logits for one sequence of ids, as NumPy. -> (T, V)"""
    torch = require("torch")
    with torch.no_grad():
        return model(torch.from_numpy(ids)[None]).logits[0].numpy()


def rel_error(ours, ref) -> float:
    """The largest gap between two arrays, relative to the reference's largest value."""
    return float(abs(ours - ref).max() / abs(ref).max())
