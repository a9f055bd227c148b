"""OpenAI-compatible `POST /v1/chat/completions` (with streaming), for the clients that speak
only chat (LiteLLM's `openai/` models, chat front ends, `InferenceClient.chat_completion`).

A translation model translates the last message, which must be the user's: each turn is a
translation of its own, the earlier ones are not read; its lines and sentences are translated
one by one, as on /v1/translate (segments.py). A generation model needs a chat template
to turn messages into a prompt; ours are not chat models and have none, so they are refused
with a 400 naming `messages`, as vLLM refuses a model without one.

At a model's TGI base URL (`/models/{id}/v1/chat/completions`, where huggingface_hub posts) the
errors are TGI's, as TGI's own chat route answers them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

import service
from service.api.errors import SSE_RESPONSE, ApiError, documented_errors, is_openai_route
from service.api.generation import (
    Context,
    check_finished,
    event_stream,
    final_outputs,
    merged_timings,
    served_model,
    timings_header,
)
from service.api.openai_common import (
    Unsent,
    finish_reason,
    sampling_params,
    stream_chunks,
    usage_of,
)
from service.api.registry import ServedModel
from service.api.schemas import ChatCompletionRequest
from service.api.segments import start_segmented
from service.engine import RequestOutput

router = APIRouter(responses=documented_errors(openai=True))

# OpenAI's `system_fingerprint`: TGI's client requires one
FINGERPRINT = f"attnserve-{service.__version__}"


def _source(served: ServedModel, body: ChatCompletionRequest) -> str:
    """The text to translate: the last message's. (Refusals are 422s, which OpenAI's routes
    answer as 400s: errors.py.)"""
    if not served.is_translation:
        raise ApiError(
            422,
            f"messages: model {served.model_id!r} has no chat template (it is not a chat "
            "model); use /v1/completions",
            param="messages",
        )
    last = body.messages[-1]
    if last.role != "user":
        raise ApiError(
            422,
            f"messages: the last message must be the user's, not {last.role!r}",
            param="messages",
        )
    if not last.text:
        raise ApiError(
            422, "messages: the last message's content must not be empty", param="messages"
        )
    return last.text


def _logprobs(
    served: ServedModel,
    ids: list[int],
    logprobs: list[float],
    top: list[dict[int, float]],
    num_top: int,
    byte_end: int | None = None,
) -> dict:
    """Chat's `logprobs` of these tokens: each one's, with the `num_top` likeliest of its step.
    A token is its text (a piece of a character reads "\ufffd", as vLLM's); its `bytes` are
    the UTF-8 bytes it adds, so that joining them rebuilds characters split across tokens.
    `byte_end`: where in the tokens' bytes a stop string cut the text; the tokens are cut there
    too (the one across it to its bytes before it, its logprob the whole token's)."""
    tokenizer = served.llm.tokenizer

    def entry(token_id: int, logprob: float) -> dict:
        text = tokenizer.decode([token_id])
        return {"token": text, "logprob": logprob, "bytes": list(tokenizer.token_bytes(token_id))}

    content, start = [], 0  # start: the token's first byte
    for n, (token_id, logprob) in enumerate(zip(ids, logprobs, strict=True)):
        if byte_end is not None and start >= byte_end:
            break
        step = top[n] if n < len(top) else {}
        best = sorted(step.items(), key=lambda item: -item[1])[:num_top]
        content.append(entry(token_id, logprob) | {"top_logprobs": [entry(*t) for t in best]})
        token_bytes = content[-1]["bytes"]
        if byte_end is not None and start + len(token_bytes) > byte_end:
            kept = token_bytes[: byte_end - start]
            content[-1] |= {"token": bytes(kept).decode("utf-8", "replace"), "bytes": kept}
        start += len(token_bytes)
    return {"content": content}


def _num_sent(served: ServedModel, held: Unsent, text_bytes: int) -> int:
    """How many of a streamed choice's held tokens have all of their text in the first
    `text_bytes` UTF-8 bytes of its text (what it has sent so far); `held.text_offset` is the
    byte the first of them starts at."""
    end, n = held.text_offset, 0
    for token_id in held.ids:
        end += len(served.llm.tokenizer.token_bytes(token_id))
        if end > text_bytes:
            break
        n += 1
    return n


@router.post("/v1/chat/completions", responses=SSE_RESPONSE)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    served = served_model(request, body.model)
    source = _source(served, body)
    ctx = Context.of(request, "messages", body.requested_max_tokens[1])
    generations = [(source, sampling_params(body, request, served, i)) for i in range(body.n)]
    # a translation of several lines or sentences goes segment by segment, as on /v1/translate,
    # unless an option is about the whole completion
    too_many = "n" if body.n > 1 else "messages"  # the field to blame if the jobs cannot fit
    split = not body.reads_whole_completion
    started = start_segmented(served, generations, ctx, too_many, body.n, split)
    streams = [s.outputs for s in started]
    chat_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    settings = request.app.state.settings
    if body.stream:
        openai_errors = is_openai_route(request.url.path)
        events = _stream_events(
            streams, served, body, chat_id, created, settings.request_timeout_s, openai_errors
        )
        return event_stream(events, request)
    finals = await final_outputs(streams, request)
    outputs = [check_finished(o, settings.request_timeout_s) for o in finals]
    choices = [
        {
            "index": k,
            "message": {"role": "assistant", "content": o.text},
            "logprobs": _logprobs(
                served,
                o.token_ids,
                o.logprobs,
                o.top_logprobs,
                body.num_top_logprobs,
                len(o.text.encode()) if o.stopped_on else None,
            )  # fmt: skip
            if body.logprobs
            else None,
            "finish_reason": finish_reason(o),
        }
        for k, o in enumerate(outputs)
    ]
    response = {
        "id": chat_id,
        "object": "chat.completion",
        "created": created,
        "model": served.model_id,
        "system_fingerprint": FINGERPRINT,
        "choices": choices,
        "usage": usage_of(outputs, choices_per_prompt=body.n),
    }
    return JSONResponse(response, headers=timings_header(merged_timings(outputs)))


@router.post("/models/{model_id:path}/v1/chat/completions", responses=SSE_RESPONSE)
async def chat_completions_for(model_id: str, body: ChatCompletionRequest, request: Request):
    """At a model's TGI base URL, as `InferenceClient(base_url).chat_completion()` posts. The
    URL names the model; the body's `model` is ignored, as TGI ignores it (that client sends a
    placeholder)."""
    model = model_id.rstrip("/")
    return await chat_completions(body.model_copy(update={"model": model}), request)


def _stream_events(
    streams: list[AsyncIterator[RequestOutput]],
    served: ServedModel,
    body: ChatCompletionRequest,
    chat_id: str,
    created: int,
    timeout_s: float | None,
    openai_errors: bool,
) -> AsyncIterator[str]:
    """Each choice's role first, then its text as it comes, its last chunk with its finish
    reason. The role is in each choice's first delta, as OpenAI's and vLLM's (the `openai`
    package's stream helper joins the roles it reads); at a model's base URL, the TGI routes,
    in every delta, as TGI's (its own client requires it)."""
    role_in_every_delta = not openai_errors  # not an OpenAI route: a model's TGI base URL

    def delta(text: str | None, first: bool = False) -> dict:
        """A delta has only what it says: a last chunk without text has `{}` (OpenAI's), or at
        a TGI base URL only the role."""
        role = {"role": "assistant"} if first or role_in_every_delta else {}
        return role | ({} if text is None else {"content": text})

    def choice(k: int, output: RequestOutput, held: Unsent) -> dict:
        """The tokens whose text is out go with it: a token whose text is partly held back
        (what may start a stop string) waits, and at the end is cut as the text is."""
        logprobs = None
        if body.logprobs and held.ids:
            text_bytes = len(output.text.encode())  # sent so far, this chunk's text too
            n = len(held.ids) if output.finished else _num_sent(served, held, text_bytes)
            byte_end = text_bytes - held.text_offset  # in these tokens' bytes
            logprobs = _logprobs(
                served, held.ids[:n], held.logprobs[:n], held.top[:n], body.num_top_logprobs,
                byte_end if output.stopped_on else None,
            )  # fmt: skip
            held.text_offset += sum(len(e["bytes"]) for e in logprobs["content"])
            held.take(n)
        else:
            held.take(len(held.ids))
        return {
            "index": k,
            "delta": delta(output.text_delta or None),
            "logprobs": logprobs,
            "finish_reason": finish_reason(output) if output.finished else None,
        }

    first = [
        {"index": k, "delta": delta("", first=True), "logprobs": None, "finish_reason": None}
        for k in range(len(streams))
    ]
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    head = {"id": chat_id, "object": "chat.completion.chunk", "created": created,
            "model": served.model_id, "system_fingerprint": FINGERPRINT}  # fmt: skip
    return stream_chunks(
        streams, head, choice, first, include_usage, body.n, timeout_s, openai_errors
    )
