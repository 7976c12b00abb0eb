"""The machine-code crew: a product shared over helpers equals it on one thread.

Each row of a product is computed by the same kernel from the same numbers
whichever thread runs it, so the expected value is the kernel's own output on one
thread, compared bit for bit; the kernels themselves are checked against NumPy in
tests/test_machine_code.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

import minigpt.machine_crew as mcrew
from minigpt.machine_code import machine_code
from minigpt.machine_crew import MachineCrew, crew_code, run_rows
from minigpt.quantize import quantize_matrix
from minigpt.threads import set_kernel_threads

CODE = machine_code()
pytestmark = pytest.mark.skipif(not crew_code(), reason="no machine code here")


@pytest.fixture(autouse=True)
def one_thread_after():
    yield
    set_kernel_threads(1)


def operands(scheme: str, n: int, k: int, tokens: int, seed: int = 0):
    """(kernel, x, xd, q, d) for a product of `tokens` rows by an n x k weight."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((tokens, k)).astype(np.float32)
    if scheme == "f32":
        return CODE["f32"], x, None, w, None
    m = quantize_matrix(w, scheme)
    if scheme == "q8_0":
        xq, xd = CODE["q8_0 rounding"](x)
        return CODE["q8_0"], xq, xd, np.asarray(m.q), m.d
    return CODE["int8"], x, None, np.asarray(m.q), m.d


def alone_and_shared(kernel, x, xd, q, d) -> tuple[np.ndarray, np.ndarray]:
    alone = np.empty((len(x), len(q)), np.float32)
    kernel(x, xd, q, d, alone)
    shared = np.full_like(alone, np.nan)
    run_rows(kernel, x, xd, q, d, shared)
    return alone, shared


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("tokens", [1, 3, 16])
@pytest.mark.parametrize("scheme", ["q8_0", "int8", "f32"])
def test_a_shared_product_equals_one_thread(scheme, tokens, threads):
    set_kernel_threads(threads)
    alone, shared = alone_and_shared(*operands(scheme, 2304, 768, tokens))
    np.testing.assert_array_equal(shared, alone)


def test_thousands_of_products_in_a_row():
    set_kernel_threads(2)
    products = [operands("q8_0", n, k, 1, seed) for seed, (n, k) in
                enumerate([(768, 768), (3072, 768), (768, 3072)])]
    for i in range(3000):
        alone, shared = alone_and_shared(*products[i % 3])
        assert np.array_equal(shared, alone), i


def test_helpers_that_sleep_after_every_product(monkeypatch):
    """With a wait of one pause, every helper returns to Python and sleeps between
    products, so each product wakes it: it arrives late, or not at all."""
    crew = MachineCrew(3)
    crew.code = dict(crew.code, rounds=1)
    monkeypatch.setattr(mcrew, "machine_crew", lambda n: crew)
    set_kernel_threads(3)
    product = operands("f32", 1000, 256, 2)
    for i in range(500):
        alone, shared = alone_and_shared(*product)
        assert np.array_equal(shared, alone), i


def test_arrays_the_kernel_cannot_read_are_refused():
    set_kernel_threads(2)
    kernel, x, xd, q, d = operands("q8_0", 512, 256, 1)
    out = np.empty((1, 512), np.float32)
    with pytest.raises(ValueError, match="wrong dtype, shape or layout"):
        run_rows(kernel, x.astype(np.int32), xd, q, d, out)
    with pytest.raises(ValueError, match="wrong dtype, shape or layout"):
        run_rows(kernel, x, xd, q, d, np.empty((1, 511), np.float32))


def test_without_the_crew_each_piece_is_a_plain_call(monkeypatch):
    set_kernel_threads(2)
    monkeypatch.setattr(mcrew, "crew_code", lambda: {})
    alone, shared = alone_and_shared(*operands("int8", 700, 256, 1))
    np.testing.assert_array_equal(shared, alone)


def test_any_kernel_of_up_to_nine_integer_arguments_is_shared(monkeypatch):
    """share_rows calls a kernel whose arguments are its own (here a block
    kernel's eight): the 4-bit GGUF products run on the crew as well."""
    from minigpt.block_kernels import BlockMatrix, block_code, few_tokens
    from minigpt.kquants import quantize_q4_k

    if "Q4_K" not in block_code():
        pytest.skip("no block machine code here")
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4000, 1024)).astype(np.float32)
    m = BlockMatrix("Q4_K", quantize_q4_k(w).reshape(4000, -1))  # past SHARE
    assert m.raw.nbytes >= mcrew.SHARE
    x = rng.standard_normal((2, 1024)).astype(np.float32)
    outs = []
    for threads in (1, 2, 3):
        set_kernel_threads(threads)
        out = np.full((2, 4000), np.nan, np.float32)
        few_tokens(x, m, block_code()["Q4_K"], out)
        outs.append(out)
    assert not np.isnan(outs[0]).any()
    np.testing.assert_array_equal(outs[1], outs[0])
    np.testing.assert_array_equal(outs[2], outs[0])


def test_an_idle_helper_sleeps_and_the_next_product_wakes_it():
    import time

    set_kernel_threads(2)
    product = operands("f32", 2000, 256, 1)
    alone_and_shared(*product)
    time.sleep(0.05)  # far longer than SPIN
    assert mcrew.machine_crew(2).asleep[0].is_set()
    alone, shared = alone_and_shared(*product)
    np.testing.assert_array_equal(shared, alone)


def test_join_reports_the_share_of_time_it_waited():
    """join returns how much of its time the caller waited for helpers, per mille:
    none when it ran every piece itself (nothing posted)."""
    crew = MachineCrew(2)
    kernel, x, xd, q, d = operands("q8_0", 2304, 768, 1)
    table = crew.tables[1]
    rows = np.array([[x.ctypes.data, xd.ctypes.data, q.ctypes.data, d.ctypes.data,
                      0, 0, 768, 1, 2304]], np.int64)
    out = np.full((1, 2304), np.nan, np.float32)
    rows[0, 4], rows[0, 5] = out.ctypes.data, 2304
    table[mcrew.HEAD:mcrew.HEAD + mcrew.ROW] = [0, *rows[0]]
    table[:3] = 1, 1, kernel.address
    waited = crew.code["join"](table.ctypes.data, crew.code["yield"])
    assert waited == 0 and not np.isnan(out).any()


def test_a_thread_that_finds_its_table_filled_again_runs_the_new_kernel():
    """A helper stopped across two products finds its table holding a new one.
    Here the first piece's own kernel refills the table (a new kernel, new
    arguments, the second piece free again) while the thread that runs it is
    between two claims: the second piece must run the new kernel."""
    import ctypes

    code = crew_code()
    if not code:
        pytest.skip("no machine code here")
    kind = ctypes.CFUNCTYPE(None, *[ctypes.c_int64] * (mcrew.ROW - 1))
    ran = []
    table = np.zeros(mcrew.HEAD + 2 * mcrew.ROW, np.int64)
    pieces = table[mcrew.HEAD:].reshape(2, mcrew.ROW)

    @kind
    def new(*args):
        ran.append(("new", args[0]))

    @kind
    def old(*args):
        ran.append(("old", args[0]))
        if args[0] == 10:  # the new product: its kernel, rows, and left count;
            table[2] = ctypes.cast(new, ctypes.c_void_p).value
            pieces[:, 1] = 20, 21  # piece 0 taken by someone else, piece 1 free
            table[1] = 2  # this old piece's count, then the new piece's
            pieces[1, 0] = 0
    table[:3] = 2, 2, ctypes.cast(old, ctypes.c_void_p).value
    pieces[:, 1] = 10, 11
    code["join"](table.ctypes.data, code["yield"])
    assert ran == [("old", 10), ("new", 21)]


def crew_whose_join_says(monkeypatch, said: Callable[[int], int]):
    """The 2-thread crew, fresh (not working alone, every helper seen awake, so a
    wait counts), its join running the product and then returning said(call)."""
    set_kernel_threads(2)
    crew = mcrew.machine_crew(2)
    real, calls = crew.code["join"], []

    def join(table, give):
        real(table, give)
        calls.append(None)
        return said(len(calls))
    monkeypatch.setattr(crew, "code", {**crew.code, "join": join})
    monkeypatch.setattr(crew, "alone", 0)  # whatever earlier products left
    monkeypatch.setattr(crew, "asleep", [type(e)() for e in crew.asleep])
    return crew


def test_a_helper_held_back_makes_the_caller_work_alone_for_a_while(monkeypatch):
    """When join says the caller mostly waited (a helper the system stopped), the
    next ALONE products are not posted to the helpers; then they are again."""
    def said(call: int) -> int:  # a long wait once, as a stopped helper causes
        if call > 1:
            return 0
        time.sleep(10 * mcrew.LONG)
        return 900
    crew = crew_whose_join_says(monkeypatch, said)
    product = operands("q8_0", 2304, 768, 1)
    alone_and_shared(*product)
    assert crew.alone == mcrew.ALONE
    posted = int(crew.ctrl[0])
    for _ in range(mcrew.ALONE):
        a, shared = alone_and_shared(*product)
        np.testing.assert_array_equal(shared, a)
    assert int(crew.ctrl[0]) == posted and crew.alone == 0  # none posted
    alone_and_shared(*product)
    assert int(crew.ctrl[0]) == posted + 1  # posted again


def test_a_short_wait_is_not_taken_for_a_helper_held_back(monkeypatch):
    """Most of a short product spent waiting (a helper a little late) is not a
    busy machine: the crew keeps posting."""
    crew = crew_whose_join_says(monkeypatch, lambda call: 900)
    alone, shared = alone_and_shared(*operands("q8_0", 2304, 768, 1))
    np.testing.assert_array_equal(shared, alone)
    assert crew.alone == 0


def test_a_small_product_is_one_call_even_on_two_threads(monkeypatch):
    """Below SHARE bytes of weights the crew is not asked at all."""
    set_kernel_threads(2)
    crew = mcrew.machine_crew(2)
    posted = int(crew.ctrl[0])
    monkeypatch.setattr(crew, "alone", 0)
    kernel, x, xd, q, d = operands("q8_0", 768, 768, 1)
    assert q.nbytes < mcrew.SHARE
    alone, shared = alone_and_shared(kernel, x, xd, q, d)
    np.testing.assert_array_equal(shared, alone)
    assert int(crew.ctrl[0]) == posted
