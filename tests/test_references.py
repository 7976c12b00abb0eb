"""The saved reference outputs in data/references/ agree with the live libraries.

Every entry of tools/references.py is recomputed in memory from the real
reference (PyTorch, transformers, tiktoken) and compared with its committed file,
so a stale file fails here; without the library the entry skips (fails in CI,
where MINIGPT_REQUIRE_REFERENCE=1). The other tests need no reference library:
they check the files themselves and the comparison machinery.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.reference import require
from tools import references
from tools.references import MAX_BYTES, REGISTRY, Reference


@pytest.mark.reference
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_saved_reference_matches_the_live_library(name):
    ref = REGISTRY[name]
    for module in ref.needs:
        require(module)
    assert references.check(ref) == []


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_saved_file_is_small_and_loads_without_pickle(name):
    ref = REGISTRY[name]
    assert ref.path.is_file(), f"{ref.path} is missing: run python tools/references.py"
    assert ref.path.stat().st_size <= MAX_BYTES
    data = references.load(ref)
    assert data, f"{ref.path} holds nothing"
    if ref.fmt == "npz":
        assert all(a.dtype != object for a in data.values())


def test_index_lists_exactly_the_registry():
    assert references.check_index() == []


def toy(scale: float = 1.0) -> Reference:
    """A reference that needs no library: what a stale file looks like."""
    def make():
        x = np.linspace(0, 1, 5, dtype=np.float32)
        return {"x": x, "y": scale * x * x, "n": np.int64(3)}
    return Reference("toy", make, rtol=1e-6, atol=1e-7)


def test_check_reports_a_stale_file(tmp_path, monkeypatch):
    monkeypatch.setattr(references, "DIRECTORY", tmp_path)
    saved = toy()
    blob = references.encode(saved, references.compute(saved))
    (tmp_path / "toy.npz").write_bytes(blob)
    assert references.check(saved) == []
    problems = references.check(toy(scale=1.001))
    assert len(problems) == 1 and problems[0].startswith("y: values differ by up to")


def test_check_reports_missing_and_changed_keys(tmp_path, monkeypatch):
    monkeypatch.setattr(references, "DIRECTORY", tmp_path)
    ref = toy()
    assert "is missing" in references.check(ref)[0]
    data = references.compute(ref)
    del data["n"]
    (tmp_path / "toy.npz").write_bytes(references.encode(ref, data))
    assert references.check(ref)[0].startswith("keys differ")


def test_integers_must_match_exactly_and_json_round_trips(tmp_path, monkeypatch):
    monkeypatch.setattr(references, "DIRECTORY", tmp_path)
    ref = Reference("ids", lambda: {"text": "hi", "ids": [1, 2, 3]}, fmt="json")
    (tmp_path / "ids.json").write_text(json.dumps({"text": "hi", "ids": [1, 2, 4]}))
    assert references.check(ref) == ["ids: values differ"]
    assert references.load(ref) == {"text": "hi", "ids": [1, 2, 4]}


def test_files_are_byte_for_byte_reproducible():
    # regenerating unchanged data must not touch the committed file (no timestamps)
    ref = toy()
    data = references.compute(ref)
    assert references.encode(ref, data) == references.encode(ref, dict(data))


def test_registering_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        references.reference(next(iter(REGISTRY)))(lambda: {})
