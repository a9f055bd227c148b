"""Streaming detokenization: the text deltas add up to decoding everything, never split a UTF-8
character, and end right at the first stop string."""

from __future__ import annotations

import random

import pytest
from tokenizers import pre_tokenizers

from model.tokenizer import Tokenizer, train_tokenizer
from service.engine.detokenizer import IncrementalDetokenizer

GERMAN = ["Datei", "öffnen", "Größe", "ändern", "Straße", "über", "Grüße", "schön", "Bücher"]
MORE = ["Preis", "kostet", "Euro", "Käse", "Übung", "Öl", "naïve", "café"]
ENGLISH = ["the", "file", "is", "open", "save", "as", "party"]
SYMBOLS = ["5", "€", "12,50 €", "🎉", "👍", "😀"]
WORDS = GERMAN + MORE + ENGLISH + SYMBOLS
EOS = 2
BYTES = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)  # byte → char


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    rng = random.Random(0)
    corpus = [" ".join(rng.choices(WORDS, k=rng.randint(2, 7))) for _ in range(400)]
    return Tokenizer(train_tokenizer(corpus, vocab_size=400))


def byte_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """One token per UTF-8 byte of `text`, so that every non-ASCII character spans tokens."""
    [(chars, _)] = BYTES.pre_tokenize_str(text)
    vocab = tokenizer.hf.get_vocab()
    return [vocab[c] for c in chars]


def random_ids(rng: random.Random, tokenizer: Tokenizer) -> list[int]:
    """Words tokenized normally or byte by byte, random vocabulary ids, special ids; cut anywhere."""
    ids: list[int] = []
    for _ in range(rng.randint(0, 8)):
        text = " " + " ".join(rng.choices(WORDS, k=rng.randint(1, 3)))
        ids += rng.choice(
            [
                tokenizer.encode(text),
                byte_ids(tokenizer, text),
                [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randint(1, 4))],
                [EOS],
            ]
        )
    return ids[: rng.randint(0, len(ids))]


def stream(detok: IncrementalDetokenizer, ids: list[int], rng: random.Random) -> list[str]:
    """Every delta: `add` in chunks of 1–3 ids, then `finish`."""
    deltas = []
    while ids:
        n = rng.randint(1, 3)
        deltas.append(detok.add(ids[:n]))
        ids = ids[n:]
    return [*deltas, detok.finish()]


def cut_at_first_stop(text: str, stops: list[str], include: bool) -> tuple[str, str | None]:
    """Reference: the text up to the first point where it contains a stop string."""
    for end in range(len(text) + 1):
        hits = [s for s in stops if text[:end].endswith(s)]
        if hits:
            stop = max(hits, key=len)
            return text[: end if include else end - len(stop)], stop
    return text, None


def test_decoding_from_a_character_boundary_equals_that_slice_of_decoding_everything(tokenizer):
    rng = random.Random(1)
    for _ in range(300):
        ids = random_ids(rng, tokenizer)
        whole = tokenizer.decode(ids)
        for k in range(len(ids) + 1):
            head = tokenizer.decode(ids[:k])
            if not head.endswith("\ufffd"):
                assert head + tokenizer.decode(ids[k:]) == whole, (ids, k)


def test_emitted_pieces_add_up_to_decoding_everything(tokenizer):
    rng = random.Random(2)
    for _ in range(300):
        ids = random_ids(rng, tokenizer)
        detok = IncrementalDetokenizer(tokenizer)
        deltas = stream(detok, ids, rng)
        assert "".join(deltas) == detok.text == tokenizer.decode(ids), ids
        assert detok.stopped_on is None


@pytest.mark.parametrize("include", [False, True])
def test_emitted_pieces_add_up_to_the_text_cut_at_the_first_stop_string(tokenizer, include):
    rng = random.Random(3)
    for _ in range(300):
        ids = random_ids(rng, tokenizer)
        whole = tokenizer.decode(ids)
        stops = [rng.choice(WORDS) for _ in range(rng.randint(1, 2))]
        if whole:
            start = rng.randrange(len(whole))
            stops.append(whole[start : start + rng.randint(1, 6)])
        detok = IncrementalDetokenizer(tokenizer, stops, include_stop_string=include)
        deltas = stream(detok, ids, rng)
        expected, stop = cut_at_first_stop(whole, stops, include)
        assert "".join(deltas) == detok.text == expected, (ids, stops)
        assert detok.stopped_on == stop


def test_never_emits_half_a_utf8_character(tokenizer):
    text = "Grüße für 5 € 🎉 und 😀!"
    for ids in (byte_ids(tokenizer, text), tokenizer.encode(text)):
        detok = IncrementalDetokenizer(tokenizer)
        for token_id in ids:
            delta = detok.add([token_id])
            assert "\ufffd" not in delta
            assert text.startswith(detok.text)
        assert detok.text + detok.finish() == text


def test_each_add_decodes_only_a_short_window_of_recent_tokens(tokenizer):
    windows: list[int] = []

    class Spy(Tokenizer):
        def decode(self, token_ids: list[int]) -> str:
            windows.append(len(token_ids))
            return super().decode(token_ids)

    ids = (tokenizer.encode(" Datei öffnen") + byte_ids(tokenizer, " Grüße 🎉 €")) * 30
    detok = IncrementalDetokenizer(Spy(tokenizer.hf))
    for token_id in ids:
        detok.add([token_id])
    assert len(ids) > 300 and max(windows) <= 6


def test_finish_emits_held_back_incomplete_bytes_as_decode_renders_them(tokenizer):
    ids = byte_ids(tokenizer, "5 €")[:-1]  # the last byte of "€" never comes
    detok = IncrementalDetokenizer(tokenizer)
    assert detok.add(ids) == "5 "
    assert detok.finish() == "\ufffd" == tokenizer.decode(ids)[-1]
    assert detok.text == tokenizer.decode(ids)


def test_special_ids_decode_to_nothing(tokenizer):
    detok = IncrementalDetokenizer(tokenizer)
    assert detok.add([1, *tokenizer.encode("Datei"), EOS]) == "Datei"
    assert detok.add([EOS]) == "" and detok.finish() == ""


def test_stops_right_before_a_stop_string_spanning_several_tokens(tokenizer):
    detok = IncrementalDetokenizer(tokenizer, ["für €"])
    deltas = [detok.add([i]) for i in byte_ids(tokenizer, "Grüße für €5 mehr")]
    assert "".join(deltas) == detok.text == "Grüße "
    assert detok.stopped_on == "für €"


def test_include_stop_string_keeps_the_stop_string(tokenizer):
    detok = IncrementalDetokenizer(tokenizer, ["für €"], include_stop_string=True)
    detok.add(byte_ids(tokenizer, "Grüße für €5 mehr"))
    assert detok.text == "Grüße für €" and detok.stopped_on == "für €"


def test_holds_back_text_that_may_begin_a_stop_string_until_disambiguated(tokenizer):
    detok = IncrementalDetokenizer(tokenizer, ["Datei öffnen!"])
    assert detok.add(tokenizer.encode("Bitte Datei öff")) == "Bitte "
    assert detok.add(tokenizer.encode("nen")) == ""
    assert detok.add(tokenizer.encode("?")) == "Datei öffnen?"
    assert detok.stopped_on is None


def test_nothing_is_emitted_after_a_stop_string(tokenizer):
    detok = IncrementalDetokenizer(tokenizer, ["Käse"])
    assert detok.add(tokenizer.encode("Öl und Käse und Brot")) == "Öl und "
    assert detok.add(tokenizer.encode(" noch mehr")) == ""
    assert detok.finish() == "" and detok.text == "Öl und "


def test_the_stop_string_that_completes_first_wins(tokenizer):
    detok = IncrementalDetokenizer(tokenizer, ["schöne Grüße", "schön"])
    detok.add(tokenizer.encode("sehr schöne Grüße"))
    assert detok.text == "sehr " and detok.stopped_on == "schön"


def test_empty_stop_strings_are_rejected(tokenizer):
    with pytest.raises(ValueError):
        IncrementalDetokenizer(tokenizer, [""])
