"""What the translation model cannot read is kept out of its input and put back in its place
(service/api/unreadable.py), with the bundled model's vocabulary."""

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from model.checkpoint import load_tokenizer
from model.config import TransformerConfig
from service.api.unreadable import Masked, Unreadable, restored
from service.engine import FinishReason, Hypothesis, RequestOutput

BUNDLED = Path(__file__).parent.parent / "model" / "checkpoints" / "en-de"


@pytest.fixture(scope="module")
def unreadable() -> Unreadable:
    return Unreadable(load_tokenizer(BUNDLED, TransformerConfig.load(BUNDLED / "config.json")))


@pytest.mark.parametrize(
    "segment, source, runs",
    [
        ("Open the file", "Open the file", ()),
        ("Größe ändern – 20 °C café", "Größe ändern – 20 °C café", ()),  # in the vocabulary
        ("Price: 5 € a month", "Price: 5 {0} a month", ("€",)),  # only in bytes
        ("The word שלום עולם means peace.", "The word {0} means peace.", ("שלום עולם",)),
        ("I love 🍕 and 日本語!", "I love {0} and {1}!", ("🍕", "日本語")),
        ("A family 👨‍👩‍👧 and a flag 🇩🇪.", "A family {0} and a flag {1}.", ("👨‍👩‍👧", "🇩🇪")),
        ("Привет, Łódź", "{0}, {1}", ("Привет", "Łódź")),  # only in bytes, as any Cyrillic
        ("Copy {0} to Ω", "Copy {0} to {1}", ("Ω",)),  # the client's own {0} is left as it is
        ("cafe\u0301 ok", "cafe\u0301 ok", ()),  # a combining mark goes with its letter
    ],
)
def test_runs_of_what_the_model_cannot_read_become_placeholders(unreadable, segment, source, runs):
    masked = unreadable.mask(segment)
    assert (masked.source, masked.runs) == (source, runs)
    assert masked.restore(masked.source) == segment  # the model's copy gives the segment back


@pytest.mark.parametrize("segment", ["日本語", "🍕🍕🍕", "שלום עולם", "42", "3.14 %", "{0}"])
def test_a_segment_with_no_letter_left_is_not_for_the_model(unreadable, segment):
    assert not unreadable.mask(segment).is_readable


def test_restore_puts_the_runs_back_and_loses_none():
    masked = Masked("I love {0} and {1}.", ("🍕", "日本語"))
    assert masked.restore("Ich liebe {0} und {1}.") == "Ich liebe 🍕 und 日本語."
    assert masked.restore("Ich liebe {1}.") == "Ich liebe 日本語. 🍕"  # dropped: added at the end
    assert masked.restore("Ich liebe {0} {0} {7}") == "Ich liebe 🍕 🍕 {7} 日本語"
    assert masked.restore("Ich liebe {", finished=False) == "Ich liebe "  # may become {0}
    assert masked.restore("Ich liebe {1", finished=False) == "Ich liebe "
    assert Masked("{5}", ("x",), first=5).restore("{5} {0}") == "x {0}"


def test_restored_outputs_give_out_the_restored_text_piece_by_piece():
    masked = Masked("I love {0}.", ("🍕",))
    texts = ["Ich", "Ich liebe", "Ich liebe {", "Ich liebe {0", "Ich liebe {0}", "Ich liebe {0}."]

    async def outputs():
        for k, text in enumerate(texts):
            last = k == len(texts) - 1
            reason = FinishReason.STOP if last else None
            hypotheses = [Hypothesis([], text, -1.0)] if last else []
            yield RequestOutput("r", [k], [0.0], "", [k], text, 0, 0, reason, hypotheses)

    async def collect():
        return [o async for o in restored(outputs(), masked)]

    got = asyncio.run(collect())
    assert "".join(o.text_delta for o in got) == got[-1].text == "Ich liebe 🍕."
    assert [o.text for o in got[:4]] == ["Ich", "Ich liebe", "Ich liebe ", "Ich liebe "]
    assert got[-1].hypotheses[0].text == "Ich liebe 🍕."


def test_a_tokenizer_that_is_not_byte_level_reads_everything():
    """A converted SentencePiece model is given the text as generate() would be."""
    fake = SimpleNamespace(is_byte_level=False, encode=None, decode=None)
    masked = Unreadable(fake).mask("日本語 42")
    assert masked.source == "日本語 42" and masked.runs == () and masked.is_readable
