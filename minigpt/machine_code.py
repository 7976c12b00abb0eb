"""Machine code of our own: LLVM IR built in Python, compiled, run from memory.

Implements the integer kernels of the kernel layer for Linux on x86-64 with AVX2.
Each kernel is written in LLVM's intermediate representation (IR) with llvmlite's
`ir` module, which is plain Python. A forked child process loads LLVM, compiles the
IR for this processor into an ELF object file, and sends the object's bytes back
through a pipe, so the process that generates never holds a compiler (LLVM costs
tens of MB). The parent takes the `.text` section out of the object, copies it into
private anonymous memory, and only then makes that memory executable (and no longer
writable); ctypes calls the functions, and a ctypes call releases the GIL, so
several Python threads can run them at once.

Nothing is ever read from or written to disk: the code is compiled again by every
process that needs it (a fraction of a second), so no file exists for another user
to plant or rewrite.

Leaves out on purpose: a linker (code that refers outside itself is refused, and
the NumPy path runs instead), other processors (ARM, x86 without AVX2), Windows and
macOS.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import platform
import struct
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

try:  # LLVM's IR as Python objects: plain Python, it loads no compiler
    from llvmlite import ir
except ImportError:  # no llvmlite: the kernels' NumPy paths still work
    ir = None

__all__ = ["MachineKernel", "MachineRounding", "address", "compile_object", "elf_text",
           "executable", "has_vnni", "in_child", "kernels_ir", "machine_code",
           "this_processor"]

# --8<-- [start:llvm-ir-loop]
@contextmanager
def counted(builder: ir.IRBuilder, n: ir.Value) -> Iterator[ir.Value]:
    """`for i in range(n)` in LLVM IR: the with-block's code is the loop body."""
    before = builder.block
    test, body, after = (builder.append_basic_block(s)
                         for s in ("test", "body", "after"))
    builder.branch(test)
    builder.position_at_end(test)
    i = builder.phi(n.type)  # i is 0 coming from before, i + 1 from the body
    i.add_incoming(n.type(0), before)
    builder.cbranch(builder.icmp_signed("<", i, n), body, after)
    builder.position_at_end(body)
    yield i
    i.add_incoming(builder.add(i, n.type(1)), builder.block)
    builder.branch(test)
    builder.position_at_end(after)


def declare(module: ir.Module, name: str, result: ir.Type, args: list) -> ir.Function:
    """The module's function `name`, declared if the module has none yet."""
    fn = module.globals.get(name)
    return fn if fn is not None else ir.Function(
        module, ir.FunctionType(result, args), name)


def splat(builder: ir.IRBuilder, value: ir.Value, lanes: int) -> ir.Value:
    """A vector with `value` in every one of its `lanes`."""
    vector, i32 = ir.VectorType(value.type, lanes), ir.IntType(32)
    one = builder.insert_element(ir.Constant(vector, ir.Undefined), value, i32(0))
    return builder.shuffle_vector(one, ir.Constant(vector, ir.Undefined),
                                  ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))


def prefetch(builder: ir.IRBuilder, address: ir.Value) -> None:
    """Ask the processor to start loading `address` (an i8*) into its caches."""
    i32 = ir.IntType(32)
    fn = declare(builder.module, "llvm.prefetch.p0i8", ir.VoidType(),
                 [address.type, i32, i32, i32])
    # read, into the second-level cache (locality 2), data: the first level has
    # fewer loads in flight, and filling it held one core below its bandwidth
    builder.call(fn, [address, i32(0), i32(2), i32(1)])


def lane_sum(builder: ir.IRBuilder, vector: ir.Value) -> ir.Value:
    """The sum of a vector's lanes, in order, once per row."""
    total = builder.extract_element(vector, ir.IntType(32)(0))
    for i in range(1, vector.type.count):
        total = builder.fadd(total, builder.extract_element(vector, ir.IntType(32)(i)))
    return total
# --8<-- [end:llvm-ir-loop]


# --8<-- [start:q8-0-integer-dot]
# how far ahead of the group being multiplied to ask for weights: one core's
# hardware prefetcher alone left this kernel well below its memory bandwidth
PREFETCH = 8192  # bytes, about ten GPT-2 rows ahead: measured, not derived


def byte_dots(builder: "ir.IRBuilder", u: "ir.Value", v: "ir.Value",  # noqa: UP037
              vnni: bool) -> "ir.Value":  # noqa: UP037
    """8 int32: u's 32 bytes (unsigned) times v's (signed), added in fours."""
    module, v32i8 = builder.module, ir.VectorType(ir.IntType(8), 32)
    v16i16, v8i32 = ir.VectorType(ir.IntType(16), 16), ir.VectorType(ir.IntType(32), 8)
    if vnni:  # one instruction (vpdpbusd), adding to zeros
        dot = declare(module, "llvm.x86.avx512.vpdpbusd.256", v8i32,
                      [v8i32, v32i8, v32i8])
        return builder.call(dot, [ir.Constant(v8i32, None), u, v])
    pairs = declare(module, "llvm.x86.avx2.pmadd.ub.sw", v16i16, [v32i8, v32i8])
    madd = declare(module, "llvm.x86.avx2.pmadd.wd", v8i32, [v16i16, v16i16])
    # added in pairs into int16 (vpmaddubsw), then those in pairs times -1
    # (vpmaddwd): all bits set is the one vector made without a constant
    minus = builder.call(madd, [builder.call(pairs, [u, v]),
                                ir.Constant(v16i16, [-1] * 16)])
    return builder.neg(minus)


# the annotations in quotes: without llvmlite, a session that pastes this still runs
def row_dot_ir(module: "ir.Module", vnni: bool) -> "ir.Function":  # noqa: UP037
    """An LLVM function: sum over g of s[g] * t[g] * (w[32g:32g+32] . x[32g:32g+32]).
    w: G*32 int8, s: G float32, x: G*32 int8 in [-127, 127], t: G float32, G
    -> float32. vnni: use vpdpbusd (the processor must have it), else AVX2 alone"""
    i1, i8, i64, f32 = ir.IntType(1), ir.IntType(8), ir.IntType(64), ir.FloatType()
    v32i8, v8f32 = ir.VectorType(i8, 32), ir.VectorType(f32, 8)
    fn = declare(module, "minigpt_q8_0_row_dot", f32, [
        i8.as_pointer(), f32.as_pointer(), i8.as_pointer(), f32.as_pointer(), i64])
    if not fn.is_declaration:
        return fn  # built already, for another kernel of this module
    fn.linkage = "internal"  # called only from this module: no symbol to look up
    fn.attributes.add("noinline")  # one row per call: no loop may be reordered
    w, s, x, t, G = fn.args
    builder = ir.IRBuilder(fn.append_basic_block())
    size = declare(module, "llvm.abs.v32i8", v32i8, [v32i8, i1])  # vpabsb
    # x negated where w < 0, zeroed where w = 0: |w| * that = w * x (vpsignb)
    sign = declare(module, "llvm.x86.avx2.psign.b", v32i8, [v32i8, v32i8])
    fma = declare(module, "llvm.fma.v8f32", v8f32, [v8f32] * 3)  # a * b + c
    sums = [builder.alloca(v8f32) for _ in range(2)]  # two chains of adds
    for acc in sums:
        builder.store(ir.Constant(v8f32, None), acc)  # zeros

    def group(g: ir.Value, acc: ir.Value) -> None:
        """Group g's integer dot, times its two scales, added into acc."""
        wv, xv = (builder.load(builder.bitcast(builder.gep(p, [builder.mul(
            g, i64(32))]), v32i8.as_pointer()), align=1) for p in (w, x))
        # exact: a sum of 4 products is at most 4 * 128 * 127 in magnitude
        dots = byte_dots(builder, builder.call(size, [wv, i1(0)]),
                         builder.call(sign, [xv, wv]), vnni)
        scale = builder.fmul(builder.load(builder.gep(s, [g])),
                             builder.load(builder.gep(t, [g])))
        builder.store(builder.call(fma, [builder.sitofp(dots, v8f32), splat(
            builder, scale, 8), builder.load(acc)]), acc)
    with counted(builder, builder.udiv(G, i64(2))) as pair:  # a cache line a step
        g = builder.mul(pair, i64(2))
        prefetch(builder, builder.gep(w, [builder.add(builder.mul(g, i64(32)),
                                                      i64(PREFETCH))]))
        for k, acc in enumerate(sums):
            group(builder.add(g, i64(k)), acc)
    with counted(builder, builder.urem(G, i64(2))):  # the last group of an odd G
        group(builder.sub(G, i64(1)), sums[0])
    total = builder.fadd(builder.load(sums[0]), builder.load(sums[1]))
    builder.ret(lane_sum(builder, total))
    return fn
# --8<-- [end:q8-0-integer-dot]


# --8<-- [start:int8-row-dot]
def int8_row_dot_ir(module: "ir.Module") -> "ir.Function":  # noqa: UP037
    """An LLVM function: s * (w . x), 32 numbers a step. w: K int8, s: float32,
    x: K float32, K (a multiple of 32) -> float32"""
    i8, i64, f32 = ir.IntType(8), ir.IntType(64), ir.FloatType()
    v16i8, v16f32 = ir.VectorType(i8, 16), ir.VectorType(f32, 16)
    fn = declare(module, "minigpt_int8_row_dot", f32,
                 [i8.as_pointer(), f32, f32.as_pointer(), i64])
    if not fn.is_declaration:
        return fn
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    w, s, x, K = fn.args
    builder = ir.IRBuilder(fn.append_basic_block())
    fma = declare(module, "llvm.fma.v16f32", v16f32, [v16f32] * 3)  # a * b + c
    sums = [builder.alloca(v16f32) for _ in range(2)]  # two chains of adds
    for acc in sums:
        builder.store(ir.Constant(v16f32, None), acc)
    with counted(builder, builder.udiv(K, i64(32))) as step:
        start = builder.mul(step, i64(32))
        prefetch(builder, builder.gep(w, [builder.add(start, i64(PREFETCH))]))
        for half, acc in zip((0, 16), sums, strict=True):
            at = builder.add(start, i64(half))
            wv = builder.load(builder.bitcast(builder.gep(w, [at]),
                                              v16i8.as_pointer()), align=1)
            xv = builder.load(builder.bitcast(builder.gep(x, [at]),
                                              v16f32.as_pointer()), align=4)
            # int8 -> float32 in the register, then one fused multiply-add
            builder.store(builder.call(fma, [builder.sitofp(wv, v16f32), xv,
                                             builder.load(acc)]), acc)
    total = builder.fadd(builder.load(sums[0]), builder.load(sums[1]))
    builder.ret(builder.fmul(s, lane_sum(builder, total)))
    return fn
# --8<-- [end:int8-row-dot]


# --8<-- [start:rows-ir]
def rows_ir(module: "ir.Module", scheme: str,  # noqa: UP037
            vnni: bool = False) -> "ir.Function":  # noqa: UP037
    """void minigpt_<scheme>_rows(x, xd, q, d, out, N, K, T, S): out[t*S + n] =
    row n of W times row t of x, for t < T and n < N. The arguments are pointers
    to the arrays (xd and d: the scales), then the sizes (S: out's row stride).
    vnni: as row_dot_ir's (the default, False, runs on any processor with AVX2)"""
    i8, i64, f32 = ir.IntType(8), ir.IntType(64), ir.FloatType()
    ptr, fp = i8.as_pointer(), f32.as_pointer()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [
        ptr, fp, ptr, fp, fp, i64, i64, i64, i64]), f"minigpt_{scheme}_rows")
    x, xd, q, d, out, N, K, T, S = fn.args
    builder = ir.IRBuilder(fn.append_basic_block())
    G = builder.udiv(K, i64(32))
    with counted(builder, N) as n, counted(builder, T) as t:  # a row, every token
        w = builder.gep(q, [builder.mul(n, K)])  # &q[n, 0]
        if scheme == "q8_0":  # x: int8 Q8_0 numbers, xd: their scales
            xt = builder.gep(x, [builder.mul(t, K)])
            dot = builder.call(row_dot_ir(module, vnni), [
                w, builder.gep(d, [builder.mul(n, G)]), xt,
                builder.gep(xd, [builder.mul(t, G)]), G])
        else:  # int8: x in float32, one scale per row
            xt = builder.gep(builder.bitcast(x, fp), [builder.mul(t, K)])
            dot = builder.call(int8_row_dot_ir(module), [
                w, builder.load(builder.gep(d, [n])), xt, K])
        builder.store(dot, builder.gep(out, [builder.add(builder.mul(t, S), n)]))
    builder.ret_void()
    return fn
# --8<-- [end:rows-ir]


# --8<-- [start:f32-rows-ir]
LANES, ROWS = 4, 3  # token rows and weight rows a pass: 12 chains of adds


def tree_sum(builder: ir.IRBuilder, vector: ir.Value) -> ir.Value:
    """The sum of a vector's lanes, adding its two halves until one lane is left."""
    i32 = ir.IntType(32)
    while vector.type.count > 1:
        half = vector.type.count // 2
        low, high = (builder.shuffle_vector(vector, vector, ir.Constant(
            ir.VectorType(i32, half), list(range(start, start + half))))
            for start in (0, half))
        vector = builder.fadd(low, high)
    return builder.extract_element(vector, i32(0))


def f32_dots_ir(module: "ir.Module", lanes: int, rows: int) -> "ir.Function":  # noqa: UP037
    """An LLVM function: out[l*S + r] = w[r*K:(r+1)*K] . x[l*K:(l+1)*K] for
    l < lanes, r < rows, each number loaded once for all it meets.
    w: rows*K float32, x: lanes*K, K (a multiple of 16), out, S -> nothing"""
    i64, f32 = ir.IntType(64), ir.FloatType()
    fp, v16f32 = f32.as_pointer(), ir.VectorType(f32, 16)
    fn = declare(module, f"minigpt_f32_dots_{lanes}x{rows}", ir.VoidType(),
                 [fp, fp, i64, fp, i64])
    if not fn.is_declaration:
        return fn
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    w, x, K, out, S = fn.args
    builder = ir.IRBuilder(fn.append_basic_block())
    fma = declare(module, "llvm.fma.v16f32", v16f32, [v16f32] * 3)
    sums = [[builder.alloca(v16f32) for _ in range(rows)] for _ in range(lanes)]
    for acc in sum(sums, []):
        builder.store(ir.Constant(v16f32, None), acc)

    def load(p: ir.Value, row: int, at: ir.Value) -> ir.Value:  # p[row*K + at:+16]
        at = builder.add(builder.mul(K, i64(row)), at)
        return builder.load(builder.bitcast(builder.gep(p, [at]),
                                            v16f32.as_pointer()), align=4)
    with counted(builder, builder.udiv(K, i64(16))) as step:
        at = builder.mul(step, i64(16))
        for r in range(rows if rows > 1 else 0):  # one row: measured quicker without
            prefetch(builder, builder.bitcast(builder.gep(w, [builder.add(
                builder.mul(K, i64(r)), builder.add(at, i64(PREFETCH // 4)))]),
                ir.IntType(8).as_pointer()))
        wv = [load(w, r, at) for r in range(rows)]
        for lane in range(lanes):
            xv = load(x, lane, at)
            for r in range(rows):
                acc = sums[lane][r]
                builder.store(builder.call(fma, [wv[r], xv, builder.load(acc)]), acc)
    for lane in range(lanes):
        for r in range(rows):
            where = builder.add(builder.mul(S, i64(lane)), i64(r))
            builder.store(tree_sum(builder, builder.load(sums[lane][r])),
                          builder.gep(out, [where]))
    builder.ret_void()
    return fn


def f32_rows_ir(module: "ir.Module") -> "ir.Function":  # noqa: UP037
    """void minigpt_f32_rows(x, xd, q, d, out, N, K, T, S): rows_ir's product for
    float32 weights q (xd and d unused: no scales). From LANES tokens on, ROWS
    weight rows by LANES tokens a pass; below, one row at a time (measured: for
    one token, rows side by side were slower)."""
    i8, i64, f32 = ir.IntType(8), ir.IntType(64), ir.FloatType()
    ptr, fp = i8.as_pointer(), f32.as_pointer()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [
        ptr, fp, ptr, fp, fp, i64, i64, i64, i64]), "minigpt_f32_rows")
    x, _, q, _, out, N, K, T, S = fn.args
    builder = ir.IRBuilder(fn.append_basic_block())
    x, w = builder.bitcast(x, fp), builder.bitcast(q, fp)
    full = builder.mul(builder.udiv(T, i64(LANES)), i64(LANES))  # tokens in fours

    def sweep(first: ir.Value, count: ir.Value, rows: int) -> None:
        """Weight rows first + rows*i for i < count, each against every token
        while it is in the cache: the tokens in fours, then one at a time."""
        with counted(builder, count) as i:
            n = builder.add(first, builder.mul(i, i64(rows)))
            for lanes, blocks, start in ((LANES, builder.udiv(T, i64(LANES)),
                                          i64(0)), (1, builder.sub(T, full), full)):
                with counted(builder, blocks) as b:
                    t = builder.add(start, builder.mul(b, i64(lanes)))
                    builder.call(f32_dots_ir(module, lanes, rows), [
                        builder.gep(w, [builder.mul(n, K)]),
                        builder.gep(x, [builder.mul(t, K)]), K,
                        builder.gep(out, [builder.add(builder.mul(t, S), n)]), S])
    with builder.if_else(builder.icmp_unsigned(">=", T, i64(LANES))) as (many, few):
        with many:  # the rows in threes, then the one or two left over
            threes = builder.udiv(N, i64(ROWS))
            sweep(i64(0), threes, ROWS)
            sweep(builder.mul(threes, i64(ROWS)), builder.urem(N, i64(ROWS)), 1)
        with few:
            sweep(i64(0), N, 1)
    builder.ret_void()
    return fn
# --8<-- [end:f32-rows-ir]


# --8<-- [start:quantize-ir]
def quantize_ir(module: "ir.Module") -> "ir.Function":  # noqa: UP037
    """void minigpt_q8_0_quantize(x, xq, xd, G, top, half): G groups of 32 float32
    rounded as ggml's reference (and quantize_groups) rounds them.
    x: G*32 float32, top: 127.0, half: 0.5 -> xq: G*32 int8, xd: G float32"""
    f32, i8, i64 = ir.FloatType(), ir.IntType(8), ir.IntType(64)
    v32f32, v32i8 = ir.VectorType(f32, 32), ir.VectorType(i8, 32)
    # top and half are arguments, not constants: x86 loads float constants from a
    # data section beside the code, and elf_text refuses code that refers outside
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [
        f32.as_pointer(), i8.as_pointer(), f32.as_pointer(), i64, f32, f32]),
        "minigpt_q8_0_quantize")
    x, xq, xd, G, top, half = fn.args
    builder = ir.IRBuilder(fn.append_basic_block())
    most = declare(module, "llvm.vector.reduce.fmax.v32f32", f32, [v32f32])
    least = declare(module, "llvm.vector.reduce.fmin.v32f32", f32, [v32f32])
    larger = declare(module, "llvm.maxnum.f32", f32, [f32, f32])
    trunc = declare(module, "llvm.trunc.v32f32", v32f32, [v32f32])  # towards 0
    halves, one = splat(builder, half, 32), builder.fadd(half, half)
    less_halves = splat(builder, builder.fsub(f32(0.0), half), 32)  # -0.5 each
    with counted(builder, G) as g:
        at = builder.mul(g, i64(32))
        v = builder.load(builder.bitcast(builder.gep(x, [at]), v32f32.as_pointer()),
                         align=4)
        # max |x| as max(largest, -smallest): fabs would need a constant bit mask
        amax = builder.call(larger, [builder.call(most, [v]), builder.fsub(
            f32(0.0), builder.call(least, [v]))])
        d = builder.fdiv(amax, top)  # in float32, as the reference divides
        inverse = builder.select(builder.fcmp_ordered(">", d, f32(0.0)),
                                 builder.fdiv(one, d), f32(0.0))
        scaled = builder.fmul(v, splat(builder, inverse, 32))
        # round half away from zero: the whole part, then one more step away
        # from zero where the part left over is at least a half
        whole = builder.call(trunc, [scaled])
        rest = builder.fsub(scaled, whole)
        up = builder.zext(builder.fcmp_ordered(">=", rest, halves), v32i8)
        down = builder.zext(builder.fcmp_ordered("<=", rest, less_halves), v32i8)
        # |whole| <= 127, and the step away from zero never passes 127: int8
        q = builder.sub(builder.add(builder.fptosi(whole, v32i8), up), down)
        builder.store(q, builder.bitcast(builder.gep(xq, [at]), v32i8.as_pointer()),
                      align=1)
        # the scale as stored: float16 (F16C), widened back for the dot products
        stored = builder.fpext(builder.fptrunc(d, ir.HalfType()), f32)
        builder.store(stored, builder.gep(xd, [g]))
    builder.ret_void()
    return fn
# --8<-- [end:quantize-ir]


# --8<-- [start:compile-object]
def compile_object(ir_text: str, assembly: bool = False) -> bytes:
    """LLVM IR as text -> an object file of machine code for this processor
    (or, to read, the same code as assembly text)."""
    import llvmlite.binding as llvm  # LLVM itself: only the process compiling

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    machine = llvm.Target.from_default_triple().create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
        opt=3, reloc="pic", codemodel="small")  # runs wherever it is mapped
    module = llvm.parse_assembly(ir_text)
    module.triple, module.data_layout = machine.triple, str(machine.target_data)
    module.verify()
    # LLVM's standard -O3 passes: registers for the allocas, the loops tidied
    passes = llvm.create_pass_builder(
        machine, llvm.create_pipeline_tuning_options(speed_level=3))
    passes.getModulePassManager().run(module, passes)
    if assembly:
        return machine.emit_assembly(module).encode()
    return machine.emit_object(module)


def in_child(fn: Callable[[str], bytes], arg: str) -> bytes:
    """fn(arg) run in a forked copy of this process: what fn loads (LLVM, tens of
    MB) leaves with the child, and only the bytes it returns come back."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        os.close(read)
        try:
            out, status = fn(arg), 0
        except BaseException as exc:  # noqa: BLE001 (reported to the parent)
            out, status = f"{type(exc).__name__}: {exc}".encode(), 1
        with os.fdopen(write, "wb") as f:
            f.write(out)
        os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"compiling in a child process failed: "
                           f"{out.decode(errors='replace') or status}")
    return out
# --8<-- [end:compile-object]


# --8<-- [start:elf-text]
SHT_RELA, SHT_REL, SHF_ALLOC = 4, 9, 0x2  # ELF: relocation sections; loaded


def elf_text(obj: bytes, names: list[str]) -> tuple[bytes, dict[str, int]]:
    """The .text bytes of a 64-bit ELF object and where each named function starts
    in them; an error if the code needs relocating (it could not run as it is)."""
    if obj[:4] != b"\x7fELF" or obj[4:6] != b"\x02\x01":
        raise ValueError("not a 64-bit little-endian ELF object")
    (table,) = struct.unpack_from("<Q", obj, 0x28)  # where the section headers are
    size, count, names_at = struct.unpack_from("<HHH", obj, 0x3A)
    # a header: name, type, flags, address, offset, size, link, info, align, entsize
    headers = [struct.unpack_from("<IIQQQQIIQQ", obj, table + i * size)
               for i in range(count)]

    def name(strings: int, at: int) -> str:  # a 0-terminated string of a table
        start = headers[strings][4] + at
        return obj[start:obj.index(b"\0", start)].decode()
    sections = {name(names_at, h[0]): i for i, h in enumerate(headers)}
    text = sections[".text"]
    for i, (at, kind, flags, _, _, length, _, info, _, _) in enumerate(headers):
        if kind in (SHT_RELA, SHT_REL) and info == text:
            raise ValueError("the code needs relocating: it refers outside itself")
        if flags & SHF_ALLOC and length and i != text and \
                not name(names_at, at).startswith(".eh_frame"):
            raise ValueError(f"the code needs section {name(names_at, at)}")
    symbols = headers[sections[".symtab"]]  # 24 bytes each: name, ..., value
    starts = {}
    for at in range(symbols[4], symbols[4] + symbols[5], 24):
        label, _, _, section, value, _ = struct.unpack_from("<IBBHQQ", obj, at)
        if section == text:
            starts[name(symbols[6], label)] = value
    missing = [n for n in names if n not in starts]
    if missing:
        raise ValueError(f"no function {missing[0]} in the object")
    start, length = headers[text][4], headers[text][5]
    return obj[start:start + length], {n: starts[n] for n in names}
# --8<-- [end:elf-text]


# --8<-- [start:machine-code]
SCHEMES = ("q8_0", "int8", "f32")  # one rows function each
ENTRIES = [f"minigpt_{s}_rows" for s in SCHEMES] + ["minigpt_q8_0_quantize"]


def this_processor() -> str:
    """The machine's name and feature flags (Linux), which the code is built for."""
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        lines = [line for line in f if line.startswith(("model name", "flags"))]
    return platform.machine() + "".join(sorted(set(lines)))


def has_vnni(processor: str) -> bool:
    """Whether this_processor()'s flags include vpdpbusd on 256-bit vectors:
    AVX512_VNNI with AVX512VL, or AVX-VNNI."""
    flags = set(processor.split())
    return {"avx512_vnni", "avx512vl"} <= flags or "avx_vnni" in flags


def kernels_ir(vnni: bool | None = None) -> str:
    """The LLVM IR of a module with one rows_ir function per scheme, as text;
    with vpdpbusd where this processor has it (or as `vnni` says)."""
    vnni = has_vnni(this_processor()) if vnni is None else vnni
    module = ir.Module("minigpt_kernels")
    for scheme in SCHEMES:
        (f32_rows_ir(module) if scheme == "f32" else rows_ir(module, scheme, vnni))
    quantize_ir(module)
    return str(module)


def executable(code: bytes) -> tuple[mmap.mmap, int]:
    """code copied into private anonymous memory, then made read+execute (never
    write+execute). -> (the memory, which must outlive the code; its address)"""
    memory = mmap.mmap(-1, len(code), flags=mmap.MAP_PRIVATE)  # anonymous: no file
    memory.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.mprotect(address, len(memory), mmap.PROT_READ | mmap.PROT_EXEC):
        raise OSError(ctypes.get_errno(), "memory for machine code: mprotect failed")
    return memory, address


@functools.cache
def machine_code() -> dict:
    """"q8_0", "int8" -> MachineKernel and "q8_0 rounding" -> MachineRounding,
    compiled by this process for this processor; empty where there is none."""
    if not (sys.platform == "linux" and platform.machine() == "x86_64"
            and ir is not None and " avx2" in this_processor()):
        return {}
    try:
        code, starts = elf_text(in_child(compile_object, kernels_ir()), ENTRIES)
        memory, base = executable(code)
    except (OSError, ValueError, RuntimeError) as exc:
        warnings.warn(f"no machine code of our own ({exc}); NumPy runs the "
                      f"quantised products", stacklevel=2)
        return {}
    p, i = ctypes.c_void_p, ctypes.c_int64
    rows = ctypes.CFUNCTYPE(None, p, p, p, p, p, i, i, i, i)  # C's calling rules
    kernels = {s: MachineKernel(memory, rows(base + starts[f"minigpt_{s}_rows"]), s)
               for s in SCHEMES}
    rounding = ctypes.CFUNCTYPE(None, p, p, p, i, ctypes.c_float, ctypes.c_float)(
        base + starts["minigpt_q8_0_quantize"])
    return kernels | {"q8_0 rounding": MachineRounding(memory, rounding)}


def address(a: np.ndarray | None) -> int:
    """Where a's first byte is (0 for None): a ctypes view of a writable array is
    several times quicker to make than a.ctypes, which a call needs per array."""
    if a is None:
        return 0
    fast = a.flags.writeable and a.flags.c_contiguous and a.nbytes  # a view allows it
    return ctypes.addressof(ctypes.c_char.from_buffer(a)) if fast else a.ctypes.data


@dataclass(frozen=True)
class MachineKernel:
    """A rows function, called through ctypes: out = x @ W.T for row-major W."""

    code: mmap.mmap  # the memory holding the code: it must live as long as fn
    fn: Callable  # void (x, xd, q, d, out, N, K, T, S); a call releases the GIL
    scheme: str

    @property
    def address(self) -> int:
        """Where the function starts, for code that calls it itself."""
        return ctypes.cast(self.fn, ctypes.c_void_p).value

    def __call__(self, x: np.ndarray, xd: np.ndarray | None, q: np.ndarray,
                 d: np.ndarray | None, out: np.ndarray) -> None:
        """q8_0: x (T, K) int8, xd (T, K/32), q (N, K) int8, d (N, K/32) float32;
        int8: x float32, xd None, d (N, 1); f32: x, q float32, xd, d None.
        -> out: (T, N) float32, whose rows may lie apart (some columns of a matrix)"""
        S = self.check(x, xd, q, d, out)
        (T, K), N = x.shape, q.shape[0]
        self.fn(address(x), address(xd), address(q), address(d), address(out),
                N, K, T, S)

    def check(self, x: np.ndarray, xd: np.ndarray | None, q: np.ndarray,
              d: np.ndarray | None, out: np.ndarray) -> int:
        """An error unless the arrays are what the code reads (it trusts its
        pointers: a wrong array would crash Python). -> out's row stride S"""
        (T, K), N = x.shape, q.shape[0]
        xt, qt, G = {"q8_0": (np.int8, np.int8, K // 32), "int8": (
            np.float32, np.int8, 1), "f32": (np.float32, np.float32, 0)}[self.scheme]
        want = [(x, xt, (T, K)), (q, qt, (N, K))] + (
            [(d, np.float32, (N, G))] if G else []) + (
            [(xd, np.float32, (T, G))] if self.scheme == "q8_0" else [])
        S = out.strides[0] // 4 if T > 1 else N  # floats from one out row to the next
        if K % 32 or len(want) != 2 + sum(a is not None for a in (xd, d)) or not all(
                a is not None and a.dtype == t and a.shape == s and a.flags.c_contiguous
                for a, t, s in want) or out.dtype != np.float32 or out.shape != (
                T, N) or out.strides[1] != 4 or S < N or out.strides[0] % 4:
            raise ValueError(f"{self.scheme} machine code: arrays of the wrong "
                             f"dtype, shape or layout for T={T}, N={N}, K={K}")
        return S


@dataclass(frozen=True)
class MachineRounding:
    """quantize_ir's function, called through ctypes: activations in Q8_0."""

    code: mmap.mmap
    fn: Callable  # void (x, xq, xd, G, top, half)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x: (T, K) float32, finite -> xq: (T, K) int8, xd: (T, K/32) float32"""
        if (x.dtype != np.float32 or x.ndim != 2 or x.shape[1] % 32
                or not x.flags.c_contiguous):
            raise ValueError(f"q8_0 rounding machine code: x must be contiguous "
                             f"float32 rows of a multiple of 32 numbers, got "
                             f"{x.dtype} {list(x.shape)}")
        xq = np.empty(x.shape, np.int8)
        xd = np.empty((len(x), x.shape[1] // 32), np.float32)
        self.fn(address(x), address(xq), address(xd), xd.size, 127.0, 0.5)
        return xq, xd
# --8<-- [end:machine-code]
