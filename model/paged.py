"""A paged KV cache: one pool of fixed-size blocks per decoder layer, addressed by slot (vLLM-style).

Slot `s` is position `s % block_size` of block `s // block_size`. Whoever owns the cache (the
engine) hands out blocks and builds a `PagedBatch` per step saying which slots each row writes
and reads; the model only follows it. Block 0 is scratch: padding writes land there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from model.config import TransformerConfig

SCRATCH_BLOCK = 0


class PagedKVCache:
    """K and V of every decoder layer, self-attention and cross-attention alike, in blocks."""

    def __init__(
        self,
        config: TransformerConfig,
        num_blocks: int,
        block_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        shape = (num_blocks * block_size, config.num_heads, config.head_dim)
        layers = range(config.num_decoder_layers)
        # One tensor per layer, not one stacked tensor: torch.compile updates a graph input in
        # place, but a write into a view of one (pool[layer]) became a copy of the whole pool.
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in layers]  # (slots, H, Dh)
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in layers]
        self.num_blocks = num_blocks
        self.block_size = block_size

    @staticmethod
    def bytes_per_block(config: TransformerConfig, block_size: int, dtype: torch.dtype) -> int:
        element_size = torch.empty((), dtype=dtype).element_size()
        return 2 * config.num_decoder_layers * block_size * config.d_model * element_size

    def copy_block(self, src: int, dst: int) -> None:
        """Copy-on-write: block `dst` becomes a copy of block `src`, in every layer."""
        bs = self.block_size
        for pool in self.k + self.v:  # (slots, H, Dh) each
            pool[dst * bs : (dst + 1) * bs] = pool[src * bs : (src + 1) * bs]


def slots_of(block_tables: list[list[int]], lengths: list[int], block_size: int) -> Tensor:
    """(B, max(lengths)) slot of each position < length of each row; scratch slots beyond."""
    width = max(lengths)
    num_cols = -(-width // block_size)
    table = torch.tensor(
        [t[:num_cols] + [SCRATCH_BLOCK] * (num_cols - len(t[:num_cols])) for t in block_tables]
    )  # (B, num_cols)
    positions = torch.arange(width)
    slots = table[:, positions // block_size] * block_size + positions % block_size  # (B, W)
    beyond = positions[None, :] >= torch.tensor(lengths)[:, None]
    return slots.masked_fill(beyond, SCRATCH_BLOCK * block_size)


@dataclass
class PagedBatch:
    """Where one step's rows write and read their keys and values; built by the engine.

    A prefill step feeds T > 1 tokens per row and attends only to those (no prefix is cached);
    a decode step feeds one token per row and attends to all of the row's cached positions.
    """

    positions: Tensor  # (B, T) position of each new token
    write_slots: Tensor  # (B*T,) slot for each new token's K/V; padding tokens write to scratch
    self_mask: Tensor | None  # (B, 1, T, Tk) True = may attend
    read_slots: Tensor | None = None  # (B, Tk) decode: slots of every key of each row
    cross_read_slots: Tensor | None = None  # (B, S) encoder-decoder: the row's cross-attention K/V
    cross_mask: Tensor | None = None  # (B, 1, 1, S)
    # Cross-attention K/V per layer, 2 × (B, H, S, Dh), already gathered: the engine keeps them
    # from step to step while the batch's rows stay the same (they never change for a request).
    cross_kv: list[tuple[Tensor, Tensor]] | None = None


def read_slots(pool: Tensor, slots: Tensor) -> Tensor:
    """One layer's K or V (slots, H, Dh) at `slots` (B, T), as (B, H, T, Dh).

    `index_select` copies whole (H, Dh) rows; it is 7-10x faster on the CPU than the
    equivalent advanced indexing `pool[slots]`, which dominated the decode step.
    """
    B, T = slots.shape
    return pool.index_select(0, slots.reshape(-1)).view(B, T, *pool.shape[1:]).transpose(1, 2)


def gather_cross_kv(cache: PagedKVCache, slots: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Every layer's cross-attention K/V of the rows whose source sits at `slots` (B, S).

    Left as transposed views (B, H, S, Dh) of (B, S, H, Dh): attention reads the strides as
    fast, and a contiguous copy cost more than it saved (rows change often under continuous
    batching, and each change gathers again).
    """
    return [
        (read_slots(cache.k[layer], slots), read_slots(cache.v[layer], slots))
        for layer in range(len(cache.k))
    ]


class PagedLayer:
    """The per-layer view of the paged cache that `Attention` reads and writes."""

    def __init__(self, cache: PagedKVCache, layer: int, batch: PagedBatch):
        self.k, self.v = cache.k[layer], cache.v[layer]  # (slots, H, Dh)
        self.layer = layer
        self.batch = batch

    def update(self, start_pos: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the new K/V (B, H, T, Dh) to their slots; return the K/V this step attends to."""
        B, H, T, Dh = k.shape
        slots = self.batch.write_slots
        self.k.index_copy_(0, slots, k.transpose(1, 2).reshape(B * T, H, Dh))
        self.v.index_copy_(0, slots, v.transpose(1, 2).reshape(B * T, H, Dh))
        if self.batch.read_slots is None:
            return k, v  # prefill attends to its own tokens
        read = self.batch.read_slots
        return read_slots(self.k, read), read_slots(self.v, read)  # (B, H, Tk, Dh)

    @property
    def cross_kv(self) -> tuple[Tensor, Tensor]:
        if self.batch.cross_kv is not None:
            return self.batch.cross_kv[self.layer]
        read = self.batch.cross_read_slots
        assert read is not None, "an encoder-decoder step needs cross_read_slots"
        return read_slots(self.k, read), read_slots(self.v, read)  # (B, H, S, Dh)
