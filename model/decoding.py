"""Decoding for evaluation and tests: the uncached reference greedy decoder (the oracle of every
equivalence test), and batched, cached greedy and beam search used by `model.evaluate`.

The serving engine schedules its own steps (service/engine); the tests check its tokens against
these plain offline versions. Its beams advance with the `BeamSearch` below, a step at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from model.transformer import Transformer


def pad_batch(sequences: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-padded ids (B, T) and the valid mask (B, T).

    The mask comes from the lengths, not from `pad_id`: GPT-2 has no pad token and pads with
    its EOS, which may also appear inside a prompt.
    """
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    lengths = torch.tensor([len(s) for s in sequences])
    return ids, torch.arange(length)[None, :] < lengths[:, None]


def repeated_ngram_tokens(tokens: list[int], n: int) -> list[int]:
    """The tokens that would end an n-gram already in `tokens` (`no_repeat_ngram_size` of
    `generate()` and CTranslate2): those that followed an earlier occurrence of the last
    n - 1 tokens. `tokens` is the whole decoder input: decoder start or prompt included."""
    if n <= 0 or len(tokens) < n - 1:
        return []
    last = tuple(tokens[len(tokens) - n + 1 :])
    return [
        tokens[i + n - 1]
        for i in range(len(tokens) - n + 1)
        if tuple(tokens[i : i + n - 1]) == last
    ]


def ban_repeated_ngrams(scores: Tensor, sequences: list[list[int]], n: int) -> Tensor:
    """`scores` (rows, V) with -inf for each row's `repeated_ngram_tokens` (a copy if any)."""
    banned = [
        (row, token) for row, seq in enumerate(sequences) for token in repeated_ngram_tokens(seq, n)
    ]
    if not banned:
        return scores
    rows, tokens = zip(*banned, strict=True)
    scores = scores.clone()
    scores[list(rows), list(tokens)] = float("-inf")
    return scores


@torch.inference_mode()
def greedy_reference(
    model: Transformer, input_ids: list[int], max_new_tokens: int, no_repeat_ngram_size: int = 0
) -> list[int]:
    """One sequence, no cache, no batching: recompute everything for each new token.

    Encoder-decoder: `input_ids` is the source; decoder-only: the prompt. Returns the new tokens
    (ending with EOS unless `max_new_tokens` was reached). `no_repeat_ngram_size` n > 0: no
    n-gram of the decoder's input occurs twice.
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
        logits = model.decode(torch.tensor([tokens], device=device), memory, last_only=True)
        logits = ban_repeated_ngrams(logits[:, -1], [tokens], no_repeat_ngram_size)
        next_id = int(logits[0].argmax())
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


class BeamSearch:
    """The beam search of one source, advanced a step at a time by whoever runs the model.

    The live beams are rows of the caller's batch. `advance` takes their next-token
    log-probabilities and returns, for each new live beam, the row it continues (its parent), so
    the caller can reorder its cache. A hypothesis ends at EOS; its score is its log-probability
    divided by length ** α (the new tokens, EOS included); only the `beam_size` best candidates
    of a step may end. The search is done when it has `beam_size` finished hypotheses and no live
    beam can still beat the worst of them (the usual heuristic: the live score at the current
    length). These are the rules of `transformers`' `generate(num_beams=K)` with its default
    `early_stopping=False`, so a converted Marian model gives its beams token for token. The
    engine and `beam_search_batch` both use this class, so they agree.
    """

    def __init__(self, beam_size: int, max_new_tokens: int, length_penalty: float, eos_id: int):
        self.beam_size = beam_size
        self.max_new_tokens = max_new_tokens
        self.length_penalty = length_penalty
        self.eos_id = eos_id
        self.scores: list[float] = [0.0]  # log-probability of each live beam; one at the start
        self.tokens: list[list[int]] = [[]]  # new tokens of each live beam
        self.finished: list[Hypothesis] = []  # best first
        self.num_steps = 0
        self.is_done = False

    def advance(self, logprobs: Tensor) -> list[int]:
        """`logprobs` (num_live, V): extend the beams; returns each new live beam's parent."""
        K, V = self.beam_size, logprobs.shape[-1]
        self.num_steps += 1
        step = self.num_steps
        scores = torch.tensor(self.scores, dtype=logprobs.dtype, device=logprobs.device)
        candidates = (scores[:, None] + logprobs).view(-1)  # (num_live * V,)
        top_scores, top_index = candidates.topk(min(2 * K, candidates.numel()))
        live_scores: list[float] = []
        live_tokens: list[list[int]] = []
        parents: list[int] = []
        for rank, (score, index) in enumerate(
            zip(top_scores.tolist(), top_index.tolist(), strict=True)
        ):
            parent, token = divmod(index, V)
            ids = self.tokens[parent] + [token]
            if token == self.eos_id or step == self.max_new_tokens:
                if rank < K:  # only the K best candidates may end (as fairseq and transformers)
                    self.finished.append(Hypothesis(ids, score / len(ids) ** self.length_penalty))
            else:
                live_scores.append(score)
                live_tokens.append(ids)
                parents.append(parent)
            if len(parents) == K:
                break
        self.finished.sort(key=lambda h: h.score, reverse=True)
        self.scores, self.tokens = live_scores, live_tokens
        if not parents:
            self.is_done = True
        elif len(self.finished) >= K:
            best_live = max(live_scores) / step**self.length_penalty
            self.is_done = self.finished[K - 1].score >= best_live
        return parents

    def best(self, n: int) -> list[Hypothesis]:
        """The `n` best hypotheses, best first. A search stopped before it is done (its
        deadline passed) also offers its live beams, scored at their length so far."""
        if self.is_done:
            return self.finished[:n]
        live = [
            Hypothesis(ids, score / len(ids) ** self.length_penalty)
            for ids, score in zip(self.tokens, self.scores, strict=True)
            if ids
        ]
        return sorted(self.finished + live, key=lambda h: h.score, reverse=True)[:n]


@torch.inference_mode()
def beam_search_batch(
    model: Transformer,
    sources: list[list[int]],
    beam_size: int = 4,
    max_new_tokens: int = 128,
    length_penalty: float = 1.0,
    num_hypotheses: int = 1,
    no_repeat_ngram_size: int = 0,
) -> list[list[Hypothesis]]:
    """Encoder-decoder beam search over a batch: B sources × K beams as rows of one cached batch.

    Returns the n-best hypotheses of each source, best first (see `BeamSearch`);
    `no_repeat_ngram_size` as in `greedy_reference`.
    """
    config = model.config
    device = model.embed.tokens.weight.device
    B, K = len(sources), beam_size
    src, src_valid = (t.to(device) for t in pad_batch(sources, config.pad_token_id))
    memory = model.encode(src, src_valid).repeat_interleave(K, 0)  # (B*K, S, D)
    src_valid = src_valid.repeat_interleave(K, 0)
    cache = model.new_cache(B * K, max_new_tokens)
    searches = [BeamSearch(K, max_new_tokens, length_penalty, config.eos_token_id) for _ in sources]
    next_ids = torch.full((B * K, 1), config.decoder_start_token_id, device=device)
    for _ in range(max_new_tokens):
        logprobs = model.decode(next_ids, memory, src_valid, cache)[:, -1].log_softmax(-1)
        rows: list[int] = []  # row b*K + i continues beam i of source b
        tokens: list[int] = []
        for b, search in enumerate(searches):
            parents: list[int] = []
            if not search.is_done:
                live = logprobs[b * K : b * K + len(search.scores)]
                sequences = [[config.decoder_start_token_id, *ids] for ids in search.tokens]
                parents = search.advance(ban_repeated_ngrams(live, sequences, no_repeat_ngram_size))
            padding = K - len(parents)  # rows of finished beams: kept valid, never read
            rows += [b * K + p for p in parents] + [b * K] * padding
            tokens += [ids[-1] for ids in search.tokens[: len(parents)]]
            tokens += [config.pad_token_id] * padding
        if all(search.is_done for search in searches):
            break
        cache.reorder(torch.tensor(rows, device=device))
        next_ids = torch.tensor(tokens, device=device)[:, None]
    return [search.best(num_hypotheses) for search in searches]
