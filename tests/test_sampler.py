"""The sampler alone: temperature, top-k, top-p, min_p, typical_p, repetition penalty and
min_new_tokens change the distribution as their definitions say (fake requests, no model)."""

from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from service.engine.request import SamplingParams
from service.engine.sampler import apply_penalties, sample, typical

EOS = 2


def request(tokens=(), num_output_tokens=0, **params):
    return SimpleNamespace(
        params=SamplingParams(**params),
        beams=[SimpleNamespace(tokens=list(tokens))],
        num_output_tokens=num_output_tokens,
        generator=torch.Generator().manual_seed(0),
    )


def draws(logits: list[float], n: int = 400, **params) -> Counter:
    r = request(**params)
    return Counter(sample(torch.tensor(logits), r) for _ in range(n))


def test_top_k_keeps_only_the_k_likeliest_tokens():
    logits = [0.0, 1.0, 0.9, 0.8, 0.7]
    assert set(draws(logits, temperature=1.0, top_k=1)) == {1}
    assert set(draws(logits, temperature=1.0, top_k=2)) == {1, 2}
    assert set(draws(logits, temperature=1.0)) == {0, 1, 2, 3, 4}


def test_top_p_keeps_the_smallest_set_of_tokens_reaching_p():
    logits = torch.tensor([0.5, 0.3, 0.2]).log().tolist()  # probabilities 0.5, 0.3, 0.2
    assert set(draws(logits, temperature=1.0, top_p=0.4)) == {0}
    assert set(draws(logits, temperature=1.0, top_p=0.6)) == {0, 1}  # 0.5 < 0.6: one more
    assert set(draws(logits, temperature=1.0, top_p=0.9)) == {0, 1, 2}


def test_min_p_drops_tokens_less_likely_than_min_p_times_the_best():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().tolist()  # 0.3 / 0.5 = 0.6 of the best
    assert set(draws(logits, temperature=1.0, min_p=0.5)) == {0, 1}
    assert set(draws(logits, temperature=1.0, min_p=0.2)) == {0, 1, 2}  # 0.15 / 0.5 = 0.3
    assert set(draws(logits, temperature=1.0, min_p=1.0)) == {0}
    # after the temperature, as vLLM's: a flatter distribution keeps more
    assert set(draws(logits, temperature=4.0, min_p=0.6)) == {0, 1, 2}  # 0.3^¼ = 0.74, 0.1^¼ = 0.56


def test_typical_p_keeps_the_tokens_nearest_the_entropy():
    # Probabilities 0.7, 0.2, 0.1: entropy 0.80 nats; surprises 0.36, 1.61, 2.30. The token
    # nearest the entropy is 0 (0.44 away), then 1 (0.81), then 2 (1.50).
    logits = torch.tensor([0.7, 0.2, 0.1]).log().tolist()
    assert set(draws(logits, temperature=1.0, typical_p=0.5)) == {0}
    assert set(draws(logits, temperature=1.0, typical_p=0.8)) == {0, 1}  # 0.7 < 0.8: one more
    assert set(draws(logits, temperature=1.0, typical_p=0.95)) == {0, 1, 2}
    # Flat but for one likelier token: that one is the least typical.
    logits = [2.0] + [0.0] * 20  # 27% against 3.7% each
    assert 0 not in set(draws(logits, temperature=1.0, typical_p=0.2))


@pytest.mark.parametrize("mass", [0.2, 0.5, 0.9, 0.95, 0.999])
def test_typical_p_keeps_what_transformers_keeps(mass):
    from transformers.generation.logits_process import TopKLogitsWarper, TypicalLogitsWarper

    torch.manual_seed(0)
    for _ in range(20):
        logits = torch.randn(1, 500) * 3
        logits = TopKLogitsWarper(200)(None, logits)  # a warper before it drops tokens (-inf)
        theirs = TypicalLogitsWarper(mass)(None, logits.clone())[0]
        ours = typical(logits[0].double(), mass)
        assert torch.equal(ours.isinf(), theirs.isinf())


def test_temperature_sharpens_or_flattens_the_distribution():
    logits = [1.0, 0.5]  # at temperature 1: 62% / 38%
    cold = draws(logits, temperature=0.05)  # e^10 to 1
    assert cold[1] <= 2
    hot = draws(logits, temperature=100.0)  # almost even
    assert 160 <= hot[1] <= 240
    plain = draws(logits, temperature=1.0)
    assert 110 <= plain[1] <= 200


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = torch.tensor([2.0, -1.0, 3.0, 0.5])
    r = request(tokens=[0, 1, 1], repetition_penalty=2.0)
    assert apply_penalties(logits, r, EOS).tolist() == [1.0, -2.0, 3.0, 0.5]
    assert logits.tolist() == [2.0, -1.0, 3.0, 0.5]  # the batch's logits are left alone


def test_presence_and_frequency_penalties_lower_the_generated_tokens_logits():
    logits = torch.tensor([0.0, 0.0, 0.0, 0.0])
    r = request(
        tokens=[3, 1, 1, 2], num_output_tokens=3, presence_penalty=1.0, frequency_penalty=0.5
    )
    assert apply_penalties(logits, r, EOS).tolist() == [0.0, -2.0, -1.5, 0.0]  # 3: the prompt
    assert logits.tolist() == [0.0] * 4


def test_logit_bias_is_added_to_the_tokens_logits():
    logits = torch.tensor([0.0, 1.0, 2.0])
    r = request(logit_bias=((0, 5.0), (2, -100.0)))
    assert apply_penalties(logits, r, EOS).tolist() == [5.0, 1.0, -98.0]
    assert sample(apply_penalties(logits, r, EOS), r) == 0  # greedy takes the biased logits


def test_min_new_tokens_masks_eos_and_stop_tokens_until_reached():
    logits = torch.zeros(5)
    early = request(num_output_tokens=1, min_new_tokens=2, stop_token_ids=(4,))
    masked = apply_penalties(logits, early, EOS)
    assert masked[EOS] == float("-inf") and masked[4] == float("-inf")
    assert masked[[0, 1, 3]].tolist() == [0.0, 0.0, 0.0]
    reached = request(num_output_tokens=2, min_new_tokens=2, stop_token_ids=(4,))
    assert apply_penalties(logits, reached, EOS).tolist() == [0.0] * 5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_seed_gives_the_same_draws(seed):
    logits = torch.zeros(50)
    first, second = request(temperature=1.0), request(temperature=1.0)
    first.generator.manual_seed(seed)
    second.generator.manual_seed(seed)
    assert [sample(logits, first) for _ in range(20)] == [sample(logits, second) for _ in range(20)]
