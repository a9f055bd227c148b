"""OpenAI-compatible `POST /v1/completions` (with streaming) and `GET /v1/models`.

At a model's base URL (`/models/{id}/v1/completions`) the URL names the model and the errors
are TGI's, as at the chat route there (routes_chat.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api.errors import SSE_RESPONSE, ApiError, documented_errors, is_openai_route
from service.api.generation import (
    Context,
    check_finished,
    event_stream,
    final_outputs,
    merged_timings,
    served_model,
    sse_event,
    timings_header,
)
from service.api.openai_common import (
    Unsent,
    finish_reason,
    sampling_params,
    stream_chunks,
    usage_of,
)
from service.api.registry import ModelRegistry, ServedModel
from service.api.schemas import CompletionRequest
from service.api.segments import abort, start_segmented
from service.engine import RequestOutput

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
        "max_model_len": served.llm.model_config.max_positions,  # vLLM's field
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


@router.get("/models/{model_id:path}/v1/models")
async def list_models_for(model_id: str, request: Request):
    """`GET /v1/models` at a model's base URL (`OpenAI(base_url=".../models/{id}/v1")`): that
    model alone."""
    registry = _registry(request)
    if model_id not in registry.models:
        raise ApiError(404, f"unknown model {model_id!r}", "not_found", param="model")
    return {"object": "list", "data": [_model_card(registry.models[model_id])]}


@router.get("/models/{model_id:path}/v1/models/{name:path}")
async def retrieve_model_for(model_id: str, name: str, request: Request):
    """`GET /v1/models/{name}` at a model's base URL (`.models.retrieve(name)`): that model's
    card, if it is the one named."""
    registry = _registry(request)
    name = name.rstrip("/")
    if model_id not in registry.models or name != model_id:
        raise ApiError(404, f"unknown model {name!r}", "not_found", param="model")
    return _model_card(registry.models[model_id])


def _logprobs(
    served: ServedModel,
    token_ids: list[int],
    logprobs: list[float] | list[float | None],
    top: list[dict[int, float]] | list[dict[int, float] | None],
    offset: int = 0,
    text_end: int | None = None,
) -> tuple[dict, int]:
    """OpenAI's `logprobs` of these tokens: each one's, the most likely tokens of each step
    (`top`, the chosen one included) and where each starts in the text (from `offset`); and
    the offset after the last. A token that holds a piece of a character reads "\ufffd" (as
    vLLM's); it starts where that character starts. `text_end`: where a stop string cut the
    text; the tokens are cut there too, so that they spell the text."""
    tokenizer = served.llm.tokenizer
    if not top:  # logprobs=0: the chosen tokens alone
        top = [None if lp is None else {i: lp} for i, lp in zip(token_ids, logprobs, strict=True)]
    pieces = [tokenizer.token_bytes(i) for i in token_ids]
    character_of = _character_of_each_byte(b"".join(pieces))
    num_characters = character_of[-1] + 1 if character_of else 0
    offsets, start = [], 0  # start: the token's first byte
    for piece in pieces:  # a token starts at the character its first byte is part of
        offsets.append(
            offset + (character_of[start] if start < len(character_of) else num_characters)
        )
        start += len(piece)
    offset += num_characters
    entry = {
        "tokens": [tokenizer.decode([i]) for i in token_ids],
        "token_logprobs": list(logprobs),  # a copy: the caller's list may be emptied after
        "top_logprobs": [None if step is None else _by_text(tokenizer, step) for step in top],
        "text_offset": offsets,
    }
    if text_end is not None:
        entry = _cut(entry, text_end)
    return entry, offset


def _cut(entry: dict, text_end: int) -> dict:
    """A logprobs entry up to `text_end`: the tokens that start there or later left out, the
    one across it cut to its text before it (its logprob stays the whole token's)."""
    n = sum(1 for start in entry["text_offset"] if start < text_end)
    cut = {key: values[:n] for key, values in entry.items()}
    if n:
        cut["tokens"][-1] = cut["tokens"][-1][: text_end - cut["text_offset"][-1]]
    return cut


def _character_of_each_byte(data: bytes) -> list[int]:
    """For each byte of UTF-8 `data`, the index of the character it is part of in
    `data.decode("utf-8", "replace")`, which makes each invalid run of bytes one U+FFFD."""
    index: list[int] = []
    characters = position = 0
    while position < len(data):
        try:
            valid, bad = data[position:].decode(), 0
        except UnicodeDecodeError as error:
            valid = data[position : position + error.start].decode()
            bad = error.end - error.start
        for character in valid:
            index += [characters] * len(character.encode())
            characters += 1
        if bad:
            index += [characters] * bad
            characters += 1
        position += len(valid.encode()) + bad
    return index


def _by_text(tokenizer, step: dict[int, float]) -> dict[str, float]:
    """Tokens → log-probability keyed by text, as OpenAI's format is; tokens that decode to the
    same text (byte pieces) keep the likeliest."""
    by_text: dict[str, float] = {}
    for token_id, logprob in step.items():
        text = tokenizer.decode([token_id])
        by_text[text] = max(logprob, by_text.get(text, float("-inf")))
    return by_text


@dataclass
class Echo:
    """A prompt as `echo` returns it, before its completion: its text and, when logprobs are
    asked for, the logprobs of its tokens (the first has none: nothing predicts it)."""

    text: str
    logprobs: dict | None


async def _echoes(served: ServedModel, body: CompletionRequest) -> list[Echo]:
    """Each prompt's echo (empty without `echo`), once its requests are queued: the prompts
    are valid, and the engine generates meanwhile."""
    if not body.echo:
        return [Echo("", None) for _ in body.prompt]
    echoes = []
    for prompt in body.prompt:
        ids = served.llm.input_ids(prompt)
        text = prompt if isinstance(prompt, str) else served.llm.tokenizer.decode(ids)
        entry = None
        if body.logprobs is not None:
            logprobs, top = await served.async_engine.run("prompt_logprobs", ids, body.logprobs)
            entry, _ = _logprobs(served, ids, logprobs, top)
        echoes.append(Echo(text, entry))
    return echoes


def _joined(first: dict | None, then: dict | None) -> dict | None:
    """Two logprobs entries of consecutive text, as one."""
    if first is None or then is None:
        return then
    return {key: first[key] + then[key] for key in then}


@router.post("/v1/completions", responses=SSE_RESPONSE)
async def completions(body: CompletionRequest, request: Request):
    served = served_model(request, body.model)
    prompts = body.prompt  # texts or token ids
    vocab_size = served.llm.model_config.vocab_size
    if any(isinstance(p, list) and max(p) >= vocab_size for p in prompts):
        raise ApiError(422, f"prompt: token ids must be below {vocab_size}", param="prompt")
    if body.echo and served.is_translation:
        raise ApiError(
            422, "echo: a translation model's prompt is its source, which the output does not "
            "continue", param="echo",
        )  # fmt: skip
    if body.max_tokens == 0:  # echo alone: the prompts, scored, and nothing generated
        return await _echoed_prompts(served, body, request)
    ctx = Context.of(request, "prompt", "max_tokens")
    jobs = [(p, i) for p in prompts for i in range(body.n)]  # choice index = position in jobs
    too_many = "n" if body.n > 1 else "prompt"  # the field to blame if the jobs cannot fit
    generations = [(p, sampling_params(body, request, served, i)) for p, i in jobs]
    # a translation of several lines or sentences goes segment by segment, as on /v1/translate,
    # unless an option is about the whole completion
    split = not body.reads_whole_completion
    started = start_segmented(served, generations, ctx, too_many, body.n, split)
    streams = [s.outputs for s in started]
    try:
        echoes = [echo for echo in await _echoes(served, body) for _ in range(body.n)]
    except BaseException:  # the client left, say: nothing has read the streams yet
        abort(served, ctx, started)
        raise
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    timeout_s = request.app.state.settings.request_timeout_s
    if body.stream:
        openai_errors = is_openai_route(request.url.path)  # not at a model's base URL
        events = _stream_events(
            streams, served, body, echoes, completion_id, created, timeout_s, openai_errors
        )
        return event_stream(events, request)
    outputs = [check_finished(o, timeout_s) for o in await final_outputs(streams, request)]
    choices = []
    for k, (o, echo) in enumerate(zip(outputs, echoes, strict=True)):
        logprobs = None
        if body.logprobs is not None:
            offset = len(echo.text)
            text_end = offset + len(o.text) if o.stopped_on else None
            logprobs, _ = _logprobs(
                served, o.token_ids, o.logprobs, o.top_logprobs, offset, text_end
            )
        choices.append(
            {
                "text": echo.text + o.text,
                "index": k,
                "logprobs": _joined(echo.logprobs, logprobs),
                "finish_reason": finish_reason(o),
            }
        )
    response = {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": served.model_id,
        "choices": choices,
        "usage": usage_of(outputs, choices_per_prompt=body.n),
    }
    return JSONResponse(response, headers=timings_header(merged_timings(outputs)))


async def _echoed_prompts(served: ServedModel, body: CompletionRequest, request: Request):
    """`echo` with `max_tokens` 0 (how scoring scripts read a text's log-probabilities): each
    prompt with its logprobs, no engine request; finish reason "length", as vLLM's."""
    ids = [served.llm.input_ids(prompt) for prompt in body.prompt]
    limit = served.llm.max_input_tokens
    for k, prompt_ids in enumerate(ids):
        if len(prompt_ids) > limit:
            where = f"prompt[{k}]" if len(ids) > 1 else "prompt"
            raise ApiError(
                422, f"{where}: input of {len(prompt_ids)} tokens is longer than the {limit} "
                "this model takes", param="prompt",
            )  # fmt: skip
    echoes = [echo for echo in await _echoes(served, body) for _ in range(body.n)]
    num_prompt = sum(map(len, ids))
    request.app.state.metrics.prompt_tokens.labels(served.model_id).inc(num_prompt)
    usage = {"prompt_tokens": num_prompt, "completion_tokens": 0, "total_tokens": num_prompt}
    choices = [
        {"text": e.text, "index": k, "logprobs": e.logprobs, "finish_reason": "length"}
        for k, e in enumerate(echoes)
    ]
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
            "created": int(time.time()), "model": served.model_id}  # fmt: skip
    if not body.stream:
        return JSONResponse(head | {"choices": choices, "usage": usage})
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    usage_field = {"usage": None} if include_usage else {}
    events = [sse_event(head | {"choices": [choice]} | usage_field) for choice in choices]
    if include_usage:
        events.append(sse_event(head | {"choices": [], "usage": usage}))
    events.append(sse_event("[DONE]"))
    return event_stream(events, request)


@router.post("/models/{model_id:path}/v1/completions", responses=SSE_RESPONSE)
async def completions_for(model_id: str, body: CompletionRequest, request: Request):
    """At a model's base URL (`OpenAI(base_url=".../models/en-de/v1")`), as TGI serves
    `/v1/completions` at its own. The URL names the model; errors are TGI's shape there."""
    return await completions(body.model_copy(update={"model": model_id.rstrip("/")}), request)


def _stream_events(
    streams: list[AsyncIterator[RequestOutput]],
    served: ServedModel,
    body: CompletionRequest,
    echoes: list[Echo],
    completion_id: str,
    created: int,
    timeout_s: float | None,
    openai_errors: bool,
) -> AsyncIterator[str]:
    """The choices' text as it comes (after the echoed prompts, if asked); each chunk's
    logprobs list its tokens, at the offsets of the non-streamed response."""

    def choice(k: int, output: RequestOutput, held: Unsent) -> dict:
        """The tokens whose text is out go with it: a token whose text is partly held back
        (what may start a stop string) waits, and at the end is cut as the text is."""
        if body.logprobs is None or not held.ids:
            held.take(len(held.ids))
            logprobs = None
        else:
            echo_length = len(echoes[k].text)
            start = echo_length + held.text_offset  # held.text_offset: in the completion
            text_end = echo_length + len(output.text)  # of the text sent so far, this chunk's too
            logprobs, end = _logprobs(
                served, held.ids, held.logprobs, held.top, start,
                text_end if output.stopped_on else None,
            )  # fmt: skip
            n = len(held.ids)  # finished: all of them go
            if not output.finished:  # only those whose text is all out
                ends = [*logprobs["text_offset"][1:], end]
                n = next((i for i, e in enumerate(ends) if e > text_end), n)
                logprobs = {key: values[:n] for key, values in logprobs.items()}
                end = ends[n - 1] if n else start
            held.take(n)
            held.text_offset = end - echo_length
        return {
            "text": output.text_delta,
            "index": k,
            "logprobs": logprobs,
            "finish_reason": finish_reason(output) if output.finished else None,
        }

    include_usage = body.stream_options is not None and body.stream_options.include_usage
    head = {"id": completion_id, "object": "text_completion", "created": created,
            "model": served.model_id}  # fmt: skip
    first = [
        {"text": echo.text, "index": k, "logprobs": echo.logprobs, "finish_reason": None}
        for k, echo in enumerate(echoes)
        if body.echo
    ]
    return stream_chunks(
        streams, head, choice, first, include_usage, body.n, timeout_s, openai_errors
    )
