"""What an engine takes in: a prompt's input ids, the limits a request must fit, and the
`Request` it becomes. `LLMEngine` is one; so is `RemoteEngine` (engine_process.py), the HTTP
process's stand-in for an engine that runs in a process of its own, which must refuse what
that engine would refuse before it sends anything there."""

from __future__ import annotations

import dataclasses
import itertools
import threading

import torch

from model.config import TransformerConfig
from model.paged import PagedKVCache
from model.tokenizer import Tokenizer
from service.engine.block_manager import BlockManager
from service.engine.config import EngineConfig
from service.engine.detokenizer import IncrementalDetokenizer
from service.engine.request import EngineOverloaded, Request, RequestTooLong, SamplingParams
from service.engine.scheduler import Scheduler


def cache_blocks(model_config: TransformerConfig, config: EngineConfig) -> int:
    """The KV cache's blocks (the scratch block included) within its memory budget."""
    dtype = getattr(torch, config.dtype)
    block_bytes = PagedKVCache.bytes_per_block(model_config, config.block_size, dtype)
    return max(2, int(config.kv_cache_mb * 2**20) // block_bytes)


class Intake:
    """A base class: its subclasses set these attributes, and `_enqueue` what `add_request`
    accepts. The scheduler is used here only for its arithmetic (how many blocks a request may
    hold), never to schedule."""

    tokenizer: Tokenizer
    model_config: TransformerConfig
    config: EngineConfig
    blocks: BlockManager
    scheduler: Scheduler
    _ids: itertools.count
    _requests: dict[str, Request]  # added and not finished yet
    _lock: threading.Lock  # add_request may come from another thread than the one stepping

    def add_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        arrival: float | None = None,
    ) -> Request:
        """Queue a request (text, or token ids). Raises RequestTooLong or EngineOverloaded."""
        request = self._make_request(prompt, params, request_id, arrival)
        with self._lock:
            if self.num_requests >= self.max_requests:
                raise EngineOverloaded(f"{self.num_requests} requests are running or waiting")
            if request.request_id in self._requests:
                raise ValueError(f"request id {request.request_id!r} is already in use")
            self._requests[request.request_id] = request
        try:
            self._enqueue(request)
        except BaseException:
            with self._lock:
                self._requests.pop(request.request_id, None)
            raise
        return request

    def _enqueue(self, request: Request) -> None:
        raise NotImplementedError

    @property
    def num_requests(self) -> int:
        """Requests added and not finished yet: running, or waiting (queued or preempted)."""
        return len(self._requests)

    @property
    def is_encoder_decoder(self) -> bool:
        return self.model_config.is_encoder_decoder

    @property
    def max_input_tokens(self) -> int:
        """The longest input `add_request` takes: the configured limit, within the model's
        positions (a decoder-only prompt leaves one for its first new token)."""
        cfg = self.model_config
        positions = cfg.max_positions if cfg.is_encoder_decoder else cfg.max_positions - 1
        limit = self.config.max_input_tokens
        return positions if limit is None else min(limit, positions)

    @property
    def max_requests(self) -> int:
        """The most requests the engine holds (`num_requests`); more are refused, as
        EngineOverloaded. A burst that arrives between two steps may fill the free running
        slots as well as the queue: all it holds are running once a step admits them, unless
        the KV cache is short of blocks."""
        limits = self.config.scheduler
        return limits.max_running_requests + limits.max_waiting_requests

    def input_ids(self, prompt: str | list[int]) -> list[int]:
        """The model's input for a prompt: text gets the special tokens training used."""
        cfg = self.model_config
        if not isinstance(prompt, str):
            return list(prompt)
        ids = self.tokenizer.encode(prompt)
        if cfg.is_encoder_decoder:
            return ids + [cfg.eos_token_id]
        return [cfg.bos_token_id] + ids if cfg.add_bos_token else ids

    def _make_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        arrival: float | None = None,
    ) -> Request:
        """The request a prompt becomes, its max_new_tokens lowered to what fits when it asks
        for that. Raises RequestTooLong for what can never run; queues nothing."""
        params = params or SamplingParams()
        cfg = self.model_config
        input_ids = self.input_ids(prompt)
        if cfg.is_encoder_decoder:
            decoder_start = [cfg.decoder_start_token_id]
        else:
            decoder_start = input_ids or [cfg.bos_token_id]
        room = cfg.max_positions - len(decoder_start)
        if params.fit_max_new_tokens and params.max_new_tokens > room > 0:
            params = dataclasses.replace(params, max_new_tokens=room)
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"

        def make(params: SamplingParams) -> Request:
            detokenizer = IncrementalDetokenizer(
                self.tokenizer, params.stop, params.include_stop_string
            )
            return Request(
                request_id, input_ids, params, detokenizer, decoder_start, cfg.eos_token_id, arrival
            )

        request = make(params)
        if params.fit_max_new_tokens:  # and within the KV cache, every beam at its longest
            fits = self._most_new_tokens_that_fit(request)
            if 0 < fits < params.max_new_tokens:
                request = make(dataclasses.replace(params, max_new_tokens=fits))
        self._check_fits(request)
        return request

    def _check_fits(self, request: Request) -> None:
        """Refuse what can never run. The messages name no field: the HTTP layer prefixes the
        field's name on its route (`max_tokens`, `max_new_tokens`, ...)."""
        positions = self.model_config.max_positions
        num_input, max_new = len(request.input_ids), request.params.max_new_tokens
        start = len(request.beams[0].tokens)  # the decoder's start: the prompt, for decoder-only
        if num_input > self.max_input_tokens:
            raise RequestTooLong(
                f"input of {num_input} tokens is longer than the {self.max_input_tokens} this "
                "model takes"
            )
        if start + max_new > positions:
            room = positions - start
            raise RequestTooLong(
                f"{max_new} new tokens do not fit the decoder's {positions} positions: "
                f"at most {room}"
                + ("" if self.is_encoder_decoder else f" after an input of {num_input} tokens"),
                "max_new_tokens",
            )
        if self.scheduler.worst_case_blocks(request) > self.blocks.num_blocks:
            fits_alone = self.scheduler.worst_case_blocks(request, max_new_tokens=1)
            raise RequestTooLong(
                f"input of {num_input} tokens with {max_new} new tokens cannot fit the KV cache",
                "max_new_tokens" if fits_alone <= self.blocks.num_blocks else "input",
            )

    def _most_new_tokens_that_fit(self, request: Request) -> int:
        """The most new tokens (up to the request's limit) whose worst case fits the KV cache."""
        low, high = 0, request.params.max_new_tokens
        while low < high:
            middle = (low + high + 1) // 2
            if self.scheduler.worst_case_blocks(request, middle) <= self.blocks.num_blocks:
                low = middle
            else:
                high = middle - 1
        return low
