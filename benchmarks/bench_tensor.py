"""The interpreter's cost: chapter 3's Tensor against NumPy on a broadcast add.

python -m benchmarks tensor [--quick]. Both add a (C,) bias to every row of a
(T, C) float matrix; the figure is nanoseconds per output element, timed in
alternating rounds.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import save_results, time_alternating
from minigpt.tensor import Tensor


def run(quick: bool = False) -> dict:
    t, c = (16, 16) if quick else (64, 256)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((t, c), dtype=np.float32)
    b = rng.standard_normal(c, dtype=np.float32)
    tx, tb = Tensor.from_numpy(x), Tensor.from_numpy(b)
    np.testing.assert_allclose((tx + tb).numpy(), x + b, rtol=1e-6)  # same sums first
    seconds = time_alternating({"tensor": lambda: tx + tb, "numpy": lambda: x + b},
                               rounds=5 if quick else 7, min_seconds=0.05)
    ns = {k: s / (t * c) * 1e9 for k, s in seconds.items()}
    results = {"shape": [t, c], "ns_per_element": ns,
               "tensor_over_numpy": ns["tensor"] / ns["numpy"]}
    print(f"  Tensor {ns['tensor']:.0f} ns, NumPy {ns['numpy']:.2f} ns per element",
          flush=True)
    save_results("tensor", results)  # to a temporary folder in a quick run
    return results
