"""What machine is this? Python, NumPy, the BLAS behind NumPy, its threads, the CPU.

Every benchmark in the book records this beside its figures, because a speed
means nothing without the machine that produced it. `kernel_report` says which
fast path multiplies quantised weights here (chapters 30 and 31).
"""

from __future__ import annotations

import os
import platform
import sys

import numpy as np


# --8<-- [start:machine-helpers]
def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info() -> dict:
    """The BLAS library NumPy calls for matmul, and how many threads it uses."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # optional: fall back to NumPy's build configuration
        config = np.show_config(mode="dicts")
        blas = config.get("Build Dependencies", {}).get("blas", {})
        return {"library": blas.get("name", "unknown"),
                "version": blas.get("version", "unknown"), "threads": None}
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    if not pools:
        return {"library": "unknown", "version": "unknown", "threads": None}
    pool = pools[0]
    return {"library": pool.get("internal_api", "unknown"),
            "version": pool.get("version", "unknown"),
            "threads": pool.get("num_threads")}
# --8<-- [end:machine-helpers]


# --8<-- [start:machine-info]
def machine_info() -> dict:
    """Python, NumPy and BLAS versions, BLAS threads, CPU model and core count."""
    blas = blas_info()
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": f"{blas['library']} {blas['version']}",
        "blas_threads": blas["threads"],
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": f"{sys.platform}-{platform.machine()}",
    }
# --8<-- [end:machine-info]


# --8<-- [start:describe]
def describe() -> str:
    """machine_info() as aligned `key: value` lines, for people."""
    info = machine_info()
    width = max(len(k) for k in info)
    return "\n".join(f"{k:<{width}} : {v}" for k, v in info.items())
# --8<-- [end:describe]


# --8<-- [start:kernel-report]
def kernel_report() -> str:
    """Which path multiplies quantised weights on this machine, in one line."""
    from minigpt.machine_code import machine_code  # compiles: a fraction of a second

    label = f"{'kernels':<{max(len(k) for k in machine_info())}} :"  # as describe()
    if machine_code():
        return (f"{label} our machine code (x86-64, AVX2), compiled by this "
                f"process into private memory")
    return f"{label} NumPy on dequantised tiles (no machine code for this machine)"
# --8<-- [end:kernel-report]
