"""A paged KV cache: one pool of fixed-size blocks per decoder layer, addressed by slot (vLLM-style).

Slot `s` is position `s % block_size` of block `s // block_size`; it holds that position's K and
V side by side, so a step writes and gathers both with one op. Whoever owns the cache (the
engine) hands out blocks and builds a `PagedBatch` per step saying which slots each row writes
and reads; the model only follows it. Block 0 is scratch: padding writes land there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from model.config import TransformerConfig
from model.paged_kernel import PagedAttention

SCRATCH_BLOCK = 0


class PagedKVCache:
    """K and V of every decoder layer, self-attention and cross-attention alike, in blocks.

    `kv[layer]` is (slots, 2, H, Dh): [slot, 0] is a key, [slot, 1] its value.
    """

    def __init__(
        self,
        config: TransformerConfig,
        num_blocks: int,
        block_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        shape = (num_blocks * block_size, 2, config.num_heads, config.head_dim)
        # One tensor per layer, not one stacked tensor: torch.compile updates a graph input in
        # place, but a write into a view of one (pool[layer]) became a copy of the whole pool.
        self.kv = [
            torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_decoder_layers)
        ]
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_slots = num_blocks * block_size

    @staticmethod
    def bytes_per_block(config: TransformerConfig, block_size: int, dtype: torch.dtype) -> int:
        element_size = torch.empty((), dtype=dtype).element_size()
        return 2 * config.num_decoder_layers * block_size * config.d_model * element_size

    def copy_block(self, src: int, dst: int) -> None:
        """Copy-on-write: block `dst` becomes a copy of block `src`, in every layer."""
        bs = self.block_size
        for pool in self.kv:
            pool[dst * bs : (dst + 1) * bs] = pool[src * bs : (src + 1) * bs]


def slots_of(block_tables: list[list[int]], lengths: list[int], block_size: int) -> Tensor:
    """(B, max(lengths)) slot of each position < length of each row; scratch slots beyond."""
    width = max(lengths)
    num_cols = -(-width // block_size)
    table = torch.tensor(
        [t[:num_cols] + [SCRATCH_BLOCK] * (num_cols - len(t[:num_cols])) for t in block_tables]
    )  # (B, num_cols)
    offsets = torch.arange(block_size)
    slots = (table[:, :, None] * block_size + offsets).view(len(block_tables), -1)[:, :width]
    if min(lengths) == width:
        return slots
    beyond = torch.arange(width)[None, :] >= torch.tensor(lengths)[:, None]
    return slots.masked_fill(beyond, SCRATCH_BLOCK * block_size)


@dataclass
class ReadGroup:
    """Decode rows `start:end` and the keys they attend to: `slots` (rows, Tk), padded only to
    the group's longest row, and `mask` (rows, 1, 1, Tk), None when the rows have one length."""

    start: int
    end: int
    slots: Tensor
    mask: Tensor | None


@dataclass
class PagedBatch:
    """Where one step's rows write and read their keys and values; built by the engine's
    `ModelRunner`.

    A prefill step feeds T > 1 tokens per row and attends only to those (no prefix is cached);
    a decode step feeds one token per row and attends to all of the row's cached positions.
    """

    positions: Tensor  # (B, T) position of each new token
    write_slots: Tensor  # (B*T,) slot for each new token's K/V; padding tokens write to scratch
    self_mask: Tensor | None  # prefill: (B, 1, T, T) True = may attend
    # Decode: the rows in groups of similar length (consecutive rows), each with the slots of
    # all of its rows' keys. One group reads like one padded batch; more pad less.
    read_groups: list[ReadGroup] | None = None
    # Encoder-decoder: where each row's cross-attention K/V is, (B, S). Or (R, S) with R < B: then
    # each request's rows (its beams) share a row of it, consecutive groups of B // R rows, or as
    # `cross_groups` says when requests have different numbers of rows (`grouped_attention`).
    cross_read_slots: Tensor | None = None
    cross_groups: tuple[Tensor, int] | None = None
    cross_mask: Tensor | None = None  # (B or R, 1, 1, S)
    # Cross-attention K/V per layer, 2 × (B or R, H, S, Dh), already gathered: the engine keeps
    # them from step to step while the batch's requests stay the same (they never change for one).
    cross_kv: list[tuple[Tensor, Tensor]] | None = None
    # A decode step on the CPU kernel (`model.paged_kernel`) reads the cache in place instead of
    # gathering it: row b attends to the first key_lengths[b] of key_slots[b] (B, Tk), and in
    # cross-attention to the first cross_lengths[r] of cross_read_slots[r], r = cross_rows[b].
    kernel: PagedAttention | None = None
    key_slots: Tensor | None = None
    key_lengths: Tensor | None = None
    cross_lengths: Tensor | None = None
    cross_rows: Tensor | None = None

    @property
    def is_decode(self) -> bool:
        return self.kernel is not None or self.read_groups is not None


def split_kv(kv: Tensor) -> tuple[Tensor, Tensor]:
    """K and V (B, H, T, Dh) each, as views of `kv` (B, T, 2, H, Dh)."""
    return kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)


def read_slots(pool: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
    """One layer's K and V at `slots` (B, T) of its pool (slots, 2, H, Dh): (B, H, T, Dh) each.

    `index_select` copies whole (2, H, Dh) rows; it is 7-10x faster on the CPU than the
    equivalent advanced indexing `pool[slots]`, which dominated the decode step. K and V are
    left as strided views: attention reads them as fast as contiguous ones.
    """
    B, T = slots.shape
    return split_kv(pool.index_select(0, slots.reshape(-1)).view(B, T, *pool.shape[1:]))


def gather_cross_kv(cache: PagedKVCache, slots: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Every layer's cross-attention K/V of the rows whose source sits at `slots` (B, S).

    Not copied to contiguous tensors: a copy cost more than it saved (rows change often under
    continuous batching, and each change gathers again).
    """
    return [read_slots(pool, slots) for pool in cache.kv]


class PagedLayer:
    """The per-layer view of the paged cache that `Attention` reads and writes."""

    def __init__(self, cache: PagedKVCache, layer: int, batch: PagedBatch):
        self.pool = cache.kv[layer]  # (slots, 2, H, Dh)
        self.layer = layer
        self.batch = batch

    def update(self, start_pos: int, kv: Tensor) -> tuple[Tensor, Tensor]:
        """Prefill: write the new K/V (B, T, 2, H, Dh) to their slots; the tokens attend to
        themselves, (B, H, T, Dh) each. (`start_pos` is the contiguous KVCache's: here the
        batch's slots say where each token goes.)"""
        B, T = kv.shape[:2]
        self.pool.index_copy_(0, self.batch.write_slots, kv.reshape(B * T, *kv.shape[2:]))
        return split_kv(kv)

    def decode_attention(self, q: Tensor, kv: Tensor) -> Tensor:
        """Decode: write each row's new K/V (B, 1, 2, H, Dh), then attend with q (B, H, 1, Dh) to
        all of the row's cached keys: in place on the kernel, or gathered group by group
        (`PagedBatch.read_groups`); (B, H, 1, Dh)."""
        self.pool.index_copy_(0, self.batch.write_slots, kv[:, 0])
        if self.batch.kernel is not None:
            assert self.batch.key_slots is not None and self.batch.key_lengths is not None
            return self.batch.kernel(q, self.pool, self.batch.key_slots, self.batch.key_lengths)
        assert self.batch.read_groups is not None, "a decode step needs read_groups"
        out = []
        for group in self.batch.read_groups:
            k, v = read_slots(self.pool, group.slots)
            rows = q[group.start : group.end]
            out.append(F.scaled_dot_product_attention(rows, k, v, attn_mask=group.mask))
        return out[0] if len(out) == 1 else torch.cat(out)

    def cross_attention(self, q: Tensor) -> Tensor:
        """Decode on the kernel: q (B, H, 1, Dh) attends to each row's source; (B, H, 1, Dh)."""
        batch = self.batch
        assert batch.kernel is not None and batch.cross_read_slots is not None
        assert batch.cross_lengths is not None
        return batch.kernel(
            q, self.pool, batch.cross_read_slots, batch.cross_lengths, batch.cross_rows
        )

    @property
    def cross_kv(self) -> tuple[Tensor, Tensor]:
        if self.batch.cross_kv is not None:
            return self.batch.cross_kv[self.layer]
        read = self.batch.cross_read_slots
        assert read is not None, "an encoder-decoder step needs cross_read_slots"
        return read_slots(self.pool, read)  # (B, H, S, Dh) each
