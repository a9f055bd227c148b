"""Runs the model for one step: builds the paged-batch tensors from the requests' block tables,
encodes the sources of newly admitted translations (which then join the decode), prefills newly
admitted prompts, and decodes one token for every running beam."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from model.decoding import pad_batch
from model.paged import (
    SCRATCH_BLOCK,
    PagedAttention,
    PagedBatch,
    PagedKVCache,
    ReadGroup,
    gather_cross_kv,
    slots_of,
)
from model.transformer import Transformer, attention_mask, row_groups
from service.engine.request import Beam, Request


class ModelRunner:
    """Owns the model and the KV cache tensors; knows nothing of scheduling."""

    # Decode rows are read in groups of similar length (`split_by_length`): a split must save at
    # least this many padded key positions (rows × keys), about the cost of one more gather and
    # attention call per layer.
    min_split_saving = 256
    # More groups pad less but cost a gather and an attention call each, per layer; 4 took the
    # base model's beam-4 padding from 3.96 M to 2.12 M key positions (docs/benchmarks.md).
    max_read_groups = 4
    # Prompts (prefill) run in groups of similar length too, each a forward of its own padded to
    # its own longest: one more forward costs about as much as this many padded positions.
    min_prefill_split_saving = 32
    # Sources admitted together are encoded packed end to end, without padding
    # (`Transformer.encode_packed`), up to this many tokens per forward: the cost of their
    # block-diagonal attention mask grows with its square.
    max_packed_tokens = 256

    def __init__(
        self,
        model: Transformer,
        cache: PagedKVCache,
        compile: bool = False,
        kernel: PagedAttention | None = None,
    ):
        self.model = model
        self.cache = cache
        # The CPU decode-attention kernel (model/paged_kernel.py): decode steps read the cache in
        # place instead of gathering it. None: they gather (`decode_gathered`).
        self.kernel = kernel
        # Transformer.forward_paged (compiled with --compile): what prefill and decode both run
        self.forward = model.forward_paged
        if compile:
            self.forward = torch.compile(model.forward_paged, dynamic=True)
            # Prefill and decode, batch 1 and more, with and without masks are graphs of their
            # own: past dynamo's default limit of 8 the step silently ran eager. One read group
            # keeps the variants few (each number of groups would be another).
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
            self.max_read_groups = 1
        self.config = model.config
        self.device = model.embed.tokens.weight.device
        self._cross_rows: tuple = ()  # the decode requests of `_cross_batch`
        self._cross_batch: PagedBatch | None = None  # it holds their sources' cross_* fields

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        for src, dst in copies:
            self.cache.copy_block(src, dst)

    @torch.inference_mode()
    def run(
        self, admitted: list[Request], running: list[Request], encode: Sequence[Request] = ()
    ) -> list[Tensor]:
        """One step: next-token logits (beams, V) of every request, `admitted` then `running`.

        The sources of `encode` (encoder-decoder: requests admitted now, and waiting ones
        encoded ahead) are encoded first, their cross-attention K/V written to their blocks. A
        new translation's decoder input is a single token (the decoder start), so it joins the
        decode as a row at position 0 instead of costing a decoder forward of its own. Prompts
        (decoder-only) and requests being recomputed after preemption (several tokens) are
        prefilled first.
        """
        if encode:
            self._write_memory(encode)
        joining: list[Request] = []
        if self.config.is_encoder_decoder:
            joining = [r for r in admitted if all(len(b.tokens) == 1 for b in r.beams)]
        joined = {id(r) for r in joining}
        rest = [r for r in admitted if id(r) not in joined]
        logits = {id(r): x for r, x in zip(rest, self.prefill(rest) if rest else [], strict=True)}
        rows = sorted(joining + running, key=lambda r: -r.beams[0].num_cached)  # longest first
        logits |= {id(r): x for r, x in zip(rows, self.decode(rows) if rows else [], strict=True)}
        return [logits[id(r)] for r in admitted + running]

    @torch.inference_mode()
    def prefill(self, requests: list[Request]) -> list[Tensor]:
        """Run every beam's known tokens (an encoder-decoder request's source is encoded
        already); returns each request's next-token logits (beams, V). Requests of similar
        length run together (`length_groups`)."""
        logits: dict[int, Tensor] = {}
        for group in self.length_groups(requests):
            logits |= {id(r): x for r, x in zip(group, self._prefill(group), strict=True)}
        return [logits[id(r)] for r in requests]

    def _prefill(self, requests: list[Request]) -> list[Tensor]:
        beams = [(r, b) for r in requests for b in r.beams]
        lengths = [len(b.tokens) for _, b in beams]
        token_ids, valid = pad_batch([b.tokens for _, b in beams], self.config.pad_token_id)
        B, T = token_ids.shape
        slots = slots_of([b.block_table for _, b in beams], lengths, self.cache.block_size)
        slots = slots.masked_fill(~valid, SCRATCH_BLOCK * self.cache.block_size)  # (B, T)
        batch = PagedBatch(
            positions=torch.arange(T, device=self.device).expand(B, T),
            write_slots=slots.reshape(-1).to(self.device),
            self_mask=attention_mask(0, T, valid.to(self.device), self.device),
        )
        self._add_cross(batch, [r for r, _ in beams])
        last = torch.tensor(lengths, device=self.device) - 1
        logits = self.forward(token_ids.to(self.device), self.cache, batch, last)
        for _, beam in beams:
            beam.num_cached = len(beam.tokens)
        return self._split(logits, requests)

    @torch.inference_mode()
    def decode(self, requests: list[Request]) -> list[Tensor]:
        """One new token per beam, attending to the beam's cached positions: on the kernel, which
        reads them in place, or gathered (`_gathered_batch`)."""
        beams = [b for r in requests for b in r.beams]
        batch = self._gathered_batch(requests) if self.kernel is None else self._kernel_batch(beams)
        self._add_decode_cross(batch, requests)
        if self.kernel is not None:  # it reads the pool unchecked, where index_select would raise
            read = [batch.key_slots, batch.cross_read_slots]
            assert all(int(s.max()) < self.cache.num_slots for s in read if s is not None)
        token_ids = torch.tensor([[b.tokens[-1]] for b in beams], device=self.device)
        logits = self.forward(token_ids, self.cache, batch)
        for beam in beams:
            beam.num_cached += 1
        return self._split(logits, requests)

    def _kernel_batch(self, beams: list[Beam]) -> PagedBatch:
        lengths = [b.num_cached + 1 for b in beams]  # keys, the new token's included
        slots = slots_of([b.block_table for b in beams], lengths, self.cache.block_size)
        key_lengths = torch.tensor(lengths)
        positions = key_lengths[:, None] - 1  # (B, 1) of the new tokens
        return PagedBatch(
            positions=positions,
            write_slots=slots.gather(1, positions)[:, 0],  # (B,)
            self_mask=None,
            kernel=self.kernel,
            key_slots=slots.contiguous(),  # (B, Tk)
            key_lengths=key_lengths,
        )

    def _gathered_batch(self, requests: list[Request]) -> PagedBatch:
        """Each row's keys gathered into a padded batch: `requests` longest first, their rows
        read in groups of similar length."""
        beams = [b for r in requests for b in r.beams]
        positions = [b.num_cached for b in beams]  # of the new tokens
        first_row = [0]
        for r in requests:
            first_row.append(first_row[-1] + len(r.beams))
        runs = split_by_length(
            [r.beams[0].num_cached + 1 for r in requests],
            [len(r.beams) for r in requests],
            self.min_split_saving,
            self.max_read_groups,
        )
        groups, write_slots = [], []
        for a, b in runs:
            start, end = first_row[a], first_row[b]
            lengths = [p + 1 for p in positions[start:end]]
            tables = [beam.block_table for beam in beams[start:end]]
            slots = slots_of(tables, lengths, self.cache.block_size)  # (rows, Tk)
            position = torch.tensor(positions[start:end])[:, None]  # (rows, 1) of the new tokens
            write_slots.append(slots.gather(1, position)[:, 0])
            mask = None  # rows of one length see all their keys, and SDPA is faster without
            if min(lengths) != max(lengths):
                valid = torch.arange(max(lengths))[None, :] <= position  # (rows, Tk)
                mask = valid[:, None, None, :].to(self.device)
            groups.append(ReadGroup(start, end, slots.to(self.device), mask))
        return PagedBatch(
            positions=torch.tensor(positions, device=self.device)[:, None],  # (B, 1)
            write_slots=torch.cat(write_slots).to(self.device),  # (B,)
            self_mask=None,
            read_groups=groups,
        )

    def _add_decode_cross(self, batch: PagedBatch, requests: list[Request]) -> None:
        """Each request's source, one row per request that its beams share. Where it is (and,
        gathering, its K/V) is kept from step to step while the decode requests stay the same.

        Gathered, a request's beams attend to their row together (`grouped_attention`): beam
        search gathers and reads the source K/V once per request, even while requests that have
        just joined (one beam) and older ones (several) share the step.
        """
        if not self.config.is_encoder_decoder:
            return
        # The requests themselves (compared by identity, and held so that none is reused), not
        # their ids: a finished request's id may come back with another source in its blocks.
        rows = tuple((r, tuple(r.cross_blocks)) for r in requests)
        if rows != self._cross_rows:
            self._add_cross(batch, requests)
            if self.kernel is None:
                assert batch.cross_read_slots is not None
                batch.cross_kv = gather_cross_kv(self.cache, batch.cross_read_slots)
            self._cross_rows, self._cross_batch = rows, batch
        kept = self._cross_batch
        assert kept is not None
        batch.cross_read_slots, batch.cross_lengths = kept.cross_read_slots, kept.cross_lengths
        batch.cross_mask, batch.cross_kv = kept.cross_mask, kept.cross_kv
        counts = [len(r.beams) for r in requests]
        if self.kernel is None:
            batch.cross_groups = row_groups(counts, self.device)
        else:
            batch.cross_rows = torch.tensor([i for i, n in enumerate(counts) for _ in range(n)])

    def length_groups(self, requests: list[Request]) -> list[list[Request]]:
        """`requests` longest first, in runs of similar length to be prefilled apart, each padded
        to its own longest (`split_by_length`)."""
        ordered = sorted(requests, key=lambda r: len(r.beams[0].tokens), reverse=True)
        runs = split_by_length(
            [len(r.beams[0].tokens) for r in ordered],
            [len(r.beams) for r in ordered],
            self.min_prefill_split_saving,
            self.max_read_groups,
        )
        return [ordered[a:b] for a, b in runs]

    def _write_memory(self, requests: Sequence[Request]) -> None:
        """Encode the sources once and store every layer's cross-attention K/V in their blocks:
        packed end to end, up to `max_packed_tokens` per forward."""
        packed: list[Request] = []
        num_tokens = 0
        for request in requests:
            if packed and num_tokens + len(request.input_ids) > self.max_packed_tokens:
                self._encode(packed)
                packed, num_tokens = [], 0
            packed.append(request)
            num_tokens += len(request.input_ids)
        self._encode(packed)

    def _encode(self, requests: list[Request]) -> None:
        sources = [r.input_ids for r in requests]
        memory = self.model.encode_packed(sources)  # (1, N, D)
        lengths = [len(s) for s in sources]
        slots = slots_of([r.cross_blocks for r in requests], lengths, self.cache.block_size)
        valid = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
        self.model.write_cross_kv(memory, self.cache, slots[valid].to(self.device))

    def _add_cross(self, batch: PagedBatch, row_requests: list[Request]) -> None:
        """Each row reads its request's cross-attention K/V (encoder-decoder only)."""
        if not self.config.is_encoder_decoder:
            return
        lengths = [len(r.input_ids) for r in row_requests]
        batch.cross_read_slots = (
            slots_of([r.cross_blocks for r in row_requests], lengths, self.cache.block_size)
            .contiguous()
            .to(self.device)
        )  # (B, S)
        batch.cross_lengths = torch.tensor(lengths)
        if min(lengths) == max(lengths):  # no padding (one request, or its beams): no mask
            batch.cross_mask = None
            return
        valid = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]  # (B, S)
        batch.cross_mask = valid[:, None, None, :].to(self.device)

    @staticmethod
    def _split(logits: Tensor, requests: list[Request]) -> list[Tensor]:
        """(num_beams_total, V) → per request (num_beams, V), in fp32 on the CPU."""
        logits = logits.float().cpu()
        return list(logits.split([len(r.beams) for r in requests]))


def split_by_length(
    lengths: list[int], rows: list[int], min_saving: int, max_groups: int
) -> list[tuple[int, int]]:
    """Runs `(start, end)` of requests (sorted longest first; `rows` beams each) that read their
    keys together, each padded to its own longest: the split that saves the most padded key
    positions first, while one saves at least `min_saving` and there are fewer than `max_groups`.
    """
    runs = [(0, len(lengths))]
    while len(runs) < max_groups:
        # the best split so far must save more than this: at least min_saving, and never nothing
        best_saving, best_run, best_split = max(min_saving, 1) - 1, -1, -1
        for i, (a, b) in enumerate(runs):
            below = 0  # rows of requests s..b-1
            for s in range(b - 1, a, -1):
                below += rows[s]
                saving = below * (lengths[a] - lengths[s])
                if saving > best_saving:
                    best_saving, best_run, best_split = saving, i, s
        if best_run < 0:
            break
        a, b = runs[best_run]
        runs[best_run : best_run + 1] = [(a, best_split), (best_split, b)]
    return runs
