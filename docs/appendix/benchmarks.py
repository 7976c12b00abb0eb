# %% [markdown]
# # Appendix: Benchmarks
#
# This page is a notebook that is executed every time the site is built, so what it
# shows is this build's machine and this build's code. Full-size runs come from
# `make bench`, which writes JSON files to `benchmarks/results/` (each with the
# machine that produced it) and the charts that the chapters show. This page draws
# those results and adds a small live measurement of its own.

# %%
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from minigpt.info import describe

print(describe())

# %% [markdown]
# ## A live measurement: BLAS matrix multiplication
#
# A square matrix product of size $n$ does $2n^3$ floating-point operations (one
# multiply and one add per term). Dividing by the time gives GFLOPS, billions of
# operations per second. Small products cannot keep the CPU busy; large ones can.
# The median of several runs is shown, because this machine is shared.

# %%
def gflops(n: int, repeats: int = 5) -> float:
    """Median GFLOPS of an (n, n) @ (n, n) float32 product."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / np.median(times) / 1e9


sizes = [32, 64, 128, 256, 512]
live = [gflops(n) for n in sizes]
for n, g in zip(sizes, live):
    print(f"n = {n:4d}: {g:6.1f} GFLOPS")

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(sizes, live, marker="o")
ax.set_xscale("log", base=2)
ax.set_xlabel("matrix size n")
ax.set_ylabel("GFLOPS (float32)")
ax.set_title("np.matmul at build time")
ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# ## Results from `make bench`
#
# Each chapter's benchmark saved its figures with the machine it ran on. Here is what
# is on record, by topic.

# %%
results = Path("benchmarks/results")
for path in sorted(results.glob("*.json")):
    record = json.loads(path.read_text())
    machine = record["machine"]
    print(f"{record['topic']:>12}: {record['date']}  {machine['cpu']}, "
          f"{machine['cores']} cores, NumPy {machine['numpy']}, {machine['blas']}")
