"""`POST /v1/translate`: the native translation route (batch, beam search, n-best, SSE)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api.errors import SSE_RESPONSE, ApiError, documented_errors
from service.api.generation import (
    Context,
    check_finished,
    event_stream,
    final_outputs,
    merged_timings,
    new_tokens_limit,
    served_model,
    sse_event,
    timings_header,
)
from service.api.registry import ServedModel
from service.api.schemas import TranslateRequest
from service.api.segments import Segmented, merge_alignments, start_segmented
from service.engine import RequestOutput, SamplingParams

router = APIRouter(responses=documented_errors(openai=False))


def sampling_params(
    body: TranslateRequest, request: Request, served: ServedModel
) -> SamplingParams:
    settings = request.app.state.settings
    max_new_tokens = new_tokens_limit(
        served, settings.max_new_tokens, body.max_new_tokens, "max_new_tokens"
    )
    assert body.beam_size is not None
    return SamplingParams(
        max_new_tokens=max_new_tokens,
        fit_max_new_tokens=body.max_new_tokens is None,
        temperature=body.temperature,
        top_k=body.top_k,
        top_p=body.top_p,
        no_repeat_ngram_size=body.no_repeat_ngram_size,
        seed=body.seed,
        beam_size=body.beam_size,
        length_penalty=body.length_penalty,
        num_hypotheses=body.num_hypotheses,
        timeout_s=body.timeout_s or settings.request_timeout_s,
    )


@router.post("/v1/translate", responses=SSE_RESPONSE)
async def translate(body: TranslateRequest, request: Request):
    served = served_model(request, body.model, translation=True)
    params = sampling_params(body, request, served)
    ctx = Context.of(request, "text", "max_new_tokens")
    texts = [body.text] if isinstance(body.text, str) else body.text
    # a text of several lines or sentences is translated segment by segment (segments.py); a
    # blank one is its own translation, and what the model cannot read is kept from it
    # (unreadable.py)
    jobs = [(t, params) for t in texts]
    started = start_segmented(
        served, jobs, ctx, "text", split=body.split_sentences, keep_blank=True,
        mask_unreadable=True,
    )  # fmt: skip
    if body.stream:
        (one,) = started

        async def extras(last: RequestOutput) -> dict:
            return await _extras(served, one, last, body)

        return event_stream(_stream_events(one.outputs, params, extras), request)
    outputs = await final_outputs([s.outputs for s in started], request)
    finished = [check_finished(o, params.timeout_s) for o in outputs]
    timings = merged_timings(finished)
    translations = [
        _translation(o, body) | await _extras(served, s, o, body)
        for s, o in zip(started, finished, strict=True)
    ]
    response = {
        "model": served.model_id,
        "translations": translations,
        "usage": {
            "input_tokens": sum(o.num_input_tokens for o in finished),
            "output_tokens": sum(len(o.token_ids) for o in finished),
        },
        "timings": timings,
    }
    return JSONResponse(response, headers=timings_header(timings))


async def _extras(
    served: ServedModel, started: Segmented, last: RequestOutput, body: TranslateRequest
) -> dict:
    """A translation's `score` and `alignments`, if asked for: of its segments, if split."""
    parts = started.parts(last)
    score = _score(parts, body)
    found: dict = {} if score is None else {"score": score}
    if score is not None and not last.hypotheses:  # greedy or sampled: its one hypothesis
        found["hypotheses"] = [{"text": last.text, "score": score}]
    if body.return_alignments:
        found["alignments"] = await alignments(served, started.sources, parts)
    return found


def _translation(output: RequestOutput, body: TranslateRequest) -> dict:
    translation: dict = {"text": output.text, "finish_reason": output.finish_reason.value}  # type: ignore[union-attr]
    if output.hypotheses and (body.return_scores or body.num_hypotheses > 1):
        translation["hypotheses"] = [{"text": h.text, "score": h.score} for h in output.hypotheses]
    return translation


def _score(segments: list[RequestOutput], body: TranslateRequest) -> float | None:
    """With `return_scores`: the best hypothesis's score; greedy or sampled output is scored as
    a beam would be (sum of log-probabilities / length ** length_penalty). A text translated
    segment by segment scores the sum of its segments' scores, as its hypotheses do."""
    if not body.return_scores:
        return None
    scores = []
    for output in segments:
        if output.hypotheses:
            scores.append(output.hypotheses[0].score)
        elif output.logprobs:
            scores.append(sum(output.logprobs) / len(output.logprobs) ** body.length_penalty)
        elif not output.token_ids:  # a blank text, its own translation
            scores.append(0.0)
        else:
            return None
    return sum(scores)


async def alignment(served: ServedModel, text: str | list[int], output: RequestOutput) -> dict:
    """The translation's tokens and where each looked in the source (the last decoder layer's
    cross-attention, mean over heads): `weights[i][j]` for target token i and source token j,
    and `pairs` [i, j] of each target token's most attended source token."""
    if not output.token_ids:
        return {"source_tokens": [], "target_tokens": [], "weights": [], "pairs": []}
    src, weights = await served.async_engine.run("alignment", text, output.token_ids)
    return {
        # a character split over several tokens is on its last piece, "</s>" is itself
        "source_tokens": served.token_texts(src),
        "target_tokens": served.token_texts(output.token_ids),
        "weights": [[round(w, 4) for w in row] for row in weights.tolist()],
        "pairs": [[i, j] for i, j in enumerate(weights.argmax(-1).tolist())],
    }


async def alignments(
    served: ServedModel, sources: list[str | list[int]], outputs: list[RequestOutput]
) -> dict:
    """A translation's alignment; a text of several segments joins theirs."""
    return merge_alignments(
        [await alignment(served, s, o) for s, o in zip(sources, outputs, strict=True)]
    )


async def _stream_events(
    outputs: AsyncIterator[RequestOutput],
    params: SamplingParams,
    extras: Callable[[RequestOutput], Awaitable[dict]],
) -> AsyncIterator[str]:
    """The text's events, then a last one with the whole text and `extras(last output)`."""
    try:
        async for output in outputs:
            # One event per new piece of text: none for EOS or for half a character held back;
            # the event names the output's last token (None: a split text's segments said
            # nothing, and the event has only what was between them).
            if output.text_delta:
                ids = output.new_token_ids or output.token_ids
                token_id = ids[-1] if ids else None
                yield sse_event(
                    {
                        "index": 0,
                        "token": {"id": token_id, "text": output.text_delta},
                        "text": output.text_delta,
                    }
                )
            if output.finished:
                check_finished(output, params.timeout_s)
                final = {
                    "index": 0,
                    "finish_reason": output.finish_reason.value,  # type: ignore[union-attr]
                    "text": output.text,
                    "usage": {
                        "input_tokens": output.num_input_tokens,
                        "output_tokens": len(output.token_ids),
                    },
                    "timings": {k: round(v, 2) for k, v in output.timings_ms.items()},
                }
                yield sse_event(final | await extras(output))
    except ApiError as error:
        yield sse_event({"error": error.message, "error_type": error.error_type})
    yield sse_event("[DONE]")
