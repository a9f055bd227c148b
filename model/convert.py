"""Hugging Face checkpoints in and out: MarianMT (opus-mt) and GPT-2 in, our translators out.

    python -m model.convert from-hf SRC_DIR OUT_DIR    # MarianMT, Pegasus or GPT-2 → ours
    python -m model.convert to-hf CHECKPOINT OUT_DIR   # our encoder-decoder model → MarianMT
    python -m model.convert to-ct2 CHECKPOINT OUT_DIR  # ... → CTranslate2 (through to-hf)

Both read and write local directories only (config.json, model.safetensors or
pytorch_model.bin, tokenizer files). Every weight is mapped by name with its shape checked, and
every source weight must be used: a checkpoint this module does not understand is refused, not
half-converted. `to-hf` is how the benchmarks run `transformers` and CTranslate2 on our weights.

The mapping, by architecture (ours ← theirs):
- MarianMT: post-norm layers, sinusoidal positions ([sin | cos] halves, as ours), embeddings
  scaled by sqrt(d_model), shared embeddings tied to the output, a `final_logits_bias`, and
  `bad_words_ids = [[pad]]` (the pad token is never generated). Separate q/k/v projections are
  fused into our `qkv_proj` (self-attention) and `kv_proj` (cross-attention).
- Pegasus: MarianMT with pre-norm layers and a final norm after each stack. Our pre-norm
  translators (the bundled en-de) go out as Pegasus models, since MarianMT is post-norm only.
- GPT-2: pre-norm layers with a final norm, learned positions, unscaled embeddings, gelu_new;
  its Conv1D weights are stored (in, out), so they are transposed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from torch import Tensor

from model.checkpoint import save_checkpoint
from model.config import TransformerConfig
from model.tokenizer import Tokenizer, read_split_special_tokens
from model.transformer import Transformer, sinusoidal_table

# Our activation names ↔ the names in Hugging Face configs.
HF_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "swish": "swish"}
ACTIVATIONS_FROM_HF = {**{v: k for k, v in HF_ACTIVATIONS.items()}, "silu": "swish"}


# -- reading a Hugging Face directory -----------------------------------------------------------


def load_hf_weights(directory: Path) -> dict[str, Tensor]:
    if (directory / "model.safetensors").exists():
        return load_file(str(directory / "model.safetensors"))
    if (directory / "pytorch_model.bin").exists():
        state = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
        return {k: v for k, v in state.items() if isinstance(v, Tensor)}
    raise FileNotFoundError(
        f"{directory}: no model.safetensors or pytorch_model.bin (sharded checkpoints are not "
        "supported: save the model again with a larger max_shard_size)"
    )


def _token_id(hf: dict[str, Any], key: str, default: int) -> int:
    return default if hf.get(key) is None else int(hf[key])


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


class WeightMap:
    """Takes source weights by name, each exactly once; `check` fails on any left unused."""

    def __init__(self, weights: dict[str, Tensor], prefix: str):
        self.weights = {k.removeprefix(prefix): v.float() for k, v in weights.items()}
        self.unused = set(self.weights)

    def take(self, name: str) -> Tensor:
        if name not in self.weights:
            raise KeyError(f"the checkpoint has no weight {name!r}")
        self.unused.discard(name)
        return self.weights[name]

    def drop(self, name: str, expected: Tensor | None = None) -> None:
        """A weight we do not keep: one that is redundant (and must equal `expected`)."""
        if name in self.weights:
            if expected is not None and not torch.equal(self.weights[name], expected):
                raise ValueError(f"{name} is not the copy of the shared weight it should be")
            self.unused.discard(name)

    def take_if_present(self, name: str) -> Tensor | None:
        return self.take(name) if name in self.weights else None

    def check(self) -> None:
        if self.unused:
            raise ValueError(f"weights this converter does not understand: {sorted(self.unused)}")


def _output_head(w: WeightMap, config: TransformerConfig, embedding: Tensor) -> dict:
    """Tied: `lm_head.weight`, if the file has it at all, must be the embedding. Untied: ours."""
    if config.tie_embeddings:
        w.drop("lm_head.weight", embedding)
        return {}
    return {"lm_head.weight": w.take("lm_head.weight")}


def _build(config: TransformerConfig, state: dict[str, Tensor]) -> Transformer:
    """Our model with `state` loaded; every key and shape must match exactly."""
    model = Transformer(config)
    expected = model.state_dict()
    assert state.keys() == expected.keys(), (
        f"missing {sorted(expected.keys() - state.keys())}, extra {sorted(state.keys() - expected.keys())}"
    )
    for name, tensor in state.items():
        assert tensor.shape == expected[name].shape, (name, tensor.shape, expected[name].shape)
    model.load_state_dict(state, strict=True)
    return model.eval()


# -- MarianMT ----------------------------------------------------------------------------------


def marian_config(hf: dict[str, Any], generation: dict[str, Any]) -> TransformerConfig:
    """The config of a MarianMT model, or of a Pegasus model (the same, with pre-norm layers)."""
    if (
        not hf.get("share_encoder_decoder_embeddings", True)
        or hf.get("decoder_vocab_size", hf["vocab_size"]) != hf["vocab_size"]
    ):
        raise ValueError(
            "Marian models with separate source and target vocabularies are not supported"
        )
    if hf["encoder_attention_heads"] != hf["decoder_attention_heads"]:
        raise ValueError("encoder and decoder must have the same number of heads")
    if hf["encoder_ffn_dim"] != hf["decoder_ffn_dim"]:
        raise ValueError("encoder and decoder must have the same feed-forward size")
    bad_words = generation.get("bad_words_ids", hf.get("bad_words_ids")) or []
    if any(len(words) != 1 for words in bad_words):
        raise ValueError(f"only single-token bad_words_ids are supported, got {bad_words}")
    pad = hf["pad_token_id"]
    decoder_start = generation.get("decoder_start_token_id", hf.get("decoder_start_token_id"))
    return TransformerConfig(
        architecture="encoder-decoder",
        vocab_size=hf["vocab_size"],
        d_model=hf["d_model"],
        num_heads=hf["encoder_attention_heads"],
        num_encoder_layers=hf["encoder_layers"],
        num_decoder_layers=hf["decoder_layers"],
        d_ff=hf["encoder_ffn_dim"],
        dropout=hf.get("dropout", 0.1),
        max_positions=hf["max_position_embeddings"],
        positional="sinusoidal",
        norm_first=hf.get("model_type") == "pegasus",
        activation=ACTIVATIONS_FROM_HF[hf.get("activation_function", "gelu")],  # type: ignore[arg-type]
        scale_embedding=hf.get("scale_embedding", False),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        final_logits_bias=True,  # decided from the weights in marian_weights
        layer_norm_eps=1e-5,
        pad_token_id=pad,
        bos_token_id=_token_id(hf, "bos_token_id", pad),
        eos_token_id=hf["eos_token_id"],
        decoder_start_token_id=pad if decoder_start is None else decoder_start,
        suppress_token_ids=tuple(words[0] for words in bad_words),
    )


def _attention(w: WeightMap, hf: str, ours: str, names: tuple[str, ...], fused: str) -> dict:
    """Separate q/k/v (or k/v) projections fused into one, in our chunk order."""
    return {
        f"{ours}.{fused}.weight": torch.cat([w.take(f"{hf}.{n}_proj.weight") for n in names]),
        f"{ours}.{fused}.bias": torch.cat([w.take(f"{hf}.{n}_proj.bias") for n in names]),
    }


def _linear(w: WeightMap, hf: str, ours: str, transpose: bool = False) -> dict:
    weight = w.take(f"{hf}.weight")
    return {
        f"{ours}.weight": weight.t() if transpose else weight,
        f"{ours}.bias": w.take(f"{hf}.bias"),
    }


def marian_weights(weights: dict[str, Tensor], config: TransformerConfig) -> dict[str, Tensor]:
    prefix = "model." if any(k.startswith("model.") for k in weights) else ""
    w = WeightMap(weights, prefix)
    shared = w.take("shared.weight")
    state = {"embed.tokens.weight": shared}
    table = sinusoidal_table(config.max_positions, config.d_model)
    for part in ("encoder", "decoder"):
        w.drop(f"{part}.embed_tokens.weight", shared)
        w.drop(f"{part}.embed_positions.weight", table)  # recomputed from the formula
        num_layers = config.num_encoder_layers if part == "encoder" else config.num_decoder_layers
        for i in range(num_layers):
            hf, ours = f"{part}.layers.{i}", f"{part}_layers.{i}"
            state |= _attention(
                w, f"{hf}.self_attn", f"{ours}.self_attn", ("q", "k", "v"), "qkv_proj"
            )
            state |= _linear(w, f"{hf}.self_attn.out_proj", f"{ours}.self_attn.out_proj")
            state |= _linear(w, f"{hf}.self_attn_layer_norm", f"{ours}.self_attn_norm")
            if part == "decoder":
                state |= _linear(w, f"{hf}.encoder_attn.q_proj", f"{ours}.cross_attn.q_proj")
                state |= _attention(
                    w, f"{hf}.encoder_attn", f"{ours}.cross_attn", ("k", "v"), "kv_proj"
                )
                state |= _linear(w, f"{hf}.encoder_attn.out_proj", f"{ours}.cross_attn.out_proj")
                state |= _linear(w, f"{hf}.encoder_attn_layer_norm", f"{ours}.cross_attn_norm")
            state |= _linear(w, f"{hf}.fc1", f"{ours}.ffn.fc1")
            state |= _linear(w, f"{hf}.fc2", f"{ours}.ffn.fc2")
            state |= _linear(w, f"{hf}.final_layer_norm", f"{ours}.ffn_norm")
        if config.norm_first:  # Pegasus
            state |= _linear(w, f"{part}.layer_norm", f"{part}_norm")
    state |= _output_head(w, config, shared)
    bias = w.take_if_present("final_logits_bias")  # (1, V)
    if bias is not None and bias.any():
        state["final_logits_bias"] = bias.reshape(-1)
    w.check()
    return state


def marian_tokenizer(directory: Path, config: TransformerConfig) -> HFTokenizer:
    """tokenizer.json from Marian's source.spm + vocab.json: a Unigram model in the ids of vocab.json.

    Text is cut into the pieces SentencePiece (source.spm) would choose, with its normalizer; a
    piece of vocab.json that source.spm does not know gets a score so low it is never chosen.
    Decoding joins pieces and turns "▁" into spaces, as target.spm does. Language codes
    (">>fra<<") of multilingual models are tokens of their own.
    """
    from sentencepiece import sentencepiece_model_pb2  # the converter's optional dependency

    vocab: dict[str, int] = json.loads((directory / "vocab.json").read_text())
    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]
    proto.ParseFromString((directory / "source.spm").read_bytes())
    scores = {p.piece: p.score for p in proto.pieces}
    never = min(scores.values()) - 100.0
    by_id = sorted(vocab.items(), key=lambda item: item[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise ValueError("vocab.json ids are not 0..N-1")
    unk_id = vocab["<unk>"]
    tokenizer = HFTokenizer(
        models.Unigram([(piece, scores.get(piece, never)) for piece, _ in by_id], unk_id, False)
    )
    charsmap = proto.normalizer_spec.precompiled_charsmap
    steps: list[normalizers.Normalizer] = [normalizers.Precompiled(charsmap)] if charsmap else []
    if proto.normalizer_spec.remove_extra_whitespaces:
        steps += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    specials = {
        piece
        for piece, i in vocab.items()
        if i in (config.pad_token_id, config.eos_token_id, unk_id)
    }
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in sorted(specials)])
    codes = [piece for piece in vocab if piece.startswith(">>") and piece.endswith("<<")]
    tokenizer.add_tokens([AddedToken(code, single_word=False) for code in codes])
    return tokenizer


# -- GPT-2 --------------------------------------------------------------------------------------


def gpt2_config(hf: dict[str, Any]) -> TransformerConfig:
    for flag in (
        "scale_attn_by_inverse_layer_idx",
        "reorder_and_upcast_attn",
        "add_cross_attention",
    ):
        if hf.get(flag):
            raise ValueError(f"GPT-2 models with {flag} are not supported")
    d = hf["n_embd"]
    eos = hf.get("eos_token_id", 50256)
    return TransformerConfig(
        architecture="decoder-only",
        vocab_size=hf["vocab_size"],
        d_model=d,
        num_heads=hf["n_head"],
        num_encoder_layers=0,
        num_decoder_layers=hf["n_layer"],
        d_ff=hf.get("n_inner") or 4 * d,
        dropout=hf.get("resid_pdrop", 0.1),
        max_positions=hf["n_positions"],
        positional="learned",
        norm_first=True,
        activation=ACTIVATIONS_FROM_HF[hf.get("activation_function", "gelu_new")],  # type: ignore[arg-type]
        scale_embedding=False,
        tie_embeddings=hf.get("tie_word_embeddings", True),
        final_logits_bias=False,
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        pad_token_id=_token_id(hf, "pad_token_id", eos),  # GPT-2 has no pad token: pad with EOS
        bos_token_id=_token_id(hf, "bos_token_id", eos),
        eos_token_id=eos,
        decoder_start_token_id=_token_id(hf, "bos_token_id", eos),
        add_bos_token=False,  # GPT-2's tokenizer adds no BOS to a prompt
    )


def gpt2_weights(weights: dict[str, Tensor], config: TransformerConfig) -> dict[str, Tensor]:
    prefix = "transformer." if any(k.startswith("transformer.") for k in weights) else ""
    w = WeightMap(weights, prefix)
    wte = w.take("wte.weight")
    state = {"embed.tokens.weight": wte, "embed.positions.weight": w.take("wpe.weight")}
    for i in range(config.num_decoder_layers):
        hf, ours = f"h.{i}", f"decoder_layers.{i}"
        w.drop(f"{hf}.attn.bias")  # causal-mask buffers of older checkpoints
        w.drop(f"{hf}.attn.masked_bias")
        state |= _linear(w, f"{hf}.ln_1", f"{ours}.self_attn_norm")
        state |= _linear(w, f"{hf}.attn.c_attn", f"{ours}.self_attn.qkv_proj", transpose=True)
        state |= _linear(w, f"{hf}.attn.c_proj", f"{ours}.self_attn.out_proj", transpose=True)
        state |= _linear(w, f"{hf}.ln_2", f"{ours}.ffn_norm")
        state |= _linear(w, f"{hf}.mlp.c_fc", f"{ours}.ffn.fc1", transpose=True)
        state |= _linear(w, f"{hf}.mlp.c_proj", f"{ours}.ffn.fc2", transpose=True)
    state |= _linear(w, "ln_f", "decoder_norm")
    state |= _output_head(w, config, wte)
    w.check()
    return state


def gpt2_tokenizer(directory: Path) -> HFTokenizer:
    """Byte-level BPE from vocab.json + merges.txt, with <|endoftext|> as a special token."""
    tokenizer = HFTokenizer(
        models.BPE.from_file(str(directory / "vocab.json"), str(directory / "merges.txt"))
    )
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    return tokenizer


# -- the commands -------------------------------------------------------------------------------


def from_hf(src: str | Path, out: str | Path) -> Transformer:
    """Convert a local MarianMTModel or GPT2LMHeadModel directory into our checkpoint format."""
    src, out = Path(src), Path(out)
    hf = _read_json(src / "config.json")
    model_type = hf.get("model_type")
    if model_type in ("marian", "pegasus"):
        config = marian_config(hf, _read_json(src / "generation_config.json"))
        state = marian_weights(load_hf_weights(src), config)
        if "final_logits_bias" not in state:  # a zero bias is no bias (keeps round trips exact)
            config = dataclasses.replace(config, final_logits_bias=False)
    elif model_type == "gpt2":
        config = gpt2_config(hf)
        state = gpt2_weights(load_hf_weights(src), config)
    else:
        raise ValueError(f"{src}: model_type {model_type!r} is not marian, pegasus or gpt2")
    model = _build(config, state)
    if (src / "tokenizer.json").exists():  # a fast tokenizer (e.g. written by to-hf): as it is
        hf_tokenizer = HFTokenizer.from_file(str(src / "tokenizer.json"))
    elif model_type in ("marian", "pegasus"):
        hf_tokenizer = marian_tokenizer(src, config)
    else:
        hf_tokenizer = gpt2_tokenizer(src)
    split = read_split_special_tokens(src)  # transformers' own setting, if the source has one
    tokenizer = Tokenizer(
        hf_tokenizer, config.pad_token_id, config.bos_token_id, config.eos_token_id, split
    )
    save_checkpoint(model, tokenizer, out)
    (out / "CONVERTED_FROM.md").write_text(
        f"Converted by `python -m model.convert from-hf {src} {out}` from a Hugging Face "
        f"{hf.get('architectures', [model_type])[0]} checkpoint. Its license and model card "
        "are those of the source model.\n"
    )
    for name in ("README.md", "LICENSE"):
        if (src / name).exists():
            shutil.copy(src / name, out / f"SOURCE_{name}")
    return model


def to_hf(checkpoint: str | Path, out: str | Path) -> None:
    """Our encoder-decoder checkpoint as a directory `transformers` and CTranslate2 load.

    A post-norm model becomes a MarianMTModel, a pre-norm one a PegasusForConditionalGeneration
    (Marian's architecture with pre-norm layers and final norms).
    """
    checkpoint, out = Path(checkpoint), Path(out)
    config = TransformerConfig.load(checkpoint / "config.json")
    if not config.is_encoder_decoder or config.positional != "sinusoidal":
        raise ValueError("only encoder-decoder models with sinusoidal positions can be exported")
    model_type = "pegasus" if config.norm_first else "marian"
    weights = load_file(str(checkpoint / "model.safetensors"))
    out.mkdir(parents=True, exist_ok=True)
    d = config.d_model
    state: dict[str, Tensor] = {"model.shared.weight": weights["embed.tokens.weight"]}
    for part in ("encoder", "decoder"):
        num_layers = config.num_encoder_layers if part == "encoder" else config.num_decoder_layers
        for i in range(num_layers):
            ours, hf = f"{part}_layers.{i}", f"model.{part}.layers.{i}"
            for kind in ("weight", "bias"):
                qkv = weights[f"{ours}.self_attn.qkv_proj.{kind}"].split(d)
                for name, t in zip("qkv", qkv, strict=True):
                    state[f"{hf}.self_attn.{name}_proj.{kind}"] = t
                pairs = {
                    "self_attn.out_proj": "self_attn.out_proj",
                    "self_attn_norm": "self_attn_layer_norm",
                    "ffn.fc1": "fc1",
                    "ffn.fc2": "fc2",
                    "ffn_norm": "final_layer_norm",
                }
                if part == "decoder":
                    k, v = weights[f"{ours}.cross_attn.kv_proj.{kind}"].split(d)
                    state[f"{hf}.encoder_attn.k_proj.{kind}"] = k
                    state[f"{hf}.encoder_attn.v_proj.{kind}"] = v
                    pairs |= {
                        "cross_attn.q_proj": "encoder_attn.q_proj",
                        "cross_attn.out_proj": "encoder_attn.out_proj",
                        "cross_attn_norm": "encoder_attn_layer_norm",
                    }
                for ours_name, hf_name in pairs.items():
                    state[f"{hf}.{hf_name}.{kind}"] = weights[f"{ours}.{ours_name}.{kind}"]
        if config.norm_first:
            for kind in ("weight", "bias"):
                state[f"model.{part}.layer_norm.{kind}"] = weights[f"{part}_norm.{kind}"]
    bias = weights.get("final_logits_bias", torch.zeros(config.vocab_size, dtype=torch.float32))
    state["final_logits_bias"] = bias.reshape(1, -1)
    if not config.tie_embeddings:
        state["lm_head.weight"] = weights["lm_head.weight"]
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(out / "model.safetensors"),
        {"format": "pt"},
    )
    hf_config = {
        "architectures": [
            "PegasusForConditionalGeneration" if config.norm_first else "MarianMTModel"
        ],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "decoder_vocab_size": config.vocab_size,
        "d_model": d,
        "encoder_layers": config.num_encoder_layers,
        "decoder_layers": config.num_decoder_layers,
        "encoder_attention_heads": config.num_heads,
        "decoder_attention_heads": config.num_heads,
        "encoder_ffn_dim": config.d_ff,
        "decoder_ffn_dim": config.d_ff,
        "max_position_embeddings": config.max_positions,
        "activation_function": HF_ACTIVATIONS[config.activation],
        "dropout": config.dropout,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "scale_embedding": config.scale_embedding,
        "tie_word_embeddings": config.tie_embeddings,
        "share_encoder_decoder_embeddings": True,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "forced_eos_token_id": config.eos_token_id,
        "decoder_start_token_id": config.decoder_start_token_id,
        "torch_dtype": "float32",
    }
    if config.norm_first:  # transformers ignores these; CTranslate2's Pegasus converter reads them
        hf_config |= {"normalize_before": True, "normalize_embedding": False}
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    generation: dict[str, Any] = {
        key: hf_config[key]
        for key in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")
    }
    generation |= {"max_length": config.max_positions, "num_beams": 4}
    if config.suppress_token_ids:
        generation["bad_words_ids"] = [[t] for t in config.suppress_token_ids]
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    # Our tokenizer is a `tokenizers` file: transformers loads it as PreTrainedTokenizerFast.
    shutil.copy(checkpoint / "tokenizer.json", out / "tokenizer.json")
    tokenizer = HFTokenizer.from_file(str(out / "tokenizer.json"))
    names = {
        i: tokenizer.id_to_token(i)
        for i in (config.pad_token_id, config.bos_token_id, config.eos_token_id)
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": config.max_positions,
        "pad_token": names[config.pad_token_id],
        "bos_token": names[config.bos_token_id],
        "eos_token": names[config.eos_token_id],
    }
    if tokenizer.token_to_id("<unk>") is not None:
        tokenizer_config["unk_token"] = "<unk>"
    saved = checkpoint / "tokenizer_config.json"  # save_checkpoint's: split_special_tokens
    if saved.exists():
        tokenizer_config |= json.loads(saved.read_text())
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def to_ctranslate2(checkpoint: str | Path, out: str | Path) -> None:
    """Our encoder-decoder checkpoint as a CTranslate2 model (via `to_hf` and its converter)."""
    import tempfile

    from ctranslate2.converters import TransformersConverter  # optional: pip install ctranslate2

    config = TransformerConfig.load(Path(checkpoint) / "config.json")
    with tempfile.TemporaryDirectory() as hf_dir:
        to_hf(checkpoint, hf_dir)
        TransformersConverter(hf_dir).convert(str(out), force=True)
    # Its Marian and Pegasus loaders assume the decoder starts with the pad token; ours may not.
    tokenizer = HFTokenizer.from_file(str(Path(checkpoint) / "tokenizer.json"))
    ct2_config = _read_json(Path(out) / "config.json")
    ct2_config["decoder_start_token"] = tokenizer.id_to_token(config.decoder_start_token_id)
    ct2_config["bos_token"] = tokenizer.id_to_token(config.bos_token_id)
    (Path(out) / "config.json").write_text(json.dumps(ct2_config, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m model.convert", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("from-hf", help="a local MarianMT, Pegasus or GPT-2 directory → ours")
    p.add_argument("src")
    p.add_argument("out")
    p = commands.add_parser("to-hf", help="our encoder-decoder checkpoint → MarianMT or Pegasus")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p = commands.add_parser("to-ct2", help="our encoder-decoder checkpoint → CTranslate2")
    p.add_argument("checkpoint")
    p.add_argument("out")
    args = parser.parse_args(argv)
    if args.command == "from-hf":
        model = from_hf(args.src, args.out)
        print(
            f"wrote {args.out}: {model.config.architecture}, {model.num_parameters():,} parameters"
        )
    elif args.command == "to-ct2":
        to_ctranslate2(args.checkpoint, args.out)
        print(f"wrote {args.out}: a CTranslate2 model")
    else:
        to_hf(args.checkpoint, args.out)
        print(
            f"wrote {args.out}: a {json.loads((Path(args.out) / 'config.json').read_text())['architectures'][0]} directory"
        )


if __name__ == "__main__":
    main()
