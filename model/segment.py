"""A text cut into what the translation model was trained on: single lines, and in a line,
sentences. The model, given several lines at once, turns a line break into a space, and given
several sentences it often drops one ("Hello, how are you? I am fine. The weather is nice
today." lost "I am fine."). Translating each sentence alone and putting the translations back
where the sentences were scores higher on the catalogs' test set and on texts of two everyday
sentences (model/checkpoints/en-de/MODEL_CARD.md); the server's `/v1/translate` does it
(`service/api/segments.py`), and `python -m model.evaluate --split-sentences` measures it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Invisible characters that `str.isspace` does not count: zero-width space, non-joiner and
# joiner, word joiner, byte order mark.
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"

# White space and the invisible characters: what lies between segments, never sent to the model.
SPACE = rf"[\s{INVISIBLE}]"
# A sentence may end at . ! ? or … (then any closing quotes or brackets) before white space and
# a letter (after any opening quote or bracket) or a list's number ("2. ")...
SENTENCE_END = re.compile(rf"""[.!?…]+["'”’)\]]*({SPACE}+)(?=["'“‘(\[]?([^\W\d_]|\d+\.{SPACE}))""")
# ...if that letter is a capital, and not after a full stop that ends one of these words, an
# initial ("J. Smith"), letters with full stops ("U.S.", "e.g.") or a list's number ("1.").
# (English rules: a script without capitals, such as Arabic, is cut into lines only.)
ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "mt", "vs", "etc", "cf", "inc", "ltd", "co",
    "corp", "approx", "dept", "gen", "col", "lt", "sgt", "capt", "gov", "sen", "rep", "rev",
    "ph.d",
}  # fmt: skip
LETTERS_WITH_STOPS = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")
# After a single letter and a full stop, a word that starts sentences and is never a name ends
# the sentence ("It is plan B. It works."); any other word is read as a name ("by J. Smith").
SENTENCE_STARTERS = {
    "a", "an", "the", "this", "that", "these", "those", "it", "i", "we", "you", "he", "she",
    "they", "there", "then", "now", "but", "and", "or", "so", "if", "when", "what", "why",
    "how", "please", "my", "our", "your", "his", "her", "their", "its", "in", "on", "at",
}  # fmt: skip
NEXT_WORD = re.compile(r"""["'“‘(\[]?([^\W\d_]+)""")


def is_blank(text: str) -> bool:
    return all(c.isspace() or c in INVISIBLE for c in text)


@dataclass(frozen=True)
class Segments:
    """A text cut into segments to translate one by one (`sources`: non-blank, stripped) and
    what lies around them: the text is `between[0] + sources[0] + between[1] + ... +
    sources[-1] + between[-1]`. `line_numbers`: the line (from 1) each segment is on."""

    sources: list[str]
    between: list[str]
    line_numbers: list[int]

    def join(self, translations: list[str]) -> str:
        """The text with each segment replaced by its translation."""
        parts = [self.between[0]]
        for translation, after in zip(translations, self.between[1:], strict=True):
            parts += [translation, after]
        return "".join(parts)


def split_text(text: str) -> Segments | None:
    """The text's lines and their sentences; None when that leaves the text as it is (one
    sentence, nothing around it), or leaves nothing (only white space)."""
    sources: list[str] = []
    between: list[str] = []
    line_numbers: list[int] = []
    pending = ""  # text since the last segment
    for k, line in enumerate(text.splitlines(keepends=True)):  # \n, \r\n, \r, \u2028, ...
        lead, core, trail = _edges(line)
        pending += lead
        if core:
            for sentence, gap in split_sentences(core):
                between.append(pending)
                sources.append(sentence)
                line_numbers.append(k + 1)
                pending = gap
        pending += trail
    between.append(pending)
    if not sources or sources == [text]:
        return None
    return Segments(sources, between, line_numbers)


def trim_text(text: str) -> Segments | None:
    """A text given to the model whole, as one segment without the white space and invisible
    characters at its edges (a byte order mark from a file, a trailing line break), which stay
    around its translation; None when it has none there, or is blank."""
    lead, core, trail = _edges(text)
    if not core or not (lead or trail):
        return None
    return Segments([core], [lead, trail], [1])


def _edges(line: str) -> tuple[str, str, str]:
    """A line as its leading white space, what is between, and its trailing white space (line
    break included); invisible characters count as white space."""
    core = re.sub(rf"^{SPACE}+|{SPACE}+$", "", line)
    if not core:
        return line, "", ""
    start = line.index(core)
    return line[:start], core, line[start + len(core) :]


def split_sentences(line: str) -> list[tuple[str, str]]:
    """A line's sentences, each with the white space after it ("" after the last)."""
    pieces: list[tuple[str, str]] = []
    start = 0
    for match in SENTENCE_END.finditer(line):
        if not _is_sentence_end(line[start : match.start(1)], line[match.start()], match):
            continue
        pieces.append((line[start : match.start(1)], match.group(1)))
        start = match.end(1)
    pieces.append((line[start:], ""))
    return pieces


def _is_sentence_end(sentence: str, mark: str, match: re.Match) -> bool:
    """Whether `match` (of SENTENCE_END) ends `sentence`, the text up to it, whose end `mark`
    is its first . ! ? or …"""
    following = match.group(2)
    if following.isalpha() and not following.isupper():
        return False
    if sentence.count('"') % 2 or sentence.count("“") > sentence.count("”"):
        return False  # inside a quotation: its sentences stay with the one quoting them
    words = sentence.split()
    word = words[-1].strip("\"'“‘”’()[]").rstrip(".!?…").lower() if words else ""
    if mark != "." or not word:
        return True
    if word.isdigit():
        return len(words) > 1  # "1. Open the file." is one sentence
    if len(word) == 1:  # an initial, unless a sentence starts after it
        next_word = NEXT_WORD.match(match.string, match.end(1))
        return next_word is not None and next_word.group(1).lower() in SENTENCE_STARTERS
    return not (word in ABBREVIATIONS or LETTERS_WITH_STOPS.fullmatch(word) is not None)
