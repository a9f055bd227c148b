"""What a request asks for (`SamplingParams`), its state inside the engine (`Request`), and what
the engine hands back after each step (`RequestOutput`)."""

from __future__ import annotations

import enum
import math
import random
import time
from dataclasses import dataclass, field

import torch

from model.decoding import BeamSearch
from service.engine.detokenizer import IncrementalDetokenizer


@dataclass(frozen=True)
class SamplingParams:
    """Decoding options of one request. Out-of-range values raise ValueError naming the field
    (the HTTP layer checks its own, tighter, limits first)."""

    max_new_tokens: int = 128
    fit_max_new_tokens: bool = False  # lower max_new_tokens to what fits the model's positions
    min_new_tokens: int = 0  # EOS and stop tokens are masked until this many were generated
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    typical_p: float = 1.0  # 1: off (locally typical sampling, as TGI and `generate()`)
    min_p: float = 0.0  # 0: off (vLLM's: drop tokens less likely than min_p × the likeliest's)
    repetition_penalty: float = (
        1.0  # 1: off (CTRL-style: divide positive logits, multiply negative)
    )
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every generated token's logit
    frequency_penalty: float = 0.0  # and this, once per time it was generated
    no_repeat_ngram_size: int = 0  # n > 0: no n-gram occurs twice (greedy, sampling and beams)
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit) pairs
    seed: int | None = None  # sampling is reproducible per request, whatever else is in the batch
    num_top_logprobs: int = 0  # also report the most likely tokens of each step (not for beams)
    stop_token_ids: tuple[int, ...] = ()  # end the output; their text is left out, as EOS's
    stop: tuple[str, ...] = ()  # stop strings; the text ends before the first one
    include_stop_string: bool = False  # the text ends after the stop string (or token) instead
    ignore_eos: bool = False
    beam_size: int = 1  # > 1: beam search (greedy within the beams; no sampling)
    length_penalty: float = 1.0  # beam score = log-probability / length ** length_penalty
    num_hypotheses: int = 1  # n-best list size, ≤ beam_size
    timeout_s: float | None = None  # deadline, from arrival: finished with reason "timeout"

    def __post_init__(self) -> None:
        beam_search_ignores = (  # options of the sampling path only
            self.temperature,
            self.repetition_penalty != 1.0,
            self.presence_penalty,
            self.frequency_penalty,
            self.logit_bias,
            self.stop,
            self.stop_token_ids,
            self.min_new_tokens,
            self.num_top_logprobs,
        )
        checks = {
            "max_new_tokens": self.max_new_tokens >= 1,
            "min_new_tokens": self.min_new_tokens >= 0,
            "temperature": 0.0 <= self.temperature < math.inf,
            "top_k": self.top_k >= 0,
            "top_p": 0.0 < self.top_p <= 1.0,
            "typical_p": 0.0 < self.typical_p <= 1.0,
            "min_p": 0.0 <= self.min_p <= 1.0,
            "repetition_penalty": 0.0 < self.repetition_penalty < math.inf,
            "presence_penalty": math.isfinite(self.presence_penalty),
            "frequency_penalty": math.isfinite(self.frequency_penalty),
            "no_repeat_ngram_size": self.no_repeat_ngram_size >= 0,
            "logit_bias": all(i >= 0 and math.isfinite(b) for i, b in self.logit_bias),
            "num_top_logprobs": self.num_top_logprobs >= 0,
            "stop": all(self.stop),
            "beam_size": self.beam_size == 1
            or (self.beam_size > 1 and not any(beam_search_ignores)),
            "length_penalty": math.isfinite(self.length_penalty),
            "num_hypotheses": 1 <= self.num_hypotheses <= self.beam_size,
            "timeout_s": self.timeout_s is None or self.timeout_s >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                hint = (
                    " (beam search takes no sampling, penalties, logit bias, stops, "
                    "min_new_tokens or top logprobs)"
                    if name == "beam_size"
                    else ""
                )
                raise ValueError(
                    f"SamplingParams.{name} = {getattr(self, name)!r} is invalid{hint}"
                )

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # queued, or preempted and waiting to be recomputed
    RUNNING = "running"  # holds cache blocks and decodes every step
    FINISHED = "finished"


class FinishReason(enum.Enum):
    STOP = "stop"  # EOS, a stop token or a stop string
    LENGTH = "length"  # max_new_tokens
    CANCELLED = "cancelled"  # abort(), e.g. the client went away
    TIMEOUT = "timeout"  # the request's deadline passed
    ERROR = "error"  # generation failed; the engine carries on


class RequestTooLong(ValueError):
    """The input cannot fit the model's positions or the whole KV cache. `field` is what is at
    fault: "input", or "max_new_tokens" when the input alone would fit."""

    def __init__(self, message: str, field: str = "input"):
        super().__init__(message)
        self.field = field


class EngineOverloaded(RuntimeError):
    """The waiting queue is full: try again later (HTTP 429)."""


@dataclass
class Timings:
    """Monotonic timestamps (time.perf_counter) of a request's life; durations derive from them."""

    arrival: float
    scheduled: float | None = None  # first admitted (prefill started)
    first_token: float | None = None
    finished: float | None = None

    def durations_ms(self) -> dict[str, float]:
        end = self.finished if self.finished is not None else time.perf_counter()
        scheduled = self.scheduled if self.scheduled is not None else end
        first = self.first_token if self.first_token is not None else end
        return {
            "queue_ms": 1000 * (scheduled - self.arrival),
            "prefill_ms": 1000 * (first - scheduled),
            "decode_ms": 1000 * (end - first),
            "total_ms": 1000 * (end - self.arrival),
        }


@dataclass
class Beam:
    """One row of the batch: the request's single output, or one of its beams."""

    tokens: list[
        int
    ]  # the decoder's whole input: prompt (decoder-only) or start token, then outputs
    block_table: list[int] = field(default_factory=list)
    num_cached: int = 0  # positions of `tokens` whose K/V are in the cache


@dataclass
class Hypothesis:
    token_ids: list[int]
    text: str
    score: float


@dataclass
class RequestOutput:
    """What one step produced for a request; the last one has `finished` set."""

    request_id: str
    new_token_ids: list[int]  # tokens generated this step (streaming); empty for beam search
    new_logprobs: list[float]  # their log-probabilities under the model
    text_delta: str  # new text, never half a character nor part of a stop string
    token_ids: list[int]  # generated so far; a beam search's: [] until finished, then its best
    text: str  # all text so far
    num_input_tokens: int
    num_output_tokens: int  # generated so far: len(token_ids), or a beam search's steps
    finish_reason: FinishReason | None = None
    hypotheses: list[Hypothesis] = field(default_factory=list)  # beam search: the n-best
    timings_ms: dict[str, float] = field(default_factory=dict)  # set when finished
    error: str | None = None
    logprobs: list[float] = field(default_factory=list)  # of every token in token_ids (sampling)
    # SamplingParams.num_top_logprobs: per new token, the most likely tokens → log-probability
    # (the chosen one included); every token's when finished.
    new_top_logprobs: list[dict[int, float]] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    stopped_on: str | None = None  # the stop string that ended the text
    was_scheduled: bool = True  # False: finished (timeout, cancelled) before it ever ran

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class Request:
    """Everything the engine knows about one request, from arrival to finish."""

    def __init__(
        self,
        request_id: str,
        input_ids: list[int],
        params: SamplingParams,
        detokenizer: IncrementalDetokenizer,
        decoder_start: list[int],
        eos_id: int,
        arrival: float | None = None,
    ):
        self.request_id = request_id
        self.input_ids = input_ids  # the source (encoder-decoder) or the prompt (decoder-only)
        self.params = params
        self.detokenizer = detokenizer
        self.status = RequestStatus.WAITING
        self.timings = Timings(arrival if arrival is not None else time.perf_counter())
        self.deadline = (
            self.timings.arrival + params.timeout_s if params.timeout_s is not None else None
        )
        self.beams: list[Beam] = [Beam(list(decoder_start))]
        self.cross_blocks: list[int] = []  # encoder-decoder: the cross-attention K/V, all beams
        self.output_ids: list[int] = []  # generated tokens (sampling / greedy)
        self.output_logprobs: list[float] = []
        self.output_top_logprobs: list[dict[int, float]] = []  # params.num_top_logprobs > 0
        self.beam_search = (
            BeamSearch(params.beam_size, params.max_new_tokens, params.length_penalty, eos_id)
            if params.beam_size > 1
            else None
        )
        self.generator = torch.Generator()
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        self.generator.manual_seed(seed % 2**64)  # any int: torch takes 64 bits
        self.is_aborted = False
        self.abort_error: str | None = None  # aborted as failed, with this message
        self.finish_reason: FinishReason | None = None

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_ids) if self.beam_search is None else self.beam_search.num_steps

    def reset_for_recompute(self) -> None:
        """After preemption: the cache is gone; prefill will recompute every beam's tokens."""
        for beam in self.beams:
            beam.block_table = []
            beam.num_cached = 0
        self.cross_blocks = []
        self.status = RequestStatus.WAITING
