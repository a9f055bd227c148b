"""A text cut into what the translation model was trained on: single lines, and in a line,
sentences. The model, given several lines at once, turns a line break into a space, and given
several sentences it often drops one ("Hello, how are you? I am fine. The weather is nice
today." lost "I am fine."). Translating each sentence alone and putting the translations back
where the sentences were scores higher on both test sets (docs/benchmarks.md); the server's
`/v1/translate` does it (`service/api/segments.py`), and `python -m model.evaluate
--split-sentences` measures it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Invisible characters that `str.isspace` does not count: zero-width space, non-joiner and
# joiner, word joiner, byte order mark.
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"

# A sentence ends at . ! ? or … (then any closing quotes or brackets) before white space and an
# upper-case letter (after any opening quote or bracket)...
SENTENCE_END = re.compile(r"""[.!?…]+["'”’)\]]*(\s+)(?=["'“‘(\[]?[A-ZÄÖÜ])""")
# ...unless the full stop ends one of these words, or an initial ("J. Smith").
ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "mt", "vs", "etc", "e.g", "i.e", "cf",
    "no", "nr", "vol", "fig", "inc", "ltd", "co", "corp", "approx", "dept", "gen", "col", "lt",
    "capt", "gov", "sen", "rev", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept",
    "oct", "nov", "dec",
}  # fmt: skip


def is_blank(text: str) -> bool:
    return all(c.isspace() or c in INVISIBLE for c in text)


@dataclass
class Segments:
    """A text cut into segments to translate one by one (`sources`: non-blank, stripped) and
    what lies around them: the text is `between[0] + sources[0] + between[1] + ... +
    sources[-1] + between[-1]`. `numbers`: the line (from 1) each segment is on."""

    sources: list[str]
    between: list[str]
    numbers: list[int]

    def join(self, translations: list[str]) -> str:
        """The text with each segment replaced by its translation."""
        parts = [self.between[0]]
        for translation, after in zip(translations, self.between[1:], strict=True):
            parts += [translation, after]
        return "".join(parts)


def split_text(text: str, sentences: bool = True) -> Segments | None:
    """The text's lines, and with `sentences` each line's sentences; None when that leaves the
    text as it is (one sentence, nothing around it), or leaves nothing (only white space)."""
    sources: list[str] = []
    between: list[str] = []
    numbers: list[int] = []
    pending = ""  # text since the last segment
    for k, line in enumerate(text.split("\n")):
        if k:
            pending += "\n"
        if is_blank(line):
            pending += line
            continue
        core = line.strip()
        start = line.index(core)
        pending += line[:start]
        for sentence, gap in split_sentences(core) if sentences else [(core, "")]:
            between.append(pending)
            sources.append(sentence)
            numbers.append(k + 1)
            pending = gap
        pending += line[start + len(core) :]
    between.append(pending)
    if not sources or sources == [text]:
        return None
    return Segments(sources, between, numbers)


def split_sentences(line: str) -> list[tuple[str, str]]:
    """A line's sentences, each with the white space after it ("" after the last)."""
    pieces: list[tuple[str, str]] = []
    start = 0
    for match in SENTENCE_END.finditer(line):
        before = line[start : match.start()].split()
        word = before[-1].lstrip("\"'“‘([").lower() if before else ""
        full_stop = line[match.start()] == "."
        if full_stop and (word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())):
            continue
        pieces.append((line[start : match.start(1)], match.group(1)))
        start = match.end(1)
    pieces.append((line[start:], ""))
    return pieces
