"""The network: masks, padding, and cached decoding equal to uncached (ARCHITECTURE invariant 1)."""

import pytest
import torch
import torch.nn.functional as F

from model.config import TransformerConfig
from model.decoding import greedy_batch, greedy_cached, greedy_reference, pad_batch
from tests.conftest import ARCHITECTURES, VOCAB, tiny_model

# Config variants that the imports of MarianMT (post-norm, swish, logits bias) and GPT-2
# (pre-norm, learned positions, tanh GELU) rely on.
VARIANTS = {
    "paper": dict(norm_first=False, activation="relu"),
    "pre-norm": dict(norm_first=True),
    "marian-like": dict(activation="swish", final_logits_bias=True),
    "gpt2-like": dict(
        norm_first=True, positional="learned", activation="gelu_tanh", scale_embedding=False
    ),
    "untied": dict(tie_embeddings=False),
}


def logits_of(model, src, tgt, src_valid=None, tgt_valid=None):
    if model.config.is_encoder_decoder:
        return model(src, tgt, src_valid=src_valid, tgt_valid=tgt_valid)
    return model(tgt, tgt_valid=tgt_valid)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def random_ids(*shape, seed=0):
    return torch.randint(4, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_future_tokens_do_not_change_earlier_logits(architecture):
    model = tiny_model(architecture)
    src, tgt = random_ids(2, 7), random_ids(2, 10, seed=1)
    changed = tgt.clone()
    changed[:, 6:] = random_ids(2, 4, seed=2)
    before, after = logits_of(model, src, tgt), logits_of(model, src, changed)
    torch.testing.assert_close(before[:, :6], after[:, :6], rtol=0, atol=1e-6)
    assert not torch.allclose(before[:, 6:], after[:, 6:])


def test_source_padding_does_not_change_outputs():
    model = tiny_model("encoder-decoder")
    src, tgt = random_ids(1, 5), random_ids(1, 6, seed=1)
    padded = torch.cat([src, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    alone = model(src, tgt)
    with_padding = model(padded, tgt, src_valid=padded != 0)
    torch.testing.assert_close(alone, with_padding, rtol=1e-5, atol=1e-5)
    unmasked = model(padded, tgt)  # the same padding, not masked, must change the output
    assert not torch.allclose(alone, unmasked, atol=1e-3)


def test_sources_encoded_packed_equal_each_source_encoded_alone():
    model = tiny_model("encoder-decoder")
    sources = [random_ids(1, n, seed=n)[0].tolist() for n in (7, 1, 12, 4)]
    with torch.inference_mode():
        packed = model.encode_packed(sources)  # (1, 24, D)
        alone = torch.cat([model.encode(torch.tensor([s]))[0] for s in sources])
    assert packed.shape == (1, 24, model.config.d_model)
    torch.testing.assert_close(packed[0], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_sequence_in_a_right_padded_batch_gets_the_same_logits_as_alone(architecture):
    model = tiny_model(architecture)
    sources = [random_ids(5, seed=3).tolist(), random_ids(9, seed=4).tolist()]
    targets = [random_ids(4, seed=5).tolist(), random_ids(8, seed=6).tolist()]
    src, src_valid = pad_batch(sources, 0)
    tgt, tgt_valid = pad_batch(targets, 0)
    batched = logits_of(model, src, tgt, src_valid, tgt_valid)
    for i in range(2):
        alone = logits_of(model, torch.tensor([sources[i]]), torch.tensor([targets[i]]))
        torch.testing.assert_close(batched[i, : len(targets[i])], alone[0], rtol=1e-5, atol=1e-5)


def test_padding_queries_never_produce_nan():
    model = tiny_model("decoder-only")
    tokens = random_ids(2, 6)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[0, :3] = False  # left padding: the first queries have no valid key but themselves
    assert torch.isfinite(model(tokens, tgt_valid=valid)).all()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_cached_decoding_matches_uncached_logits(architecture, variant):
    model = tiny_model(architecture, **VARIANTS[variant])
    src, tgt = random_ids(3, 7), random_ids(3, 12, seed=1)
    full = logits_of(model, src, tgt)
    memory = model.encode(src) if model.config.is_encoder_decoder else None
    cache = model.new_cache(3, 16)
    steps = [model.decode(tgt[:, :5], memory, cache=cache)]  # a prompt chunk, then one at a time
    steps += [model.decode(tgt[:, t : t + 1], memory, cache=cache) for t in range(5, 12)]
    assert relative_error(torch.cat(steps, dim=1), full) <= 1e-4


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_cached_greedy_gives_the_same_tokens_as_the_uncached_reference(architecture):
    model = tiny_model(architecture, seed=3)
    for seed in range(4):
        input_ids = random_ids(3 + 2 * seed, seed=seed).tolist()
        assert greedy_cached(model, input_ids, 24) == greedy_reference(model, input_ids, 24)


def test_batched_greedy_of_mixed_lengths_equals_each_source_alone():
    model = tiny_model("encoder-decoder", seed=4)
    sources = [random_ids(n, seed=n).tolist() for n in (3, 11, 6, 1)]
    batched = greedy_batch(model, sources, 20)
    assert batched == [greedy_reference(model, s, 20) for s in sources]


def test_cross_attention_keys_and_values_are_computed_once_per_sequence():
    model = tiny_model("encoder-decoder")
    calls = []
    for layer in model.decoder_layers:
        layer.cross_attn.kv_proj.register_forward_hook(lambda *_: calls.append(1))
    greedy_cached(model, random_ids(6).tolist(), 10)
    assert len(calls) == model.config.num_decoder_layers


def test_config_round_trips_through_json_and_rejects_bad_shapes():
    config = TransformerConfig(d_model=64, num_heads=4, activation="swish", positional="learned")
    assert TransformerConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="encoder"):
        TransformerConfig(architecture="decoder-only", num_encoder_layers=2)


@pytest.mark.parametrize("counts", [[3, 3], [1, 4, 2, 4]])
def test_grouped_attention_equals_attention_over_repeated_rows(counts):
    """A request's rows (beams) share one row of K/V: the same as giving each row its own copy."""
    from model.transformer import grouped_attention, row_groups

    torch.manual_seed(0)
    R, H, S, Dh = len(counts), 2, 5, 8
    q = torch.randn(sum(counts), H, 1, Dh)
    k, v = torch.randn(R, H, S, Dh), torch.randn(R, H, S, Dh)
    valid = torch.arange(S)[None, :] < torch.tensor([5, 3, 4, 1][:R])[:, None]
    mask = valid[:, None, None, :]  # (R, 1, 1, S)
    owner = torch.repeat_interleave(torch.arange(R), torch.tensor(counts))
    expected = F.scaled_dot_product_attention(q, k[owner], v[owner], attn_mask=mask[owner])
    got = grouped_attention(q, k, v, mask, row_groups(counts))
    torch.testing.assert_close(got, expected)
