"""The Transformer of "Attention is All You Need": encoder-decoder or decoder-only, one implementation.

A decoder-only model is the decoder stack without cross-attention. Training calls
`forward(src, tgt)` / `forward(tokens)` without a cache. The serving engine calls `encode` and
`write_cross_kv` once per source, then `forward_paged` each step over its paged KV cache
(model/paged.py); the reference decoders (model/decoding.py) call `decode` with a contiguous
`KVCache`. Either way keys and values of earlier positions are never recomputed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import TransformerConfig
from model.paged import PagedBatch, PagedKVCache, PagedLayer, split_kv

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": partial(F.gelu, approximate="tanh"),  # GPT-2's "gelu_new"
    "swish": F.silu,  # Marian's opus-mt models
}


def sinusoidal_table(num_positions: int, dim: int) -> Tensor:
    """The paper's encodings laid out as [sin | cos] halves (as Marian and tensor2tensor)."""
    half = dim // 2
    inv_freq = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)  # (D/2,)
    angles = torch.arange(num_positions, dtype=torch.float64)[:, None] * inv_freq  # (P, D/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).float()  # (P, D)


def attention_mask(start_pos: int, num_new: int, key_valid: Tensor | None, device) -> Tensor | None:
    """Causal mask of `num_new` queries at `start_pos...` over every key so far: True = may attend.

    `key_valid` (B, Tk) marks padding keys False. A query may always attend to itself, so a
    padding query never has an all-False row (which would make SDPA return NaN).
    """
    if num_new == 1 and key_valid is None:
        return None  # one new query may see every cached key
    q_pos = torch.arange(start_pos, start_pos + num_new, device=device)
    k_pos = torch.arange(start_pos + num_new, device=device)
    mask = k_pos[None, :] <= q_pos[:, None]  # (T, Tk)
    if key_valid is None:
        return mask
    diagonal = k_pos[None, :] == q_pos[:, None]  # (T, Tk)
    return (mask[None] & (key_valid[:, None, :] | diagonal[None]))[:, None]  # (B, 1, T, Tk)


def grouped_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, groups: tuple[Tensor, int] | None = None
) -> Tensor:
    """Attention of q (B, H, T, Dh) over k, v (R, H, S, Dh) where each request's rows (its beams,
    in cross-attention) share one row of K/V: each group's queries become one row's queries, so
    the shared K/V is gathered and read once, not per beam. `mask` is (R, 1, 1, S) or None.

    `groups` None: consecutive groups of B // R rows. Else `(index, n)`: groups of up to n rows,
    row b going to place index[b] of an (R·n) layout whose unused places are zero queries.
    """
    if groups is not None:
        index, n = groups
        padded = q.new_zeros(k.shape[0] * n, *q.shape[1:]).index_copy_(0, index, q)
        return grouped_attention(padded, k, v, mask).index_select(0, index)
    B, H, T, Dh = q.shape
    R = k.shape[0]
    n = B // R
    grouped = q.view(R, n, H, T, Dh).transpose(1, 2).reshape(R, H, n * T, Dh)
    y = F.scaled_dot_product_attention(grouped, k, v, attn_mask=mask)  # (R, H, n·T, Dh)
    return y.view(R, H, n, T, Dh).transpose(1, 2).reshape(B, H, T, Dh)


def row_groups(
    counts: list[int], device: torch.device | str | None = None
) -> tuple[Tensor, int] | None:
    """`grouped_attention`'s `groups` for requests of `counts` rows each, in order: None when
    every request has as many rows (consecutive groups then), else `(index, max(counts))`."""
    n = max(counts)
    if min(counts) == n:
        return None
    index = [i * n + j for i, count in enumerate(counts) for j in range(count)]
    return torch.tensor(index, device=device), n


@dataclass
class LayerCache:
    """One decoder layer's cached self-attention K/V, and its cross-attention K/V once computed."""

    k: Tensor  # (B, H, max_len, Dh)
    v: Tensor  # (B, H, max_len, Dh)
    cross_kv: tuple[Tensor, Tensor] | None = None  # 2 × (B, H, S, Dh), written at the first step

    def update(self, start_pos: int, kv: Tensor) -> tuple[Tensor, Tensor]:
        """Write the new positions' K/V (B, T, 2, H, Dh); return K/V of every position so far."""
        k, v = split_kv(kv)
        end = start_pos + k.shape[2]
        self.k[:, :, start_pos:end] = k
        self.v[:, :, start_pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class KVCache:
    """A batch of sequences decoded in lockstep, preallocated to `max_len` positions (gpt-fast style).

    The engine replaces this with a paged cache; this one is the simple cache that proves
    cached == uncached, and serves evaluation and training-time BLEU.
    """

    def __init__(
        self, config: TransformerConfig, batch_size: int, max_len: int, device=None, dtype=None
    ):
        shape = (batch_size, config.num_heads, max_len, config.head_dim)
        self.layers = [
            LayerCache(
                torch.zeros(shape, device=device, dtype=dtype),
                torch.zeros(shape, device=device, dtype=dtype),
            )
            for _ in range(config.num_decoder_layers)
        ]
        self.length = 0  # positions written so far
        self.max_len = max_len

    def reorder(self, index: Tensor) -> None:
        """Row i becomes old row index[i] (beam search). Cross K/V rows of one source are equal."""
        for layer in self.layers:
            layer.k = layer.k.index_select(0, index)
            layer.v = layer.v.index_select(0, index)


class Attention(nn.Module):
    """Multi-head attention. Self-attention fuses Q, K, V into one projection; cross-attention K, V."""

    def __init__(self, config: TransformerConfig, is_cross: bool):
        super().__init__()
        d = config.d_model
        self.num_heads = config.num_heads
        self.dropout = config.dropout
        self.is_cross = is_cross
        if is_cross:
            self.q_proj = nn.Linear(d, d)
            self.kv_proj = nn.Linear(d, 2 * d)
        else:
            self.qkv_proj = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(d, d)

    def _heads(self, x: Tensor, n: int) -> Tensor:
        """(B, T, n·D) → (B, T, n, H, Dh): n projections (Q, K, V), each split into heads."""
        B, T, _ = x.shape
        return x.view(B, T, n, self.num_heads, -1)

    def forward(
        self,
        x: Tensor,  # (B, T, D)
        mask: Tensor | None,
        memory: Tensor | None = None,  # (B, S, D), cross-attention only
        cache: LayerCache | PagedLayer | None = None,
        start_pos: int = 0,
        weights: list[Tensor] | None = None,  # cross-attention: append its weights (B, H, T, S)
    ) -> Tensor:
        if self.is_cross:
            q = self._heads(self.q_proj(x), 1)[:, :, 0].transpose(1, 2)  # (B, H, T, Dh)
            if isinstance(cache, PagedLayer) and cache.batch.kernel is not None:
                return self._out(cache.cross_attention(q))
            cross_kv = cache.cross_kv if cache is not None else None
            if cross_kv is not None:
                k, v = cross_kv
            else:
                assert memory is not None, "cross-attention needs the encoder memory"
                k, v = split_kv(self._heads(self.kv_proj(memory), 2))
                if isinstance(cache, LayerCache):
                    cache.cross_kv = (k, v)  # computed once per sequence
        else:
            qkv = self._heads(self.qkv_proj(x), 3)  # (B, T, 3, H, Dh)
            q = qkv[:, :, 0].transpose(1, 2)  # (B, H, T, Dh)
            if isinstance(cache, PagedLayer) and cache.batch.is_decode:
                return self._out(cache.decode_attention(q, qkv[:, :, 1:]))
            if cache is not None:
                k, v = cache.update(start_pos, qkv[:, :, 1:])
            else:
                k, v = split_kv(qkv[:, :, 1:])
        if weights is not None:  # the alignment: softmax(q·k / sqrt(Dh)) made explicit
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights.append(scores.softmax(-1))
        dropout = self.dropout if self.training else 0.0
        if k.shape[0] != q.shape[0]:  # cross-attention K/V shared by a request's rows (beams)
            assert isinstance(cache, PagedLayer)
            y = grouped_attention(q, k, v, mask, cache.batch.cross_groups)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self._out(y)

    def _out(self, y: Tensor) -> Tensor:
        """The heads' outputs (B, H, T, Dh) merged and projected: (B, T, D)."""
        B, H, T, Dh = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(B, T, H * Dh))


class FeedForward(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, config.d_ff)
        self.fc2 = nn.Linear(config.d_ff, config.d_model)
        self.activation = ACTIVATIONS[config.activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class Layer(nn.Module):
    """An encoder layer, or a decoder layer (`has_cross`): sublayers with residuals and norms."""

    def __init__(self, config: TransformerConfig, has_cross: bool):
        super().__init__()
        self.norm_first = config.norm_first
        self.self_attn = Attention(config, is_cross=False)
        self.self_attn_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.cross_attn = Attention(config, is_cross=True) if has_cross else None
        self.cross_attn_norm = (
            nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if has_cross else None
        )
        self.ffn = FeedForward(config)
        self.ffn_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.drop = nn.Dropout(config.dropout)

    # A sublayer f with its residual: pre-norm x + f(norm(x)), post-norm norm(x + f(x)).
    def _input(self, x: Tensor, norm: nn.Module) -> Tensor:
        return norm(x) if self.norm_first else x

    def _residual(self, x: Tensor, y: Tensor, norm: nn.Module) -> Tensor:
        x = x + (self.drop(y) if self.training else y)  # eval: not even the call
        return x if self.norm_first else norm(x)

    def forward(
        self,
        x,
        self_mask,
        memory=None,
        cross_mask=None,
        cache: LayerCache | PagedLayer | None = None,
        start_pos=0,
        cross_weights: list[Tensor] | None = None,
    ):
        h = self._input(x, self.self_attn_norm)
        y = self.self_attn(h, self_mask, cache=cache, start_pos=start_pos)
        x = self._residual(x, y, self.self_attn_norm)
        if self.cross_attn is not None:
            assert self.cross_attn_norm is not None
            h = self._input(x, self.cross_attn_norm)
            y = self.cross_attn(h, cross_mask, memory, cache, weights=cross_weights)
            x = self._residual(x, y, self.cross_attn_norm)
        return self._residual(x, self.ffn(self._input(x, self.ffn_norm)), self.ffn_norm)


class Embeddings(nn.Module):
    """Token embedding (scaled by sqrt(d_model) as in the paper) plus positional encoding."""

    table: Tensor  # (max_positions, D), sinusoidal only

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.learned = config.positional == "learned"
        if self.learned:
            self.positions = nn.Embedding(config.max_positions, config.d_model)
        else:
            self.register_buffer(
                "table", sinusoidal_table(config.max_positions, config.d_model), persistent=False
            )
        self.drop = nn.Dropout(config.dropout)

    def forward(self, token_ids: Tensor, positions: Tensor) -> Tensor:
        pos = self.positions(positions) if self.learned else self.table[positions]
        return self.drop(self.tokens(token_ids) * self.scale + pos)  # (B, T, D)


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        has_encoder = config.is_encoder_decoder
        self.embed = Embeddings(config)  # shared by encoder and decoder (one joint vocabulary)
        self.encoder_layers = nn.ModuleList(
            Layer(config, has_cross=False) for _ in range(config.num_encoder_layers)
        )
        self.decoder_layers = nn.ModuleList(
            Layer(config, has_cross=has_encoder) for _ in range(config.num_decoder_layers)
        )
        final_norm = partial(nn.LayerNorm, config.d_model, eps=config.layer_norm_eps)
        self.encoder_norm = final_norm() if config.norm_first and has_encoder else None
        self.decoder_norm = final_norm() if config.norm_first else None
        self.lm_head = (
            None
            if config.tie_embeddings
            else nn.Linear(config.d_model, config.vocab_size, bias=False)
        )
        if config.final_logits_bias:
            self.register_buffer("final_logits_bias", torch.zeros(config.vocab_size))
        else:
            self.final_logits_bias = None
        self.packed_head: nn.Module | None = None  # set by model.cpu_kernels.prepacked or quantized
        self._init_weights()

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() > 1 and "norm" not in name:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        nn.init.normal_(self.embed.tokens.weight, std=self.config.d_model**-0.5)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, src_ids: Tensor, src_valid: Tensor | None = None) -> Tensor:
        """memory (B, S, D) of the source; `src_valid` (B, S) is False at padding."""
        positions = torch.arange(src_ids.shape[1], device=src_ids.device)
        x = self.embed(src_ids, positions)
        mask = None if src_valid is None else src_valid[:, None, None, :]  # (B, 1, 1, S)
        for layer in self.encoder_layers:
            x = layer(x, mask)
        return self.encoder_norm(x) if self.encoder_norm is not None else x

    def encode_packed(self, sources: list[list[int]]) -> Tensor:
        """The memory of several sources laid end to end, without padding: (1, N, D) for their
        N tokens in all. Each source attends only to itself (a block-diagonal mask) and counts
        its positions from 0, so its rows are `encode` of it alone, up to rounding."""
        device = self.embed.tokens.weight.device
        lengths = torch.tensor([len(s) for s in sources])
        ids = torch.tensor([t for s in sources for t in s], device=device)[None]  # (1, N)
        positions = torch.cat([torch.arange(n) for n in lengths.tolist()]).to(device)
        source = torch.repeat_interleave(torch.arange(len(sources)), lengths).to(device)  # (N,)
        mask = (source[:, None] == source[None, :])[None, None] if len(sources) > 1 else None
        x = self.embed(ids, positions)
        for layer in self.encoder_layers:
            x = layer(x, mask)
        return self.encoder_norm(x) if self.encoder_norm is not None else x

    def decode(
        self,
        tgt_ids: Tensor,  # (B, T): new target tokens (all of them without a cache)
        memory: Tensor | None = None,  # (B, S, D), encoder-decoder only
        memory_valid: Tensor | None = None,  # (B, S)
        cache: KVCache | None = None,
        tgt_valid: Tensor | None = None,  # (B, T) padding of the target, uncached only
        cross_weights: list[Tensor] | None = None,  # gets each layer's cross-attention weights
        last_only: bool = False,  # logits after the last of `tgt_ids` only: (B, 1, V)
    ) -> Tensor:
        """Logits (B, T, V) for the next token after each of `tgt_ids`."""
        start_pos = cache.length if cache is not None else 0
        num_new = tgt_ids.shape[1]
        positions = torch.arange(start_pos, start_pos + num_new, device=tgt_ids.device)
        x = self.embed(tgt_ids, positions)
        self_mask = attention_mask(start_pos, num_new, tgt_valid, tgt_ids.device)
        cross_mask = None if memory_valid is None else memory_valid[:, None, None, :]
        for i, layer in enumerate(self.decoder_layers):
            layer_cache = cache.layers[i] if cache is not None else None
            x = layer(x, self_mask, memory, cross_mask, layer_cache, start_pos, cross_weights)
        if cache is not None:
            cache.length += num_new
        if last_only:
            x = x[:, -1:]
        if self.decoder_norm is not None:
            x = self.decoder_norm(x)
        return self.project(x)

    def project(self, x: Tensor) -> Tensor:
        if self.packed_head is not None:  # model.cpu_kernels.prepacked or quantized
            logits = self.packed_head(x)
        else:
            weight = self.embed.tokens.weight if self.lm_head is None else self.lm_head.weight
            logits = F.linear(x, weight)  # (B, T, V)
        if self.final_logits_bias is not None:
            logits = logits + self.final_logits_bias
        if self.config.suppress_token_ids:  # as generate(bad_words_ids=...) does for Marian
            logits[..., list(self.config.suppress_token_ids)] = float("-inf")
        return logits

    def forward(
        self,
        src_or_tokens: Tensor,
        tgt_ids: Tensor | None = None,
        src_valid: Tensor | None = None,
        tgt_valid: Tensor | None = None,
    ) -> Tensor:
        """Training: `forward(src, tgt)` for encoder-decoder, `forward(tokens)` for decoder-only."""
        if not self.config.is_encoder_decoder:
            return self.decode(src_or_tokens, tgt_valid=tgt_valid)  # tokens are decoder inputs
        assert tgt_ids is not None, "an encoder-decoder model needs tgt_ids"
        memory = self.encode(src_or_tokens, src_valid)
        return self.decode(tgt_ids, memory, src_valid, tgt_valid=tgt_valid)

    @torch.inference_mode()
    def alignment(self, src_ids: list[int], new_ids: list[int]) -> Tensor:
        """Where the model looked in the source for each generated token: (T, S) weights.

        The last decoder layer's cross-attention, averaged over heads (as CTranslate2's
        `return_attention`). Row i is the step that chose `new_ids[i]`: the decoder is fed the
        decoder start and `new_ids[:-1]`, as it was while generating. Each row sums to 1.
        """
        device = self.embed.tokens.weight.device
        memory = self.encode(torch.tensor([src_ids], device=device))
        tgt = torch.tensor([[self.config.decoder_start_token_id, *new_ids[:-1]]], device=device)
        weights: list[Tensor] = []
        self.decode(tgt, memory, cross_weights=weights)
        return weights[-1][0].mean(0)  # (T, S)

    def write_cross_kv(self, memory: Tensor, cache: PagedKVCache, slots: Tensor) -> None:
        """Encoder-decoder prefill: store every decoder layer's cross-attention K/V of `memory`.

        `memory` (B, S, D) is the encoder output; `slots` (B*S,) where each position goes. It is
        written once per request and read by every step and every beam of it.
        """
        B, S, D = memory.shape
        for layer, pool in zip(self.decoder_layers, cache.kv, strict=True):
            assert isinstance(layer, Layer) and layer.cross_attn is not None
            kv = layer.cross_attn.kv_proj(memory)  # (B, S, 2·D): K then V
            pool.index_copy_(0, slots, kv.reshape(B * S, *pool.shape[1:]))

    def forward_paged(
        self, token_ids: Tensor, cache: PagedKVCache, batch: PagedBatch, last: Tensor | None = None
    ) -> Tensor:
        """The serving step over a paged cache: logits (B, V) after position `last` (B,) of each row
        (None: a decode step's one token per row).

        `token_ids` (B, T) are the rows' new tokens (a prompt at prefill, one token at decode);
        `batch` says where their K/V go and what each row attends to.
        """
        x = self.embed(token_ids, batch.positions)  # (B, T, D)
        for i, layer in enumerate(self.decoder_layers):
            x = layer(x, batch.self_mask, None, batch.cross_mask, PagedLayer(cache, i, batch))
        x = x[:, 0] if last is None else x[torch.arange(x.shape[0], device=x.device), last]
        if self.decoder_norm is not None:
            x = self.decoder_norm(x)
        return self.project(x)

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        p = self.embed.tokens.weight
        return KVCache(self.config, batch_size, max_len, device=p.device, dtype=p.dtype)
