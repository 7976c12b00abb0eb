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
# The small LLaMA-style model of chapter 22 (SentencePiece-style tokenizer.json).
DEMO_LLAMA = Path(__file__).resolve().parent / "demo_llama"

# public name -> the module that defines it
_EXPORTS = {
    "Tensor": "minigpt.tensor",
    "load_tokenizer": "minigpt.models",
    "read_safetensors": "minigpt.weights",
    "WeightsError": "minigpt.weights",
    "load_model": "minigpt.models",
    "generate": "minigpt.generation",
    "LanguageModel": "minigpt.generation",
    "blas_threads": "minigpt.bench",
    "load_llama": "minigpt.llama",
    "machine_info": "minigpt.info",
    "quantize_model": "minigpt.quantize",
}

__all__ = ["__version__", "DEMO_MODEL", "DEMO_LLAMA", *_EXPORTS]


# --8<-- [start:lazy-exports]
def __getattr__(name: str) -> Any:
    """minigpt.NAME, imported on first use (PEP 562): `import minigpt` stays fast."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'minigpt' has no attribute {name!r}")
# --8<-- [end:lazy-exports]
