"""Hugging Face TGI-compatible generation: `POST /generate`, `/generate_stream`, and `/`."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

import service
from service.api.errors import SSE_RESPONSE, ApiError, documented_errors
from service.api.generation import (
    Context,
    check_finished,
    event_stream,
    final_outputs,
    new_tokens_limit,
    refuse_blank,
    served_model,
    sse_event,
    timings_header,
)
from service.api.registry import ServedModel
from service.api.schemas import MAX_STOP_SEQUENCES, TgiRequest
from service.api.segments import Segmented, start_segmented
from service.api.tgi_tokens import TokenTexts, sequence_tokens, top_tokens
from service.engine import FinishReason, RequestOutput, SamplingParams


class EventStream(StreamingResponse):
    """What /openapi.json shows for the streaming-only routes."""

    media_type = "text/event-stream"


router = APIRouter(responses=documented_errors(openai=False))

# TGI's reasons: a deadline cut the text short, as max_new_tokens would ("length").
TGI_FINISH = {
    FinishReason.LENGTH: "length",
    FinishReason.TIMEOUT: "length",
    FinishReason.STOP: "eos_token",
}


def sampling_params(body: TgiRequest, request: Request, served: ServedModel) -> SamplingParams:
    settings = request.app.state.settings
    p = body.parameters
    max_new = new_tokens_limit(  # TGI's default is 100
        served, settings.max_new_tokens, p.max_new_tokens, "parameters.max_new_tokens", default=100
    )
    sampling = p.is_sampling
    # a sampled request without a seed gets one, reported in its details (a non-negative int64)
    seed = p.seed if p.seed is not None else (random.getrandbits(63) if sampling else None)
    return SamplingParams(
        max_new_tokens=max_new,
        fit_max_new_tokens=p.max_new_tokens is None,
        temperature=(p.temperature or 1.0) if sampling else 0.0,
        top_k=p.top_k or 0,
        top_p=p.top_p or 1.0,
        typical_p=p.typical_p or 1.0,
        repetition_penalty=p.repetition_penalty or 1.0,
        no_repeat_ngram_size=p.no_repeat_ngram_size or 0,
        frequency_penalty=p.frequency_penalty or 0.0,
        seed=seed,
        stop=tuple(p.stop),
        timeout_s=settings.request_timeout_s,
        num_top_logprobs=p.top_n_tokens or 0,
    )


def _details(output: RequestOutput, params: SamplingParams) -> dict:
    reason = (
        "stop_sequence"
        if output.stopped_on is not None
        else TGI_FINISH.get(
            output.finish_reason,  # type: ignore[arg-type]
            output.finish_reason.value,  # type: ignore[union-attr]
        )
    )
    return {
        "finish_reason": reason,
        "generated_tokens": len(output.token_ids),
        "seed": params.seed,
        "input_length": output.num_input_tokens,
    }


def _model_input(served: ServedModel, body: TgiRequest) -> str | list[int]:
    """The text, or with `truncate` its last `truncate` tokens (as TGI cuts from the left)."""
    limit = body.parameters.truncate
    if limit is None:
        return body.inputs
    if limit > served.llm.max_input_tokens:  # as TGI, which also refuses what it cannot keep
        raise ApiError(
            422,
            f"parameters.truncate: must be at most the {served.llm.max_input_tokens} input "
            f"tokens this model takes, not {limit}",
            param="parameters.truncate",
        )
    refuse_blank(served, body.inputs, "inputs", "inputs")  # before it becomes token ids
    input_ids = served.llm.input_ids(body.inputs)
    return input_ids[-limit:]


def _new_text(served: ServedModel, started: Segmented, output: RequestOutput) -> str:
    """As TGI: the decoded tokens, the stop sequence included (with what a translation model's
    text had around its segments, as the stream's token texts have it)."""
    if output.stopped_on is None:
        return output.text
    decode = served.llm.tokenizer.decode
    parts = started.parts(output)
    texts = [decode(o.token_ids) if o.stopped_on is not None else o.text for o in parts]
    return started.segments.join(texts) if started.segments else texts[0]


def _generated_text(
    body: TgiRequest, served: ServedModel, started: Segmented, output: RequestOutput
) -> str:
    """TGI's `generated_text`: the new text, the prompt first if asked."""
    if body.parameters.return_full_text:
        return body.inputs + _new_text(served, started, output)
    return _new_text(served, started, output)


def _check_prompt_options(served: ServedModel, body: TgiRequest, stream: bool) -> None:
    """The options about the prompt: a translation model's input is a source, which is neither
    returned with its translation (`echo` on /v1/completions is refused alike) nor scored."""
    if body.parameters.return_full_text and served.is_translation:
        raise ApiError(
            422,
            "parameters.return_full_text: a translation is not a continuation of its source",
            param="parameters.return_full_text",
        )
    if not body.parameters.decoder_input_details:
        return
    if stream:  # as TGI
        raise ApiError(
            422,
            "parameters.decoder_input_details: not supported when streaming tokens",
            param="parameters.decoder_input_details",
        )
    if served.is_translation:
        raise ApiError(
            422,
            "parameters.decoder_input_details: a translation model's input is its source, which "
            "has no logprobs",
            param="parameters.decoder_input_details",
        )


async def _prefill(served: ServedModel, model_input: str | list[int]) -> list[dict]:
    """TGI's `details.prefill`: the prompt's tokens, each with its log-probability given the
    ones before it (none for the first)."""
    ids = served.llm.input_ids(model_input)
    logprobs, _ = await served.async_engine.run("prompt_logprobs", ids)
    decode = served.llm.tokenizer.decode
    return [
        {"id": i, "text": decode([i]) + served.special_text(i), "logprob": lp}
        for i, lp in zip(ids, logprobs, strict=True)
    ]


def _start(
    served: ServedModel,
    body: TgiRequest,
    model_input: str | list[int],
    params: SamplingParams,
    ctx: Context,
) -> Segmented:
    """Queue the generation: a translation model's text in segments unless an option reads the
    whole text (`TgiRequest.reads_whole_text`)."""
    split = not body.reads_whole_text
    (started,) = start_segmented(served, [(model_input, params)], ctx, "inputs", split=split)
    return started


async def _generate(body: TgiRequest, request: Request) -> tuple[dict, dict[str, str]]:
    served = served_model(request, body.model)
    _check_prompt_options(served, body, stream=False)
    params = sampling_params(body, request, served)
    ctx = Context.of(request, "inputs", "parameters.max_new_tokens")
    model_input = _model_input(served, body)
    started = _start(served, body, model_input, params, ctx)
    (output,) = await final_outputs([started.outputs], request)
    check_finished(output, params.timeout_s)
    result: dict = {"generated_text": _generated_text(body, served, started, output)}
    if body.parameters.details or body.parameters.decoder_input_details:  # as TGI
        prefill = []
        if body.parameters.decoder_input_details:
            prefill = await _prefill(served, model_input)
        result["details"] = _details(output, params) | {
            "prefill": prefill,
            "tokens": sequence_tokens(served, started, output),
        }
        if params.num_top_logprobs:
            result["details"]["top_tokens"] = [
                top_tokens(served, step, params.num_top_logprobs) for step in output.top_logprobs
            ]
    return result, timings_header(output.timings_ms) | _tgi_headers(served, body, output)


def _tgi_headers(served: ServedModel, body: TgiRequest, output: RequestOutput) -> dict[str, str]:
    """TGI's timing headers on /generate (whole milliseconds): validation is the time before
    the engine took the request in, queue its wait to be scheduled, inference the rest."""
    t = output.timings_ms
    tokens = len(output.token_ids)
    inference = t["prefill_ms"] + t["decode_ms"]
    return {
        "x-compute-type": served.llm.config.device.split(":")[0],
        "x-compute-time": str(round(t["total_ms"])),
        "x-compute-characters": str(len(body.inputs)),
        "x-total-time": str(round(t["total_ms"])),
        "x-validation-time": str(max(0, round(t["total_ms"] - t["queue_ms"] - inference))),
        "x-queue-time": str(round(t["queue_ms"])),
        "x-inference-time": str(round(inference)),
        "x-time-per-token": str(round(inference / tokens) if tokens else 0),
        "x-generated-tokens": str(tokens),
        "x-prompt-tokens": str(output.num_input_tokens),
    }


@router.post("/generate")
async def generate(body: TgiRequest, request: Request):
    result, headers = await _generate(body, request)
    return JSONResponse(result, headers=headers)


@router.post("/generate_stream", response_class=EventStream)
async def generate_stream(body: TgiRequest, request: Request):
    served = served_model(request, body.model)
    _check_prompt_options(served, body, stream=True)
    params = sampling_params(body, request, served)
    ctx = Context.of(request, "inputs", "parameters.max_new_tokens")
    started = _start(served, body, _model_input(served, body), params, ctx)
    events = _stream_events(started, served, body, params)
    return event_stream(events, request)


@router.post("/", responses=SSE_RESPONSE)
async def compat(body: TgiRequest, request: Request):
    """TGI's `/`: streams when `stream` is true; otherwise a one-element list. A translation
    model's result also has the Inference API's `translation_text`, so that
    `InferenceClient.translation()` gets its text. As TGI's `/`, a generator's text starts
    with the prompt unless `return_full_text` says otherwise (TGI: the "text-generation"
    pipeline's default)."""
    served = served_model(request, body.model)
    if body.parameters.return_full_text is None and not served.is_translation:
        parameters = body.parameters.model_copy(update={"return_full_text": True})
        body = body.model_copy(update={"parameters": parameters})
    if body.stream:
        return await generate_stream(body, request)
    result, headers = await _generate(body, request)
    if served.is_translation:
        result["translation_text"] = result["generated_text"]
    return JSONResponse([result], headers=headers)


# One base URL per model: TGI serves one model per server, so its clients (huggingface_hub's
# InferenceClient) never name the model in the body: `InferenceClient("http://host/models/en-lm")`.


def _for_model(body: TgiRequest, model_id: str) -> TgiRequest:
    """The body, for the model the URL names. A body naming another model is refused: TGI's
    clients send none here (chat's, which sends a placeholder, is let through: routes_chat)."""
    model_id = model_id.rstrip("/")  # a base URL given with its trailing slash
    if body.model not in (None, model_id):
        raise ApiError(
            422, f"model: the URL names {model_id!r}, the body {body.model!r}", param="model"
        )
    return body.model_copy(update={"model": model_id})


def _served(request: Request, model_id: str) -> ServedModel:
    registry = request.app.state.registry
    model_id = model_id.rstrip("/")
    if registry is None or model_id not in registry.models:
        raise ApiError(404, f"unknown model {model_id!r}", "not_found", param="model")
    return registry.models[model_id]


@router.get("/models/{model_id:path}/health", responses={503: {"description": "not ready"}})
async def health_for(model_id: str, request: Request):
    """TGI's `/health` under a model's base URL (`InferenceClient.health_check()`): 200 once
    the model can serve."""
    status = request.app.state.status
    if status != "ready":  # loading (the models are not known yet), failed or draining
        return JSONResponse({"status": status}, status_code=503)
    _served(request, model_id)
    return {"status": "ok"}


@router.get("/models/{model_id:path}/info")
async def info_for(model_id: str, request: Request):
    """TGI's `/info` under a model's base URL (`InferenceClient.get_endpoint_info()`), in TGI's
    fields; the server's own `/info` has more."""
    if request.app.state.registry is None:
        raise ApiError(503, "the server is starting: the models are loading", "not_ready")
    served = _served(request, model_id)
    settings = request.app.state.settings
    llm = served.llm
    max_new = served.max_new_tokens(settings.max_new_tokens)
    # The most tokens of a request, input and output: a decoder-only model's share positions.
    positions = llm.model_config.max_positions
    total = llm.max_input_tokens + max_new if served.is_translation else positions
    return {
        "model_id": served.model_id,
        "model_sha": None,
        "model_dtype": f"torch.{llm.config.dtype}",
        "model_device_type": llm.config.device.split(":")[0],
        "model_pipeline_tag": "translation" if served.is_translation else "text-generation",
        "max_concurrent_requests": settings.max_running_requests + settings.max_queued_requests,
        "max_best_of": 1,
        "max_stop_sequences": MAX_STOP_SEQUENCES,
        "max_input_tokens": llm.max_input_tokens,
        "max_total_tokens": total,
        "max_client_batch_size": 1,
        "router": "attnserve",
        "version": service.__version__,
        "sha": None,
        "docker_label": None,
    }


@router.post("/models/{model_id:path}/generate")
async def generate_for(model_id: str, body: TgiRequest, request: Request):
    return await generate(_for_model(body, model_id), request)


@router.post("/models/{model_id:path}/generate_stream", response_class=EventStream)
async def generate_stream_for(model_id: str, body: TgiRequest, request: Request):
    return await generate_stream(_for_model(body, model_id), request)


@router.post("/models/{model_id:path}", responses=SSE_RESPONSE)
async def compat_for(model_id: str, body: TgiRequest, request: Request):
    # `.../generate/` with a trailing slash lands here too (the id is a path): route it on.
    model_id = model_id.rstrip("/")
    if model_id.endswith(("/info", "/health")):  # GET routes, as TGI's
        raise ApiError(
            405, "method not allowed: use GET", "method_not_allowed", headers={"Allow": "GET"}
        )
    if model_id.endswith("/generate_stream"):
        return await generate_stream_for(model_id.removesuffix("/generate_stream"), body, request)
    if model_id.endswith("/generate"):
        return await generate_for(model_id.removesuffix("/generate"), body, request)
    return await compat(_for_model(body, model_id), request)


async def _stream_events(
    started: Segmented, served: ServedModel, body: TgiRequest, params: SamplingParams
) -> AsyncIterator[str]:
    """One event per token; the last also has `generated_text` and `details`. The tokens' texts
    (`TokenTexts`) add up to the new text, the stop sequence included, as TGI's do."""
    index = 0
    texts = TokenTexts(served, started.segments)
    try:
        async for output in started.outputs:
            if output.finished:
                check_finished(output, params.timeout_s)
            # The last output of the text, or of one of its segments (`in_order` has just
            # counted it among the finished ones, and `texts` not yet).
            ends_segment = output.finished or len(started.finished_segments) > texts.num_done
            tokens = []  # (id, text) of each event
            for n, token_id in enumerate(output.new_token_ids):
                last = n == len(output.new_token_ids) - 1
                text = texts.token(token_id, last and ends_segment, last and output.finished)
                tokens.append((token_id, text))
            if not tokens and ends_segment:  # its deadline passed between two steps
                left = texts.without_token(output.finished)
                # The generation's end still needs a last event to carry generated_text: EOS's
                # id, marked special, with only the text left over (EOS was not generated).
                tokens = [(served.eos_id, left)] if output.finished else []
            for n, (token_id, text) in enumerate(tokens):
                index += 1
                is_last = output.finished and n == len(tokens) - 1
                event: dict = {
                    "index": index,
                    "token": {
                        "id": token_id,
                        "text": text,
                        "logprob": output.new_logprobs[n] if n < len(output.new_logprobs) else 0.0,
                        "special": token_id in served.special_ids,
                    },
                    "generated_text": None,
                    "details": None,
                    "top_tokens": None,
                }
                if params.num_top_logprobs and n < len(output.new_top_logprobs):
                    step = output.new_top_logprobs[n]
                    event["top_tokens"] = top_tokens(served, step, params.num_top_logprobs)
                if is_last:
                    event["generated_text"] = _generated_text(body, served, started, output)
                    event["details"] = _details(output, params)
                yield sse_event(event)
    except ApiError as error:
        yield sse_event({"error": error.message, "error_type": error.error_type})
