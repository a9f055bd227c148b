"""What OpenAI's completions and chat completions routes share: the decoding options, finish
reasons, usage, and the streaming of several choices as chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from fastapi import Request

from service.api.errors import ApiError, error_body
from service.api.generation import check_finished, interleaved, new_tokens_limit, sse_event
from service.api.registry import ServedModel
from service.api.schemas import OpenAIBody
from service.engine import FinishReason, RequestOutput, SamplingParams


def sampling_params(
    body: OpenAIBody, request: Request, served: ServedModel, index: int
) -> SamplingParams:
    """Choice `index`'s decoding options."""
    settings = request.app.state.settings
    requested, name = body.requested_max_tokens
    max_new = new_tokens_limit(served, settings.max_new_tokens, requested, name)
    logit_bias = tuple((int(token), bias) for token, bias in (body.logit_bias or {}).items())
    vocab_size = served.llm.model_config.vocab_size
    if any(token >= vocab_size for token, _ in logit_bias):
        raise ApiError(422, f"logit_bias: token ids must be below {vocab_size}", param="logit_bias")
    if any(token >= vocab_size for token in body.stop_token_ids):
        message = f"stop_token_ids: token ids must be below {vocab_size}"
        raise ApiError(422, message, param="stop_token_ids")
    return SamplingParams(
        max_new_tokens=max_new,
        fit_max_new_tokens=not body.has_own_max_tokens,  # a client's own is refused if too long
        temperature=body.temperature,
        top_p=body.top_p,
        seed=None if body.seed is None else body.seed + index,  # n choices differ, reproducibly
        num_top_logprobs=body.num_top_logprobs,
        stop=tuple(body.stop or ()),
        include_stop_string=body.include_stop_str_in_output,
        stop_token_ids=tuple(body.stop_token_ids),
        min_p=body.min_p,
        ignore_eos=body.ignore_eos,
        min_new_tokens=body.min_tokens,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=logit_bias,
        top_k=max(body.top_k, 0),
        repetition_penalty=body.repetition_penalty,
        timeout_s=settings.request_timeout_s,
    )


def finish_reason(output: RequestOutput) -> str:
    """OpenAI's reasons: a deadline cut the text short, as max_tokens would ("length")."""
    cut_short = output.finish_reason in (FinishReason.LENGTH, FinishReason.TIMEOUT)
    return "length" if cut_short else "stop"


def usage_of(outputs: list[RequestOutput], choices_per_prompt: int) -> dict:
    """OpenAI's `usage`: each prompt counted once, whatever its number of choices."""
    prompt_tokens = sum(o.num_input_tokens for o in outputs[::choices_per_prompt])
    completion_tokens = sum(len(o.token_ids) for o in outputs)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass
class Unsent:
    """One streamed choice's tokens not sent yet (their text is held back: half a character, or
    what may start a stop string), and where its next token starts in its text (in characters
    for completions' `text_offset`, in UTF-8 bytes for chat's)."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[dict[int, float]] = field(default_factory=list)
    text_offset: int = 0

    def take(self, n: int) -> None:
        """The first `n` tokens are sent."""
        del self.ids[:n], self.logprobs[:n], self.top[:n]


# A streamed choice's chunk entry: (choice index, its output this step, its tokens not sent
# yet) → the entry. It `take`s the tokens it sends, and may advance `Unsent.text_offset`.
ChoiceChunk = Callable[[int, RequestOutput, Unsent], dict]


async def stream_chunks(
    streams: list[AsyncIterator[RequestOutput]],
    head: dict,
    choice: ChoiceChunk,
    first: list[dict],
    include_usage: bool,
    choices_per_prompt: int,
    timeout_s: float | None,
    openai_errors: bool = True,
) -> AsyncIterator[str]:
    """`first` chunk entries (with the first output), then one chunk per new piece of text of
    any choice, as the choices generate it (together, as vLLM streams them), then usage if
    asked, then [DONE]. Every chunk has the fields of `head` (id, object, created, model, ...)
    and its `choices`.

    A token whose text is held back goes out with a later chunk of its choice, so that the
    chunks list every token once. A failure is an error event (OpenAI's shape, or the
    native one), then [DONE].
    """

    def chunk(choices: list[dict], usage: dict | None) -> str:
        # With include_usage, every chunk has `usage`: null but the last (as OpenAI's)
        return sse_event(head | {"choices": choices} | ({"usage": usage} if include_usage else {}))

    finished: dict[int, RequestOutput] = {}
    unsent = [Unsent() for _ in streams]
    outputs = interleaved(streams)
    try:
        async for k, output in outputs:
            # `first` goes out with the first output, once the streams are read: a client that
            # is gone by then closes them, which aborts and counts their requests (a stream
            # never read would not run its cleanup).
            for entry in first:
                yield chunk([entry], None)
            first = []
            if output.finished:
                finished[k] = check_finished(output, timeout_s)
            held = unsent[k]
            held.ids += output.new_token_ids
            held.logprobs += output.new_logprobs
            held.top += output.new_top_logprobs
            if not output.text_delta and not output.finished:
                continue
            yield chunk([choice(k, output, held)], None)
        if include_usage:
            in_order = [finished[k] for k in sorted(finished)]
            yield chunk([], usage_of(in_order, choices_per_prompt))
    except ApiError as error:
        yield sse_event(error_body(error, openai=openai_errors))
    finally:
        await outputs.aclose()  # type: ignore[attr-defined]
    yield sse_event("[DONE]")
