"""Beam search: beam 1 is greedy, a source in a batch gets the beams it gets alone, n-best is sorted."""

import torch

from model.decoding import beam_search_batch, greedy_batch
from tests.conftest import VOCAB, tiny_model


def sources(*lengths):
    g = torch.Generator().manual_seed(7)
    return [torch.randint(4, VOCAB, (n,), generator=g).tolist() for n in lengths]


def test_beam_search_with_beam_size_1_equals_greedy():
    model = tiny_model("encoder-decoder", seed=5)
    batch = sources(4, 9, 2)
    beams = beam_search_batch(model, batch, beam_size=1, max_new_tokens=20)
    assert [h[0].token_ids for h in beams] == greedy_batch(model, batch, 20)


def test_beam_search_of_a_source_in_a_batch_equals_beam_search_alone():
    model = tiny_model("encoder-decoder", seed=6)
    batch = sources(3, 12, 7, 5)
    batched = beam_search_batch(model, batch, beam_size=4, max_new_tokens=16, num_hypotheses=3)
    for src, hypotheses in zip(batch, batched, strict=True):
        alone = beam_search_batch(model, [src], beam_size=4, max_new_tokens=16, num_hypotheses=3)[0]
        assert [h.token_ids for h in hypotheses] == [h.token_ids for h in alone]
        for a, b in zip(hypotheses, alone, strict=True):
            assert abs(a.score - b.score) < 1e-4


def test_n_best_list_is_sorted_by_score_and_distinct():
    model = tiny_model("encoder-decoder", seed=8)
    (hypotheses,) = beam_search_batch(
        model, sources(6), beam_size=5, max_new_tokens=12, num_hypotheses=5
    )
    assert len(hypotheses) == 5
    scores = [h.score for h in hypotheses]
    assert scores == sorted(scores, reverse=True)
    assert len({tuple(h.token_ids) for h in hypotheses}) == 5


def test_beam_score_is_the_length_normalized_log_probability_of_its_tokens():
    model = tiny_model("encoder-decoder", seed=9)
    src = sources(5)[0]
    (hypotheses,) = beam_search_batch(
        model, [src], beam_size=3, max_new_tokens=10, length_penalty=0.6
    )
    best = hypotheses[0]
    tgt = torch.tensor([[model.config.decoder_start_token_id, *best.token_ids[:-1]]])
    logprobs = model(torch.tensor([src]), tgt)[0].log_softmax(-1)
    total = logprobs[torch.arange(len(best.token_ids)), torch.tensor(best.token_ids)].sum().item()
    assert abs(best.score - total / len(best.token_ids) ** 0.6) < 1e-4


def test_only_the_beam_size_best_candidates_may_end_a_hypothesis():
    from model.decoding import BeamSearch

    eos, never = 2, -99.0
    search = BeamSearch(beam_size=2, max_new_tokens=10, length_penalty=1.0, eos_id=eos)
    search.advance(torch.tensor([[never, never, never, -0.5, -1.0]]))  # live: [3], [4]
    # Candidates, best first: [3, EOS] ends; [3, 3] lives; [4, EOS] ranks third, beyond the
    # beam size, so it may not end; [4, 3] lives.
    logprobs = torch.tensor([[never, never, -0.1, -2.0, never], [never, never, -2.0, -2.5, never]])
    assert search.advance(logprobs) == [0, 1]
    assert [h.token_ids for h in search.finished] == [[3, eos]]
    assert search.tokens == [[3, 3], [4, 3]]
