"""A model is a directory: config.json, model.safetensors, tokenizer.json, MODEL_CARD.md."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model.config import TransformerConfig
from model.tokenizer import Tokenizer, read_split_special_tokens
from model.transformer import Transformer, sinusoidal_table


def save_checkpoint(
    model: Transformer,
    tokenizer: Tokenizer,
    directory: str | Path,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Write the model directory; `dtype=torch.float16` halves the file (loading upcasts)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(model.config.to_json())
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save(directory / "tokenizer.json")
    tokenizer_config = {"split_special_tokens": tokenizer.split_special_tokens}
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config) + "\n")


def load_checkpoint(
    directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[Transformer, Tokenizer]:
    """The model (in eval mode, on `device`, in `dtype`) and its tokenizer."""
    directory = Path(directory)
    config = TransformerConfig.load(directory / "config.json")
    with torch.device("meta"):
        model = Transformer(config)
    state = {
        k: v.to(dtype)
        for k, v in load_file(str(directory / "model.safetensors"), device=str(device)).items()
    }
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"{directory}: missing weights {missing}, unexpected weights {unexpected}")
    _rebuild_buffers(model, device, dtype)
    return model.eval(), load_tokenizer(directory, config)


def load_tokenizer(directory: str | Path, config: TransformerConfig | None = None) -> Tokenizer:
    """A model directory's tokenizer, without its weights."""
    directory = Path(directory)
    config = config or TransformerConfig.load(directory / "config.json")
    special_ids = (config.pad_token_id, config.bos_token_id, config.eos_token_id)
    split = read_split_special_tokens(directory)
    return Tokenizer.from_file(directory / "tokenizer.json", special_ids, split)


def _rebuild_buffers(model: Transformer, device, dtype) -> None:
    """Non-persistent buffers (the sinusoidal table) are not in the file: recompute them."""
    if not model.embed.learned:
        config = model.config
        model.embed.table = sinusoidal_table(config.max_positions, config.d_model).to(device, dtype)
