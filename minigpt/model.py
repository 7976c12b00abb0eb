"""The whole GPT-2: embeddings, the stack of blocks, the final norm, tied logits.

Implements GPT-2's forward pass over one sequence (Radford et al., 2019), with
parameters named and laid out as Hugging Face's `GPT2LMHeadModel`, whose logits
the tests reproduce. `load_gpt2` reads a checkpoint folder (`config.json` +
`model.safetensors`) through `minigpt.weights`; `minigpt.models.load_model` picks
the loader for any supported model type.

Leaves out on purpose: batches (one sequence at a time), dropout and training,
untied output heads, and caching between calls (the KV cache of chapter 20 comes
as `minigpt.kvcache.CachedGPT`, beside this `forward`, which stays as it is).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minigpt.block import transformer_block
from minigpt.layers import layer_norm
from minigpt.weights import GPTConfig, gpt2_params, read_config, read_safetensors

__all__ = ["GPT", "GPTConfig", "check_ids", "gpt2_forward", "load_gpt2"]


# --8<-- [start:gpt2-forward]
def gpt2_forward(ids: np.ndarray, wte: np.ndarray, wpe: np.ndarray,
                 blocks: list[dict], ln_f: dict, n_head: int,
                 eps: float = 1e-5) -> np.ndarray:
    """GPT-2's logits for every position. ids: (T,) -> (T, vocab_size)"""
    # token embedding + position embedding
    x = wte[ids] + wpe[: len(ids)]  # [T] -> [T, C]

    # the residual stream through every block
    for block in blocks:
        x = transformer_block(x, **block, n_head=n_head, eps=eps)  # [T, C]

    # final layer norm
    x = layer_norm(x, **ln_f, eps=eps)  # [T, C]

    # logits: score every token by its embedding (the tied output head)
    return x @ wte.T  # [T, C] @ [C, V] -> [T, V]
# --8<-- [end:gpt2-forward]


# --8<-- [start:gpt-model]
@dataclass(frozen=True)
class GPT:
    """A loaded GPT-2: its config and its parameters as a nested dict."""

    config: GPTConfig
    params: dict  # {"wte", "wpe", "blocks": [block dicts], "ln_f": {"g", "b"}}

    def forward(self, ids: np.ndarray) -> np.ndarray:
        """Logits for a sequence of token ids. ids: (T,) -> (T, vocab_size)"""
        ids = check_ids(ids, self.config.n_ctx, self.config.vocab_size)
        return gpt2_forward(ids, **self.params, n_head=self.config.n_head,
                            eps=self.config.layer_norm_epsilon)
# --8<-- [end:gpt-model]


# --8<-- [start:check-ids]
def check_ids(ids: np.ndarray, n_ctx: int, vocab_size: int) -> np.ndarray:
    """Refuse what a model cannot read: empty, too long, unknown ids, non-ints."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or not (ids.dtype.kind in "iu" or ids.size == 0):
        raise ValueError(f"ids must be a 1-D array of integers, got shape "
                         f"{ids.shape} of {ids.dtype}")
    if ids.size == 0:
        raise ValueError("ids is empty: the model needs at least one token")
    if ids.size > n_ctx:
        raise ValueError(f"{ids.size} tokens is more than the context of "
                         f"n_ctx={n_ctx}")
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.size:
        raise ValueError(f"token ids out of range [0, {vocab_size}): "
                         f"{bad[:5].tolist()}")
    return ids
# --8<-- [end:check-ids]


# --8<-- [start:load-model]
def load_gpt2(path: str | Path) -> GPT:
    """A GPT-2 from a checkpoint folder holding config.json and model.safetensors."""
    folder = Path(path)
    config = read_config(folder / "config.json")
    tensors = read_safetensors(folder / "model.safetensors")
    params = gpt2_params(tensors, config, source=str(folder / "model.safetensors"))
    return GPT(config, params)
# --8<-- [end:load-model]

