"""Next-token choice per request: greedy, or temperature / top-k / top-p / typical / min-p
sampling with a per-request generator, after the penalties (repetition; presence and
frequency), the banned repeated n-grams, the logit bias and the min-tokens mask."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from model.decoding import ban_repeated_ngrams
from service.engine.request import Request


def has_penalties(request: Request) -> bool:
    """Whether `apply_penalties` would change this request's logits now."""
    params = request.params
    return (
        params.repetition_penalty != 1.0
        or params.presence_penalty != 0.0
        or params.frequency_penalty != 0.0
        or params.no_repeat_ngram_size > 0
        or bool(params.logit_bias)
        or request.num_output_tokens < params.min_new_tokens
    )


def apply_penalties(logits: Tensor, request: Request, eos_id: int) -> Tensor:
    """Logits (V,) of one request's next token after the penalties, the banned n-grams, the
    logit bias and min_new_tokens.

    Repetition penalty (CTRL, as TGI and `generate()`): over every token so far, prompt
    included. Presence and frequency penalties (OpenAI's, as vLLM): over the generated tokens,
    `logit - frequency_penalty * count - presence_penalty * (count > 0)`.
    """
    params = request.params
    tokens = request.beams[0].tokens
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(tokens)), device=logits.device)
        picked = logits[seen]
        logits = logits.clone()
        logits[seen] = torch.where(
            picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty
        )
    generated = tokens[len(tokens) - request.num_output_tokens :]
    if (params.presence_penalty or params.frequency_penalty) and generated:
        ids, counts = torch.tensor(generated, device=logits.device).unique(return_counts=True)
        logits = logits.clone()
        logits[ids] -= params.frequency_penalty * counts + params.presence_penalty
    if params.no_repeat_ngram_size:
        logits = ban_repeated_ngrams(logits[None], [tokens], params.no_repeat_ngram_size)[0]
    if params.logit_bias:
        ids, bias = zip(*params.logit_bias, strict=True)
        logits = logits.clone()
        logits[list(ids)] += logits.new_tensor(bias)
    if request.num_output_tokens < params.min_new_tokens:
        logits = logits.clone()
        logits[[eos_id, *params.stop_token_ids]] = float("-inf")
    return logits


def sample(logits: Tensor, request: Request) -> int:
    """One token from `logits` (V,), drawn with the request's own generator (batch-independent)."""
    params = request.params
    if params.is_greedy:
        return int(logits.argmax())
    # Extreme settings (a temperature near 0, a tiny repetition penalty) overflow a plain
    # `logits / temperature`: keep the logits finite (or -inf) and scale them in float64 after
    # subtracting the best, so that it ends at 0 and every other at <= 0.
    logits = logits.double().nan_to_num(nan=float("-inf"), posinf=torch.finfo(torch.float64).max)
    logits = (logits - logits.max()) / params.temperature
    if params.top_k > 0:
        kth = logits.topk(min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= params.top_p  # keep the first over top_p
        drop[0] = False  # and the best token, whatever rounding does to a tiny top_p
        logits = logits.index_put((order[drop],), logits.new_tensor(float("-inf")))
    if params.typical_p < 1.0:
        logits = typical(logits, params.typical_p)
    if params.min_p > 0.0:  # the best is at 0: a token's probability over the best's is exp(it)
        logits = logits.masked_fill(logits < math.log(params.min_p), float("-inf"))
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=request.generator))


def typical(logits: Tensor, mass: float) -> Tensor:
    """Locally typical sampling (Meister et al., 2022; `generate()`'s and TGI's `typical_p`):
    keep the tokens whose surprise is closest to the distribution's entropy, the fewest whose
    probabilities add up to `mass` (at least one)."""
    logp = logits.log_softmax(-1)
    entropy = -(logp.exp() * logp).nansum()  # a dropped token (-inf) adds 0 * -inf = nan: 0
    distance = (-logp - entropy).abs()  # a dropped token's is inf: it sorts last
    distance_sorted, order = distance.sort()
    cumulative = logp[order].exp().cumsum(-1)
    last = min(int((cumulative < mass).sum()), len(order) - 1)
    drop = distance > distance_sorted[last]
    return logits.masked_fill(drop, float("-inf"))
