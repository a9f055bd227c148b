"""`POST /tokenize` and `POST /detokenize`: a model's tokens, for clients that count them before
they send a request.

`/tokenize` answers in the shape of the server its body comes from: TGI's (`{"inputs"}` → a list
of `{"id", "text", "start", "stop"}`, also at a model's base URL `/models/{id}/tokenize`) or
vLLM's (`{"model", "prompt", "add_special_tokens"}` → `{"count", "max_model_len", "tokens"}`).
The tokens are the model's input for the text whole, as a request gives it: a translation
source ends with `</s>`, a prompt starts with `<s>` if the model adds it. (A translation split
into lines and sentences, segments.py, is counted per segment, each with its own `</s>`.)
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from service.api.errors import ApiError, documented_errors
from service.api.generation import served_model
from service.api.registry import ServedModel
from service.api.schemas import DetokenizeRequest, TokenizeRequest

router = APIRouter(responses=documented_errors(openai=False))


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> Response:
    """A text of up to the body limit is ~200k tokens, seconds of work in Python: it runs in a
    worker thread, answer's JSON included, so the event loop goes on serving the others."""
    served = served_model(request, body.model)
    answer = await run_in_threadpool(_tokenize, served, body)
    return Response(json.dumps(answer, ensure_ascii=False), media_type="application/json")


def _tokenize(served: ServedModel, body: TokenizeRequest) -> list | dict:
    if body.inputs is not None:  # TGI's
        tokens = _tgi_tokens(served, body.inputs)
        return tokens[-body.parameters.truncate :] if body.parameters.truncate else tokens
    assert body.prompt is not None
    ids = served.llm.input_ids(body.prompt)
    if not body.add_special_tokens:
        ids = served.llm.tokenizer.encode(body.prompt)
    response: dict = {
        "count": len(ids),
        "max_model_len": served.llm.model_config.max_positions,
        "tokens": ids,
        "token_strs": None,
    }
    if body.return_token_strs:
        hf = served.llm.tokenizer.hf
        response["token_strs"] = [hf.id_to_token(i) for i in ids]
    return response


@router.post("/models/{model_id:path}/tokenize")
async def tokenize_for(model_id: str, body: TokenizeRequest, request: Request) -> Response:
    """At a model's TGI base URL: the URL names the model."""
    model_id = model_id.rstrip("/")
    if body.model not in (None, model_id):
        message = f"model: the URL names {model_id!r}, the body {body.model!r}"
        raise ApiError(422, message, param="model")
    return await tokenize(body.model_copy(update={"model": model_id}), request)


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request):
    """vLLM's: token ids → their text (special tokens left out)."""
    served = served_model(request, body.model)
    vocab_size = served.llm.model_config.vocab_size
    if any(i >= vocab_size for i in body.tokens):
        raise ApiError(422, f"tokens: token ids must be below {vocab_size}", param="tokens")
    return {"prompt": served.llm.tokenizer.decode(body.tokens)}


def _tgi_tokens(served: ServedModel, text: str) -> list[dict]:
    """TGI's tokens of a text: each with where it lies in the text (`start`, `stop`, in
    characters) and that part of the text, as TGI's are. A character split over several
    byte-level tokens is on its last piece; a special token (`</s>`) has no extent and no text."""
    ids = served.llm.input_ids(text)
    tokens, position = [], 0
    for token_id, piece in zip(ids, served.token_texts(ids), strict=True):
        stop = position if token_id in served.special_ids else position + len(piece)
        tokens.append(
            {"id": token_id, "text": text[position:stop], "start": position, "stop": stop}
        )
        position = stop
    return tokens
