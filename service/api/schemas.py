"""Request bodies of every route (pydantic): the HTTP contract's field names, ranges and defaults.

Limits that depend on the server's settings (max_new_tokens) are checked in the routes.
Types are strict, as TGI's and OpenAI's servers are: "4" is not a number and 1 is not a boolean
(an integer is still a valid float).
"""

from __future__ import annotations

from typing import Annotated, Any, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)


def _unicode(value: object) -> object:
    """JSON's \\ud800 escapes decode to lone surrogates, which no tokenizer (or UTF-8) takes."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"is not valid Unicode: a lone surrogate at character {error.start}"
            ) from None
    return value


Text = Annotated[str, AfterValidator(_unicode)]


def _non_empty(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


NonEmptyText = Annotated[
    Text, AfterValidator(_non_empty), WithJsonSchema({"type": "string", "minLength": 1})
]
# What TGI's clients send for "the model this server serves" (TGI ignores `model`): "tgi" in
# TGI's docs for the openai package, "dummy" from huggingface_hub's chat_completion at a server's
# base URL, the endpoint's URL from @huggingface/inference (JS). In a body, each means the
# route's default model, as no `model` does. (A model's base URL names its model in the URL.)
PLACEHOLDER_MODEL_IDS = ("tgi", "dummy")


def _placeholder_is_none(model_id: str | None) -> str | None:
    if model_id in PLACEHOLDER_MODEL_IDS or (model_id or "").startswith(("http://", "https://")):
        return None
    return model_id


ModelId = Annotated[str | None, AfterValidator(_placeholder_is_none)]
MAX_BATCH = 1024  # texts or prompts in one request (the queue must also hold them all)
# Seeds: any 64-bit value (n > 1 completions use seed + index).
Seed = Annotated[int, Field(ge=-(2**63), le=2**64 - 1)]


class FieldError(ValueError):
    """A check across fields that blames one of them (the error's `param`)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _one_or_many(value: object) -> object:
    """One clear error for the string-or-list inputs, instead of one per union member. A
    blank text (empty, or only whitespace) is its own translation."""
    if isinstance(value, str):
        return _unicode(value)
    if isinstance(value, list) and 1 <= len(value) <= MAX_BATCH:
        for index, text in enumerate(value):
            if not isinstance(text, str):
                raise ValueError(f"item {index} must be a string, not {text!r:.40}")
            try:
                _unicode(text)
            except ValueError as error:
                raise ValueError(f"item {index} {error}") from None
        return value
    raise ValueError(f"must be a string or a list of 1 to {MAX_BATCH} strings")


TextOrTexts = Annotated[str | list[str], BeforeValidator(_one_or_many)]


def _is_token_ids(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
    )


def _prompts(value: object) -> object:
    """OpenAI's `prompt`: a text, a list of texts, token ids, or a list of token id lists; as
    a list of prompts (a text or a list of ids each)."""
    if _is_token_ids(value):
        return [value]
    if isinstance(value, list) and value and all(_is_token_ids(v) for v in value):
        if len(value) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} prompts in one request")
        return value
    if isinstance(value, list) and value and not any(isinstance(v, str) for v in value):
        _explain_bad_token_ids(value)
    try:
        texts = _one_or_many(value)
    except ValueError as error:
        if str(error).startswith(("item ", "is not valid")):  # say what is wrong, and where
            raise
        raise ValueError(
            f"must be a non-empty string, a list of 1 to {MAX_BATCH} non-empty strings, "
            "a list of token ids, or a list of such lists"
        ) from None
    if texts == "":
        raise ValueError("must not be empty")
    if isinstance(texts, list) and "" in texts:
        raise ValueError(f"item {texts.index('')} must be a non-empty string, not ''")
    return [texts] if isinstance(texts, str) else texts


def _explain_bad_token_ids(value: list) -> None:
    """A list of token ids, or of token id lists, with a bad one: raise naming it."""
    if all(isinstance(v, list) for v in value):
        bad = next(i for i, v in enumerate(value) if not _is_token_ids(v))
        raise ValueError(f"item {bad} must be a non-empty list of token ids (integers ≥ 0)")
    if not any(isinstance(v, list) for v in value):
        bad = next(i for i, v in enumerate(value) if not _is_token_ids([v]))
        raise ValueError(f"token {bad} must be a token id (an integer ≥ 0), not {value[bad]!r}")


Prompts = Annotated[list[str | list[int]], BeforeValidator(_prompts)]


def _openai_stops(value: object) -> object:
    """OpenAI's `stop`: a string or a list of up to 4, as a list; one error for every wrong shape."""
    stops = [value] if isinstance(value, str) else value
    if not (
        isinstance(stops, list) and len(stops) <= 4 and all(isinstance(s, str) and s for s in stops)
    ):
        raise ValueError("must be a non-empty string or a list of at most 4 non-empty strings")
    return [_unicode(s) for s in stops]


OpenAIStops = Annotated[list[str], BeforeValidator(_openai_stops)]


class Body(BaseModel):
    """What every request body shares: strict types, finite numbers (`1e999` is not a penalty),
    and null taken as "the default" for fields that have no meaning of their own for it, as
    OpenAI's and TGI's servers take it (the `openai` package sends an explicit None as null)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _null_is_the_default(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        return {
            name: value
            for name, value in data.items()
            if value is not None
            or name not in cls.model_fields
            or type(None) in get_args(cls.model_fields[name].annotation)
        }


class TranslateRequest(Body):
    model_config = ConfigDict(extra="forbid")

    model: ModelId = None
    text: TextOrTexts
    beam_size: int | None = Field(
        None, ge=1, le=16, description="default 4; 1 when streaming or sampling"
    )
    num_hypotheses: int = Field(1, ge=1, le=16)
    length_penalty: float = Field(1.0, ge=0.0, le=10.0)
    max_new_tokens: int | None = Field(
        None, ge=1, description="default: what fits, up to /info's limits.max_new_tokens"
    )
    temperature: float = Field(0.0, ge=0.0, le=10.0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    no_repeat_ngram_size: int = Field(0, ge=0)  # n > 0: no n-gram occurs twice in a translation
    seed: Seed | None = None
    return_scores: bool = False
    return_alignments: bool = False  # each translation's cross-attention over the source
    # as DeepL's option: translate each line and sentence on its own (model/segment.py)
    split_sentences: bool = True
    stream: bool = False
    timeout_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> TranslateRequest:
        sampling = self.temperature > 0
        if self.beam_size is None:
            self.beam_size = 1 if (self.stream or sampling) else 4
        if sampling and self.beam_size > 1:
            raise FieldError("beam_size", "beam_size must be 1 when temperature > 0 (sampling)")
        if sampling and self.num_hypotheses > 1:
            raise FieldError(
                "num_hypotheses",
                "num_hypotheses must be 1 when temperature > 0: sampling gives one translation "
                "(beam search, temperature 0, gives an n-best list)",
            )
        if self.num_hypotheses > self.beam_size:
            raise FieldError(
                "num_hypotheses",
                f"num_hypotheses ({self.num_hypotheses}) must be ≤ beam_size ({self.beam_size})",
            )
        if self.stream and (isinstance(self.text, list) or self.beam_size > 1):
            raise FieldError("stream", "stream needs a single text and beam_size 1")
        return self


# `InferenceClient.translation()` sends transformers' generate() options as
# `parameters.generate_parameters`: these are TGI parameters too and are taken as such, read
# as generate() means them. Its "off" values are dropped (TGI refuses top_p 1.0, and would
# sample for any temperature), as are the sampling options when do_sample is false.
GENERATE_PARAMETERS = (
    "max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "typical_p",
    "repetition_penalty", "no_repeat_ngram_size", "seed",
)  # fmt: skip
GENERATE_OFF = {
    "temperature": 1.0, "top_k": 0, "top_p": 1.0, "typical_p": 1.0, "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
}  # fmt: skip
SAMPLING_ONLY = ("temperature", "top_k", "top_p", "typical_p")


MAX_STOP_SEQUENCES = 8  # per TGI request (TGI's default is 4)


class TgiParameters(Body):
    """TGI's `parameters`. Options we do not implement are refused when set (`best_of` > 1,
    `grammar`, `watermark`, `decoder_input_details`, `adapter_id`, and
    `generate_parameters` beyond GENERATE_PARAMETERS), accepted when left at their defaults, as
    clients send them."""

    model_config = ConfigDict(extra="ignore")

    max_new_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, gt=0.0)
    top_k: int | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0.0, lt=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0)
    # not TGI's: `generate()`'s, which InferenceClient.translation() may send
    no_repeat_ngram_size: int | None = Field(None, ge=0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    typical_p: float | None = Field(None, gt=0.0, lt=1.0)
    adapter_id: str | None = None
    do_sample: bool = False
    seed: int | None = Field(None, ge=0, le=2**64 - 1)  # TGI's u64
    stop: list[Text] = Field(default_factory=list, max_length=MAX_STOP_SEQUENCES)
    details: bool = False
    return_full_text: bool | None = None  # None: TGI's default (False; `/` on a generator: True)
    decoder_input_details: bool = False
    top_n_tokens: int | None = Field(None, ge=0, le=10)  # also the likeliest tokens per step
    truncate: int | None = Field(None, ge=1)  # keep only the last `truncate` input tokens
    # not TGI's: as /v1/translate's, a translation model translates each line and sentence alone
    split_sentences: bool = True
    best_of: int | None = None
    grammar: dict | None = None
    watermark: bool = False

    @model_validator(mode="before")
    @classmethod
    def _fold_generate_parameters(cls, data: object) -> object:
        """`generate_parameters` entries become the parameters of the same name (a parameter
        given itself wins)."""
        if not isinstance(data, dict) or data.get("generate_parameters") is None:
            return data
        data = dict(data)
        extra = data.pop("generate_parameters")
        if not isinstance(extra, dict):
            raise FieldError("generate_parameters", "generate_parameters must be an object")
        unknown = sorted(set(extra) - set(GENERATE_PARAMETERS))
        if unknown:
            raise FieldError(
                "generate_parameters",
                f"generate_parameters: {', '.join(unknown)} not supported; "
                f"supported: {', '.join(GENERATE_PARAMETERS)}",
            )
        if extra.get("do_sample") is False:
            extra = {k: v for k, v in extra.items() if k not in SAMPLING_ONLY}
        extra = {k: v for k, v in extra.items() if k not in GENERATE_OFF or v != GENERATE_OFF[k]}
        return {**extra, **{k: v for k, v in data.items() if v is not None}}

    @model_validator(mode="after")
    def _supported(self) -> TgiParameters:
        if self.best_of not in (None, 1):
            raise FieldError("best_of", "parameters.best_of: only 1 is supported")
        if self.grammar is not None:
            raise FieldError("grammar", "parameters.grammar: guided generation is not supported")
        if self.watermark:
            raise FieldError("watermark", "parameters.watermark: not supported")
        if self.adapter_id:
            raise FieldError(
                "adapter_id", "parameters.adapter_id: adapters (LoRA) are not supported"
            )
        if (
            self.truncate is not None
            and self.split_sentences
            and "split_sentences" in self.model_fields_set
        ):
            raise FieldError(
                "truncate", "truncate cuts the whole input's tokens: it cannot be combined with "
                "split_sentences true",
            )  # fmt: skip
        return self

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, stop: list[str]) -> list[str]:
        if any(not s for s in stop):
            raise ValueError("stop sequences must not be empty")
        return stop

    @property
    def is_sampling(self) -> bool:
        """As TGI: any warper (temperature ≠ 1, top_k, top_p, typical_p) turns sampling on."""
        return (
            self.do_sample
            or (self.temperature not in (None, 1.0))
            or bool(self.top_k)
            or (self.top_p is not None)
            or (self.typical_p is not None)
        )


class TgiRequest(Body):
    model_config = ConfigDict(extra="ignore")

    inputs: NonEmptyText
    parameters: TgiParameters = Field(default_factory=lambda: TgiParameters())
    stream: bool = False
    model: ModelId = None

    @property
    def reads_whole_text(self) -> bool:
        """Whether a translation model translates the input whole, not segment by segment
        (segments.py): the client's own split_sentences says; without it, whether an option
        counts the tokens or reads the text of the whole generation (the client's own
        max_new_tokens, stop, or truncate, which cuts the input's tokens), where each would
        otherwise apply to each segment."""
        p = self.parameters
        if "split_sentences" in p.model_fields_set:
            return not p.split_sentences
        return p.max_new_tokens is not None or bool(p.stop) or p.truncate is not None


class StreamOptions(Body):
    include_usage: bool = False


MAX_TOKENS_FIELDS = {"max_tokens", "max_completion_tokens"}

# vLLM's extensions that we do not implement → the values that leave them off: any other value
# is refused by name (a client that sends them with `extra_body` would otherwise be ignored).
UNSUPPORTED_VLLM_OPTIONS: dict[str, tuple] = {
    "use_beam_search": (None, False),
    "length_penalty": (None, 1, 1.0),
    "allowed_token_ids": (None, []),
    "bad_words": (None, []),
    "truncate_prompt_tokens": (None,),
    "prompt_logprobs": (None,),
    "guided_json": (None,),
    "guided_regex": (None,),
    "guided_choice": (None,),
    "guided_grammar": (None,),
    "structured_outputs": (None,),
}


class OpenAIBody(Body):
    """What OpenAI's completions and chat completions bodies share; unsupported options are
    refused, not ignored."""

    model_config = ConfigDict(extra="ignore")

    model: ModelId = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stop: OpenAIStops = Field(default_factory=list)
    seed: Seed | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    user: str | None = None
    logit_bias: dict[str, float] | None = None  # token id (a string, as JSON keys are) → bias
    # as /v1/translate's: a translation model translates each line and sentence on its own
    split_sentences: bool = True
    # vLLM's extensions (ignore_eos is handy for load tests of fixed lengths)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    top_k: int = Field(0, ge=-1)  # 0 or -1: off
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    stop_token_ids: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    include_stop_str_in_output: bool = False
    response_format: dict | None = None

    @model_validator(mode="before")
    @classmethod
    def _unsupported_vllm_options(cls, data: object) -> object:
        if isinstance(data, dict):
            for name, off in UNSUPPORTED_VLLM_OPTIONS.items():
                if name in data and not any(data[name] == value for value in off):
                    raise FieldError(name, f"{name} is not supported")
        return data

    @property
    def num_top_logprobs(self) -> int:
        """How many of each step's likeliest tokens to report (0: the chosen one's only)."""
        return 0

    @property
    def requested_max_tokens(self) -> tuple[int | None, str]:
        """The most new tokens the client asked for, and the field it gave them in."""
        return self.max_tokens, "max_tokens"

    @property
    def has_own_max_tokens(self) -> bool:
        """Whether the client set max_tokens (or max_completion_tokens) itself: a default
        (completions' 16, or what fits) is lowered to what fits, the client's own is not."""
        requested, _ = self.requested_max_tokens
        return requested is not None and bool(self.model_fields_set & MAX_TOKENS_FIELDS)

    @property
    def asks_logprobs(self) -> bool:
        return False

    @property
    def reads_whole_completion(self) -> bool:
        """Whether a translation model translates the input whole, not segment by segment
        (segments.py): the client's own split_sentences says; without it, whether an option
        counts the tokens or reads the text of the whole completion (the client's own max
        tokens, min_tokens, ignore_eos, stop, stop_token_ids or logprobs), where each would
        otherwise apply to each segment."""
        if "split_sentences" in self.model_fields_set:
            return not self.split_sentences
        would_apply_per_segment = (
            self.has_own_max_tokens
            or self.min_tokens
            or self.ignore_eos
            or self.stop
            or self.stop_token_ids
        )
        return bool(would_apply_per_segment) or self.asks_logprobs

    @model_validator(mode="after")
    def _logprobs_of_the_whole(self) -> OpenAIBody:
        if (
            self.asks_logprobs
            and self.split_sentences
            and "split_sentences" in self.model_fields_set
        ):
            raise FieldError(
                "logprobs", "logprobs are reported for the whole completion: they cannot be "
                "combined with split_sentences true",
            )  # fmt: skip
        return self

    @field_validator("logit_bias")
    @classmethod
    def _biases(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for token, value in (bias or {}).items():
            if not (token.isascii() and token.isdigit()) or len(token) > 9:
                raise ValueError(f"keys must be token ids, not {token[:20]!r}")
            if not -100 <= value <= 100:
                raise ValueError(f"the bias of token {token} must be in [-100, 100]")
        return bias

    @model_validator(mode="after")
    def _consistent(self) -> OpenAIBody:
        if self.stream_options is not None and not self.stream:
            raise FieldError("stream_options", "stream_options is only allowed with stream: true")
        max_tokens, name = self.requested_max_tokens
        if max_tokens is not None and self.min_tokens > max_tokens:
            raise FieldError(
                "min_tokens", f"min_tokens ({self.min_tokens}) is over {name} ({max_tokens})"
            )
        if self.response_format not in (None, {"type": "text"}):
            raise FieldError("response_format", 'response_format: only {"type": "text"}')
        return self


class CompletionRequest(OpenAIBody):
    """OpenAI's legacy completions body."""

    prompt: Prompts
    max_tokens: int | None = Field(16, ge=0)  # OpenAI's default; 0 with echo: score the prompt
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    @property
    def num_top_logprobs(self) -> int:
        return self.logprobs or 0

    @property
    def asks_logprobs(self) -> bool:
        return self.logprobs is not None

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        if self.max_tokens == 0 and not self.echo:
            raise FieldError("max_tokens", "max_tokens: 0 only with echo (the prompt alone)")
        if self.suffix:
            raise FieldError("suffix", "suffix is not supported")
        if self.best_of is not None and self.best_of < self.n:
            raise FieldError("best_of", f"best_of ({self.best_of}) must be at least n ({self.n})")
        if self.best_of not in (None, self.n):
            raise FieldError("best_of", "best_of over n is not supported")
        return self


class ChatMessage(Body):
    """A chat message. Only the last one is read (a translation model translates it), so only
    its content is checked: text, or a list of text parts."""

    model_config = ConfigDict(extra="ignore")

    role: str
    content: Any = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(part["text"] for part in self.content)  # a line each, as vLLM
        return self.content or ""


class ChatCompletionRequest(OpenAIBody):
    """OpenAI's chat completions body. A translation model translates the last message, which
    must be the user's; a generation model without a chat template is refused (as vLLM)."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list | None = None
    tool_choice: Any = None  # any value but "none" is refused, named
    functions: list | None = None  # the deprecated form of tools
    function_call: Any = None

    @property
    def num_top_logprobs(self) -> int:
        return self.top_logprobs or 0

    @property
    def asks_logprobs(self) -> bool:
        return self.logprobs

    @property
    def requested_max_tokens(self) -> tuple[int | None, str]:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"

    def _check_last_message(self) -> None:
        """The message that is read: text, or a list of text parts, in valid Unicode."""
        content = self.messages[-1].content
        if not isinstance(content, str | list | None):
            raise FieldError("messages", "messages: the last message's content must be text")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
        for index, part in enumerate(parts):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text":
                raise FieldError(
                    "messages",
                    f"messages: the last message's part {index} is {kind!r}, not text: only "
                    "text is translated",
                )
            if not isinstance(part.get("text"), str):
                raise FieldError(
                    "messages", f"messages: the last message's part {index} has no text string"
                )
            try:
                _unicode(part["text"])
            except ValueError as error:
                raise FieldError("messages", f"messages: the last message {error}") from None

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise FieldError(
                "max_completion_tokens", "max_tokens and max_completion_tokens disagree"
            )
        self._check_last_message()
        if self.top_logprobs and not self.logprobs:
            raise FieldError("top_logprobs", "top_logprobs needs logprobs: true")
        if self.tools:
            raise FieldError("tools", "tools (function calling) are not supported")
        if self.tool_choice not in (None, "none"):
            raise FieldError("tool_choice", "tool_choice: function calling is not supported")
        if self.functions or self.function_call not in (None, "none"):
            raise FieldError("functions", "functions (function calling) are not supported")
        return self


class TokenizeParameters(Body):
    model_config = ConfigDict(extra="ignore")

    truncate: int | None = Field(None, ge=1)  # as TGI's: keep only the last `truncate` tokens


class TokenizeRequest(Body):
    """`/tokenize`: TGI's body (`inputs`, `parameters.truncate`) or vLLM's (`prompt`)."""

    model_config = ConfigDict(extra="ignore")

    model: ModelId = None
    inputs: NonEmptyText | None = None  # TGI's
    parameters: TokenizeParameters = Field(default_factory=lambda: TokenizeParameters())
    prompt: NonEmptyText | None = None  # vLLM's
    add_special_tokens: bool = True
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.inputs is None) == (self.prompt is None):
            raise FieldError("prompt", "send `prompt` (as to vLLM) or `inputs` (as to TGI)")
        return self


class DetokenizeRequest(Body):
    """vLLM's `/detokenize` body."""

    model_config = ConfigDict(extra="ignore")

    model: ModelId = None
    tokens: list[Annotated[int, Field(ge=0)]]
