"""The GPT-2 transformer block: pre-norm attention and MLP on a residual stream.

Follows GPT-2 (Radford et al., 2019), which moved layer norm to the input of
each sub-layer ("pre-norm"), and Hugging Face's `GPT2Block`, whose parameter
names (`ln_1`, `attn.c_attn`, `attn.c_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`)
are the argument names here, so a checkpoint's sub-dict can be passed with **.

Left out on purpose: dropout, cross-attention, and the KV cache (chapter 20).
"""

from __future__ import annotations

import numpy as np

from minigpt.attention import mha
from minigpt.layers import ffn, layer_norm


# --8<-- [start:transformer-block]
def transformer_block(
    x: np.ndarray, ln_1: dict, attn: dict, ln_2: dict, mlp: dict,
    n_head: int, eps: float = 1e-5,
) -> np.ndarray:
    """One pre-norm GPT-2 block. x: (T, C) -> (T, C)"""
    x = x + mha(layer_norm(x, **ln_1, eps=eps), **attn, n_head=n_head)  # [T, C]
    x = x + ffn(layer_norm(x, **ln_2, eps=eps), **mlp)  # [T, C]
    return x
# --8<-- [end:transformer-block]
