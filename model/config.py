"""The architecture of a model as one dataclass, stored as config.json beside the weights."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Architecture = Literal["encoder-decoder", "decoder-only"]


@dataclass(frozen=True)
class TransformerConfig:
    """Every option exists to rebuild a known model: the paper's base model, MarianMT, GPT-2."""

    architecture: Architecture = "encoder-decoder"
    vocab_size: int = 8000
    d_model: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6  # 0 for decoder-only
    num_decoder_layers: int = 6
    d_ff: int = 2048
    dropout: float = 0.1  # on embeddings, sublayer outputs and attention weights (training only)
    max_positions: int = 512
    positional: Literal["sinusoidal", "learned"] = (
        "sinusoidal"  # sinusoidal: [sin | cos] halves, as Marian
    )
    norm_first: bool = (
        False  # False: post-norm (the paper, Marian); True: pre-norm + final norm (GPT-2)
    )
    activation: Literal["relu", "gelu", "gelu_tanh", "swish"] = "relu"
    scale_embedding: bool = True  # multiply embeddings by sqrt(d_model), as the paper
    tie_embeddings: bool = True  # output projection shares the (decoder) input embedding
    final_logits_bias: bool = False  # Marian adds a fixed bias to the logits
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    decoder_start_token_id: int = 1  # first decoder input of encoder-decoder models
    add_bos_token: bool = True  # decoder-only: text prompts start with BOS (GPT-2's do not)
    suppress_token_ids: tuple[int, ...] = ()  # never generated: Marian's bad_words_ids (its pad)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def is_encoder_decoder(self) -> bool:
        return self.architecture == "encoder-decoder"

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}"
            )
        if self.is_encoder_decoder != (self.num_encoder_layers > 0):
            raise ValueError(
                "an encoder-decoder model needs encoder layers; a decoder-only one none"
            )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> TransformerConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in json.loads(text).items() if k in fields}
        values["suppress_token_ids"] = tuple(values.get("suppress_token_ids", ()))
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> TransformerConfig:
        return cls.from_json(Path(path).read_text())
