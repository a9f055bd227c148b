"""Shared fixtures: tiny random models of both architectures (built in milliseconds)."""

import pytest
import torch

from model.config import TransformerConfig
from model.transformer import Transformer

VOCAB = 64


def tiny_config(architecture: str = "encoder-decoder", **overrides) -> TransformerConfig:
    layers = (
        dict(num_encoder_layers=2)
        if architecture == "encoder-decoder"
        else dict(num_encoder_layers=0)
    )
    fields = dict(
        architecture=architecture,
        vocab_size=VOCAB,
        d_model=32,
        num_heads=4,
        num_decoder_layers=2,
        d_ff=64,
        max_positions=128,
        **layers,
    )
    fields.update(overrides)
    return TransformerConfig(**fields)


def tiny_model(architecture: str = "encoder-decoder", seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(tiny_config(architecture, **overrides)).eval()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests are small; one intra-op thread keeps them fast and deterministic on 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ARCHITECTURES = ["encoder-decoder", "decoder-only"]
