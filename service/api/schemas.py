"""Request bodies of every route (pydantic): the HTTP contract's field names, ranges and defaults.

Limits that depend on the server's settings (max_new_tokens) are checked in the routes.
Types are strict, as TGI's and OpenAI's servers are: "4" is not a number and 1 is not a boolean
(an integer is still a valid float).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

NonEmptyText = Annotated[str, Field(min_length=1)]
MAX_BATCH = 64  # texts or prompts in one request
# Seeds: any 64-bit value (n > 1 completions use seed + index).
Seed = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]


class FieldError(ValueError):
    """A check across fields that blames one of them (the error's `param`)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _one_or_many(value: object) -> object:
    """One clear error for the string-or-list inputs, instead of one per union member."""
    if isinstance(value, str) and value:
        return value
    if (
        isinstance(value, list)
        and 1 <= len(value) <= MAX_BATCH
        and all(isinstance(v, str) and v for v in value)
    ):
        return value
    raise ValueError(f"must be a non-empty string or a list of 1 to {MAX_BATCH} non-empty strings")


TextOrTexts = Annotated[str | list[str], BeforeValidator(_one_or_many)]


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    text: TextOrTexts
    beam_size: int | None = Field(
        None, ge=1, le=16, description="default 4; 1 when streaming or sampling"
    )
    num_hypotheses: int = Field(1, ge=1, le=16)
    length_penalty: float = Field(1.0, ge=0.0, le=10.0)
    max_new_tokens: int | None = Field(None, ge=1, description="default: the server's limit")
    temperature: float = Field(0.0, ge=0.0, le=10.0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: Seed | None = None
    return_scores: bool = False
    return_alignments: bool = False  # each translation's cross-attention over the source
    stream: bool = False
    timeout_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> TranslateRequest:
        sampling = self.temperature > 0
        if self.beam_size is None:
            self.beam_size = 1 if (self.stream or sampling) else 4
        if sampling and self.beam_size > 1:
            raise FieldError("beam_size", "beam_size must be 1 when temperature > 0 (sampling)")
        if self.num_hypotheses > self.beam_size:
            raise FieldError(
                "num_hypotheses",
                f"num_hypotheses ({self.num_hypotheses}) must be ≤ beam_size ({self.beam_size})",
            )
        if self.stream and (isinstance(self.text, list) or self.beam_size > 1):
            raise FieldError("stream", "stream needs a single text and beam_size 1")
        return self


class TgiParameters(BaseModel):
    """TGI's `parameters`. Options we do not implement are refused when set (`best_of` > 1,
    `grammar`, `watermark`, `typical_p`, `decoder_input_details`, `adapter_id`), accepted when
    left at their defaults, as clients send them."""

    model_config = ConfigDict(extra="ignore", strict=True)

    max_new_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, gt=0.0, le=10.0)
    top_k: int | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0.0, lt=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    typical_p: float | None = None
    adapter_id: str | None = None
    do_sample: bool = False
    seed: int | None = Field(None, ge=0, le=2**64 - 1)  # TGI's u64
    stop: list[str] = Field(default_factory=list, max_length=8)
    details: bool = False
    return_full_text: bool | None = False
    decoder_input_details: bool = False
    top_n_tokens: int | None = Field(None, ge=0, le=10)  # also the likeliest tokens per step
    truncate: int | None = Field(None, ge=1)  # keep only the last `truncate` input tokens
    best_of: int | None = None
    grammar: dict | None = None
    watermark: bool = False

    @model_validator(mode="after")
    def _supported(self) -> TgiParameters:
        if self.best_of not in (None, 1):
            raise FieldError("best_of", "best_of is not supported")
        if self.grammar is not None:
            raise FieldError("grammar", "grammar (guided generation) is not supported")
        if self.watermark:
            raise FieldError("watermark", "watermark is not supported")
        if self.typical_p is not None:
            raise FieldError("typical_p", "typical_p (typical sampling) is not supported")
        if self.decoder_input_details:
            raise FieldError("decoder_input_details", "the prompt's tokens are not returned")
        if self.adapter_id:
            raise FieldError("adapter_id", "adapters (LoRA) are not supported")
        return self

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, stop: list[str]) -> list[str]:
        if any(not s for s in stop):
            raise ValueError("stop sequences must not be empty")
        return stop

    @property
    def is_sampling(self) -> bool:
        """As TGI: any warper (temperature ≠ 1, top_k, top_p) turns sampling on."""
        return (
            self.do_sample
            or (self.temperature not in (None, 1.0))
            or bool(self.top_k)
            or (self.top_p is not None)
        )


class TgiRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    inputs: NonEmptyText
    parameters: TgiParameters = Field(default_factory=lambda: TgiParameters())
    stream: bool = False
    model: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)

    include_usage: bool = False


class CompletionRequest(BaseModel):
    """OpenAI's legacy completions body; unsupported options are refused, not ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    prompt: TextOrTexts
    max_tokens: int | None = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: Seed | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    best_of: int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    user: str | None = None
    logit_bias: dict[str, float] | None = None  # token id (a string, as JSON keys are) → bias
    suffix: str | None = None
    # vLLM's extensions (ignore_eos is handy for load tests of fixed lengths)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    top_k: int = Field(0, ge=-1)  # 0 or -1: off
    repetition_penalty: float = Field(1.0, gt=0.0)

    @field_validator("logit_bias")
    @classmethod
    def _biases(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for token, value in (bias or {}).items():
            if not token.isdigit():
                raise ValueError(f"keys must be token ids, not {token!r}")
            if not -100 <= value <= 100:
                raise ValueError(f"the bias of token {token} must be in [-100, 100]")
        return bias

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        if self.echo:
            raise FieldError("echo", "echo is not supported")
        if self.suffix:
            raise FieldError("suffix", "suffix is not supported")
        if self.best_of not in (None, 1, self.n):
            raise FieldError("best_of", "best_of is not supported")
        return self
