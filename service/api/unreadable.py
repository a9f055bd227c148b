"""What a translation model cannot read stays out of its input, and comes back in its place.

The bundled en-de model knows English (and the Latin letters and symbols of its catalogs). Other
scripts and most emoji are in its byte-level vocabulary only as raw bytes, and given those it
makes up words and gives back stray bytes ("שלום" became "\\u0007\\ufffd"). So on
`/v1/translate` each run of such characters in a segment (`split_text`) becomes a placeholder,
`{0}`, `{1}`, ..., as the catalogs' format strings are, which the model learned to carry over
("I love pizza {0}." → "Ich liebe Pizza {0}."); the translation gets the run back where the
model put its placeholder. A placeholder the model dropped has its run added at the end, so that
nothing the client sent is lost. A segment with no letter left to read ("日本語", "🍕🍕", "42")
is its own translation and never reaches the model.

A character is unreadable if the byte-level vocabulary can spell it only in bytes (the bundled
vocabulary has no Cyrillic, Greek, Hebrew, Arabic or CJK letter whole, nor "ł" or "€").
Combining marks and invisible joiners go with the character before them, white space
between two unreadable characters is part of their run ("שלום עולם" is one), and a run takes
in the rest of the word it is in ("Łódź" is one, not "Łó" and "ź"). A tokenizer that
is not byte-level (a converted SentencePiece model's) has no such test: its text is left as
it is, as `generate()` would be given it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Protocol

from service.engine import RequestOutput

PLACEHOLDER = re.compile(r"\{(\d+)\}")
PARTIAL_PLACEHOLDER = re.compile(r"\{\d*$")  # what may become one when the next token comes
# One run: unreadable characters (U), with the marks and joiners after them (M), and the white
# space (S) between two of them. Each character is classed as one of these letters (`_class`).
RUN = re.compile(r"U[UM]*(?:S+U[UM]*)*")


class Tokenizer(Protocol):  # model.tokenizer.Tokenizer's, which the API layer does not import
    @property
    def is_byte_level(self) -> bool: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...


@dataclass(frozen=True)
class Masked:
    """A segment as the model is given it (`source`) and the runs its placeholders stand for:
    `{first + k}` is `runs[k]`."""

    source: str
    runs: tuple[str, ...] = ()
    first: int = 0
    checked: bool = True  # False: the tokenizer has no test (not byte-level), the model reads all

    @property
    def is_readable(self) -> bool:
        """Whether the model has anything to translate: a letter outside the placeholders."""
        return not self.checked or any(c.isalpha() for c in PLACEHOLDER.sub("", self.source))

    def restore(self, text: str, finished: bool = True) -> str:
        """The model's text with each placeholder's run in its place. Before the text is
        `finished`, the end that may still become a placeholder is held back; once it is, the
        runs of the placeholders the model left out are added at its end."""
        if not self.runs:
            return text
        if not finished:
            text = PARTIAL_PLACEHOLDER.sub("", text)
        seen: set[int] = set()

        def run(match: re.Match[str]) -> str:
            k = int(match.group(1)) - self.first
            if not 0 <= k < len(self.runs):
                return match.group(0)  # the client's own braces, or one the model made up
            seen.add(k)
            return self.runs[k]

        text = PLACEHOLDER.sub(run, text)
        missing = [r for k, r in enumerate(self.runs) if k not in seen]
        if finished and missing:
            space = "" if not text or text[-1].isspace() else " "
            text += space + " ".join(missing)
        return text


class Unreadable:
    """One model's test of which characters it can read, and the masking of segments."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._classes: dict[str, str] = {}

    def mask(self, segment: str) -> Masked:
        """The segment with each unreadable run replaced by a placeholder numbered past any
        `{n}` the segment already has (the client's own are left as they are)."""
        if not self.tokenizer.is_byte_level:
            return Masked(segment, checked=False)
        classes = "".join(self._class(c) for c in segment)
        spans = _whole_words(segment, [m.span() for m in RUN.finditer(classes)])
        if not spans:
            return Masked(segment)
        first = max((int(n) + 1 for n in PLACEHOLDER.findall(segment)), default=0)
        parts: list[str] = []
        runs: list[str] = []
        end = 0
        for start, stop in spans:
            parts += [segment[end:start], f"{{{first + len(runs)}}}"]
            runs.append(segment[start:stop])
            end = stop
        parts.append(segment[end:])
        return Masked("".join(parts), tuple(runs), first)

    def _class(self, char: str) -> str:
        """U: unreadable; M: a mark or joiner (it goes with what is before it); S: white space;
        R: readable."""
        found = self._classes.get(char)
        if found is None:
            found = self._classes[char] = self._classify(char)
        return found

    def _classify(self, char: str) -> str:
        category = unicodedata.category(char)
        if category in ("Mn", "Me", "Cf") or char == "\ufe0f":
            return "M"
        if char.isspace():
            return "S"
        spelled = "".join(self.tokenizer.decode([i]) for i in self.tokenizer.encode(char))
        return "R" if spelled == char else "U"


def _whole_words(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The runs widened to the whole words they are in ("Łódź", not "Łó" "d" "ź"), those that
    then touch joined."""
    widened: list[tuple[int, int]] = []
    for start, stop in spans:
        while start > 0 and text[start - 1].isalnum():
            start -= 1
        while stop < len(text) and text[stop].isalnum():
            stop += 1
        if widened and start <= widened[-1][1]:
            start = widened.pop()[0]
        widened.append((start, stop))
    return widened


async def restored(
    outputs: AsyncIterator[RequestOutput], masked: Masked
) -> AsyncIterator[RequestOutput]:
    """A masked segment's outputs with its runs back in their texts: each output's text so far,
    its new text (what the restored text adds to what was given out before), and its hypotheses."""
    sent = ""
    async for output in outputs:
        text = masked.restore(output.text, output.finished)
        delta = text[len(sent) :]  # the restored texts grow as the model's do
        sent = text
        hypotheses = [replace(h, text=masked.restore(h.text)) for h in output.hypotheses]
        yield replace(output, text=text, text_delta=delta, hypotheses=hypotheses)
