"""Decoding for evaluation and tests: the uncached reference greedy decoder (the oracle of every
equivalence test), and batched, cached greedy and beam search used by `model.evaluate`.

The serving engine has its own scheduler-driven decoding (service/engine); these are the plain
offline versions it is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from model.transformer import Transformer


def pad_batch(sequences: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-padded ids (B, T) and the valid mask (B, T)."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids, ids != pad_id


@torch.inference_mode()
def greedy_reference(model: Transformer, input_ids: list[int], max_new_tokens: int) -> list[int]:
    """One sequence, no cache, no batching: recompute everything for each new token.

    Encoder-decoder: `input_ids` is the source; decoder-only: the prompt. Returns the new tokens
    (ending with EOS unless `max_new_tokens` was reached).
    """
    config = model.config
    device = model.embed.tokens.weight.device
    if config.is_encoder_decoder:
        memory = model.encode(torch.tensor([input_ids], device=device))
        tokens = [config.decoder_start_token_id]
    else:
        memory = None
        tokens = list(input_ids)
    new_tokens: list[int] = []
    for _ in range(max_new_tokens):
        logits = model.decode(torch.tensor([tokens], device=device), memory)  # (1, T, V)
        next_id = int(logits[0, -1].argmax())
        new_tokens.append(next_id)
        tokens.append(next_id)
        if next_id == config.eos_token_id:
            break
    return new_tokens


@torch.inference_mode()
def greedy_cached(model: Transformer, input_ids: list[int], max_new_tokens: int) -> list[int]:
    """`greedy_reference` with the KV cache: the prompt (or decoder start) once, then one token a step."""
    config = model.config
    device = model.embed.tokens.weight.device
    if config.is_encoder_decoder:
        memory = model.encode(torch.tensor([input_ids], device=device))
        prompt = [config.decoder_start_token_id]
    else:
        memory, prompt = None, list(input_ids)
    cache = model.new_cache(1, len(prompt) + max_new_tokens)
    next_ids = torch.tensor([prompt], device=device)
    new_tokens: list[int] = []
    for _ in range(max_new_tokens):
        next_id = int(model.decode(next_ids, memory, cache=cache)[0, -1].argmax())
        new_tokens.append(next_id)
        if next_id == config.eos_token_id:
            break
        next_ids = torch.tensor([[next_id]], device=device)
    return new_tokens


@torch.inference_mode()
def greedy_batch(
    model: Transformer, sources: list[list[int]], max_new_tokens: int
) -> list[list[int]]:
    """Encoder-decoder greedy decoding of a batch with the KV cache; new tokens per source."""
    config = model.config
    device = model.embed.tokens.weight.device
    src, src_valid = (t.to(device) for t in pad_batch(sources, config.pad_token_id))
    memory = model.encode(src, src_valid)
    cache = model.new_cache(len(sources), max_new_tokens)
    next_ids = torch.full((len(sources), 1), config.decoder_start_token_id, device=device)
    done = torch.zeros(len(sources), dtype=torch.bool, device=device)
    outputs = []
    for _ in range(max_new_tokens):
        logits = model.decode(next_ids, memory, src_valid, cache)  # (B, 1, V)
        next_ids = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        outputs.append(next_ids)
        done |= next_ids[:, 0] == config.eos_token_id
        if done.all():
            break
    return [_until_eos(row, config.eos_token_id) for row in torch.cat(outputs, 1).tolist()]


def _until_eos(ids: list[int], eos_id: int) -> list[int]:
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids


@dataclass
class Hypothesis:
    token_ids: list[int]  # new tokens, ending with EOS when finished
    score: float  # sum of log-probabilities / length ** length_penalty


@torch.inference_mode()
def beam_search_batch(
    model: Transformer,
    sources: list[list[int]],
    beam_size: int = 4,
    max_new_tokens: int = 128,
    length_penalty: float = 1.0,
    num_hypotheses: int = 1,
) -> list[list[Hypothesis]]:
    """Encoder-decoder beam search over a batch, B sources × K beams as rows of one cached batch.

    A hypothesis ends at EOS; its score is its log-probability divided by length ** α. A source
    is done when it has `beam_size` finished hypotheses and no live beam can still beat the worst
    of them (the usual heuristic: live score at the current length). Returns the n-best per source.
    """
    config = model.config
    device = model.embed.tokens.weight.device
    B, K = len(sources), beam_size
    src, src_valid = (t.to(device) for t in pad_batch(sources, config.pad_token_id))
    memory = model.encode(src, src_valid).repeat_interleave(K, 0)  # (B*K, S, D)
    src_valid = src_valid.repeat_interleave(K, 0)
    cache = model.new_cache(B * K, max_new_tokens)
    # Only beam 0 is live at the start, so the K beams do not all pick the same first token.
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0
    tokens = torch.full((B * K, 0), 0, dtype=torch.long, device=device)
    next_ids = torch.full((B * K, 1), config.decoder_start_token_id, device=device)
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    is_done = [False] * B
    for step in range(1, max_new_tokens + 1):
        logprobs = model.decode(next_ids, memory, src_valid, cache)[:, -1].log_softmax(
            -1
        )  # (B*K, V)
        V = logprobs.shape[-1]
        candidates = (scores.view(B * K, 1) + logprobs).view(B, K * V)
        top_scores, top_index = candidates.topk(2 * K, dim=-1)  # (B, 2K)
        top_beam, top_token = top_index // V, top_index % V
        new_scores = torch.full((B, K), float("-inf"), device=device)
        new_rows = torch.zeros(B, K, dtype=torch.long, device=device)
        new_tokens = torch.full((B, K), config.pad_token_id, dtype=torch.long, device=device)
        for b in range(B):
            if is_done[b]:
                new_rows[b] = b * K  # keep the rows valid; their scores stay -inf
                continue
            live = 0
            for score, beam, token in zip(
                top_scores[b].tolist(), top_beam[b].tolist(), top_token[b].tolist(), strict=True
            ):
                row = b * K + beam
                if token == config.eos_token_id or step == max_new_tokens:
                    ids = tokens[row].tolist() + [token]
                    finished[b].append(Hypothesis(ids, score / len(ids) ** length_penalty))
                else:
                    new_scores[b, live], new_rows[b, live], new_tokens[b, live] = score, row, token
                    live += 1
                if live == K:
                    break
            best_live = new_scores[b].max().item() / (step + 1) ** length_penalty
            finished[b].sort(key=lambda h: h.score, reverse=True)
            if len(finished[b]) >= K and (live == 0 or finished[b][K - 1].score >= best_live):
                is_done[b] = True
        if all(is_done):
            break
        rows = new_rows.view(-1)
        cache.reorder(rows)
        tokens = torch.cat([tokens[rows], new_tokens.view(-1, 1)], dim=1)
        scores = new_scores
        next_ids = new_tokens.view(-1, 1)
    return [sorted(f, key=lambda h: h.score, reverse=True)[:num_hypotheses] for f in finished]
