"""Which requests run this step: admission within the budgets, cache growth, preemption,
cancellation and deadlines. Pure bookkeeping: no tensors, testable with no model at all."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from service.engine.block_manager import BlockManager
from service.engine.request import FinishReason, Request, RequestStatus


@dataclass(frozen=True)
class SchedulerConfig:
    max_running_requests: int = 64
    max_tokens_per_step: int = 4096  # prefill tokens (source + decoder) plus one per decoding beam
    max_waiting_requests: int = 1024  # beyond this, new requests are refused (overload)
    reserve_full_length: bool = False  # reserve input + max_new_tokens at admission: never preempt
    static_batching: bool = False  # baseline: admit a new batch only when the last one finished
    # Encoder-decoder: a step that encodes the sources it admits also encodes those next in line,
    # up to this many sources in all; they join later steps already encoded, so the encoder runs
    # less often on bigger batches. 1: encode only what is admitted.
    encode_ahead: int = 16


@dataclass
class SchedulerOutput:
    """The contract between scheduler and runner for one step."""

    # admitted now (new, or recomputed after preemption): a translation's source is encoded and
    # it joins the decode; a prompt (or a recomputed request's tokens) is prefilled
    prefill: list[Request]
    decode: list[Request]  # already running: one token per beam
    copies: list[tuple[int, int]]  # copy-on-write: copy block src to dst before the step
    # encoder-decoder: the sources to encode this step, into their `cross_blocks`: of requests
    # admitted now, and of waiting ones next in line (`encode_ahead`)
    encode: list[Request] = field(default_factory=list)
    # cancelled, timed out, or failed (`fail_all`): already freed
    finished: list[Request] = field(default_factory=list)
    num_preempted: int = 0


class Scheduler:
    def __init__(self, config: SchedulerConfig, blocks: BlockManager, is_encoder_decoder: bool):
        self.config = config
        self.blocks = blocks
        self.is_encoder_decoder = is_encoder_decoder
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order; the newest is preempted first
        self.num_preemptions = 0  # since start

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- cache accounting ------------------------------------------------------------------

    def _needs_encoding(self, request: Request) -> bool:
        """An encoder-decoder request whose source is not encoded yet: it holds no
        cross-attention blocks (a waiting request encoded ahead already does)."""
        return self.is_encoder_decoder and not request.cross_blocks

    def _cross_blocks(self, request: Request) -> int:
        return self.blocks.blocks_for(len(request.input_ids))

    def _prefill_blocks(self, request: Request) -> int:
        cross = self._cross_blocks(request) if self._needs_encoding(request) else 0
        return cross + sum(self.blocks.blocks_for(len(b.tokens)) for b in request.beams)

    def worst_case_blocks(self, request: Request, max_new_tokens: int | None = None) -> int:
        """Blocks the request holds at its longest (or after `max_new_tokens`), every beam on
        its own blocks."""
        params = request.params
        max_new = params.max_new_tokens if max_new_tokens is None else max_new_tokens
        cross = self._cross_blocks(request) if self.is_encoder_decoder else 0
        longest = len(request.beams[0].tokens) - request.num_output_tokens + max_new
        return cross + params.beam_size * self.blocks.blocks_for(longest)

    def _held_blocks(self, request: Request) -> int:
        return len(request.cross_blocks) + len(
            {b for beam in request.beams for b in beam.block_table}
        )

    def _reserved_elsewhere(self) -> int:
        """Reserve mode: blocks the running requests may still claim."""
        if not self.config.reserve_full_length:
            return 0
        return sum(self.worst_case_blocks(r) - self._held_blocks(r) for r in self.running)

    # -- one step ----------------------------------------------------------------------------

    def schedule(self, now: float | None = None) -> SchedulerOutput:
        now = time.perf_counter() if now is None else now
        out = SchedulerOutput(prefill=[], decode=[], copies=[])
        self._drop_cancelled_and_expired(now, out)
        self._grow_running(out)
        self._admit(out, now)
        return out

    def _drop_cancelled_and_expired(self, now: float, out: SchedulerOutput) -> None:
        for queue in (self.waiting, self.running):
            for request in list(queue):
                if request.is_aborted:
                    reason = FinishReason.ERROR if request.abort_error else FinishReason.CANCELLED
                elif request.deadline is not None and now >= request.deadline:
                    reason = FinishReason.TIMEOUT
                else:
                    continue
                queue.remove(request)
                self.finish(request, reason)
                out.finished.append(request)

    def _grow_running(self, out: SchedulerOutput) -> None:
        """Every running beam gets room for one more position, preempting the newest if needed."""
        for request in list(self.running):
            if request not in self.running:
                continue  # preempted while making room for an older request
            need = sum(
                self.blocks.blocks_to_grow(b.block_table, b.num_cached + 1) for b in request.beams
            )
            preempted_itself = False
            while need > self.blocks.num_free and not preempted_itself:
                if self._release_encoded_ahead():
                    continue
                victim = self.running[-1]  # the newest
                self._preempt(victim)
                out.num_preempted += 1
                preempted_itself = victim is request
            if preempted_itself:
                continue
            for beam in request.beams:
                copy = self.blocks.grow(beam.block_table, beam.num_cached + 1)
                if copy is not None:
                    out.copies.append(copy)
            out.decode.append(request)

    def prefill_tokens(self, request: Request) -> int:
        """Tokens a request's admission runs: its source unless it is encoded already
        (encoder-decoder), and every beam's tokens."""
        source = len(request.input_ids) if self._needs_encoding(request) else 0
        return source + sum(len(b.tokens) for b in request.beams)

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self._free_blocks(request)
        request.reset_for_recompute()
        self.num_preemptions += 1
        self.waiting.appendleft(request)  # first in line again

    def _admit(self, out: SchedulerOutput, now: float) -> None:
        config = self.config
        if config.static_batching and self.running:
            return
        num_tokens = sum(len(r.beams) for r in out.decode)
        while self.waiting and len(self.running) < config.max_running_requests:
            request = self.waiting[0]
            prefill_tokens = self.prefill_tokens(request)
            if out.prefill and num_tokens + prefill_tokens > config.max_tokens_per_step:
                break  # a request over the whole budget still runs, as its step's only prefill
            need = self._prefill_blocks(request)
            if config.reserve_full_length:
                need = max(need, self.worst_case_blocks(request) - len(request.cross_blocks))
            if need > self.blocks.num_free - self._reserved_elsewhere():
                if self._release_encoded_ahead(keep=request):
                    continue
                break  # first come, first served: nobody overtakes the head of the queue
            self.waiting.popleft()
            if self._needs_encoding(request):
                out.encode.append(request)
            self._allocate_prefill(request)
            request.status = RequestStatus.RUNNING
            if request.timings.scheduled is None:
                request.timings.scheduled = now
            self.running.append(request)
            out.prefill.append(request)
            num_tokens += prefill_tokens
        if out.encode and not config.static_batching:
            self._encode_ahead(out, num_tokens)

    def _encode_ahead(self, out: SchedulerOutput, num_tokens: int) -> None:
        """With the sources admitted now, encode those next in line (`encode_ahead`), as far as
        the step's token budget and the free blocks go: every running beam keeps room to grow."""
        room = self.blocks.num_free - self._reserved_elsewhere()
        room -= sum(len(r.beams) for r in self.running)
        for request in self.waiting:
            if len(out.encode) >= self.config.encode_ahead:
                break
            if not self._needs_encoding(request):
                continue
            need = self._cross_blocks(request)
            if num_tokens + len(request.input_ids) > self.config.max_tokens_per_step or need > room:
                break
            request.cross_blocks = self.blocks.allocate(need)
            out.encode.append(request)
            num_tokens += len(request.input_ids)
            room -= need

    def _release_encoded_ahead(self, keep: Request | None = None) -> bool:
        """Free the cross-attention blocks of the last waiting request encoded ahead (but `keep`),
        for a running request to grow or the head of the queue to start; it is encoded again
        when admitted. False if there is none."""
        for request in reversed(self.waiting):
            if request.cross_blocks and request is not keep:
                self.blocks.free(request.cross_blocks)
                return True
        return False

    def forget_encoding(self, requests: list[Request]) -> None:
        """A step that was to encode these waiting requests failed: free their blocks, so they
        are encoded again when admitted."""
        for request in requests:
            if request.status == RequestStatus.WAITING:
                self.blocks.free(request.cross_blocks)

    def _allocate_prefill(self, request: Request) -> None:
        if self._needs_encoding(request):
            request.cross_blocks = self.blocks.allocate(self._cross_blocks(request))
        for beam in request.beams:
            beam.block_table = self.blocks.allocate(self.blocks.blocks_for(len(beam.tokens)))

    # -- leaving -----------------------------------------------------------------------------

    def _free_blocks(self, request: Request) -> None:
        for beam in request.beams:
            self.blocks.free(beam.block_table)
        self.blocks.free(request.cross_blocks)

    def finish(self, request: Request, reason: FinishReason) -> None:
        """Free everything the request holds; it leaves the running list."""
        if request in self.running:
            self.running.remove(request)
        self._free_blocks(request)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
