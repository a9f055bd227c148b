"""OpenAI-compatible `POST /v1/completions` (with streaming) and `GET /v1/models`."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.api.errors import SSE_RESPONSE, ApiError, documented_errors, error_body
from service.api.generation import (
    Context,
    check_finished,
    final_outputs,
    merged,
    merged_timings,
    new_tokens_limit,
    sse_event,
    start_all,
    timings_header,
    with_keepalive,
)
from service.api.registry import ModelRegistry, ServedModel
from service.api.schemas import CompletionRequest, OpenAISampling
from service.engine import FinishReason, RequestOutput, SamplingParams

router = APIRouter(responses=documented_errors(openai=True))


def _registry(request: Request) -> ModelRegistry:
    registry = request.app.state.registry
    if registry is None:
        raise ApiError(503, "the server is starting: the models are loading", "not_ready")
    return registry


def _model_card(served: ServedModel) -> dict:
    return {
        "id": served.model_id,
        "object": "model",
        "created": served.created,
        "owned_by": "attnserve",
        "task": "translation" if served.is_translation else "generation",
    }


@router.get("/v1/models")
async def list_models(request: Request):
    models = _registry(request).models.values()
    return {"object": "list", "data": [_model_card(served) for served in models]}


@router.get("/v1/models/{model_id:path}")  # ids may hold a slash: org/name
async def retrieve_model(model_id: str, request: Request):
    registry = _registry(request)
    if model_id not in registry.models:
        raise ApiError(
            404, f"unknown model {model_id!r}", "not_found", param="model", code="model_not_found"
        )
    return _model_card(registry.models[model_id])


def sampling_params(
    body: OpenAISampling, request: Request, served: ServedModel, index: int
) -> SamplingParams:
    """Choice `index`'s decoding options, for completions and chat completions alike."""
    settings = request.app.state.settings
    limit = served.max_new_tokens(settings.max_new_tokens)
    max_new = new_tokens_limit(body.max_tokens, limit, limit, "max_tokens")
    logit_bias = tuple((int(token), bias) for token, bias in (body.logit_bias or {}).items())
    vocab_size = served.llm.model_config.vocab_size
    if any(token >= vocab_size for token, _ in logit_bias):
        raise ApiError(422, f"logit_bias: token ids must be below {vocab_size}", param="logit_bias")
    return SamplingParams(
        max_new_tokens=max_new,
        fit_max_new_tokens=body.max_tokens is None,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=None if body.seed is None else body.seed + index,  # n choices differ, reproducibly
        num_top_logprobs=body.num_top_logprobs,
        stop=tuple(body.stop or ()),
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


def _logprobs(
    served: ServedModel,
    token_ids: list[int],
    logprobs: list[float],
    top: list[dict[int, float]],
    offset: int = 0,
) -> dict:
    """OpenAI's `logprobs` of these tokens: each one's, the most likely tokens of each step
    (`top`, the chosen one included) and where each starts in the text (from `offset`)."""
    tokenizer = served.llm.tokenizer
    tokens = [tokenizer.decode([i]) for i in token_ids]
    top = top or [{i: lp} for i, lp in zip(token_ids, logprobs, strict=True)]  # logprobs=0
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": logprobs,
        "top_logprobs": [_by_text(tokenizer, step) for step in top],
        "text_offset": offsets,
    }


def _by_text(tokenizer, step: dict[int, float]) -> dict[str, float]:
    """Tokens → log-probability keyed by text, as OpenAI's format is; tokens that decode to the
    same text (byte pieces) keep the likeliest."""
    by_text: dict[str, float] = {}
    for token_id, logprob in step.items():
        text = tokenizer.decode([token_id])
        by_text[text] = max(logprob, by_text.get(text, float("-inf")))
    return by_text


@router.post("/v1/completions", responses=SSE_RESPONSE)
async def completions(body: CompletionRequest, request: Request):
    served: ServedModel = request.app.state.registry.get(body.model)
    prompts = body.prompt  # texts or token ids
    vocab_size = served.llm.model_config.vocab_size
    if any(isinstance(p, list) and max(p) >= vocab_size for p in prompts):
        raise ApiError(422, f"prompt: token ids must be below {vocab_size}", param="prompt")
    ctx = Context.of(request, served, "prompt", "max_tokens")
    jobs = [(p, i) for p in prompts for i in range(body.n)]  # choice index = position in jobs
    too_many = "n" if body.n > 1 else "prompt"  # the field to blame if the jobs cannot fit
    generations = [(p, sampling_params(body, request, served, i)) for p, i in jobs]
    streams = start_all(served, generations, ctx, too_many, choices_per_prompt=body.n)
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    timeout_s = request.app.state.settings.request_timeout_s
    if body.stream:
        events = _stream_events(streams, served, body, completion_id, created, timeout_s)
        return StreamingResponse(
            with_keepalive(events, request.app.state.settings.keepalive_s),
            media_type="text/event-stream",
        )
    outputs = [check_finished(o, timeout_s) for o in await final_outputs(streams, request)]
    choices = [
        {
            "text": o.text,
            "index": k,
            "logprobs": None
            if body.logprobs is None
            else _logprobs(served, o.token_ids, o.logprobs, o.top_logprobs),
            "finish_reason": finish_reason(o),
        }
        for k, o in enumerate(outputs)
    ]
    response = {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": served.model_id,
        "choices": choices,
        "usage": usage(outputs, prompts_counted_once=body.n),
    }
    return JSONResponse(response, headers=timings_header(merged_timings(outputs)))


def usage(outputs: list[RequestOutput], prompts_counted_once: int) -> dict:
    prompt_tokens = sum(o.num_input_tokens for o in outputs[::prompts_counted_once])
    completion_tokens = sum(len(o.token_ids) for o in outputs)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass
class Unsent:
    """One streamed choice's tokens not sent yet (their text is held back: half a character, or
    what may start a stop string), and where its next token starts in its text."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[dict[int, float]] = field(default_factory=list)
    text_offset: int = 0


async def _stream_events(
    streams: list[AsyncIterator[RequestOutput]],
    served: ServedModel,
    body: CompletionRequest,
    completion_id: str,
    created: int,
    timeout_s: float | None,
) -> AsyncIterator[str]:
    """A chunk per new piece of text of any choice, as the choices generate it (together, as
    vLLM streams them), then usage, then [DONE].

    A token whose text is held back goes out with its choice's next chunk that has text, so
    that the chunks' logprobs list every token once, at the offsets of the non-streamed response.
    """

    def chunk(choices: list[dict], counts: dict | None = None) -> str:
        data: dict = {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": served.model_id,
            "choices": choices,
        }
        if counts is not None:
            data["usage"] = counts
        return sse_event(data)

    finished: dict[int, RequestOutput] = {}
    unsent = [Unsent() for _ in streams]
    outputs = merged(streams)
    try:
        async for k, output in outputs:
            if output.finished:
                finished[k] = check_finished(output, timeout_s)
            held = unsent[k]
            held.ids += output.new_token_ids
            held.logprobs += output.new_logprobs
            held.top += output.new_top_logprobs
            if not output.text_delta and not output.finished:
                continue
            logprobs, next_offset = None, held.text_offset
            if body.logprobs is not None and held.ids:
                logprobs = _logprobs(served, held.ids, held.logprobs, held.top, held.text_offset)
                next_offset = logprobs["text_offset"][-1] + len(logprobs["tokens"][-1])
            unsent[k] = Unsent(text_offset=next_offset)
            yield chunk(
                [
                    {
                        "text": output.text_delta,
                        "index": k,
                        "logprobs": logprobs,
                        "finish_reason": finish_reason(output) if output.finished else None,
                    }
                ]
            )
        if body.stream_options is not None and body.stream_options.include_usage:
            in_order = [finished[k] for k in sorted(finished)]
            yield chunk([], usage(in_order, prompts_counted_once=body.n))
    except ApiError as error:
        yield sse_event(error_body(error, openai=True))
    finally:
        await outputs.aclose()  # type: ignore[attr-defined]
    yield sse_event("[DONE]")
