"""The shared byte-level BPE vocabulary: every string round-trips, special tokens have fixed ids."""

from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer

from model.tokenizer import Tokenizer, train_tokenizer

TEXTS = [
    "Open the file",
    "Datei öffnen",
    "Größe ändern …",
    "Speichern unter „Dokument“",
    "  two  spaces\tand a tab",
    "emoji 🎉 and CJK 文件",
]


@pytest.fixture(scope="module")
def tokenizer():
    corpus = ["Open the file", "Save the file as", "Datei öffnen", "Datei speichern unter"] * 20
    return Tokenizer(train_tokenizer(corpus, vocab_size=400))


@pytest.mark.parametrize("text", TEXTS)
def test_any_text_round_trips_exactly(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.parametrize("text", TEXTS)
def test_token_bytes_add_up_to_the_text_pieces_of_characters_included(tokenizer, text):
    ids = tokenizer.encode(text)
    pieces = [tokenizer.token_bytes(i) for i in ids]
    assert b"".join(pieces) == text.encode()
    if "🎉" in text:  # the vocabulary has not seen it: its bytes are tokens of their own
        assert any(tokenizer.decode([i]) == "\ufffd" for i in ids)
    specials = (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id)
    assert [tokenizer.token_bytes(i) for i in specials] == [b"", b"", b""]


def test_special_tokens_have_fixed_ids_and_are_skipped_when_decoding(tokenizer):
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)
    ids = tokenizer.encode("Datei öffnen")
    assert tokenizer.decode([tokenizer.bos_id, *ids, tokenizer.eos_id]) == "Datei öffnen"


def test_special_tokens_strings_in_text_are_plain_text_with_split_special_tokens(tokenizer):
    """Our checkpoints: a user's `</s>` must not end the source, nor `<s>` start a new one."""
    split = Tokenizer(HFTokenizer.from_str(tokenizer.hf.to_str()), split_special_tokens=True)
    ids = split.encode("<s>Old price</s> New price")
    assert not {split.pad_id, split.bos_id, split.eos_id} & set(ids)
    assert split.decode(ids) == "<s>Old price</s> New price"
    assert not {split.pad_id, split.eos_id} & set(split.encode_batch(["</s>"])[0])
    plain = Tokenizer(HFTokenizer.from_str(tokenizer.hf.to_str()))  # transformers' default
    assert tokenizer.eos_id in plain.encode("Old price</s>")


def test_the_bundled_checkpoints_read_special_tokens_strings_as_text():
    from model.checkpoint import load_checkpoint

    for name in ("en-de", "en-lm"):
        _, bundled = load_checkpoint(Path(__file__).parents[1] / "model" / "checkpoints" / name)
        assert bundled.eos_id not in bundled.encode("Old price</s> New price"), name


def test_frequent_words_become_single_tokens(tokenizer):
    assert len(tokenizer.encode("Datei")) == 1
    assert len(tokenizer.encode("Datei")) < len(b"Datei")


def test_saved_tokenizer_loads_with_the_same_vocabulary(tmp_path, tokenizer):
    tokenizer.save(tmp_path / "tokenizer.json")
    loaded = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert loaded.vocab_size == tokenizer.vocab_size
    assert loaded.encode_batch(TEXTS) == tokenizer.encode_batch(TEXTS)
