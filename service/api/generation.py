"""Runs engine requests for the routes: engine errors → HTTP errors, metrics per request,
client disconnects → abort, and SSE framing with keep-alive comments."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request as HttpRequest
from fastapi.responses import StreamingResponse

from service.api.errors import ApiError
from service.api.metrics import Metrics
from service.api.registry import ServedModel
from service.engine import (
    ENGINE_GONE,
    EngineOverloaded,
    FinishReason,
    RequestOutput,
    RequestTooLong,
    SamplingParams,
    is_blank,
)

# The error of requests still running when the drain on SIGTERM runs out of time: a 503.
SHUT_DOWN = "the server shut down before this request finished"


class ClientDisconnected(Exception):
    """The client went away before its answer was ready; the request was aborted."""


@dataclass
class Context:
    """Per HTTP request: where it arrived and who to report to."""

    metrics: Metrics
    arrival: float  # time.perf_counter() when the HTTP request arrived
    input_param: str  # the body field holding the input ("text", "inputs", "prompt")
    max_tokens_param: str  # and the one limiting the output ("max_new_tokens", "max_tokens")
    # The engine's request ids are ours, never the client's X-Request-Id: two requests sent with
    # one id (a client's retry) must not share a stream.
    engine_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def of(cls, http: HttpRequest, input_param: str, max_tokens_param: str) -> Context:
        return cls(http.app.state.metrics, http.state.arrival, input_param, max_tokens_param)

    def job_id(self, k: int) -> str:
        """The engine request id of this HTTP request's k-th generation (`start_all`'s jobs)."""
        return f"{self.engine_id}-{k}"


def served_model(http: HttpRequest, model_id: str | None, translation: bool = False) -> ServedModel:
    """The model a request names, or its route's default. From here on its id labels the
    request's counter and log line, refusals of its options included."""
    registry = http.app.state.registry
    if model_id in registry.models:  # served, if perhaps not by this route (a generator)
        http.state.model_id = model_id
    served: ServedModel = registry.get(model_id, translation)
    http.state.model_id = served.model_id
    return served


def new_tokens_limit(
    served: ServedModel,
    server_limit: int,
    requested: int | None,
    param: str,
    default: int | None = None,
) -> int:
    """The request's max new tokens: its own, or the route's `default` (by default, the most
    that fits). Never over the server's `--max-new-tokens`. Over the model's own limit
    (`ServedModel.max_new_tokens`, as /info shows it), a translation model lowers it to that: a
    translation ends when it ends, and max_new_tokens only bounds it (as CTranslate2's
    max_decoding_length; API.md's example asks for 256). A generation model refuses it, as vLLM
    and TGI do."""
    limit = served.max_new_tokens(server_limit)
    value = requested or (limit if default is None else min(default, limit))
    if value > server_limit:
        message = f"{param}: {value} is over this server's limit of {server_limit}"
        raise ApiError(422, message, param=param)
    if value > limit and not served.is_translation:
        raise ApiError(422, f"{param}: {value} is over this model's limit of {limit}", param=param)
    return min(value, limit)


def refuse_blank(served: ServedModel, text: str, name: str, param: str) -> None:
    """A translation model given only whitespace would make something up: a 422 naming the
    input (`name`, e.g. `text[3]`; `param`, the body's field)."""
    if served.is_translation and is_blank(text):
        raise ApiError(
            422, f"{name}: is only whitespace: there is nothing to translate", param=param
        )


def start(
    served: ServedModel,
    prompt: str | list[int],
    params: SamplingParams,
    ctx: Context,
    job: int = 0,
    counts_prompt: bool = True,
    input_name: str | None = None,
) -> AsyncIterator[RequestOutput]:
    """Queue one engine request now (errors become ApiError here) and return its outputs.
    `job`: which of the HTTP request's generations it is (`Context.job_id`); `counts_prompt`:
    whether its input counts in `prompt_tokens_total` (once per prompt, not once per choice of
    `n`); `input_name`: what an error calls its input (`text[3]` in a batch), by default the
    body's field."""
    if not served.async_engine.is_running:
        raise ApiError(503, "the server is shutting down", "not_ready")
    if isinstance(prompt, str):
        refuse_blank(served, prompt, input_name or ctx.input_param, ctx.input_param)
    input_ids = served.llm.input_ids(prompt)  # counted in the metrics however it ends
    try:
        outputs = served.async_engine.generate(input_ids, params, ctx.job_id(job), ctx.arrival)
    except RequestTooLong as error:
        if error.field == "max_new_tokens":
            param, name = ctx.max_tokens_param, ctx.max_tokens_param
        else:
            param, name = ctx.input_param, input_name or ctx.input_param
        raise ApiError(422, f"{name}: {error}", param=param) from None
    except EngineOverloaded as error:
        raise _overloaded(served, str(error)) from None
    return _observed(served, outputs, ctx, len(input_ids) if counts_prompt else 0)


def _overloaded(served: ServedModel, why: str) -> ApiError:
    return ApiError(
        429,
        f"the server is overloaded ({why}); retry later",
        "overloaded",
        headers={"Retry-After": str(served.retry_after_s())},
        code="overloaded",
    )


def start_all(
    served: ServedModel,
    jobs: Sequence[tuple[str | list[int], SamplingParams]],
    ctx: Context,
    param: str,
    names: Sequence[str],
    choices_per_prompt: int = 1,
    unit: str = "generations",
) -> list[AsyncIterator[RequestOutput]]:
    """`start` for a batch, all or nothing: refused before anything is queued when the queue
    cannot take all of it; if one is refused later, the ones queued are aborted. `jobs` are
    each prompt's `choices_per_prompt` choices in turn; `names`, what errors call each job's
    input; `unit`, what an error calls the jobs. Routes call it through
    `segments.start_segmented`, which cuts a translation model's texts first."""
    capacity = served.llm.max_requests  # running and queued
    if len(jobs) > capacity:  # never fits: a 429 would only make the client retry forever
        raise ApiError(
            422,
            f"{param}: {len(jobs)} {unit} in one request, over the {capacity} the server holds "
            "at once (running and queued)",
            param=param,
        )
    num_requests = served.llm.num_requests
    if num_requests + len(jobs) > capacity:
        # engine requests: a text's segments and a prompt's n choices are one each
        why = f"{num_requests} generations are already running or waiting"
        raise _overloaded(served, why)
    streams = []
    try:
        for k, (prompt, params) in enumerate(jobs):
            first_choice = k % choices_per_prompt == 0  # counts the prompt's tokens
            streams.append(start(served, prompt, params, ctx, k, first_choice, names[k]))
    except ApiError:
        for k in range(len(streams)):
            served.async_engine.abort(ctx.job_id(k))
        raise
    return streams


async def _observed(
    served: ServedModel, outputs: AsyncIterator[RequestOutput], ctx: Context, num_prompt: int
) -> AsyncIterator[RequestOutput]:
    """Pass outputs through, feeding the per-request metrics; a consumer that leaves cancels.
    Every accepted request counts its `num_prompt` input tokens and the tokens it generated,
    however it ends: finished, expired, or cancelled, even while still queued."""
    m, model = ctx.metrics, served.model_id
    last_token_at: float | None = None
    finished = False
    num_generated = 0
    try:
        async for output in outputs:
            now = time.perf_counter()
            # a token came out: a new one, or a beam search's, which come all at the end (a
            # deadline's finish brings none)
            beam_search_done = output.finished and output.token_ids and last_token_at is None
            if output.new_token_ids or beam_search_done:
                if last_token_at is None:
                    m.ttft.labels(model).observe(now - ctx.arrival)
                else:
                    m.itl.labels(model).observe(now - last_token_at)
                last_token_at = now
            # a finished beam search's tokens are its best hypothesis; before, its steps
            num_generated = len(output.token_ids) if output.finished else output.num_output_tokens
            if output.finished:
                finished = True
                _observe_finish(m, model, output, now - ctx.arrival)
                served.record_finish()
            yield output
    finally:
        if not finished:
            m.finished.labels(model, FinishReason.CANCELLED.value).inc()
        m.generation_tokens.labels(model).inc(num_generated)
        m.prompt_tokens.labels(model).inc(num_prompt)
        await outputs.aclose()  # type: ignore[attr-defined]


def _observe_finish(m: Metrics, model: str, output: RequestOutput, e2e_s: float) -> None:
    assert output.finish_reason is not None
    m.finished.labels(model, output.finish_reason.value).inc()
    m.e2e.labels(model).observe(e2e_s)
    if output.was_scheduled:
        m.queue_time.labels(model).observe(output.timings_ms["queue_ms"] / 1000)


def check_finished(output: RequestOutput, timeout_s: float | None) -> RequestOutput:
    """Errors a finished request may carry: failure inside generation, or expiry in the queue."""
    if output.finish_reason == FinishReason.ERROR and output.error in (SHUT_DOWN, ENGINE_GONE):
        raise ApiError(503, output.error, "not_ready")
    if output.finish_reason == FinishReason.ERROR:
        raise ApiError(500, f"generation failed: {output.error}", "generation")
    if output.finish_reason == FinishReason.TIMEOUT and not output.was_scheduled:
        raise ApiError(
            504, f"the request waited longer than its timeout of {timeout_s} s", "timeout"
        )
    return output


async def _last(outputs: AsyncIterator[RequestOutput]) -> RequestOutput:
    last = None
    async for output in outputs:
        last = output
    assert last is not None and last.finished
    return last


async def final_outputs(
    streams: list[AsyncIterator[RequestOutput]], http: HttpRequest
) -> list[RequestOutput]:
    """The finished output of every stream; a client disconnect first aborts them all."""

    async def disconnected() -> None:
        while (await http.receive())["type"] != "http.disconnect":
            pass

    results: asyncio.Future[list[RequestOutput]] = asyncio.ensure_future(
        asyncio.gather(*(_last(s) for s in streams))
    )
    watcher: asyncio.Future[None] = asyncio.ensure_future(disconnected())
    try:
        both: list[asyncio.Future[Any]] = [results, watcher]
        await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        gone = not results.done()
        if gone:
            results.cancel()  # each stream closes, and the engine aborts its request
            await asyncio.gather(results, return_exceptions=True)
    # Not `results.cancelled()`: a gather whose children were cancelled ends with a
    # CancelledError as its exception, not as cancelled itself.
    if gone:
        raise ClientDisconnected()
    return results.result()


async def interleaved(
    streams: list[AsyncIterator[RequestOutput]],
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """The outputs of several streams as they come, each with its stream's index; closing
    this closes every stream (each one is read from the start, so each one's cleanup runs)."""
    queue: asyncio.Queue[tuple[int, RequestOutput | Exception | None]] = asyncio.Queue()

    async def pump(k: int, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async for output in stream:
                queue.put_nowait((k, output))
        except Exception as error:
            queue.put_nowait((k, error))
        finally:
            queue.put_nowait((k, None))  # this stream is done

    tasks = [asyncio.ensure_future(pump(k, stream)) for k, stream in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            k, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield k, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def timings_header(timings: dict[str, float]) -> dict[str, str]:
    parts = [f"{name.removesuffix('_ms')};dur={ms:.1f}" for name, ms in timings.items()]
    return {"Server-Timing": ", ".join(parts)}


def merged_timings(outputs: list[RequestOutput]) -> dict[str, float]:
    """A batch's (or a split text's) timings: those of its output that took longest, the one
    the response waited for. Its phases add up to its total, as a single request's do."""
    slowest = max(outputs, key=lambda o: o.timings_ms["total_ms"])
    names = ("queue_ms", "prefill_ms", "decode_ms", "total_ms")
    return {name: round(slowest.timings_ms[name], 2) for name in names}


# Characters that JSON leaves as they are but that split a line for some SSE readers (Python's
# str.splitlines, which httpx's iter_lines and so huggingface_hub use): escaped in events.
LINE_BREAKING = str.maketrans({c: f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"})


def sse_event(data: dict | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload.translate(LINE_BREAKING)}\n\n"


def event_stream(
    events: AsyncIterator[str] | Iterable[str], request: HttpRequest
) -> StreamingResponse:
    """An SSE response: `events` (already `data: ...` text), with keep-alive comments, and
    headers that keep caches and proxies (nginx's buffering) from holding them back."""
    if isinstance(events, AsyncIterator):
        events = with_keepalive(events, request.app.state.settings.keepalive_s)
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def with_keepalive(events: AsyncIterator[str], interval_s: float) -> AsyncIterator[str]:
    """SSE text, plus a comment line whenever nothing was sent for `interval_s`."""
    iterator = events.__aiter__()
    pending: asyncio.Future | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=interval_s)
            if not done:
                yield ": keep-alive\n\n"
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield event
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        await iterator.aclose()  # type: ignore[attr-defined]
