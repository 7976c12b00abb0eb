"""minigpt: a transformer inference engine built from first principles in NumPy.

The public API is imported lazily, so that `import minigpt` stays fast and each
chapter's module can be read (and imported) on its own.

Example:
    >>> import minigpt
    >>> minigpt.__version__
    '0.1.0'
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

__version__ = "0.1.0"

# The small model that ships with the book (appendix: Training the demo model).
DEMO_MODEL = Path(__file__).resolve().parent / "demo"

# public name -> the module that defines it
_EXPORTS = {
    "Tensor": "minigpt.tensor",
    "load_tokenizer": "minigpt.tokenizer",
    "read_safetensors": "minigpt.weights",
    "WeightsError": "minigpt.weights",
    "load_model": "minigpt.model",
    "load_llama": "minigpt.llama",
    "machine_info": "minigpt.info",
}

# `generate` is both a submodule and the function it defines. Importing the
# function here, once, makes `minigpt.generate` the function for good: a later
# `import minigpt.generate` finds the module in sys.modules and leaves it be.
from minigpt.generate import generate  # noqa: E402

__all__ = ["__version__", "DEMO_MODEL", "generate", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'minigpt' has no attribute {name!r}")
