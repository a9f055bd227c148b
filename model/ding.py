"""EN→DE pairs from the Ding dictionary (Debian's `trans-de-en`): words, phrases and the example
sentences of everyday German, which the localisation catalogs lack.

A line of Ding is `German :: English`; each side is a list of senses split by " | " (the n-th
German sense is the n-th English one), and a sense lists synonyms split by "; ". We keep each
sense's first synonym, without Ding's annotations (`{f}`, `[coll.]`, `(…)`), and drop templates
with placeholders (`jdm./etw.`, `sb./sth.`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from model.catalogs import Pair

PACKAGE = "trans-de-en"
DING_FILE = "usr/share/trans/de-en"  # inside the .deb
_ANNOTATION = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]|\([^()]*\)")
_PLACEHOLDER = re.compile(r"\b(jd[mnrs]|etw|sb|sth|sth's|sb's)\.|\bjemand|\bsomebody|\bsomething")
_SPACES = re.compile(r"\s+")
# Alternatives: "get/land/find a job", "ein verzweifelter / krampfhafter Versuch" (keep the first)
_ALTERNATIVES = re.compile(r"\b([^\W\d_][a-zäöüß]+)(?:\s?/\s?[^\W\d_][a-zäöüß]+)+\b")


def clean_sense(text: str) -> str:
    """The first synonym of a sense, without annotations and with single spaces."""
    first = text.split("; ")[0]
    for _ in range(2):  # annotations nest once at most: "(a (b))"
        first = _ANNOTATION.sub(" ", first)
    first = _ALTERNATIVES.sub(r"\1", _SPACES.sub(" ", first)).strip(" ,;/")
    return re.sub(r"\s+([.,!?:])", r"\1", first)


def line_pairs(line: str) -> list[tuple[str, str]]:
    """The (en, de) senses of one dictionary line, cleaned; [] for a comment or a bad line."""
    if line.startswith("#") or " :: " not in line:
        return []
    german, english = line.rstrip("\n").split(" :: ", 1)
    de_senses, en_senses = german.split(" | "), english.split(" | ")
    if len(de_senses) != len(en_senses):  # not aligned: trust only the headword
        de_senses, en_senses = de_senses[:1], en_senses[:1]
    pairs = []
    for de_sense, en_sense in zip(de_senses, en_senses, strict=True):
        if _PLACEHOLDER.search(de_sense) or _PLACEHOLDER.search(en_sense):
            continue
        de, en = clean_sense(de_sense), clean_sense(en_sense).replace("’", "'")
        if en and de and en != de and len(en) <= 300 and len(de) <= 300:
            pairs.append((en, de))
    return pairs


def is_sentence(text: str) -> bool:
    return text[:1].isupper() and text[-1:] in ".?!" and len(text.split()) >= 4


def is_held_out(line: str, one_in: int = 25) -> bool:
    """Whole lines go to the general-domain test set, chosen by a hash (stable across builds)."""
    return int(hashlib.sha256(line.encode()).hexdigest()[:8], 16) % one_in == 0


def ding_pairs(path: Path) -> tuple[list[Pair], list[Pair]]:
    """(train pairs, general-domain test sentences) of the dictionary file at `path`. No test
    English appears in train."""
    train, test = [], []
    with path.open(encoding="utf-8") as f:
        for line in f:
            pairs = line_pairs(line)
            if is_held_out(line):
                test += [Pair(en, de, PACKAGE) for en, de in pairs if is_sentence(en)]
            else:
                train += [Pair(en, de, PACKAGE) for en, de in pairs]
    test_en = {p.en for p in test}
    return [p for p in train if p.en not in test_en], test
