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
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Tensor": "minigpt.tensor",
    "load_tokenizer": "minigpt.tokenizer",
    "read_safetensors": "minigpt.weights",
    "WeightsError": "minigpt.weights",
    "load_model": "minigpt.model",
    "generate": "minigpt.generate",
    "machine_info": "minigpt.info",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'minigpt' has no attribute {name!r}")
