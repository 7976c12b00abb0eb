"""Tests for minigpt.machine_code: nothing runs from disk, and the code is exact.

The two attacks: a `.bin` + `.json` pair planted where a cache of compiled code
would be read from (MINIGPT_CACHE, XDG_CACHE_HOME) must never run, and the code
that runs must not be a mapping of a file that someone could rewrite after a check.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minigpt import DEMO_MODEL

try:  # the module that builds and loads our machine code
    import minigpt.machine_code as mc
except ImportError:  # before the kernel layer had its own module
    import minigpt.quantize as mc

ROOT = Path(__file__).resolve().parents[1]
CODE = mc.machine_code()
needs_code = pytest.mark.skipif(not CODE, reason="machine code needs Linux on x86 "
                                "with AVX2, and llvmlite")
# x86-64: mov edi, 77; mov eax, 231 (exit_group); syscall: the process exits 77
PAYLOAD = bytes.fromhex("bf4d000000b8e70000000f05")
ENTRIES = ["minigpt_q8_0_rows", "minigpt_int8_rows", "minigpt_q8_0_quantize"]


def plant(folder: Path) -> None:
    """A code file and its index, as a cache of compiled kernels would hold them."""
    key = hashlib.sha256((mc.kernels_ir() + mc.this_processor()).encode())
    path = folder / f"kernels-{key.hexdigest()[:16]}.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PAYLOAD)
    index = {"sha256": hashlib.sha256(PAYLOAD).hexdigest(),
             "starts": {name: 0 for name in ENTRIES}}
    path.with_suffix(".json").write_text(json.dumps(index))


@needs_code
def test_a_planted_cache_file_never_runs(tmp_path):
    cache, xdg = tmp_path / "cache", tmp_path / "xdg"
    plant(cache)
    plant(xdg / "minigpt")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    env = os.environ | {"MINIGPT_CACHE": str(cache), "XDG_CACHE_HOME": str(xdg)}
    run = subprocess.run(
        [sys.executable, "-m", "minigpt", "generate", "--model", str(DEMO_MODEL),
         "--quantize", "q8_0", "--max-new-tokens", "3", "ROMEO:"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert run.returncode != 77, "the planted code ran"
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("ROMEO:")
    # and nothing was written there either: no cache at all
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def mapping_of(address: int) -> list[str]:
    """The /proc/self/maps line holding address, split into its fields."""
    with open("/proc/self/maps", encoding="utf-8") as f:
        for line in f:
            span, *rest = line.split()
            start, end = (int(a, 16) for a in span.split("-"))
            if start <= address < end:
                return rest
    raise AssertionError(f"{address:#x} is not mapped")


@needs_code
def test_the_code_runs_from_private_anonymous_memory_not_a_file(monkeypatch,
                                                                 tmp_path):
    monkeypatch.setenv("MINIGPT_CACHE", str(tmp_path))
    mc.machine_code.cache_clear()
    try:
        code = mc.machine_code()
        for name in ("q8_0", "int8", "q8_0 rounding"):
            address = ctypes.cast(code[name].fn, ctypes.c_void_p).value
            perms, _offset, _dev, inode, *path = mapping_of(address)
            # executable, never writable, private (a rewrite of any file cannot
            # reach it), and backed by no file at all
            assert perms == "r-xp" and inode == "0" and path == [], (perms, path)
        assert list(tmp_path.iterdir()) == []  # nothing written to disk
        xq, xd = code["q8_0 rounding"](np.ones((1, 32), np.float32))
        assert (xq == 127).all()
    finally:
        mc.machine_code.cache_clear()


@needs_code
@pytest.mark.parametrize("T, rows, K", [(1, 68, 96), (1, 71, 768), (5, 70, 3072)])
def test_machine_code_equals_numpy_and_sums_groups_exactly(T, rows, K):
    from minigpt.quantize import dequantize, quantize_groups

    rng = np.random.default_rng(4)
    a = rng.standard_normal((rows, K)).astype(np.float32)
    x = rng.standard_normal((T, K)).astype(np.float32)
    q, d = quantize_groups(a, 32)
    xq, xd = quantize_groups(x, 32)
    got = np.empty((T, rows), np.float32)
    CODE["q8_0"](xq, xd, q, d, got)
    want = dequantize(xq, xd) @ dequantize(q, d).T
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    one_group = np.empty((T, rows), np.float32)  # scales of 1: the integers alone
    CODE["q8_0"](np.ascontiguousarray(xq[:, :32]), np.ones((T, 1), np.float32),
                 np.ascontiguousarray(q[:, :32]), np.ones((rows, 1), np.float32),
                 one_group)
    want = xq[:, :32].astype(np.int64) @ q[:, :32].astype(np.int64).T
    assert (one_group == want).all()
    qi, di = quantize_groups(a, K, np.float32)  # int8: one scale per row
    got = np.empty((T, rows), np.float32)
    CODE["int8"](x, None, qi, di, got)
    want = x @ dequantize(qi, di).T
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@needs_code
def test_machine_code_refuses_arrays_it_would_misread():
    q, d = np.ones((8, 64), np.int8), np.ones((8, 2), np.float32)
    xq, xd = np.ones((1, 64), np.int8), np.ones((1, 2), np.float32)
    out = np.empty((1, 8), np.float32)
    kernel = CODE["q8_0"]
    kernel(xq, xd, q, d, out)
    assert (out == 64).all()
    bad = [(xq.astype(np.int16), xd, q, d, out),  # wrong dtype (int8 since VNNI)
           (xq, xd, q[:, :32], d, out),  # rows of another length
           (xq, xd, np.asfortranarray(q), d, out),  # not row after row in memory
           (xq, xd, q, d, np.empty((1, 7), np.float32)),  # an output too short
           (xq, xd, q, np.ones((8, 1), np.float32), out),  # too few scales
           (xq, None, q, d, out),  # no scales for x
           (np.ones((1, 40), np.int8), np.ones((1, 1), np.float32),
            np.ones((8, 40), np.int8), np.ones((8, 1), np.float32), out)]  # K % 32
    for arrays in bad:
        with pytest.raises(ValueError, match="wrong dtype, shape or layout"):
            kernel(*arrays)
    with pytest.raises(ValueError, match="wrong dtype"):
        CODE["int8"](np.ones((1, 64), np.float64), None, q, d[:, :1], out)
    for bad in (np.ones((1, 64)), np.ones((1, 40), np.float32),
                np.ones((1, 128), np.float32)[:, ::2], np.ones(64, np.float32)):
        with pytest.raises(ValueError, match="contiguous float32 rows"):
            CODE["q8_0 rounding"](bad)


@needs_code
def test_a_compile_error_in_the_child_reaches_the_parent():
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        mc.in_child(lambda text: bytes(1 // len(text)), "")
    assert mc.in_child(lambda text: text.encode() * 2, "ab") == b"abab"


@needs_code
def test_code_that_needs_relocating_is_refused():
    from llvmlite import ir

    module = ir.Module("outside")
    f32 = ir.FloatType()
    sqrt = ir.Function(module, ir.FunctionType(f32, [f32]), "sqrtf")  # libc's
    fn = ir.Function(module, ir.FunctionType(f32, [f32]), "root")
    builder = ir.IRBuilder(fn.append_basic_block())
    builder.ret(builder.call(sqrt, [fn.args[0]]))
    obj = mc.compile_object(str(module))
    with pytest.raises(ValueError, match="needs relocating"):
        mc.elf_text(obj, ["root"])
    with pytest.raises(ValueError, match="not a 64-bit little-endian ELF"):
        mc.elf_text(b"MZ" + obj[2:], ["root"])
    code, starts = mc.elf_text(mc.compile_object(mc.kernels_ir()), ENTRIES)
    assert 0 <= starts["minigpt_int8_rows"] < len(code)
    with pytest.raises(ValueError, match="no function nothing"):
        mc.elf_text(mc.compile_object(mc.kernels_ir()), ["nothing"])


@needs_code
def test_machine_code_holds_integer_and_fused_multiply_adds():
    asm = mc.compile_object(mc.kernels_ir(), assembly=True).decode()
    assert "vfmadd" in asm and "prefetcht1" in asm and "vpsignb" in asm
    vnni = mc.has_vnni(mc.this_processor())  # bytes times bytes, into int32
    assert ("vpdpbusd" in asm) == vnni and ("vpmaddubsw" in asm) != vnni


@needs_code
def test_executable_memory_is_never_writable_and_runs_what_was_copied():
    memory, address = mc.executable(PAYLOAD[:5] + bytes.fromhex("89f8c3"))
    perms = mapping_of(address)[0]
    assert perms == "r-xp"
    # mov edi, 77; mov eax, edi; ret: a function that returns 77
    assert ctypes.CFUNCTYPE(ctypes.c_int)(address)() == 77
    assert memory[:5] == PAYLOAD[:5]


@needs_code
def test_quantised_decoding_loads_neither_numba_nor_llvm(tmp_path):
    from minigpt.quantize import quantize_checkpoint

    script = (
        "import sys\n"
        "from minigpt.quantize import load_quantized\n"
        "from minigpt.generation import generate\n"
        "from minigpt.threads import set_kernel_threads\n"
        "set_kernel_threads(2)\n"
        f"model = load_quantized({str(tmp_path / 'q')!r})\n"
        "tokens = list(generate(model, [1, 2, 3], 4))\n"
        "loaded = [m for m in ('numba', 'llvmlite.binding') if m in sys.modules]\n"
        "print(len(tokens), loaded)\n")
    quantize_checkpoint(DEMO_MODEL, tmp_path / "q", "q8_0")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "4 []"


# a processor, and whether it has vpdpbusd on 256-bit vectors (AVX512_VNNI with
# AVX512VL, or AVX-VNNI): the IR each would be given
CPUS = {"haswell": False, "znver1": False, "skylake-avx512": False,
        "cascadelake": True, "alderlake": True, "znver4": True}


def test_has_vnni_reads_the_flags_each_form_needs():
    assert mc.has_vnni("x86_64flags\t: fpu avx2 avx512vl avx512_vnni\n")
    assert mc.has_vnni("x86_64flags\t: fpu avx2 avx_vnni\n")
    assert not mc.has_vnni("x86_64flags\t: fpu avx2 avx512_vnni\n")  # 512 bits only
    assert not mc.has_vnni("x86_64flags\t: fpu avx2 avx512vl avx512f\n")


@pytest.mark.parametrize("cpu", sorted(CPUS))
def test_the_kernels_compile_for_processors_with_and_without_vnni(cpu):
    """Each processor's IR compiles for it, with no data section beside the code
    (elf_text would refuse it), and multiplies bytes as that processor can."""
    llvm = pytest.importorskip("llvmlite.binding")
    import platform

    if platform.machine() != "x86_64" or mc.ir is None:
        pytest.skip("x86-64 code only")
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    machine = llvm.Target.from_default_triple().create_target_machine(
        cpu=cpu, features="", opt=3, reloc="pic", codemodel="small")
    parsed = llvm.parse_assembly(mc.kernels_ir(CPUS[cpu]))
    parsed.triple, parsed.data_layout = machine.triple, str(machine.target_data)
    passes = llvm.create_pass_builder(
        machine, llvm.create_pipeline_tuning_options(speed_level=3))
    passes.getModulePassManager().run(parsed, passes)
    code, starts = mc.elf_text(machine.emit_object(parsed), mc.ENTRIES)
    assert sorted(starts) == sorted(mc.ENTRIES) and code
    asm = machine.emit_assembly(parsed)
    assert ("vpdpbusd" in asm) == CPUS[cpu] and ("vpmaddubsw" in asm) != CPUS[cpu]


def q8_0_kernel(vnni: bool):
    """The q8_0 rows function of kernels_ir(vnni), compiled here and wrapped."""
    code, starts = mc.elf_text(mc.in_child(mc.compile_object, mc.kernels_ir(vnni)),
                               mc.ENTRIES)
    memory, base = mc.executable(code)
    p, i = ctypes.c_void_p, ctypes.c_int64
    fn = ctypes.CFUNCTYPE(None, p, p, p, p, p, i, i, i, i)(
        base + starts["minigpt_q8_0_rows"])
    return mc.MachineKernel(memory, fn, "q8_0")


@needs_code
def test_vnni_and_avx2_give_the_same_bits_and_the_reference():
    from minigpt.quantize import dequantize, quantize_groups

    if not mc.has_vnni(mc.this_processor()):
        pytest.skip("this processor has no VNNI to compare with")
    rng = np.random.default_rng(5)
    a = rng.standard_normal((67, 768)).astype(np.float32)
    q, d = quantize_groups(a, 32)
    q[:3, :64] = rng.choice([-128, -127, 0, 127], (3, 64))  # the extremes of int8
    x = rng.standard_normal((3, 768)).astype(np.float32)
    x[0, :32] = 0.0  # a group of zeros: a scale of 0
    xq, xd = CODE["q8_0 rounding"](x)
    got = {}
    for vnni in (False, True):
        got[vnni] = np.empty((3, 67), np.float32)
        q8_0_kernel(vnni)(xq, xd, q, d, got[vnni])
    assert got[True].tobytes() == got[False].tobytes()
    want = dequantize(xq, xd) @ dequantize(q, d).T
    np.testing.assert_allclose(got[True], want, rtol=1e-5,
                               atol=1e-5 * np.abs(want).max())
    ones = np.ones((3, 24), np.float32)  # scales of 1: the integers, exactly
    for vnni in (False, True):
        q8_0_kernel(vnni)(xq, ones, q, np.ones((67, 24), np.float32), got[vnni])
        assert (got[vnni] == xq.astype(np.int64) @ q.astype(np.int64).T).all()
