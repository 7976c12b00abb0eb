"""Matrix multiplication, from the triple loop to within sight of BLAS.

Implements C = A @ B for float32 matrices several ways, so the book can measure
each step: the naive triple loop in pure Python; the same loops compiled with
Numba in two orders (ijk, ikj); a tiled loop that fails to vectorise; a blocked
kernel with row views and a packed panel of B; a register-blocked kernel; a
NumPy version built from rank-1 updates; and batched matmul with broadcast batch
dimensions. It follows the classic picture of GEMM as loops over cache-sized
blocks (Goto and van de Geijn, "Anatomy of high-performance matrix
multiplication", 2008).

Left out on purpose: threads (every kernel runs on one core), hand-written SIMD
intrinsics, and dtypes other than float32. Numba is optional: without it the
compiled kernels are None and `compiled()` raises a clear error.
"""

from __future__ import annotations

import re

import numpy as np

# --8<-- [start:optional-numba]
try:
    from numba import njit
except ImportError:  # the pure-Python and NumPy paths still work without numba
    njit = None
# --8<-- [end:optional-numba]


# --8<-- [start:check-matmul-shapes]
def check_matmul_shapes(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int]:
    """Validate a: (M, K), b: (K, N) and return (M, K, N)."""
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"matmul needs 2-D matrices, got shapes {a.shape} "
                         f"and {b.shape}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions differ: a is {a.shape}, b is {b.shape} "
                         f"({a.shape[1]} != {b.shape[0]})")
    return a.shape[0], a.shape[1], b.shape[1]
# --8<-- [end:check-matmul-shapes]


# --8<-- [start:matmul-naive]
def matmul_naive(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    """The textbook triple loop in pure Python. a: (M, K), b: (K, N) -> (M, N)"""
    m, k, n = len(a), len(b), len(b[0])
    if any(len(row) != k for row in a):
        raise ValueError(f"every row of a needs {k} entries (the number of rows of b)")
    c = [[0.0] * n for _ in range(m)]
    for i in range(m):
        for j in range(n):
            total = 0.0
            for p in range(k):  # dot product of row i of a with column j of b
                total += a[i][p] * b[p][j]
            c[i][j] = total
    return c
# --8<-- [end:matmul-naive]


# --8<-- [start:gflops]
def matmul_flops(m: int, k: int, n: int) -> int:
    """Floating-point operations of an (M, K) @ (K, N) product: one multiply and
    one add per (i, j, p) triple."""
    return 2 * m * k * n


def gflops(m: int, k: int, n: int, seconds: float) -> float:
    """Billions of floating-point operations per second."""
    return matmul_flops(m, k, n) / seconds / 1e9
# --8<-- [end:gflops]


# --8<-- [start:matmul-ijk]
def matmul_ijk(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Loops i, j, k: one dot product per output. a: (M, K), b: (K, N) -> (M, N)"""
    m, k, n = a.shape[0], a.shape[1], b.shape[1]
    c = np.zeros((m, n), dtype=np.float32)
    for i in range(m):
        for j in range(n):
            total = np.float32(0.0)
            for p in range(k):  # walks down column j of b: a stride of n floats
                total += a[i, p] * b[p, j]
            c[i, j] = total
    return c
# --8<-- [end:matmul-ijk]


# --8<-- [start:matmul-ikj]
def matmul_ikj(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Loops i, k, j: the inner loop walks rows. a: (M, K), b: (K, N) -> (M, N)"""
    m, k, n = a.shape[0], a.shape[1], b.shape[1]
    c = np.zeros((m, n), dtype=np.float32)
    for i in range(m):
        for p in range(k):
            a_ip = a[i, p]
            for j in range(n):  # row i of c += a[i, p] * row p of b, both contiguous
                c[i, j] += a_ip * b[p, j]
    return c
# --8<-- [end:matmul-ikj]


# --8<-- [start:matmul-tiled]
def matmul_tiled(a: np.ndarray, b: np.ndarray, kc: int = 256, nc: int = 256
                 ) -> np.ndarray:
    """ikj over (kc, nc) tiles of b, indexed c[i, j]. a: (M, K), b: (K, N) -> (M, N)"""
    m, k, n = a.shape[0], a.shape[1], b.shape[1]
    c = np.zeros((m, n), dtype=np.float32)
    for kk in range(0, k, kc):
        for jj in range(0, n, nc):
            for i in range(m):
                for p in range(kk, min(kk + kc, k)):
                    a_ip = a[i, p]
                    for j in range(jj, min(jj + nc, n)):  # numba can't prove j >= 0
                        c[i, j] += a_ip * b[p, j]
    return c
# --8<-- [end:matmul-tiled]


# --8<-- [start:matmul-blocked]
def matmul_blocked(a: np.ndarray, b: np.ndarray, kc: int = 256, nc: int = 256
                   ) -> np.ndarray:
    """ikj over packed (kc, nc) tiles of b, row views. a: (M, K), b: (K, N) -> (M, N)"""
    m, k, n = a.shape[0], a.shape[1], b.shape[1]
    c = np.zeros((m, n), dtype=np.float32)
    for kk in range(0, k, kc):
        k_end = min(kk + kc, k)
        for jj in range(0, n, nc):
            j_end = min(jj + nc, n)
            panel = np.ascontiguousarray(b[kk:k_end, jj:j_end])  # [kc, nc], in cache
            for i in range(m):
                a_row = a[i, kk:k_end]  # views: indices from 0, never negative
                c_row = c[i, jj:j_end]
                for p in range(k_end - kk):
                    a_ip = a_row[p]
                    b_row = panel[p]
                    for j in range(j_end - jj):
                        c_row[j] += a_ip * b_row[j]
    return c
# --8<-- [end:matmul-blocked]


# --8<-- [start:matmul-register]
def matmul_register(a: np.ndarray, b: np.ndarray, kc: int = 512, nc: int = 64
                    ) -> np.ndarray:
    """4x2 outputs at a time in 8 scalar accumulators. Needs M % 4 == N % 2 == 0."""
    m, k, n = a.shape[0], a.shape[1], b.shape[1]
    c = np.zeros((m, n), dtype=np.float32)
    for kk in range(0, k, kc):
        k_end = min(kk + kc, k)
        for jj in range(0, n, nc):
            j_end = min(jj + nc, n)
            panel = np.ascontiguousarray(b[kk:k_end, jj:j_end].T)  # [nc, kc]: cols of b
            for i in range(0, m, 4):
                a0, a1 = a[i, kk:k_end], a[i + 1, kk:k_end]
                a2, a3 = a[i + 2, kk:k_end], a[i + 3, kk:k_end]
                for j in range(0, j_end - jj, 2):
                    b0, b1 = panel[j], panel[j + 1]
                    s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = np.float32(0.0)
                    for p in range(k_end - kk):  # 6 loads feed 8 multiply-adds
                        x0, x1 = b0[p], b1[p]
                        s00, s01 = s00 + a0[p] * x0, s01 + a0[p] * x1
                        s10, s11 = s10 + a1[p] * x0, s11 + a1[p] * x1
                        s20, s21 = s20 + a2[p] * x0, s21 + a2[p] * x1
                        s30, s31 = s30 + a3[p] * x0, s31 + a3[p] * x1
                    j0, j1 = jj + j, jj + j + 1  # write the block back once per panel
                    c[i, j0], c[i, j1] = c[i, j0] + s00, c[i, j1] + s01
                    c[i + 1, j0], c[i + 1, j1] = c[i + 1, j0] + s10, c[i + 1, j1] + s11
                    c[i + 2, j0], c[i + 2, j1] = c[i + 2, j0] + s20, c[i + 2, j1] + s21
                    c[i + 3, j0], c[i + 3, j1] = c[i + 3, j0] + s30, c[i + 3, j1] + s31
    return c
# --8<-- [end:matmul-register]


# --8<-- [start:compile-kernels]
def compile_kernels() -> dict:
    """The loops above, compiled by Numba (compilation happens on the first call)."""
    if njit is None:
        return {}
    return {
        "ijk": njit(matmul_ijk),
        "ikj": njit(matmul_ikj),
        "tiled": njit(fastmath=True)(matmul_tiled),
        "blocked": njit(fastmath=True)(matmul_blocked),  # fastmath: allow fused FMA
        "register": njit(fastmath=True)(matmul_register),  # ...and reordered sums
    }


KERNELS = compile_kernels()


def compiled(name: str):
    """The compiled kernel `name`, or a clear error when Numba is missing."""
    if njit is None:
        raise ImportError("the compiled matmul kernels need numba: pip install numba")
    if name not in KERNELS:
        raise KeyError(f"no kernel {name!r}; choose from {sorted(KERNELS)}")
    return KERNELS[name]
# --8<-- [end:compile-kernels]


# --8<-- [start:matmul-fast]
def matmul_fast(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The register-blocked kernel on any shapes: pad with zeros, multiply, crop.
    (M, K) @ (K, N) -> (M, N)"""
    m, k, n = check_matmul_shapes(a, b)
    a_pad = np.zeros((-(-m // 4) * 4, k), dtype=np.float32)  # M up to a multiple of 4
    b_pad = np.zeros((k, -(-n // 2) * 2), dtype=np.float32)  # N up to a multiple of 2
    a_pad[:m], b_pad[:, :n] = a, b  # zero rows and columns add nothing to the sums
    return compiled("register")(a_pad, b_pad)[:m, :n]
# --8<-- [end:matmul-fast]


# --8<-- [start:matmul-numpy]
def matmul_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """C as a sum of K outer products, each one vectorised. (M, K) @ (K, N) -> (M, N)"""
    m, k, n = check_matmul_shapes(a, b)
    c = np.zeros((m, n), dtype=np.float32)
    for p in range(k):
        c += a[:, p, None] * b[p]  # [M, 1] * [N] -> [M, N]: column p times row p
    return c
# --8<-- [end:matmul-numpy]


# --8<-- [start:inspect-asm]
def vector_instructions(kernel) -> dict[str, int]:
    """Count packed float32 instructions in a compiled kernel's machine code."""
    asm = "\n".join(kernel.inspect_asm().values())  # one listing per signature
    count = lambda pattern: len(re.findall(pattern, asm))  # noqa: E731
    return {
        "fma": count(r"\bvfmadd\w*ps\b"),  # fused multiply-add, packed single
        "mul": count(r"\bv?mulps\b"),  # packed multiply (add done separately)
        "scalar": count(r"\bv?(?:mul|add|fmadd\w*)ss\b"),  # one float at a time
        "zmm": count(r"%zmm"),  # 512-bit registers: 16 floats
        "ymm": count(r"%ymm"),  # 256-bit registers: 8 floats
    }
# --8<-- [end:inspect-asm]


# --8<-- [start:batched-matmul]
def batched_matmul(a: np.ndarray, b: np.ndarray, matmul=np.matmul) -> np.ndarray:
    """One 2-D matmul per batch entry, batch axes broadcast like NumPy.
    a: (..., M, K), b: (..., K, N) -> (..., M, N)"""
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"batched_matmul needs at least 2-D arrays, got {a.shape} "
                         f"and {b.shape}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"inner dimensions differ: a is {a.shape}, b is {b.shape}")
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])  # (B, 1), (H,) -> (B, H)
    m, n = a.shape[-2], b.shape[-1]
    # stretch both to the full batch shape, then flatten it: [..., M, K] -> [B*, M, K]
    a3 = np.broadcast_to(a, batch + a.shape[-2:]).reshape(-1, *a.shape[-2:])
    b3 = np.broadcast_to(b, batch + b.shape[-2:]).reshape(-1, *b.shape[-2:])
    c = np.empty((a3.shape[0], m, n), dtype=np.result_type(a, b))
    for i in range(a3.shape[0]):  # the batch loop; each step is an ordinary matmul
        c[i] = matmul(a3[i], b3[i])
    return c.reshape(batch + (m, n))  # [B*, M, N] -> [..., M, N]
# --8<-- [end:batched-matmul]
