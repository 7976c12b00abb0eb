"""A crew in machine code: helper threads that wait and work without Python's lock.

Implements chapter 23's crew again, for our own kernels, after measuring what a
hand-over costs: a Python helper that sleeps between two products must be woken
by the system and must then take Python's lock, and on a virtual machine that is
about 100 microseconds, as long as a whole one-token product. Here a helper is a
Python thread that calls one machine-code function, `worker`, and stays in it: it
watches a counter with the processor's `pause` instruction, and when the counter
moves it claims pieces of the posted product (one compare-and-swap each) and calls
the kernel for them, all without the lock. The caller posts a product as a table
of the kernel's arguments, one row per piece, bumps the counter, and joins in
(`join`): it claims pieces too, then waits for the last one to finish. A helper
that has waited SPIN seconds with nothing to do returns to Python and sleeps on a
queue, so an idle program uses no processor; while it waits it gives the processor
away (`sched_yield`) every few microseconds, so a busy machine's other programs
run, and it never waits while BLAS runs a prompt (those products go to chapter
23's crew). Two tables take turns, and a piece is claimed by flipping its own
flag, so a helper running late can never run a piece twice or miss one. A caller
that spent most of a product waiting for a helper the system had stopped (a busy
machine) runs the next products alone, then tries the helpers again.

Leaves out on purpose: pinning threads to cores, and machines other than Linux on
x86-64 (there the Python crew of chapter 23 runs everything).
"""

from __future__ import annotations

import ctypes
import functools
import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from minigpt.machine_code import (
    MachineKernel,
    address,
    compile_object,
    counted,
    declare,
    elf_text,
    executable,
    in_child,
    ir,
    machine_code,
)
from minigpt.threads import PIECES, kernel_threads, shares

__all__ = ["SHARE", "SPIN", "MachineCrew", "crew_code", "cut", "machine_crew",
           "run_rows", "share_rows"]


# --8<-- [start:crew-ir]
ROW, HEAD = 10, 8  # a piece: its flag and the kernel's 9 arguments; a table's head


def wait_ir(builder: "ir.IRBuilder", at: "ir.Value", value: "ir.Value",  # noqa: UP037
            same: bool, rounds: "ir.Value", give: "ir.Value") -> "ir.Value":  # noqa: UP037
    """Wait while *at == value (same) or != value, at most `rounds` pauses,
    calling give() every 256. -> i1: the wait ended because *at changed"""
    i64 = ir.IntType(64)
    pause = declare(builder.module, "llvm.x86.sse2.pause", ir.VoidType(), [])
    before, test, body, out = builder.block, *(builder.append_basic_block(s)
                                               for s in ("test", "pause", "out"))
    builder.branch(test)
    builder.position_at_end(test)
    i = builder.phi(i64)
    i.add_incoming(i64(0), before)
    now = builder.load_atomic(at, "acquire", 8)  # another core's write, seen
    ended = builder.icmp_signed("!=" if same else "==", now, value)
    builder.cbranch(builder.or_(ended, builder.icmp_signed(">=", i, rounds)),
                    out, body)
    builder.position_at_end(body)
    builder.call(pause, [])  # tells the core this is a wait: less power, no race
    with builder.if_then(builder.icmp_signed("==", builder.and_(i, i64(255)),
                                             i64(255))):
        builder.call(give, [])  # sched_yield: another program may have the core
    i.add_incoming(builder.add(i, i64(1)), builder.block)
    builder.branch(test)
    builder.position_at_end(out)
    return ended


def pieces_ir(module: "ir.Module") -> "ir.Function":  # noqa: UP037
    """void run_pieces(table): claim each piece whose flag is still 0 and call
    the table's kernel on its arguments; table: [n, left, kernel, ..., rows of
    ROW: a flag and 9 arguments]"""
    i64 = ir.IntType(64)
    # x86-64's C convention passes a pointer exactly as a 64-bit integer, and the
    # caller removes what it passed: any kernel of up to 9 such arguments fits
    kind = ir.FunctionType(ir.VoidType(), [i64] * (ROW - 1))
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [i64.as_pointer()]),
                     "minigpt_run_pieces")
    fn.linkage = "internal"
    (table,) = fn.args
    builder = ir.IRBuilder(fn.append_basic_block())
    n = builder.load_atomic(builder.gep(table, [i64(0)]), "acquire", 8)
    with counted(builder, n) as i:
        row = builder.gep(table, [builder.add(i64(HEAD), builder.mul(i, i64(ROW)))])
        mine = builder.extract_value(builder.cmpxchg(  # 0 -> 1: this piece is ours
            row, i64(0), i64(1), "acq_rel", "acquire"), 1)
        with builder.if_then(mine):  # the kernel read after the claim: a helper
            # stopped here for two products claims the table's new piece, and
            # must run the new product's kernel on it
            kernel = builder.load(builder.gep(table, [i64(2)]))
            builder.call(builder.inttoptr(kernel, kind.as_pointer()),
                         [builder.load(builder.gep(row, [i64(k)]))
                          for k in range(1, ROW)])
            builder.atomic_rmw("sub", builder.gep(table, [i64(1)]), i64(1),
                               "acq_rel")
    builder.ret_void()
    return fn


def crew_ir() -> str:
    """The module: i64 worker(ctrl, seen, rounds, give) and i64 join(table, give),
    which returns the share of its time it waited for the helpers (per mille)."""
    i64 = ir.IntType(64)
    p64, give = i64.as_pointer(), ir.FunctionType(ir.IntType(32), []).as_pointer()
    module = ir.Module("minigpt_crew")
    run = pieces_ir(module)
    worker = ir.Function(module, ir.FunctionType(i64, [p64, i64, i64, give]),
                         "minigpt_worker")
    ctrl, seen, rounds, yield_ = worker.args
    builder = ir.IRBuilder(worker.append_basic_block())
    last = builder.alloca(i64)
    builder.store(seen, last)
    with counted(builder, i64(1 << 62)):  # until it waits `rounds` in vain
        posted = builder.gep(ctrl, [i64(0)])
        if_new = wait_ir(builder, posted, builder.load(last), True, rounds, yield_)
        with builder.if_else(if_new) as (new, idle):
            with new:  # product g: table g % 2
                g = builder.load_atomic(posted, "acquire", 8)
                builder.store(g, last)
                at = builder.gep(ctrl, [builder.add(i64(1), builder.urem(g, i64(2)))])
                builder.call(run, [builder.inttoptr(builder.load(at), p64)])
            with idle:
                builder.ret(builder.load(last))
    builder.ret(builder.load(last))
    join = ir.Function(module, ir.FunctionType(i64, [p64, give]), "minigpt_join")
    table, yield_ = join.args
    builder = ir.IRBuilder(join.append_basic_block())
    clock = declare(module, "llvm.readcyclecounter", i64, [])  # x86's rdtsc
    start = builder.call(clock, [])
    builder.call(run, [table])  # the caller works too, then waits for the rest
    done = builder.call(clock, [])
    wait_ir(builder, builder.gep(table, [i64(1)]), i64(0), False, i64(1 << 62), yield_)
    end = builder.call(clock, [])
    # the share of its time the caller spent waiting for helpers, per thousand
    builder.ret(builder.udiv(builder.mul(builder.sub(end, done), i64(1000)),
                             builder.add(builder.sub(end, start), i64(1))))
    return str(module)
# --8<-- [end:crew-ir]


# --8<-- [start:crew-code]
SPIN = 200e-6  # seconds a helper waits for work before it sleeps: a step's gaps


@functools.cache
def crew_code() -> dict:
    """"worker", "join", "yield" and "rounds" (pauses in SPIN seconds), compiled
    into memory by this process; empty where there is no machine code."""
    if not machine_code():
        return {}
    code, starts = elf_text(in_child(compile_object, crew_ir()),
                            ["minigpt_worker", "minigpt_join"])
    memory, base = executable(code)
    p, i, give = ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p
    worker = ctypes.CFUNCTYPE(i, p, i, i, give)(base + starts["minigpt_worker"])
    join = ctypes.CFUNCTYPE(i, p, give)(base + starts["minigpt_join"])
    libc = ctypes.CDLL(None)
    give_way = ctypes.cast(libc.sched_yield, ctypes.c_void_p).value
    ctrl = np.zeros(3, np.int64)  # nothing is ever posted: worker waits, returns
    start = time.perf_counter()
    worker(ctrl.ctypes.data, 0, 100_000, give_way)
    per_round = (time.perf_counter() - start) / 100_000
    return {"memory": memory, "worker": worker, "join": join, "yield": give_way,
            "rounds": max(1, int(SPIN / per_round))}
# --8<-- [end:crew-code]


# --8<-- [start:machine-crew]
# a caller that waited for its helpers more than half the time they shared a
# product, and longer than LONG seconds, was kept waiting by a helper the system
# had stopped (a busy machine), not by one a little late to a short product: the
# next ALONE products run on the caller alone, then the helpers are tried again
HELD, LONG, ALONE = 500, 200e-6, 200


class MachineCrew:
    """n - 1 helpers waiting in machine code; the caller is the n-th."""

    def __init__(self, n: int):
        most = n * PIECES  # split_rows' largest number of pieces
        self.size, self.code, self.alone = n, crew_code(), 0
        self.tables = [np.zeros(HEAD + most * ROW, np.int64) for _ in range(2)]
        self.ctrl = np.array([0, *(t.ctypes.data for t in self.tables)], np.int64)
        self.asleep = [threading.Event() for _ in range(n - 1)]
        self.wake = [queue.SimpleQueue() for _ in range(n - 1)]
        for h in range(n - 1):  # daemons: they end with the program
            threading.Thread(target=self.serve, args=(h,), daemon=True).start()

    def serve(self, h: int) -> None:
        """A helper's life: wait and work in machine code; sleep when idle."""
        seen = 0
        while True:
            c = self.code
            seen = c["worker"](self.ctrl.ctypes.data, seen, c["rounds"], c["yield"])
            self.asleep[h].set()
            if self.ctrl[0] == seen:  # nothing new since it stopped waiting
                self.wake[h].get()
            self.asleep[h].clear()

    def run(self, kernel: int, rows: np.ndarray) -> None:
        """Call the kernel at address `kernel` once per row of arguments (n, 9),
        the rows shared among the crew; returns when all are done."""
        g = int(self.ctrl[0]) + 1
        table = self.tables[g % 2]  # the other one may still be read by a laggard
        n = len(rows)
        pieces = table[HEAD:HEAD + n * ROW].reshape(n, ROW)
        pieces[:, 1:] = rows
        table[:3] = 0, n, kernel
        table[0] = n  # after the rows: a helper that sees n sees them too
        pieces[:, 0] = 0  # each piece free to claim, last
        if self.alone:  # not posted: the caller runs every piece itself
            self.alone -= 1
            self.code["join"](table.ctypes.data, self.code["yield"])
            return
        self.ctrl[0] = g  # posted
        woken = False
        for asleep, wake in zip(self.asleep, self.wake, strict=True):
            if asleep.is_set():
                wake.put(None)
                woken = True
        start = time.perf_counter()
        waited = self.code["join"](table.ctypes.data, self.code["yield"])  # per mille
        long = waited * (time.perf_counter() - start) > 1000 * LONG
        if waited > HELD and long and not woken:  # one woken now is late, not held
            self.alone = ALONE
# --8<-- [end:machine-crew]


# --8<-- [start:run-rows]
@functools.cache
def machine_crew(n: int) -> MachineCrew:
    """The process's machine-code crew of n threads, started on first use."""
    return MachineCrew(n)


@functools.cache
def cut(n: int, threads: int) -> np.ndarray:
    """split_rows' pieces of range(n) as an array, worked out once. -> (P, 2)"""
    return np.array(shares(n, threads * PIECES), np.int64).reshape(-1, 2)


# bytes of weights from which a product is shared (measured: below, on this
# machine, handing pieces over cost about what the second core saved)
SHARE = 1 << 20


def share_rows(fn: Callable, start: list[int], step: list[int], count: int,
               n: int, nbytes: int) -> None:
    """fn(*args) for every piece a:b of range(n), on our threads: args = start +
    a * step (9 integers or addresses), with args[count] = b - a rows; nbytes:
    the weights' bytes (a smaller product than SHARE is one call)."""
    threads = kernel_threads()
    pieces = None if threads == 1 or nbytes < SHARE else cut(n, threads)
    if pieces is None or len(pieces) == 1 or not crew_code():
        fn(*start[:len(fn.argtypes)])  # one plain call for all n rows
        return
    rows = np.array(start, np.int64) + pieces[:, :1] * np.array(step, np.int64)
    rows[:, count] = pieces[:, 1] - pieces[:, 0]  # the arguments of rows a:b
    machine_crew(threads).run(ctypes.cast(fn, ctypes.c_void_p).value, rows)


def run_rows(kernel: MachineKernel, x: np.ndarray, xd: np.ndarray | None,
             q: np.ndarray, d: np.ndarray | None, out: np.ndarray) -> None:
    """kernel(x, xd, q, d, out) with the rows of q shared out over our threads."""
    S = kernel.check(x, xd, q, d, out)  # once, for the whole product
    K, G = q.shape[1], 0 if d is None else d.shape[1]
    start = [address(x), address(xd), address(q), address(d), address(out),
             q.shape[0], K, len(x), S]
    step = [0, 0, K * q.itemsize, G * 4, 4, 0, 0, 0, 0]
    share_rows(kernel.fn, start, step, 5, q.shape[0], q.nbytes)  # N, the 6th
# --8<-- [end:run-rows]
