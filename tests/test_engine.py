"""The engine against the uncached reference decoder: continuous batching, joining mid-flight,
paged cache, preemption, beams, sampling, stops, cancellation and deadlines (tiny random models)."""

import asyncio
import dataclasses
import itertools
import random
import threading

import pytest
import torch

from model.decoding import BeamSearch, beam_search_batch, greedy_reference, repeated_ngram_tokens
from model.paged import PagedKVCache
from model.tokenizer import Tokenizer, train_tokenizer
from service.engine import (
    AsyncEngine,
    EngineConfig,
    EngineOverloaded,
    EngineThread,
    FinishReason,
    LLMEngine,
    RequestTooLong,
    SamplingParams,
    SchedulerConfig,
)
from service.engine.runner import split_by_length
from tests.conftest import ARCHITECTURES, tiny_config, tiny_model

TEXTS = ["Open the file", "Save the document as PDF", "Größe ändern", "Datei öffnen"] * 20


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(train_tokenizer(TEXTS, vocab_size=300))


def make_engine(
    tokenizer, architecture, kv_cache_mb=4.0, block_size=4, attention_kernel=True, **scheduler
):
    model = tiny_model(architecture, vocab_size=tokenizer.vocab_size, max_positions=256)
    config = EngineConfig(
        kv_cache_mb=kv_cache_mb,
        block_size=block_size,
        attention_kernel=attention_kernel,
        scheduler=SchedulerConfig(**scheduler),
    )
    return LLMEngine(model, tokenizer, config)


def mb_for_blocks(num_blocks: int, block_size: int = 4) -> float:
    """A cache budget of `num_blocks` blocks of the tiny models (2 layers, d_model 32, fp32)."""
    return (
        num_blocks * PagedKVCache.bytes_per_block(tiny_config(), block_size, torch.float32) / 2**20
    )


def prompts(tokenizer, n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [
        [rng.randrange(4, tokenizer.vocab_size) for _ in range(rng.randrange(1, 20))]
        for _ in range(n)
    ]


def assert_cache_empty(engine: LLMEngine) -> None:
    assert engine.blocks.num_used == 0
    assert not engine.scheduler.running and not engine.scheduler.waiting


def greedy_joined_mid_flight(engine: LLMEngine, inputs: list[list[int]]) -> list[list[int]]:
    """Greedy tokens of each input, in order: the first runs 3 steps alone, then the rest join."""
    first = engine.add_request(inputs[0], GREEDY)
    for _ in range(3):
        engine.step()
    late = [engine.add_request(ids, GREEDY) for ids in inputs[1:]]
    done: dict[str, list[int]] = {}
    while engine.has_unfinished:
        done |= {o.request_id: o.token_ids for o in engine.step() if o.finished}
    return [done[r.request_id] for r in [first, *late]]


GREEDY = SamplingParams(max_new_tokens=24)


@pytest.mark.parametrize("attention_kernel", [True, False], ids=["kernel", "gather"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_greedy_batch_of_mixed_lengths_equals_reference_decoder(
    tokenizer, attention_kernel, architecture
):
    engine = make_engine(tokenizer, architecture, attention_kernel=attention_kernel)
    inputs = prompts(tokenizer, 12)
    outputs = engine.generate(inputs, GREEDY)
    for ids, output in zip(inputs, outputs, strict=True):
        assert output.token_ids == greedy_reference(engine.model, ids, 24)
        assert output.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert_cache_empty(engine)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_engine_equals_reference_decoder_in_that_dtype(
    tokenizer, architecture, dtype
):
    """CUDA's dtypes, run on the CPU (slow there, but a tiny model takes a moment): the cache,
    masks and sampler in half precision give the reference decoder's tokens in that dtype."""
    model = tiny_model(architecture, vocab_size=tokenizer.vocab_size, max_positions=256)
    engine = LLMEngine(model, tokenizer, EngineConfig(kv_cache_mb=4.0, block_size=4, dtype=dtype))
    assert engine.model.embed.tokens.weight.dtype == getattr(torch, dtype)
    assert engine.runner.cache.kv[0].dtype == getattr(torch, dtype)
    inputs = prompts(tokenizer, 8)
    for ids, output in zip(inputs, engine.generate(inputs, GREEDY), strict=True):
        assert output.token_ids == greedy_reference(engine.model, ids, 24)
    beams = SamplingParams(max_new_tokens=12, beam_size=3, num_hypotheses=2)
    sampled = SamplingParams(max_new_tokens=12, temperature=0.8, top_p=0.9, seed=3)
    for output in engine.generate(inputs[:3], beams) + engine.generate(inputs[:3], sampled):
        assert output.token_ids and output.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert_cache_empty(engine)


@pytest.mark.parametrize("attention_kernel", [True, False], ids=["kernel", "gather"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_request_joining_mid_flight_gets_same_tokens_as_alone(
    tokenizer, attention_kernel, architecture
):
    engine = make_engine(tokenizer, architecture, attention_kernel=attention_kernel)
    first, late = prompts(tokenizer, 2, seed=1)
    alone = engine.generate([late], GREEDY)[0].token_ids
    engine.add_request(first, GREEDY, request_id="first")
    for _ in range(5):
        engine.step()
    engine.add_request(late, GREEDY, request_id="late")
    finished = {}
    while engine.has_unfinished:
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
    assert finished["late"].token_ids == alone
    assert finished["first"].token_ids == greedy_reference(engine.model, first, 24)
    assert_cache_empty(engine)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_preemption_under_a_small_cache_recomputes_the_same_tokens(tokenizer, architecture):
    engine = make_engine(tokenizer, architecture, kv_cache_mb=mb_for_blocks(40))
    inputs = prompts(tokenizer, 10, seed=2)
    outputs = engine.generate(inputs, GREEDY)
    assert engine.scheduler.num_preemptions > 0
    for ids, output in zip(inputs, outputs, strict=True):
        assert output.token_ids == greedy_reference(engine.model, ids, 24)
    assert_cache_empty(engine)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_new_tokens=12, beam_size=2, num_hypotheses=2),
        SamplingParams(max_new_tokens=24, temperature=1.0, seed=11, ignore_eos=True),
    ],
    ids=["beams", "seeded"],
)
def test_preempted_beams_and_seeded_samples_resume_with_the_same_output(
    tokenizer, architecture, params
):
    small = make_engine(tokenizer, architecture, kv_cache_mb=mb_for_blocks(40))
    large = LLMEngine(small.model, tokenizer, EngineConfig(kv_cache_mb=4.0, block_size=4))
    inputs = prompts(tokenizer, 10, seed=2)
    preempted = small.generate(inputs, params)
    assert small.scheduler.num_preemptions > 0
    for output, expected in zip(preempted, large.generate(inputs, params), strict=True):
        assert output.token_ids == expected.token_ids
        assert [h.token_ids for h in output.hypotheses] == [
            h.token_ids for h in expected.hypotheses
        ]
    assert large.scheduler.num_preemptions == 0
    assert_cache_empty(small)


@torch.inference_mode()
def test_greedy_with_repetition_penalty_equals_a_reference_loop(tokenizer):
    engine = make_engine(tokenizer, "decoder-only")
    prompt, penalty = [5, 6, 7], 1.8
    params = SamplingParams(max_new_tokens=12, repetition_penalty=penalty, ignore_eos=True)
    (output,) = engine.generate([prompt], params)
    tokens = list(prompt)
    for _ in range(12):  # the uncached model, the penalty over prompt and output (as HF's)
        logits = engine.model(torch.tensor([tokens]))[0, -1]
        seen = torch.tensor(sorted(set(tokens)))
        picked = logits[seen]
        logits[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
        tokens.append(int(logits.argmax()))
    assert output.token_ids == tokens[len(prompt) :]
    (plain,) = engine.generate([prompt], dataclasses.replace(params, repetition_penalty=1.0))
    assert plain.token_ids != output.token_ids  # the penalty did change the output
    assert_cache_empty(engine)


@torch.inference_mode()
def test_greedy_with_presence_and_frequency_penalties_equals_a_reference_loop(tokenizer):
    engine = make_engine(tokenizer, "decoder-only")
    prompt = [5, 6, 7]
    params = SamplingParams(
        max_new_tokens=12, presence_penalty=0.5, frequency_penalty=1.5, ignore_eos=True
    )
    (output,) = engine.generate([prompt], params)
    tokens = list(prompt)
    for _ in range(12):  # the uncached model, the penalties over the output only (as OpenAI's)
        logits = engine.model(torch.tensor([tokens]))[0, -1]
        for token in set(tokens[len(prompt) :]):
            logits[token] -= 1.5 * tokens[len(prompt) :].count(token) + 0.5
        tokens.append(int(logits.argmax()))
    assert output.token_ids == tokens[len(prompt) :]
    (plain,) = engine.generate([prompt], dataclasses.replace(params, frequency_penalty=0.0))
    assert plain.token_ids != output.token_ids  # the penalties did change the output
    assert_cache_empty(engine)


def has_repeated_ngram(tokens: list[int], n: int) -> bool:
    ngrams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(ngrams)) < len(ngrams)


def test_repeated_ngram_tokens_are_those_that_followed_the_last_n_minus_1():
    assert repeated_ngram_tokens([1, 5, 6, 5], 2) == [6]  # "5 6" is there: 6 may not follow 5
    assert repeated_ngram_tokens([5, 6, 7, 5, 6], 3) == [7]
    assert repeated_ngram_tokens([5, 6, 5, 7, 5], 2) == [6, 7]
    assert repeated_ngram_tokens([5, 5], 1) == [5, 5]  # n = 1: no token twice
    assert repeated_ngram_tokens([5, 6, 7], 2) == [] and repeated_ngram_tokens([5], 3) == []
    assert repeated_ngram_tokens([5, 6, 5], 0) == []


@torch.inference_mode()
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_no_repeat_ngram_size_equals_the_reference_decoder_batched_and_joined(
    tokenizer, architecture
):
    engine = make_engine(tokenizer, architecture)
    inputs = prompts(tokenizer, 6, seed=3)
    params = SamplingParams(max_new_tokens=24, no_repeat_ngram_size=2)
    expected = [greedy_reference(engine.model, ids, 24, no_repeat_ngram_size=2) for ids in inputs]
    assert [o.token_ids for o in engine.generate(inputs, params)] == expected
    first = engine.add_request(inputs[0], params)
    engine.step()
    late = engine.add_request(inputs[1], params)
    done: dict[str, list[int]] = {}
    while engine.has_unfinished:
        done |= {o.request_id: o.token_ids for o in engine.step() if o.finished}
    assert [done[first.request_id], done[late.request_id]] == expected[:2]
    for ids, tokens in zip(inputs, expected, strict=True):  # decoder start or prompt included
        context = [engine.model.config.decoder_start_token_id] if engine.is_encoder_decoder else ids
        assert not has_repeated_ngram(context + tokens, 2)
    plain = engine.generate(inputs, dataclasses.replace(params, no_repeat_ngram_size=0))
    assert any(has_repeated_ngram(o.token_ids, 2) for o in plain)  # a random model repeats
    assert_cache_empty(engine)


@torch.inference_mode()
def test_no_repeat_ngram_size_in_beam_search_equals_beam_search_alone(tokenizer):
    engine = make_engine(tokenizer, "encoder-decoder")
    sources = prompts(tokenizer, 6, seed=5)
    params = SamplingParams(
        max_new_tokens=20, beam_size=4, num_hypotheses=2, no_repeat_ngram_size=2
    )
    outputs = engine.generate(sources, params)
    expected = beam_search_batch(engine.model, sources, 4, 20, 1.0, 2, no_repeat_ngram_size=2)
    assert [[h.token_ids for h in o.hypotheses] for o in outputs] == [
        [h.token_ids for h in hyps] for hyps in expected
    ]
    assert not any(has_repeated_ngram(o.token_ids, 2) for o in outputs)
    plain = beam_search_batch(engine.model, sources, 4, 20, 1.0, 2)
    assert any(has_repeated_ngram(hyps[0].token_ids, 2) for hyps in plain)
    assert_cache_empty(engine)


@torch.inference_mode()
def test_prompt_logprobs_score_generated_tokens_as_the_engine_did(tokenizer):
    """`prompt_logprobs` (the plain model over a prompt) of a prompt and its greedy output: the
    output's logprobs are what the engine's cached steps gave them."""
    engine = make_engine(tokenizer, "decoder-only")
    prompt = [5, 6, 7, 8]
    params = SamplingParams(max_new_tokens=10, ignore_eos=True, num_top_logprobs=3)
    (output,) = engine.generate([prompt], params)
    logprobs, top = engine.prompt_logprobs(prompt + output.token_ids, num_top=3)
    assert logprobs[0] is None and top[0] is None
    assert logprobs[len(prompt) :] == pytest.approx(output.logprobs, abs=1e-4)
    for step, expected in zip(top[len(prompt) :], output.top_logprobs, strict=True):
        assert step.keys() == expected.keys()  # the 3 likeliest, and the chosen one
    whole = engine.model(torch.tensor([prompt]))[0].log_softmax(-1)
    assert logprobs[1:4] == pytest.approx([float(whole[i, prompt[i + 1]]) for i in range(3)])
    with pytest.raises(ValueError):
        make_engine(tokenizer, "encoder-decoder").prompt_logprobs(prompt)


def test_a_finished_requests_id_used_again_gets_its_own_source(tokenizer):
    """The runner keeps the gathered cross-attention K/V while the batch's requests stay the
    same: a new request with an old id, in the old one's blocks, is not the same request."""
    engine = make_engine(tokenizer, "encoder-decoder")
    old, new = [5, 6, 7], [39, 40, 41]
    assert greedy_reference(engine.model, old, 10) != greedy_reference(engine.model, new, 10)
    engine.add_request([50, 60, 70], SamplingParams(max_new_tokens=30, ignore_eos=True), "b")
    engine.add_request(old, SamplingParams(max_new_tokens=2, ignore_eos=True), "a")
    engine.step()
    engine.step()  # "a" finishes: its blocks are free for the next one
    engine.add_request(new, SamplingParams(max_new_tokens=10, ignore_eos=True), "a")
    finished = {}
    while engine.has_unfinished:
        finished |= {o.request_id: o for o in engine.step() if o.finished}
    assert finished["a"].token_ids == greedy_reference(engine.model, new, 10)
    assert_cache_empty(engine)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_reserving_full_length_never_preempts_and_gives_the_same_tokens(tokenizer, architecture):
    engine = make_engine(
        tokenizer, architecture, kv_cache_mb=mb_for_blocks(40), reserve_full_length=True
    )
    inputs = prompts(tokenizer, 10, seed=2)
    outputs = engine.generate(inputs, GREEDY)
    assert engine.scheduler.num_preemptions == 0
    for ids, output in zip(inputs, outputs, strict=True):
        assert output.token_ids == greedy_reference(engine.model, ids, 24)
    assert_cache_empty(engine)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_static_batching_gives_the_same_tokens(tokenizer, architecture):
    engine = make_engine(tokenizer, architecture, static_batching=True, max_running_requests=4)
    inputs = prompts(tokenizer, 9, seed=3)
    outputs = engine.generate(inputs, GREEDY)
    for ids, output in zip(inputs, outputs, strict=True):
        assert output.token_ids == greedy_reference(engine.model, ids, 24)
    assert_cache_empty(engine)


def test_static_batching_admits_no_one_until_the_batch_is_done(tokenizer):
    engine = make_engine(tokenizer, "encoder-decoder", static_batching=True)
    engine.add_request([5, 6, 7], SamplingParams(max_new_tokens=10, ignore_eos=True))
    engine.step()
    engine.add_request([8, 9], SamplingParams(max_new_tokens=10, ignore_eos=True))
    for _ in range(5):
        engine.step()
        assert len(engine.scheduler.running) == 1 and len(engine.scheduler.waiting) == 1
    engine.generate([], GREEDY)  # drain
    assert_cache_empty(engine)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_seeded_sampling_is_identical_alone_and_in_a_batch(tokenizer, architecture):
    engine = make_engine(tokenizer, architecture)
    params = SamplingParams(max_new_tokens=20, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    target, *others = prompts(tokenizer, 6, seed=4)
    alone = engine.generate([target], params)[0].token_ids
    other_params = SamplingParams(max_new_tokens=20, temperature=1.5, seed=1)
    for other in others:
        engine.add_request(other, other_params)
    in_batch = engine.generate([target], params)[0].token_ids
    assert in_batch == alone
    unseeded = [
        engine.generate([target], SamplingParams(max_new_tokens=20, temperature=1.0))[0].token_ids
        for _ in range(3)
    ]
    assert any(u != alone for u in unseeded), "unseeded requests should vary"
    assert_cache_empty(engine)


@pytest.mark.parametrize(
    "extreme",
    [
        dict(temperature=1e-300),
        dict(temperature=1.0, top_p=1e-300),
        dict(temperature=1.0, repetition_penalty=1e-300),
        dict(temperature=1.0, repetition_penalty=1e300),
        dict(temperature=1e300, seed=2**64 + 5),
    ],
)
def test_extreme_sampling_values_sample_without_failing(tokenizer, extreme):
    engine = make_engine(tokenizer, "decoder-only")
    params = SamplingParams(max_new_tokens=8, ignore_eos=True, **({"seed": 3} | extreme))
    (output,) = engine.generate([[5, 6, 7]], params)
    assert output.finish_reason == FinishReason.LENGTH
    assert len(output.token_ids) == 8
    if extreme.get("temperature") == 1e-300:  # as good as greedy
        greedy = engine.generate([[5, 6, 7]], SamplingParams(max_new_tokens=8, ignore_eos=True))
        assert output.token_ids == greedy[0].token_ids
    assert_cache_empty(engine)


def test_a_request_that_fails_finishes_alone_and_the_batch_goes_on(tokenizer, monkeypatch):
    engine = make_engine(tokenizer, "encoder-decoder")
    greedy = SamplingParams(max_new_tokens=10, ignore_eos=True)
    alone = engine.generate([[5, 6, 7]], greedy)[0].token_ids
    sampled = SamplingParams(max_new_tokens=10, ignore_eos=True, temperature=1.0)

    def broken(logits, request):
        raise RuntimeError("sampler broke")

    monkeypatch.setattr("service.engine.engine.sample", broken)
    first = engine.add_request([5, 6, 7], greedy)
    second = engine.add_request([8, 9], sampled)
    finished = {}
    while engine.has_unfinished:
        finished |= {o.request_id: o for o in engine.step() if o.finished}
    assert finished[first.request_id].token_ids == alone
    failed = finished[second.request_id]
    assert failed.finish_reason == FinishReason.ERROR and "sampler broke" in (failed.error or "")
    assert_cache_empty(engine)


def test_a_failing_step_hook_loses_no_output(tokenizer, monkeypatch):
    """Outputs of a step are delivered even when the metrics hook raises, and a failure in the
    batch's log-softmax finishes the step's requests with an error instead of losing them."""
    engine = make_engine(tokenizer, "encoder-decoder")
    engine.on_step = lambda stats: 1 / 0
    (output,) = engine.generate([[5, 6, 7]], SamplingParams(max_new_tokens=4, ignore_eos=True))
    assert len(output.token_ids) == 4

    def broken(logits, ran):
        raise RuntimeError("log-softmax broke")

    monkeypatch.setattr(engine, "_log_softmax_and_greedy", broken)
    (failed,) = engine.generate([[5, 6, 7]], GREEDY)
    assert failed.finish_reason == FinishReason.ERROR and "log-softmax broke" in (
        failed.error or ""
    )
    assert_cache_empty(engine)


@pytest.mark.parametrize("attention_kernel", [True, False], ids=["kernel", "gather"])
@pytest.mark.parametrize("length_penalty", [1.0, 0.6])
def test_beam_search_in_the_batcher_equals_beam_search_alone(
    tokenizer, attention_kernel, length_penalty
):
    engine = make_engine(tokenizer, "encoder-decoder", attention_kernel=attention_kernel)
    sources = prompts(tokenizer, 8, seed=5)
    params = SamplingParams(
        max_new_tokens=16, beam_size=4, num_hypotheses=3, length_penalty=length_penalty
    )
    outputs = engine.generate(sources, params)
    for src, output in zip(sources, outputs, strict=True):
        (expected,) = beam_search_batch(
            engine.model, [src], 4, 16, length_penalty, num_hypotheses=3
        )
        assert [h.token_ids for h in output.hypotheses] == [h.token_ids for h in expected]
        assert [h.score for h in output.hypotheses] == pytest.approx(
            [h.score for h in expected], rel=1e-4
        )
        scores = [h.score for h in output.hypotheses]
        assert scores == sorted(scores, reverse=True)
        assert output.token_ids == output.hypotheses[0].token_ids
    assert_cache_empty(engine)


@torch.inference_mode()
def decoder_only_beam_reference(model, prompt: list[int], params: SamplingParams) -> list:
    """Beam search with the uncached model: every live beam re-runs prompt + its tokens."""
    eos = model.config.eos_token_id
    search = BeamSearch(params.beam_size, params.max_new_tokens, params.length_penalty, eos)
    while not search.is_done:
        rows = torch.tensor([prompt + tokens for tokens in search.tokens])
        search.advance(model(rows)[:, -1].log_softmax(-1))
    return search.best(params.num_hypotheses)


@pytest.mark.parametrize("attention_kernel", [True, False], ids=["kernel", "gather"])
def test_decoder_only_beam_search_in_the_batcher_equals_the_uncached_reference(
    tokenizer, attention_kernel
):
    engine = make_engine(tokenizer, "decoder-only", attention_kernel=attention_kernel)
    inputs = prompts(tokenizer, 6, seed=8)
    params = SamplingParams(max_new_tokens=10, beam_size=3, num_hypotheses=2, length_penalty=0.8)
    outputs = engine.generate(inputs, params)
    for prompt, output in zip(inputs, outputs, strict=True):
        expected = decoder_only_beam_reference(engine.model, prompt, params)
        assert [h.token_ids for h in output.hypotheses] == [h.token_ids for h in expected]
        assert [h.score for h in output.hypotheses] == pytest.approx(
            [h.score for h in expected], rel=1e-4
        )
    assert_cache_empty(engine)


@pytest.mark.parametrize("attention_kernel", [True, False], ids=["kernel", "gather"])
def test_mixed_beam_sizes_and_greedy_in_one_batch_equal_each_alone(tokenizer, attention_kernel):
    """Rows of requests with 4, 2 and 1 beams (cross-attention K/V per beam row), which turn
    into batches of one beam count (K/V shared by each request's beams) as requests finish."""
    engine = make_engine(tokenizer, "encoder-decoder", attention_kernel=attention_kernel)
    sources = prompts(tokenizer, 6, seed=12)
    sizes = [4, 2, 1, 4, 1, 2]
    params = [SamplingParams(max_new_tokens=8 + 3 * i, beam_size=n) for i, n in enumerate(sizes)]
    first = [engine.add_request(src, p) for src, p in zip(sources[:3], params[:3], strict=True)]
    engine.step()
    late = [engine.add_request(src, p) for src, p in zip(sources[3:], params[3:], strict=True)]
    done: dict[str, list[int]] = {}
    while engine.has_unfinished:
        done |= {o.request_id: o.token_ids for o in engine.step() if o.finished}
    for src, p, request in zip(sources, params, first + late, strict=True):
        if p.beam_size == 1:
            expected = greedy_reference(engine.model, src, p.max_new_tokens)
        else:
            (best,) = beam_search_batch(engine.model, [src], p.beam_size, p.max_new_tokens, 1.0)[0]
            expected = best.token_ids
        assert done[request.request_id] == expected
    assert_cache_empty(engine)


def test_split_by_length_cuts_where_padding_is_wasted():
    """Requests longest first, `rows` beams each: runs padded to their own longest row."""
    assert split_by_length([100, 90, 10, 9], [1, 1, 1, 1], 0, 2) == [(0, 2), (2, 4)]
    assert split_by_length([100, 90, 10, 9], [1, 1, 1, 1], 10**6, 4) == [(0, 4)]  # not worth it
    assert split_by_length([50, 50, 50], [4, 4, 4], 0, 4) == [(0, 3)]  # nothing to save
    assert split_by_length([30, 20, 10], [1, 1, 4], 0, 2) == [(0, 2), (2, 3)]  # beams weigh
    runs = split_by_length(list(range(64, 0, -1)), [1] * 64, 0, 4)
    assert len(runs) == 4 and runs[0][0] == 0 and runs[-1][1] == 64
    assert all(a < b == c for (a, b), (c, _) in zip(runs, runs[1:], strict=False))  # in order


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_rows_read_in_length_groups_give_the_same_tokens(tokenizer, architecture, monkeypatch):
    """Every split taken (a saving of 1 is enough): requests joining at different steps, so of
    different lengths, greedy and (translation) beam 4, each equal to the request alone."""
    engine = make_engine(tokenizer, architecture, attention_kernel=False)  # the gather path's
    engine.runner.min_split_saving = 1
    num_runs: list[int] = []

    def spy(*args):
        runs = split_by_length(*args)
        num_runs.append(len(runs))
        return runs

    monkeypatch.setattr("service.engine.runner.split_by_length", spy)
    sources = prompts(tokenizer, 9, seed=21)
    beams = [4, 1, 1] * 3 if architecture == "encoder-decoder" else [1] * 9
    params = [SamplingParams(max_new_tokens=12 + 2 * i, beam_size=n) for i, n in enumerate(beams)]
    requests, done = [], {}
    for wave in range(3):
        for src, p in zip(sources[wave::3], params[wave::3], strict=True):
            requests.append((engine.add_request(src, p).request_id, src, p))
        for _ in range(4):
            done |= {o.request_id: o.token_ids for o in engine.step() if o.finished}
    while engine.has_unfinished:
        done |= {o.request_id: o.token_ids for o in engine.step() if o.finished}
    assert max(num_runs) >= 3, "three waves of requests: rows of three lengths, read apart"
    for request_id, src, p in requests:
        if p.beam_size == 1:
            expected = greedy_reference(engine.model, src, p.max_new_tokens)
        else:
            (best,) = beam_search_batch(engine.model, [src], p.beam_size, p.max_new_tokens, 1.0)[0]
            expected = best.token_ids
        assert done[request_id] == expected, request_id
    assert_cache_empty(engine)


def mixed_inputs(tokenizer, lengths=(40, 1, 23, 7, 31, 2, 15, 9)) -> list[list[int]]:
    rng = random.Random(5)
    return [[rng.randrange(4, tokenizer.vocab_size) for _ in range(n)] for n in lengths]


def test_sources_encoded_packed_give_the_same_tokens(tokenizer, monkeypatch):
    """Admitted in one step, sources of 1-40 tokens are encoded end to end without padding, at
    most `max_packed_tokens` per forward; greedy and beam 4 tokens equal the reference's."""
    engine = make_engine(tokenizer, "encoder-decoder")
    engine.runner.max_packed_tokens = 50
    packed: list[list[int]] = []
    encode_packed = engine.model.encode_packed

    def spy(sources):
        packed.append([len(s) for s in sources])
        return encode_packed(sources)

    monkeypatch.setattr(engine.model, "encode_packed", spy)
    inputs = mixed_inputs(tokenizer)
    outputs = engine.generate(inputs, GREEDY)
    assert packed == [[40, 1], [23, 7], [31, 2, 15], [9]]
    for ids, output in zip(inputs, outputs, strict=True):
        assert output.token_ids == greedy_reference(engine.model, ids, 24)
    beam = SamplingParams(max_new_tokens=12, beam_size=4)
    for ids, output in zip(inputs, engine.generate(inputs, beam), strict=True):
        (best,) = beam_search_batch(engine.model, [ids], 4, 12, 1.0)[0]  # alone
        assert output.token_ids == best.token_ids
    assert_cache_empty(engine)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_sources_encoded_ahead_join_later_with_the_same_tokens(tokenizer, monkeypatch, beam_size):
    """Two running slots, eight requests: the first step encodes six sources (two admitted, four
    ahead), which join later steps already encoded; each request's tokens equal the reference's."""
    engine = make_engine(tokenizer, "encoder-decoder", max_running_requests=2, encode_ahead=6)
    packed: list[int] = []
    encode_packed = engine.model.encode_packed
    monkeypatch.setattr(
        engine.model,
        "encode_packed",
        lambda sources: packed.append(len(sources)) or encode_packed(sources),
    )
    inputs = mixed_inputs(tokenizer)
    params = SamplingParams(max_new_tokens=12, beam_size=beam_size)
    outputs = engine.generate(inputs, params)
    assert packed[0] == 6 and sum(packed) == len(inputs), packed
    for ids, output in zip(inputs, outputs, strict=True):
        if beam_size == 1:
            assert output.token_ids == greedy_reference(engine.model, ids, 12)
        else:
            (best,) = beam_search_batch(engine.model, [ids], beam_size, 12, 1.0)[0]
            assert output.token_ids == best.token_ids
    assert_cache_empty(engine)


def test_a_failed_step_encodes_its_waiting_sources_again(tokenizer, monkeypatch):
    """The step that was to encode them ahead fails: the two it admitted finish with the error,
    the waiting ones are encoded again when admitted, and give the reference's tokens."""
    engine = make_engine(tokenizer, "encoder-decoder", max_running_requests=2, encode_ahead=4)
    inputs = mixed_inputs(tokenizer)[:4]
    requests = [engine.add_request(ids, GREEDY) for ids in inputs]
    write_cross_kv = engine.model.write_cross_kv

    def broken(*args):
        monkeypatch.setattr(engine.model, "write_cross_kv", write_cross_kv)  # once
        raise RuntimeError("encoder broke")

    monkeypatch.setattr(engine.model, "write_cross_kv", broken)
    finished = {}
    while engine.has_unfinished:
        finished |= {o.request_id: o for o in engine.step() if o.finished}
    for request, ids in zip(requests, inputs, strict=True):
        output = finished[request.request_id]
        if request in requests[:2]:
            assert output.finish_reason == FinishReason.ERROR and "encoder broke" in output.error
        else:
            assert output.token_ids == greedy_reference(engine.model, ids, 24)
    assert_cache_empty(engine)


def test_prompts_prefilled_in_length_groups_give_the_same_tokens(tokenizer, monkeypatch):
    """Admitted in one step, prompts of 1-40 tokens are prefilled in 4 forwards of similar
    lengths, each padded to its own longest; each request's tokens equal the reference's."""
    engine = make_engine(tokenizer, "decoder-only")
    engine.runner.min_prefill_split_saving = 1
    sizes: list[list[int]] = []
    length_groups = engine.runner.length_groups

    def spy(requests):
        groups = length_groups(requests)
        sizes.append([len(g[0].input_ids) for g in groups])
        return groups

    monkeypatch.setattr(engine.runner, "length_groups", spy)
    inputs = mixed_inputs(tokenizer)
    outputs = engine.generate(inputs, GREEDY)
    assert len(sizes) == 1 and len(sizes[0]) == 4 and sizes[0][0] == 40, sizes
    for ids, output in zip(inputs, outputs, strict=True):
        assert output.token_ids == greedy_reference(engine.model, ids, 24)
    assert_cache_empty(engine)


def test_beams_share_blocks_until_they_diverge(tokenizer):
    engine = make_engine(tokenizer, "encoder-decoder", block_size=8)
    engine.add_request([5, 6, 7, 8], SamplingParams(max_new_tokens=30, beam_size=4))
    for _ in range(4):
        engine.step()
    (request,) = engine.scheduler.running
    tables = [tuple(b.block_table) for b in request.beams]
    held = len({b for t in tables for b in t})
    assert held < sum(len(t) for t in tables), "beams should share their first block"
    engine.generate([], GREEDY)
    assert_cache_empty(engine)


def test_stop_string_ends_the_text_before_it(tokenizer):
    engine = make_engine(tokenizer, "decoder-only")
    free = engine.generate(["Open"], SamplingParams(max_new_tokens=30, ignore_eos=True))[0]
    assert len(free.text) > 4
    stop = free.text[2:4]
    stopped = engine.generate(["Open"], SamplingParams(max_new_tokens=30, stop=(stop,)))[0]
    assert stopped.finish_reason == FinishReason.STOP
    assert stopped.text == free.text[: free.text.index(stop)]
    assert_cache_empty(engine)


def test_a_stop_string_in_the_final_flush_finishes_with_stop(tokenizer):
    engine = make_engine(tokenizer, "decoder-only")
    vocab = tokenizer.hf.get_vocab()
    ids = [vocab[c] for c in "ĠGr\u00c3"]  # byte-level " Gr" and the first byte of "ö"
    force_tokens(engine, ids)
    params = SamplingParams(max_new_tokens=len(ids), stop=("\ufffd",))  # the flush renders it
    (output,) = engine.generate(["Open"], params)
    assert output.token_ids == ids and output.stopped_on == "\ufffd"
    assert output.text == " Gr" and output.finish_reason == FinishReason.STOP


def test_stop_token_min_and_max_new_tokens(tokenizer):
    engine = make_engine(tokenizer, "decoder-only")
    free = engine.generate([[9, 10]], SamplingParams(max_new_tokens=12, ignore_eos=True))[0]
    assert len(free.token_ids) == 12 and free.finish_reason == FinishReason.LENGTH
    stop_id = free.token_ids[3]
    first = free.token_ids.index(stop_id)
    stopped = engine.generate(
        [[9, 10]], SamplingParams(max_new_tokens=12, stop_token_ids=(stop_id,), ignore_eos=True)
    )[0]
    assert stopped.token_ids == free.token_ids[: first + 1]
    assert stopped.finish_reason == FinishReason.STOP
    assert engine.tokenizer.decode([stop_id])  # a token with text, which the output leaves out
    assert stopped.text == engine.tokenizer.decode(free.token_ids[:first])
    kept = engine.generate(  # unless it keeps the stop strings' text (vLLM's option)
        [[9, 10]],
        SamplingParams(
            max_new_tokens=12, stop_token_ids=(stop_id,), ignore_eos=True, include_stop_string=True
        ),
    )[0]
    assert kept.token_ids == stopped.token_ids
    assert kept.text == engine.tokenizer.decode(free.token_ids[: first + 1])
    at_least = engine.generate(
        [[9, 10]],
        SamplingParams(max_new_tokens=12, min_new_tokens=first + 2, stop_token_ids=(stop_id,)),
    )[0]
    assert stop_id not in at_least.token_ids[: first + 2]
    assert_cache_empty(engine)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_streamed_deltas_concatenate_to_the_final_text(tokenizer, architecture):
    engine = make_engine(tokenizer, architecture)
    request = engine.add_request("Datei", SamplingParams(max_new_tokens=30, ignore_eos=True))
    deltas, final = [], None
    while engine.has_unfinished:
        for output in engine.step():
            assert output.request_id == request.request_id
            deltas.append(output.text_delta)
            final = output
    assert final is not None and final.finished
    assert "".join(deltas) == final.text == tokenizer.decode(final.token_ids)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_abort_frees_every_block_within_one_step(tokenizer, architecture):
    engine = make_engine(tokenizer, architecture)
    keep = engine.add_request([5, 6, 7], SamplingParams(max_new_tokens=40, ignore_eos=True))
    gone = engine.add_request([8, 9, 10, 11], SamplingParams(max_new_tokens=40, beam_size=3))
    waiting = engine.add_request([12], GREEDY)
    for _ in range(3):
        engine.step()
    used = engine.blocks.num_used
    engine.abort(gone.request_id)
    outputs = {o.request_id: o for o in engine.step()}
    assert outputs[gone.request_id].finish_reason == FinishReason.CANCELLED
    assert engine.blocks.num_used < used
    engine.abort(keep.request_id)
    engine.abort(waiting.request_id)
    engine.step()
    assert_cache_empty(engine)


def test_deadline_finishes_with_timeout_and_frees_the_cache(tokenizer):
    engine = make_engine(tokenizer, "encoder-decoder")
    request = engine.add_request(
        [5, 6], SamplingParams(max_new_tokens=100, ignore_eos=True, timeout_s=0.0)
    )
    (output,) = engine.step()
    assert output.request_id == request.request_id
    assert output.finish_reason == FinishReason.TIMEOUT
    assert_cache_empty(engine)


def test_a_beam_search_cut_by_its_deadline_returns_its_best_beams_so_far(tokenizer):
    engine = make_engine(tokenizer, "encoder-decoder")
    params = SamplingParams(max_new_tokens=100, beam_size=4, num_hypotheses=3)
    request = engine.add_request([5, 6, 7], params)
    run, eos = engine.runner.run, engine.model_config.eos_token_id

    @torch.inference_mode()
    def never_eos(prefill, decode, encode=()):  # so no beam finishes before the deadline
        logits = run(prefill, decode, encode)
        for x in logits:
            x[:, eos] = float("-inf")
        return logits

    engine.runner.run = never_eos
    for _ in range(6):
        engine.step()
    search = request.beam_search
    assert search is not None and not search.finished and len(search.tokens[0]) == 6
    request.deadline = 0.0  # it has passed
    (output,) = engine.step()
    assert output.finish_reason == FinishReason.TIMEOUT
    assert len(output.hypotheses) == 3
    scores = [h.score for h in output.hypotheses]
    assert scores == sorted(scores, reverse=True)
    best = max(zip(search.scores, search.tokens, strict=True))[1]  # the likeliest live beam
    assert output.token_ids == output.hypotheses[0].token_ids == best
    assert output.text == tokenizer.decode(best) != ""
    assert_cache_empty(engine)


def test_input_too_long_and_overload_are_refused_up_front(tokenizer):
    engine = make_engine(
        tokenizer, "encoder-decoder", max_running_requests=1, max_waiting_requests=2
    )
    with pytest.raises(RequestTooLong, match="300 tokens is longer than the 256") as refused:
        engine.add_request([5] * 300, GREEDY)
    assert refused.value.field == "input"
    with pytest.raises(RequestTooLong, match="300 new tokens do not fit .* at most 255") as refused:
        engine.add_request([5] * 10, SamplingParams(max_new_tokens=300))
    assert refused.value.field == "max_new_tokens"  # the input alone would fit
    # A burst between two steps may fill the free running slot as well as the queue
    five = SamplingParams(max_new_tokens=5, ignore_eos=True)
    for token in (5, 6, 7):
        engine.add_request([token], five)
    with pytest.raises(EngineOverloaded):
        engine.add_request([8], GREEDY)
    engine.step()  # one runs, two wait: the queue is full
    assert (len(engine.scheduler.running), len(engine.scheduler.waiting)) == (1, 2)
    with pytest.raises(EngineOverloaded):
        engine.add_request([8], GREEDY)
    engine.generate([], GREEDY)
    assert_cache_empty(engine)


def test_timings_are_ordered_and_sum_up(tokenizer):
    engine = make_engine(tokenizer, "encoder-decoder")
    (output,) = engine.generate(["Open the file"], GREEDY)
    t = output.timings_ms
    assert min(t.values()) >= 0
    assert t["queue_ms"] + t["prefill_ms"] + t["decode_ms"] == pytest.approx(t["total_ms"])
    assert output.num_input_tokens == len(tokenizer.encode("Open the file")) + 1


def test_async_engine_streams_and_a_consumer_that_leaves_aborts(tokenizer):
    engine = make_engine(tokenizer, "decoder-only")
    async_engine = AsyncEngine(engine)
    async_engine.start()

    async def scenario():
        params = SamplingParams(max_new_tokens=20, ignore_eos=True)
        outputs = [o async for o in async_engine.generate([5, 6], params)]
        assert outputs[-1].finished and len(outputs[-1].token_ids) == 20
        long = SamplingParams(max_new_tokens=200, ignore_eos=True)
        stream = async_engine.generate([7, 8], long, request_id="leaver")
        async for _ in stream:
            break
        leaver = engine._requests["leaver"]
        await stream.aclose()  # the client went away
        for _ in range(100):
            if engine.blocks.num_used == 0 and not engine.has_unfinished:
                break
            await asyncio.sleep(0.01)
        assert leaver.finish_reason == FinishReason.CANCELLED
        # Dropped without ever being read (an HTTP response whose body never started): an
        # async generator that never started runs no `finally`, and yet the request is aborted.
        unread = async_engine.generate([9, 10], long, request_id="unread")
        request = engine._requests["unread"]
        del unread
        for _ in range(100):
            if engine.blocks.num_used == 0 and not engine.has_unfinished:
                break
            await asyncio.sleep(0.01)
        assert request.finish_reason == FinishReason.CANCELLED

    try:
        asyncio.run(scenario())
        assert_cache_empty(engine)
    finally:
        async_engine.shutdown()


def test_two_models_on_one_engine_thread_give_their_tokens_alone(tokenizer):
    """A translator and a generator stepped in turn by one EngineThread, their requests all in
    flight at once: each request's tokens are those of its engine run alone."""
    engines = {a: make_engine(tokenizer, a) for a in ARCHITECTURES}
    prompts = {a: [[5, 6, 7], [8, 9], [10, 11, 12, 13]] for a in ARCHITECTURES}
    alone = {a: [o.token_ids for o in engines[a].generate(prompts[a], GREEDY)] for a in engines}
    thread = EngineThread()
    async_engines = {a: AsyncEngine(engine, thread) for a, engine in engines.items()}
    for async_engine in async_engines.values():
        async_engine.start()
    stepped_on = set()
    step = LLMEngine.step

    def recorded_step(engine):
        stepped_on.add(threading.current_thread().name)
        return step(engine)

    async def run(a, prompt):
        return [o async for o in async_engines[a].generate(prompt, GREEDY)][-1].token_ids

    async def scenario():
        runs = [run(a, p) for a in ARCHITECTURES for p in prompts[a]]
        return await asyncio.gather(*runs)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(LLMEngine, "step", recorded_step)
            together = asyncio.run(scenario())
        assert together == [ids for a in ARCHITECTURES for ids in alone[a]]
        assert stepped_on == {"engine"}
        assert thread.call(threading.current_thread) is thread._thread
        with pytest.raises(ZeroDivisionError):  # a job's error reaches its caller
            thread.call(lambda: 1 / 0)
        for engine in engines.values():
            assert_cache_empty(engine)
    finally:
        for async_engine in async_engines.values():
            async_engine.shutdown()
    assert not any(e.is_running for e in async_engines.values())
    with pytest.raises(RuntimeError, match="stopped"):  # no thread left to run it
        thread.call(print)


def test_fit_max_new_tokens_lowers_the_limit_to_the_positions_left(tokenizer):
    model = tiny_model("decoder-only", vocab_size=tokenizer.vocab_size, max_positions=32)
    engine = LLMEngine(model, tokenizer, EngineConfig(kv_cache_mb=4, block_size=4))
    with pytest.raises(RequestTooLong):
        engine.add_request([5] * 10, SamplingParams(max_new_tokens=64))
    params = SamplingParams(max_new_tokens=64, fit_max_new_tokens=True, ignore_eos=True)
    (output,) = engine.generate([[5] * 10], params)
    assert len(output.token_ids) == 22 and output.finish_reason == FinishReason.LENGTH
    assert_cache_empty(engine)


def test_fit_max_new_tokens_lowers_the_limit_to_what_the_kv_cache_holds(tokenizer):
    """10 blocks of 4 slots: beam 4 over a 3-token source holds 1 block of cross K/V and
    4 beams x 2 blocks (the start token and up to 7 new ones)."""
    engine = make_engine(tokenizer, "encoder-decoder", kv_cache_mb=mb_for_blocks(10))
    params = SamplingParams(max_new_tokens=64, beam_size=4)
    with pytest.raises(RequestTooLong, match="cannot fit the KV cache") as refused:
        engine.add_request([5, 6, 7], params)
    assert refused.value.field == "max_new_tokens"
    fitted = dataclasses.replace(params, fit_max_new_tokens=True)
    request = engine.add_request([5, 6, 7], fitted)
    assert request.params.max_new_tokens == 7
    engine.abort(request.request_id)
    engine.step()
    assert_cache_empty(engine)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_prepacked_cpu_weights_give_the_reference_tokens(tokenizer, architecture):
    model = tiny_model(architecture, vocab_size=tokenizer.vocab_size, max_positions=256)
    config = EngineConfig(kv_cache_mb=4, block_size=4, prepack_weights=True)
    engine = LLMEngine(model, tokenizer, config)
    assert engine.runner.model is not model, "the runner should hold the packed copy"
    inputs = prompts(tokenizer, 12, seed=8)
    for ids, output in zip(inputs, engine.generate(inputs, GREEDY), strict=True):
        assert output.token_ids == greedy_reference(model, ids, 24)
    assert_cache_empty(engine)


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "swish"])
def test_prepacked_logits_match_the_plain_model(activation):
    """Packed weights and the activation fused into fc1 compute the plain model's logits."""
    from model.cpu_kernels import PackedLinear, prepacked

    model = tiny_model("encoder-decoder", activation=activation)
    packed = prepacked(model)
    fc1 = packed.decoder_layers[0].ffn.fc1
    assert isinstance(fc1, PackedLinear) and fc1.attr != "none", "the activation should be fused"
    assert not any(isinstance(m, torch.nn.Linear) for m in packed.modules()), "all packed"
    src, tgt = torch.randint(4, 64, (3, 9)), torch.randint(4, 64, (3, 7))
    with torch.inference_mode():
        expected, got = model(src, tgt), packed(src, tgt)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_int8_engine_gives_the_int8_reference_tokens_joined_mid_flight(tokenizer, architecture):
    """`quantize="int8"`: greedy tokens equal the uncached reference decoder's on the same int8
    model, for requests that join mid-flight, and a request's tokens alone equal its tokens in
    the batch (each input row is quantized with a scale of its own)."""
    from model.cpu_kernels import Int8Linear

    model = tiny_model(architecture, vocab_size=tokenizer.vocab_size, max_positions=256)
    engine = LLMEngine(model, tokenizer, EngineConfig(kv_cache_mb=4, block_size=4, quantize="int8"))
    int8_model = engine.runner.model
    assert isinstance(int8_model.decoder_layers[0].ffn.fc1, Int8Linear)
    inputs = prompts(tokenizer, 8, seed=10)
    batched = greedy_joined_mid_flight(engine, inputs)
    for ids, tokens in zip(inputs, batched, strict=True):
        assert tokens == greedy_reference(int8_model, ids, 24)
    assert [engine.generate([ids], GREEDY)[0].token_ids for ids in inputs] == batched
    assert_cache_empty(engine)


def test_int8_beam_search_in_the_batcher_equals_int8_beam_search_alone(tokenizer):
    model = tiny_model("encoder-decoder", vocab_size=tokenizer.vocab_size, max_positions=256)
    engine = LLMEngine(model, tokenizer, EngineConfig(kv_cache_mb=4, block_size=4, quantize="int8"))
    sources = prompts(tokenizer, 6, seed=11)
    params = SamplingParams(max_new_tokens=12, beam_size=4, num_hypotheses=2)
    for src, output in zip(sources, engine.generate(sources, params), strict=True):
        (expected,) = beam_search_batch(engine.runner.model, [src], 4, 12, num_hypotheses=2)
        assert [h.token_ids for h in output.hypotheses] == [h.token_ids for h in expected]
    assert_cache_empty(engine)


def test_int8_linear_is_close_to_float32_and_each_row_is_its_own():
    from model.cpu_kernels import Int8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40)
    int8 = Int8Linear(linear.weight, linear.bias)
    x = torch.randn(2, 7, 96) * torch.logspace(-3, 3, 7)[:, None]  # rows of very different scale
    with torch.inference_mode():
        expected, got = linear(x), int8(x)
        error = (got - expected).norm(dim=-1) / expected.norm(dim=-1)
        assert error.max() < 0.03, error
        assert torch.equal(int8(x[:, 3:4]), got[:, 3:4]), "a row alone == the row in a batch"
        assert int8(x[:, :0]).shape == (2, 0, 40)


def test_int8_matmul_sums_exactly():
    """`torch._int_mm` must not saturate (CPUs without VNNI may, in some int8 kernels): extreme
    values against an int64 matmul."""
    for (low, high), rows in itertools.product([(-127, 128), (100, 128), (-127, -100)], (1, 5)):
        a = torch.randint(low, high, (rows, 512), dtype=torch.int8)
        b = torch.randint(low, high, (512, 48), dtype=torch.int8)
        assert torch.equal(torch._int_mm(a, b).long(), a.long() @ b.long())


def test_int8_is_refused_off_the_cpu_in_half_precision_or_compiled(tokenizer):
    model = tiny_model("encoder-decoder", vocab_size=tokenizer.vocab_size)
    with pytest.raises(ValueError, match="int8 is for the CPU in float32"):
        LLMEngine(model, tokenizer, EngineConfig(dtype="bfloat16", quantize="int8"))
    with pytest.raises(ValueError, match="int8 is for the CPU in float32, not cuda"):
        LLMEngine(model, tokenizer, EngineConfig(device="cuda", quantize="int8"))
    with pytest.raises(ValueError, match="int8 does not go with compile"):
        LLMEngine(model, tokenizer, EngineConfig(compile=True, quantize="int8"))


@pytest.mark.parametrize(
    ("architecture", "prepack"), [("encoder-decoder", True), ("decoder-only", False)]
)
def test_compiled_forward_gives_the_reference_tokens(tokenizer, architecture, prepack):
    """`compile=True` (torch.compile, dynamic shapes): the same tokens, joined mid-flight too,
    with the server's default oneDNN-packed weights and with plain ones."""
    model = tiny_model(architecture, vocab_size=tokenizer.vocab_size, max_positions=256)
    config = EngineConfig(kv_cache_mb=4, block_size=4, compile=True, prepack_weights=prepack)
    engine = LLMEngine(model, tokenizer, config)
    inputs = prompts(tokenizer, 6, seed=9)
    for ids, tokens in zip(inputs, greedy_joined_mid_flight(engine, inputs), strict=True):
        assert tokens == greedy_reference(model, ids, 24)
    assert_cache_empty(engine)


def force_next_token(engine: LLMEngine, pick) -> None:
    """Make `pick(request)` (a token id, or None to leave it) every row's likeliest next token."""
    run = engine.runner.run

    @torch.inference_mode()
    def forced(prefill, decode, encode=()):
        logits = run(prefill, decode, encode)
        for request, x in zip(prefill + decode, logits, strict=True):
            if (token := pick(request)) is not None:
                x[:, token] = x.max() + 10
        return logits

    engine.runner.run = forced


def force_eos_after(engine: LLMEngine, num_tokens: int) -> None:
    """From the `num_tokens`+1-th new token on, EOS is every row's likeliest token."""
    eos = engine.model_config.eos_token_id
    force_next_token(engine, lambda r: eos if r.num_output_tokens >= num_tokens else None)


def force_tokens(engine: LLMEngine, ids: list[int]) -> None:
    """Every row's likeliest next token is the next of `ids`."""
    force_next_token(engine, lambda r: ids[r.num_output_tokens])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_eos_stops_unless_ignore_eos(tokenizer, architecture):
    engine = make_engine(tokenizer, architecture)
    force_eos_after(engine, 3)
    eos = engine.model_config.eos_token_id
    (stopped,) = engine.generate([[5, 6, 7]], SamplingParams(max_new_tokens=10))
    assert stopped.finish_reason == FinishReason.STOP and len(stopped.token_ids) == 4
    assert stopped.token_ids[-1] == eos
    (ignored,) = engine.generate([[5, 6, 7]], SamplingParams(max_new_tokens=10, ignore_eos=True))
    assert ignored.finish_reason == FinishReason.LENGTH and ignored.token_ids[3:] == [eos] * 7
    assert ignored.token_ids[:3] == stopped.token_ids[:3]
    (beams,) = engine.generate([[5, 6, 7]], SamplingParams(max_new_tokens=10, beam_size=2))
    assert beams.finish_reason == FinishReason.STOP and beams.token_ids[-1] == eos
    assert_cache_empty(engine)


@pytest.mark.parametrize("params", [GREEDY, SamplingParams(temperature=1.3, seed=4)])
def test_logprobs_are_the_models_log_probabilities_of_the_chosen_tokens(tokenizer, params):
    engine = make_engine(tokenizer, "decoder-only")
    prompt = [5, 6, 7]
    params = dataclasses.replace(params, max_new_tokens=6, ignore_eos=True)
    (output,) = engine.generate([prompt], params)
    tokens = torch.tensor([prompt + output.token_ids[:-1]])
    reference = engine.model(tokens)[0, len(prompt) - 1 :].log_softmax(-1)  # (6, V)
    expected = reference[torch.arange(6), torch.tensor(output.token_ids)]
    assert output.logprobs == pytest.approx(expected.tolist(), abs=1e-4)  # not under temperature


def test_a_beam_search_that_cannot_fit_the_cache_with_all_its_beams_is_refused(tokenizer):
    engine = make_engine(tokenizer, "encoder-decoder", kv_cache_mb=mb_for_blocks(20.5))
    assert 1 + 8 <= engine.blocks.num_blocks < 1 + 4 * 8
    # 8 blocks per beam at its longest, and 1 for the source: fits with 1 beam, not with 4.
    engine.generate([[5, 6, 7]], SamplingParams(max_new_tokens=31, ignore_eos=True))
    with pytest.raises(RequestTooLong) as refused:
        engine.add_request([5, 6, 7], SamplingParams(max_new_tokens=31, beam_size=4))
    assert refused.value.field == "max_new_tokens"
    assert_cache_empty(engine)


def test_aborting_a_waiting_request_finishes_it_before_it_ever_runs(tokenizer):
    engine = make_engine(tokenizer, "encoder-decoder", max_running_requests=1)
    params = SamplingParams(max_new_tokens=20, ignore_eos=True)
    running = engine.add_request([5, 6], params)
    waiting = engine.add_request([7, 8], params)
    engine.step()
    engine.abort(waiting.request_id)
    (cancelled,) = [o for o in engine.step() if o.request_id == waiting.request_id]
    assert cancelled.finish_reason == FinishReason.CANCELLED and not cancelled.was_scheduled
    assert cancelled.token_ids == []
    finished = engine.generate([], params)
    assert finished == [] and running.finish_reason == FinishReason.LENGTH
    assert_cache_empty(engine)


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_new_tokens", 0),
        ("temperature", -0.5),
        ("top_p", 0.0),
        ("top_k", -1),
        ("repetition_penalty", 0.0),
        ("stop", ("",)),
        ("num_hypotheses", 2),  # more than the beams
        ("timeout_s", -1.0),
    ],
)
def test_sampling_params_refuse_out_of_range_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"SamplingParams.{field} "):
        SamplingParams(**{field: value})


@pytest.mark.parametrize(
    "option", [dict(temperature=0.7), dict(repetition_penalty=1.2), dict(stop=("x",))]
)
def test_beam_search_refuses_options_of_the_sampling_path(option):
    with pytest.raises(ValueError, match="beam_size"):
        SamplingParams(beam_size=4, **option)
    SamplingParams(beam_size=4, num_hypotheses=4)  # fine
