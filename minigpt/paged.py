"""A paged KV cache: fixed-size blocks from one shared pool, a block table per sequence.

Follows PagedAttention (Kwon et al., 2023, the paper behind vLLM): the keys and
values of every sequence live in blocks of `block_size` positions taken from one
pool, and a sequence's block table lists its blocks in order, the way a page
table maps a process's virtual pages to physical memory. A sequence takes a block
only when its tokens reach it, and gives all of them back when it ends, so the
memory in use grows with the tokens in flight, not with batch times context.
`PagedCache` has chapter 20's `KVCache` interface (`length`, `check_room`,
`store`, `mask`), so the cached forward passes and the batched ones of
`minigpt.batch` run on it unchanged; attention reads the keys and values through
the block table, gathering the sequence's blocks.

Leaves out on purpose: sharing blocks between sequences (prefix caching, beam
search's copy-on-write), swapping blocks out to slower memory, and an attention
kernel that reads the blocks in place (NumPy gathers them into one array first).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["BlockPool", "PagedCache", "PoolExhausted", "pool_for"]


# --8<-- [start:block-pool]
class PoolExhausted(RuntimeError):
    """The pool has fewer free blocks than a sequence needs right now."""


@dataclass
class BlockPool:
    """Every sequence's keys and values, in blocks of block_size positions."""

    k: np.ndarray  # [n_layer, n_blocks, block_size, n_head, head_dim]
    v: np.ndarray  # [n_layer, n_blocks, block_size, n_head, head_dim]
    free: list[int] = field(default_factory=list)  # ids of the unused blocks

    @classmethod
    def empty(cls, n_layer: int, n_blocks: int, block_size: int, n_head: int,
              head_dim: int) -> "BlockPool":  # noqa: UP037
        """A pool of n_blocks blocks, every one of them free."""
        shape = (n_layer, n_blocks, block_size, n_head, head_dim)
        # np.zeros maps fresh pages: memory is spent as blocks are first written
        return cls(np.zeros(shape, np.float32), np.zeros(shape, np.float32),
                   list(range(n_blocks))[::-1])  # pop() hands out 0, 1, 2, ...

    @property
    def block_size(self) -> int:
        return self.k.shape[2]

    def blocks_for(self, n_tokens: int) -> int:
        """How many blocks hold n_tokens positions (the last one maybe partly)."""
        return -(-n_tokens // self.block_size)  # ceiling division

    def take(self, n: int) -> list[int]:
        """n free blocks, or PoolExhausted if there are fewer."""
        if n > len(self.free):
            raise PoolExhausted(f"the KV pool has {len(self.free)} free blocks "
                                f"of {self.k.shape[1]}; {n} more are needed")
        return [self.free.pop() for _ in range(n)]

    def give_back(self, blocks: list[int]) -> None:
        """Blocks a finished sequence no longer needs; their contents stay stale."""
        self.free.extend(reversed(blocks))
# --8<-- [end:block-pool]


# --8<-- [start:paged-cache]
@dataclass
class PagedCache:
    """One sequence's keys and values: its block table into a shared pool."""

    pool: BlockPool
    table: list[int] = field(default_factory=list)  # block ids, in position order
    length: int = 0  # how many positions are filled

    def check_room(self, T: int) -> None:
        """Take the blocks that T more tokens reach (PoolExhausted if none are left)."""
        missing = self.pool.blocks_for(self.length + T) - len(self.table)
        if missing > 0:
            self.table += self.pool.take(missing)

    def store(self, layer: int, k: np.ndarray,
              v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Write T new keys and values through the table; gather all of them.

        k, v: (n_head, T, head_dim) -> keys, values: (n_head, length + T, head_dim)
        """
        end = self.length + k.shape[1]
        table, size = np.array(self.table), self.pool.block_size
        where = np.arange(self.length, end)  # the new tokens' positions
        block, slot = table[where // size], where % size  # position -> (block, slot)
        self.pool.k[layer, block, slot] = k.transpose(1, 0, 2)  # [T, n_head, d]
        self.pool.v[layer, block, slot] = v.transpose(1, 0, 2)
        used = table[: self.pool.blocks_for(end)]  # attention reads these blocks
        _, _, _, H, d = self.pool.k.shape
        keys = self.pool.k[layer, used].reshape(-1, H, d)[:end]  # gather: [S, H, d]
        values = self.pool.v[layer, used].reshape(-1, H, d)[:end]
        return keys.transpose(1, 0, 2), values.transpose(1, 0, 2)  # [H, S, d]

    def mask(self, T: int) -> np.ndarray | None:
        """Which keys each of T new tokens may see, as KVCache.mask."""
        return None if T == 1 else np.tri(T, self.length + T, k=self.length,
                                          dtype=bool)

    def release(self) -> None:
        """The sequence is over: every block goes back to the pool."""
        self.pool.give_back(self.table)
        self.table, self.length = [], 0
# --8<-- [end:paged-cache]


# --8<-- [start:pool-for]
def pool_for(model, n_blocks: int, block_size: int = 16) -> BlockPool:
    """A pool shaped like the model's own cache (GPT-2's heads, LLaMA's kv heads)."""
    n_layer, n_head, _, head_dim = model.empty_cache(1).k.shape
    return BlockPool.empty(n_layer, n_blocks, block_size, n_head, head_dim)
# --8<-- [end:pool-for]
