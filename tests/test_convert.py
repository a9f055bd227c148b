"""Hugging Face MarianMT and GPT-2 checkpoints convert to ours and compute what `transformers` does.

The models are tiny and random, built locally with `transformers` (nothing is downloaded), with
real tokenizer files: a SentencePiece model trained here for Marian, a byte-level BPE for GPT-2.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import ctranslate2
import httpx
import pytest
import sentencepiece
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
    MarianConfig,
    MarianMTModel,
    MarianTokenizer,
    PegasusForConditionalGeneration,
)

from model.checkpoint import load_checkpoint, save_checkpoint
from model.convert import from_hf, main
from model.decoding import beam_search_batch, greedy_reference, pad_batch
from model.tokenizer import Tokenizer, train_tokenizer
from service.api.settings import Settings
from service.engine import EngineConfig, LLMEngine, SamplingParams
from tests.conftest import tiny_model
from tests.server import ServerThread, free_port

TEXTS = [
    "Open the file and save the document.",
    "The printer is not connected.",
    "Select a folder to open.",
    "Could not save the file: permission denied.",
    "Click Next to continue, or Cancel to quit.",
    "Settings were saved.",
    "Delete the selected items?",
]
SOURCES = ["Open the printer settings!", "Save", "Could not delete the folder.", ">>deu<< Quit"]
MAX_NEW = 24


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def randomize(model: torch.nn.Module, std: float) -> None:
    """Larger weights than the default init, so that logits are far apart and argmaxes robust."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, std)


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory) -> Path:
    """A tiny opus-mt-like directory: source.spm/target.spm, vocab.json, a random MarianMTModel."""
    out = tmp_path_factory.mktemp("marian")
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS * 20), model_writer=proto, vocab_size=90,
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
    )  # fmt: skip
    for name in ("source.spm", "target.spm"):
        (out / name).write_bytes(proto.getvalue())
    sp = sentencepiece.SentencePieceProcessor(model_proto=proto.getvalue())
    pieces = [
        sp.id_to_piece(i)
        for i in range(sp.get_piece_size())
        if not (sp.is_control(i) or sp.is_unknown(i))
    ]
    vocab = {p: i for i, p in enumerate(["</s>", "<unk>", ">>deu<<", *pieces, "<pad>"])}
    (out / "vocab.json").write_text(json.dumps(vocab))
    pad = len(vocab) - 1
    config = MarianConfig(
        vocab_size=len(vocab), decoder_vocab_size=len(vocab), d_model=32,
        encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        activation_function="swish", scale_embedding=True, pad_token_id=pad, eos_token_id=0,
        tie_word_embeddings=False,  # random tied embeddings only ever repeat the last token
        decoder_start_token_id=pad, forced_eos_token_id=0,
    )  # fmt: skip
    model = MarianMTModel(config).eval()
    randomize(model, 0.2)
    with torch.no_grad():  # as in a trained model: pad is never likely, EOS now and then
        model.lm_head.weight.normal_(0, 0.3)
        for part in (model.model.encoder, model.model.decoder):  # one shared vocabulary
            part.embed_tokens.weight.copy_(model.model.shared.weight)
        model.final_logits_bias.normal_(0, 0.1)
        model.final_logits_bias[0, pad] = -30.0
        model.final_logits_bias[0, 0] = 4.5
    model.save_pretrained(out)
    generation = json.loads((out / "generation_config.json").read_text())
    generation |= {"bad_words_ids": [[pad]], "num_beams": 4, "max_length": 64}  # as opus-mt's
    (out / "generation_config.json").write_text(json.dumps(generation))
    MarianTokenizer(*(str(out / f) for f in ("source.spm", "target.spm", "vocab.json")))
    return out


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    """A tiny GPT-2 directory: vocab.json + merges.txt of a byte-level BPE, a random model."""
    out = tmp_path_factory.mktemp("gpt2")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS * 20, vocab_size=300, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(out))
    eos = bpe.token_to_id("<|endoftext|>")
    config = GPT2Config(
        vocab_size=bpe.get_vocab_size(), n_embd=32, n_layer=2, n_head=4, n_positions=64,
        bos_token_id=eos, eos_token_id=eos,
    )  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    randomize(model, 0.15)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def converted(marian_dir, gpt2_dir, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("converted")
    from_hf(marian_dir, out / "marian")
    from_hf(gpt2_dir, out / "gpt2")
    return {"marian": out / "marian", "gpt2": out / "gpt2"}


def hf_marian(marian_dir: Path) -> MarianMTModel:
    return MarianMTModel.from_pretrained(marian_dir).eval()


def marian_ids(marian_dir: Path) -> list[list[int]]:
    tokenizer = MarianTokenizer.from_pretrained(marian_dir)
    return [tokenizer(text).input_ids for text in SOURCES]


# -- logits ------------------------------------------------------------------------------------


@torch.inference_mode()
def test_marian_logits_equal_transformers_with_padding(marian_dir, converted):
    ours, _ = load_checkpoint(converted["marian"])
    theirs = hf_marian(marian_dir)
    pad = ours.config.pad_token_id
    src, src_valid = pad_batch(marian_ids(marian_dir), pad)  # 4 sources of different lengths
    tgt, tgt_valid = pad_batch([[pad, 5, 9, 17, 4], [pad, 7], [pad, 3, 3, 8], [pad]], pad)
    expected = theirs(
        input_ids=src, attention_mask=src_valid.long(),
        decoder_input_ids=tgt, decoder_attention_mask=tgt_valid.long(),
    ).logits  # fmt: skip
    got = ours(src, tgt, src_valid, tgt_valid)
    keep = torch.ones(ours.config.vocab_size, dtype=torch.bool)
    keep[pad] = False  # we mask the suppressed pad token in the logits; generate() does it later
    assert relative_error(got[tgt_valid][:, keep], expected[tgt_valid][:, keep]) <= 1e-4
    assert torch.isinf(got[..., pad]).all()


@torch.inference_mode()
def test_gpt2_logits_equal_transformers_with_padding(gpt2_dir, converted):
    ours, tokenizer = load_checkpoint(converted["gpt2"])
    theirs = GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    prompts = [tokenizer.encode(text) for text in TEXTS[:4]]
    ids, valid = pad_batch(prompts, ours.config.pad_token_id)
    expected = theirs(input_ids=ids, attention_mask=valid.long()).logits
    got = ours(ids, tgt_valid=valid)
    assert relative_error(got[valid], expected[valid]) <= 1e-4


# -- decoding ----------------------------------------------------------------------------------


def hf_new_tokens(sequence: torch.Tensor, start: int, eos: int, pad: int) -> list[int]:
    """generate()'s output without the prompt, cut after EOS (the rest is padding)."""
    ids = sequence.tolist()[start:]
    return ids[: ids.index(eos) + 1] if eos in ids else [t for t in ids if t != pad]


@torch.inference_mode()
def test_marian_greedy_and_beam_search_equal_generate(marian_dir, converted):
    theirs = hf_marian(marian_dir)
    model, _ = load_checkpoint(converted["marian"])
    config = model.config
    sources = marian_ids(marian_dir)
    # forced_eos_token_id=None: Marian's generate() forces EOS at max_length; we end with "length".
    common = dict(max_new_tokens=MAX_NEW, do_sample=False, forced_eos_token_id=None)
    greedy = [
        hf_new_tokens(theirs.generate(torch.tensor([s]), num_beams=1, **common)[0], 1, 0, config.pad_token_id)
        for s in sources
    ]  # fmt: skip
    beams = [
        hf_new_tokens(theirs.generate(torch.tensor([s]), num_beams=4, **common)[0], 1, 0, config.pad_token_id)
        for s in sources
    ]  # fmt: skip
    assert sum(0 in g and len(g) < MAX_NEW for g in greedy + beams) >= 2, "too few EOS endings"
    assert len({tuple(g) for g in greedy + beams}) >= 5, "the outputs are too alike to test much"
    assert greedy != beams
    assert [greedy_reference(model, s, MAX_NEW) for s in sources] == greedy
    ours_beams = beam_search_batch(model, sources, beam_size=4, max_new_tokens=MAX_NEW)
    assert [h[0].token_ids for h in ours_beams] == beams

    # The engine, every source in one continuously batched run, and one joining mid-flight.
    engine = LLMEngine(model, load_checkpoint(converted["marian"])[1], EngineConfig(block_size=4))
    outputs = engine.generate(sources, SamplingParams(max_new_tokens=MAX_NEW))
    assert [o.token_ids for o in outputs] == greedy
    outputs = engine.generate(sources, SamplingParams(max_new_tokens=MAX_NEW, beam_size=4))
    assert [o.token_ids for o in outputs] == beams
    first = engine.add_request(sources[0], SamplingParams(max_new_tokens=MAX_NEW, beam_size=4))
    for _ in range(3):
        engine.step()
    late = engine.add_request(sources[2], SamplingParams(max_new_tokens=MAX_NEW, beam_size=4))
    done: dict[str, list[int]] = {}
    while engine.has_unfinished:
        done |= {o.request_id: o.token_ids for o in engine.step() if o.finished}
    assert [done[first.request_id], done[late.request_id]] == [beams[0], beams[2]]


@torch.inference_mode()
def test_marian_no_repeat_ngram_size_equals_generate(marian_dir, converted):
    """`no_repeat_ngram_size` gives `generate()`'s tokens, greedy and beam 4, in the engine too."""
    theirs = hf_marian(marian_dir)
    model, tokenizer = load_checkpoint(converted["marian"])
    sources = marian_ids(marian_dir)
    engine = LLMEngine(model, tokenizer, EngineConfig(block_size=4))
    common = dict(max_new_tokens=MAX_NEW, do_sample=False, forced_eos_token_id=None)
    for beams in (1, 4):
        expected = [
            hf_new_tokens(
                theirs.generate(torch.tensor([s]), num_beams=beams, no_repeat_ngram_size=2, **common)[0],
                1, 0, model.config.pad_token_id,
            )
            for s in sources
        ]  # fmt: skip
        plain = [
            hf_new_tokens(theirs.generate(torch.tensor([s]), num_beams=beams, **common)[0], 1, 0, model.config.pad_token_id)
            for s in sources
        ]  # fmt: skip
        assert expected != plain, "no repeated bigram to ban: the test would prove nothing"
        params = SamplingParams(max_new_tokens=MAX_NEW, beam_size=beams, no_repeat_ngram_size=2)
        assert [o.token_ids for o in engine.generate(sources, params)] == expected
        if beams == 1:
            ours = [greedy_reference(model, s, MAX_NEW, no_repeat_ngram_size=2) for s in sources]
        else:
            hyps = beam_search_batch(model, sources, 4, MAX_NEW, no_repeat_ngram_size=2)
            ours = [h[0].token_ids for h in hyps]
        assert ours == expected


@torch.inference_mode()
def test_gpt2_greedy_equals_generate_alone_and_batched(gpt2_dir, converted):
    theirs = GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    model, tokenizer = load_checkpoint(converted["gpt2"])
    eos = model.config.eos_token_id
    prompts = [tokenizer.encode(text) for text in TEXTS[:5]]
    expected = [
        hf_new_tokens(
            theirs.generate(torch.tensor([p]), max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=eos)[0],
            len(p), eos, eos,
        )
        for p in prompts
    ]  # fmt: skip
    assert [greedy_reference(model, p, MAX_NEW) for p in prompts] == expected
    engine = LLMEngine(model, tokenizer, EngineConfig(block_size=4))
    assert [
        o.token_ids for o in engine.generate(prompts, SamplingParams(max_new_tokens=MAX_NEW))
    ] == expected
    # Text prompts: GPT-2 adds no BOS, so the engine's text path equals the ids path.
    assert [
        o.token_ids for o in engine.generate(TEXTS[:5], SamplingParams(max_new_tokens=MAX_NEW))
    ] == expected


# -- tokenizers --------------------------------------------------------------------------------


def test_marian_tokenizer_matches_marian_tokenizer(marian_dir, converted):
    theirs = MarianTokenizer.from_pretrained(marian_dir)
    _, ours = load_checkpoint(converted["marian"])
    texts = [*SOURCES, *TEXTS, "  two  spaces ", "naïve café", ""]
    for text in texts:
        expected = theirs(text).input_ids
        assert ours.encode(text) + [ours.eos_id] == expected, text
        assert ours.decode(expected) == theirs.decode(expected, skip_special_tokens=True), text


def test_gpt2_tokenizer_matches_gpt2_tokenizer(gpt2_dir, converted):
    theirs = GPT2TokenizerFast.from_pretrained(gpt2_dir)
    _, ours = load_checkpoint(converted["gpt2"])
    for text in [*TEXTS, " leading space", "Größe ändern €", "a<|endoftext|>b"]:
        assert ours.encode(text) == theirs(text).input_ids, text
        assert ours.decode(ours.encode(text)) == text.replace("<|endoftext|>", ""), text


# -- our model out to Hugging Face, and back -------------------------------------------------------


@pytest.mark.parametrize(("norm_first", "bias"), [(False, False), (False, True), (True, False)])
@torch.inference_mode()
def test_round_trip_through_hugging_face_is_bit_identical(tmp_path, norm_first, bias):
    """Post-norm models go out as MarianMT, pre-norm ones (as the bundled en-de) as Pegasus.
    The tokenizer's split_special_tokens goes out and comes back with it."""
    tokenizer = Tokenizer(train_tokenizer(TEXTS, vocab_size=300), split_special_tokens=bias)
    model = tiny_model(
        vocab_size=tokenizer.vocab_size, final_logits_bias=bias, norm_first=norm_first,
        max_positions=64, activation="gelu_tanh",
    )  # fmt: skip
    if bias:
        model.final_logits_bias.normal_()
    save_checkpoint(model, tokenizer, tmp_path / "ours")
    main(["to-hf", str(tmp_path / "ours"), str(tmp_path / "hf")])
    hf_class = PegasusForConditionalGeneration if norm_first else MarianMTModel
    theirs = hf_class.from_pretrained(tmp_path / "hf").eval()
    src = torch.randint(4, tokenizer.vocab_size, (2, 7))
    tgt = torch.randint(4, tokenizer.vocab_size, (2, 5))
    expected = theirs(input_ids=src, decoder_input_ids=tgt).logits
    assert relative_error(model(src, tgt), expected) <= 1e-4

    main(["from-hf", str(tmp_path / "hf"), str(tmp_path / "back")])
    back, back_tokenizer = load_checkpoint(tmp_path / "back")
    assert back.config == model.config
    assert back.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    assert (tmp_path / "back" / "tokenizer.json").read_text() == (
        tmp_path / "ours" / "tokenizer.json"
    ).read_text()
    assert back_tokenizer.encode("Open the file") == tokenizer.encode("Open the file")
    assert back_tokenizer.split_special_tokens is bias
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tokenizer("a</s>").input_ids == back_tokenizer.encode("a</s>")


def test_unknown_weights_and_architectures_are_refused(marian_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("config.json", "source.spm", "vocab.json"):
        (bad / name).write_bytes((marian_dir / name).read_bytes())
    weights = load_file(str(marian_dir / "model.safetensors"))
    weights["model.encoder.layernorm_embedding.weight"] = torch.ones(32)
    save_file(weights, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match="layernorm_embedding"):
        from_hf(bad, tmp_path / "out")
    config = json.loads((marian_dir / "config.json").read_text()) | {"model_type": "bart"}
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="bart"):
        from_hf(bad, tmp_path / "out")


@pytest.mark.parametrize("length_penalty", [1.0, 2.0])
@torch.inference_mode()
def test_marian_beam_search_equals_generate_on_many_sources(marian_dir, converted, length_penalty):
    """Which candidates may end, and when the search stops, follow generate()'s rules exactly."""
    theirs = hf_marian(marian_dir)
    model, _ = load_checkpoint(converted["marian"])
    generator = torch.Generator().manual_seed(0)
    sources = [
        torch.randint(1, 60, (int(torch.randint(1, 12, (1,), generator=generator)),), generator=generator).tolist() + [0]
        for _ in range(30)
    ]  # fmt: skip
    ours = beam_search_batch(model, sources, 4, MAX_NEW, length_penalty)
    for source, hypotheses in zip(sources, ours, strict=True):
        output = theirs.generate(
            torch.tensor([source]), num_beams=4, max_new_tokens=MAX_NEW, do_sample=False,
            forced_eos_token_id=None, length_penalty=length_penalty,
        )[0]  # fmt: skip
        assert hypotheses[0].token_ids == hf_new_tokens(output, 1, 0, model.config.pad_token_id)


@torch.inference_mode()
def test_ctranslate2_translates_our_model_as_we_do(tmp_path):
    """to-hf output is accepted by CTranslate2's converter, and its greedy output equals ours."""
    tokenizer = Tokenizer(train_tokenizer(TEXTS, vocab_size=300))
    model = tiny_model(vocab_size=tokenizer.vocab_size, norm_first=True, max_positions=64)
    save_checkpoint(model, tokenizer, tmp_path / "ours")
    main(["to-ct2", str(tmp_path / "ours"), str(tmp_path / "ct2")])
    sources = [tokenizer.encode(text) + [tokenizer.eos_id] for text in TEXTS]
    translator = ctranslate2.Translator(str(tmp_path / "ct2"), device="cpu")
    results = translator.translate_batch(
        [[tokenizer.hf.id_to_token(i) for i in s] for s in sources], beam_size=1,
        max_decoding_length=MAX_NEW,
    )  # fmt: skip
    theirs = [[tokenizer.hf.token_to_id(t) for t in r.hypotheses[0]] for r in results]
    ours = [greedy_reference(model, s, MAX_NEW) for s in sources]
    assert theirs == [ids[:-1] if ids[-1] == tokenizer.eos_id else ids for ids in ours]


def test_the_server_serves_a_converted_opus_mt_directory(marian_dir, converted):
    """`--model ID=PATH` with a converted directory: /v1/translate gives generate()'s text."""
    tokenizer = MarianTokenizer.from_pretrained(marian_dir)
    theirs = hf_marian(marian_dir)
    with torch.inference_mode():
        expected = [
            tokenizer.decode(
                theirs.generate(
                    torch.tensor([tokenizer(text).input_ids]), num_beams=4,
                    max_new_tokens=MAX_NEW, forced_eos_token_id=None,
                )[0],
                skip_special_tokens=True,
            )
            for text in SOURCES
        ]  # fmt: skip
    settings = Settings(
        models=[f"opus-mt-tiny={converted['marian']}"], port=free_port(), max_new_tokens=MAX_NEW
    )
    with ServerThread(settings) as server:
        response = httpx.post(
            f"{server.url}/v1/translate",
            json={"model": "opus-mt-tiny", "text": SOURCES, "max_new_tokens": MAX_NEW},
            timeout=60,
        )
    assert response.status_code == 200, response.text
    assert [t["text"] for t in response.json()["translations"]] == expected


@torch.inference_mode()
def test_alignment_equals_transformers_cross_attentions(marian_dir, converted):
    """Our alignment (last decoder layer's cross-attention, mean over heads) is what
    `transformers` returns with output_attentions=True for the same tokens."""
    theirs = MarianMTModel.from_pretrained(marian_dir, attn_implementation="eager").eval()
    ours, _ = load_checkpoint(converted["marian"])
    pad = ours.config.pad_token_id
    for source in marian_ids(marian_dir):
        new_ids = greedy_reference(ours, source, 8)
        expected = (
            theirs(
                input_ids=torch.tensor([source]),
                decoder_input_ids=torch.tensor([[pad, *new_ids[:-1]]]),
                output_attentions=True,
            )
            .cross_attentions[-1][0]
            .mean(0)
        )  # (T, S)
        got = ours.alignment(source, new_ids)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
