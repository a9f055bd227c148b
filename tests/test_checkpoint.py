"""A model directory (config.json, model.safetensors, tokenizer.json) saves and loads exactly."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer as HFTokenizer

from model.checkpoint import load_checkpoint, save_checkpoint
from model.tokenizer import Tokenizer, train_tokenizer
from tests.conftest import ARCHITECTURES, tiny_model


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(
        train_tokenizer(["open the file", "Datei öffnen", "save as"] * 5, vocab_size=300)
    )


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_save_then_load_round_trips_weights_and_outputs_exactly(tmp_path, tokenizer, architecture):
    model = tiny_model(architecture, final_logits_bias=architecture == "encoder-decoder")
    save_checkpoint(model, tokenizer, tmp_path)
    loaded, loaded_tokenizer = load_checkpoint(tmp_path)
    assert loaded.config == model.config
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        assert torch.equal(original[name], restored[name]), name
    tokens = torch.randint(4, 64, (2, 6))
    args = (tokens, tokens) if architecture == "encoder-decoder" else (tokens,)
    assert torch.equal(model(*args), loaded(*args))
    assert loaded_tokenizer.encode("Datei öffnen") == tokenizer.encode("Datei öffnen")
    assert json.loads((tmp_path / "config.json").read_text())["architecture"] == architecture


def test_fp16_checkpoint_is_half_the_size_and_loads_as_fp32(tmp_path, tokenizer):
    model = tiny_model()
    save_checkpoint(model, tokenizer, tmp_path / "fp32")
    save_checkpoint(model, tokenizer, tmp_path / "fp16", dtype=torch.float16)
    size32 = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    size16 = (tmp_path / "fp16" / "model.safetensors").stat().st_size
    assert size16 < 0.6 * size32
    loaded, _ = load_checkpoint(tmp_path / "fp16")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    tokens = torch.randint(4, 64, (1, 5))
    torch.testing.assert_close(loaded(tokens, tokens), model(tokens, tokens), rtol=1e-2, atol=1e-2)


def test_loading_a_checkpoint_with_a_missing_weight_names_it(tmp_path, tokenizer):
    save_checkpoint(tiny_model(), tokenizer, tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    del weights["decoder_layers.0.ffn.fc1.weight"]
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"decoder_layers\.0\.ffn\.fc1\.weight"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("split", [True, False])
def test_split_special_tokens_is_kept_with_the_checkpoint(tmp_path, tokenizer, split):
    """tokenizer_config.json, as transformers keeps it: our own checkpoints read "</s>" in user
    text as text; converted ones keep transformers' default."""
    ours = Tokenizer(HFTokenizer.from_str(tokenizer.hf.to_str()), split_special_tokens=split)
    save_checkpoint(tiny_model(vocab_size=tokenizer.vocab_size), ours, tmp_path)
    _, loaded = load_checkpoint(tmp_path)
    assert loaded.split_special_tokens is split
    assert (loaded.eos_id in loaded.encode("a</s>")) is not split
