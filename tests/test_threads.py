"""Tests for minigpt.threads: the crew, the split by rows, RowMatrix, threaded models.

The references are NumPy's own products of the same float32 arrays (BLAS), and the
untouched float32 models: a threaded model must give the same logits up to the
order of float32 additions, and the same greedy tokens.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from minigpt import DEMO_LLAMA, DEMO_MODEL
from minigpt.generation import generate
from minigpt.models import load_model
from minigpt.threads import (
    Crew,
    RowMatrix,
    map_matrices,
    rows_matmul,
    set_kernel_threads,
    shares,
    split_rows,
    threaded_model,
)


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("n, parts", [(0, 2), (10, 2), (64, 2), (2304, 2), (3072, 3),
                                      (771, 4), (50257, 2)])
def test_shares_cover_every_row_once_in_aligned_ranges(n, parts):
    got = shares(n, parts)
    covered = [i for a, b in got for i in range(a, b)]
    assert covered == list(range(n))  # every row once, in order
    assert len(got) <= parts and all(a % 16 == 0 for a, _ in got)
    if n >= 16 * parts * 4:  # enough rows: every thread gets a fair share
        sizes = [b - a for a, b in got]
        assert len(got) == parts and max(sizes) - min(sizes) <= 16


def test_a_crew_runs_every_piece_once_and_hands_back_the_first_error():
    crew = Crew(3)
    seen = []
    pieces = [(i, i + 1) for i in range(20)]
    crew.run(lambda a, b: seen.append((a, b)), pieces)
    assert sorted(seen) == pieces

    def boom(a, b):
        if a == 3:
            raise KeyError("boom")
    with pytest.raises(KeyError, match="boom"):
        crew.run(boom, pieces[:6])
    crew.run(lambda a, b: seen.append(9), [(0, 1)])  # still works after an error
    assert seen[-1] == 9


def test_a_crew_does_not_wait_for_a_helper_that_is_held_up():
    import threading

    crew = Crew(2)
    gate = threading.Event()
    crew.jobs.put(gate.wait)  # the helper is busy, as on a loaded machine
    seen = []
    crew.run(lambda a, b: seen.append(a), [(i, i + 1) for i in range(8)])
    assert sorted(seen) == list(range(8))  # the caller took every piece itself
    gate.set()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_split_rows_uses_the_threads_asked_for(threads):
    import threading
    import time

    names = set()

    def work(a, b):
        names.add(threading.get_ident())
        time.sleep(0.02)  # long enough that every thread gets a piece
    set_kernel_threads(threads)
    try:
        split_rows(work, 4096)
    finally:
        set_kernel_threads(1)
    assert len(names) == min(threads, os.cpu_count() or 1)


def test_a_row_matrix_stands_in_for_its_array():
    rng = np.random.default_rng(0)
    table = rng.standard_normal((10, 6)).astype(np.float32)
    m = RowMatrix(table)
    assert m.shape == (10, 6) and m.T.shape == (6, 10) and m.ndim == 2
    assert m.nbytes == table.nbytes and m.T.rows is table  # .T copies nothing
    np.testing.assert_array_equal(m[[3, 1]], table[[3, 1]])
    for rows in (1, 5):  # one token: matrix-vector; a prompt: matrix-matrix
        x = rng.standard_normal((rows, 6)).astype(np.float32)
        np.testing.assert_allclose(x @ m.T, x @ table.T, rtol=1e-5, atol=1e-5)
    big = rng.standard_normal((300, 64)).astype(np.float32)  # split over threads
    for threads in (2, 3):
        set_kernel_threads(threads)
        try:
            for rows in (1, 7):
                x = rng.standard_normal((rows, 64)).astype(np.float32)
                np.testing.assert_allclose(x @ RowMatrix(big).T, x @ big.T,
                                           rtol=1e-5, atol=1e-5)
        finally:
            set_kernel_threads(1)
    x3 = rng.standard_normal((2, 3, 6)).astype(np.float32)  # leading axes kept
    assert (x3 @ m.T).shape == (2, 3, 10)


def test_a_row_matrix_refuses_wrong_shapes_and_reads_through_t():
    m = RowMatrix(np.zeros((10, 6), np.float32))
    with pytest.raises(ValueError, match=r"x has shape \(1, 5\), W \(6, 10\)"):
        np.zeros((1, 5), np.float32) @ m.T
    with pytest.raises(ValueError, match="a table: use W.T"):
        rows_matmul(np.zeros((1, 10), np.float32), m)
    with pytest.raises(TypeError, match="by rows, not through .T"):
        m.T[0]


def test_map_matrices_names_the_matrix_it_cannot_convert():
    params = {"wte": np.zeros((8, 4), np.float32),
              "blocks": [{"w": np.zeros((4, 6), np.float32), "b": np.zeros(6)}]}

    def refuse_six(rows):
        if rows.shape[0] == 6:
            raise ValueError("six rows")
        return RowMatrix(rows)
    with pytest.raises(ValueError, match=r"params.blocks.0.w \[4, 6\]: six rows"):
        map_matrices(params, refuse_six)


@pytest.mark.parametrize("folder", [DEMO_MODEL, DEMO_LLAMA], ids=["gpt2", "llama"])
def test_a_threaded_model_gives_the_same_logits_and_tokens(folder):
    model = load_model(folder)
    fast = threaded_model(model)
    assert type(fast) is type(model)
    ids = np.arange(40) * 7 % model.config.vocab_size
    assert rel_error(fast.forward(ids), model.forward(ids)) < 1e-5
    cache_a, cache_b = model.empty_cache(), fast.empty_cache()
    model.forward_cached(ids, cache_a)
    fast.forward_cached(ids, cache_b)
    step = np.array([5])  # one token: the kernel's path
    assert rel_error(fast.forward_cached(step, cache_b),
                     model.forward_cached(step, cache_a)) < 1e-5
    prompt = ids[:8].tolist()
    assert list(generate(fast, prompt, 20)) == list(generate(model, prompt, 20))


def test_threaded_gpt2_copies_weights_into_rows_and_keeps_the_tied_head():
    model = load_model(DEMO_MODEL)
    fast = threaded_model(model)
    w = fast.params["blocks"][0]["mlp"]["c_fc"]["w"]
    original = model.params["blocks"][0]["mlp"]["c_fc"]["w"]
    assert isinstance(w, RowMatrix) and w.transposed
    assert w.rows.flags.c_contiguous and w.shape == original.shape
    wte = fast.params["wte"]
    assert isinstance(wte, RowMatrix) and not wte.transposed
    assert wte.rows is model.params["wte"]  # a table is rows already


def test_threaded_llama_reads_its_weights_in_place():
    model = load_model(DEMO_LLAMA)  # nn.Linear stores [out, in]: rows already
    fast = threaded_model(model)
    w = fast.params["layers"][0]["mlp"]["down_proj"]
    assert isinstance(w, RowMatrix)
    assert np.shares_memory(w.rows, model.params["layers"][0]["mlp"]["down_proj"])


def test_threads_are_recorded_and_no_thread_starts_before_a_product():
    import subprocess
    import sys
    from pathlib import Path

    script = ("import sys, threading\n"
              "from minigpt.threads import kernel_threads, set_kernel_threads\n"
              "before = kernel_threads()\n"
              "set_kernel_threads(2)\n"
              "print(before, kernel_threads(), 'numba' in sys.modules,\n"
              "      threading.active_count())\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.split() == ["1", str(min(2, os.cpu_count() or 1)), "False", "1"]
