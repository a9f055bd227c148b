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
# Annotations: {f}, [coll.], (optional words), <search variants>, /ABBR/ after a headword
_ANNOTATION = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]|\([^()]*\)|<[^<>]*>|\s/[^/\s][^/]*/")
_PLACEHOLDER = re.compile(r"\b(jd[mnrs]|etw|sb|sth|sth's|sb's)\.|\bjemand|\bsomebody|\bsomething")
_SPACES = re.compile(r"\s+")
# Alternatives inside a phrase: "get/land/find a job" (the first is kept)
_ALTERNATIVES = re.compile(r"\b([^\W\d_][a-zäöüß]+)(?:/[^\W\d_][a-zäöüß]+)+\b")


def clean_sense(text: str) -> str:
    """The first synonym of a sense, without annotations and with single spaces; "" for a
    sense this cannot make into plain text (spaced alternatives "a / b", blanks "…", any other
    slash)."""
    for _ in range(3):  # annotations nest: "(a (b))"
        text = _ANNOTATION.sub(" ", text)
    first = text.split("; ")[0]  # outside annotations now, so never inside brackets
    if " / " in first or "…" in first or "..." in first or re.search(r"[(){}\[\]<>]", first):
        return ""
    first = _ALTERNATIVES.sub(r"\1", _SPACES.sub(" ", first)).strip(" ,;")
    if "/" in first:  # "behaviour /behavior", "a/the", "TCP/IP": not worth the guessing
        return ""
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
    """A whole sentence (the test set's unit), not a word or a phrase."""
    return text[:1].isupper() and text[-1:] in ".?!" and len(text.split()) >= 4


def ends_a_sentence(text: str) -> bool:
    """A sentence or an exclamation ("Hello!", "How are you?"): the dictionary's everyday text,
    which training repeats (`dictionary_sentences.tsv`), since among its words it is rare."""
    return text[:1].isupper() and text[-1:] in ".?!"


def is_held_out(line: str, one_in: int = 25) -> bool:
    """Whole lines go to the general-domain test set, chosen by a hash (stable across builds)."""
    return int(hashlib.sha256(line.encode()).hexdigest()[:8], 16) % one_in == 0


def ding_pairs(path: Path) -> tuple[list[Pair], list[Pair]]:
    """(train pairs, general-domain test sentences) of the dictionary file at `path`. Neither
    a test sentence's English nor its German occurs in train; each test English occurs once."""
    train, test = [], []
    with path.open(encoding="utf-8") as f:
        for line in f:
            pairs = [Pair(en, de, PACKAGE) for en, de in line_pairs(line)]
            if is_held_out(line):
                test += [p for p in pairs if is_sentence(p.en)]
            else:
                train += pairs
    test = list({p.en: p for p in reversed(test)}.values())[::-1]  # the first of each English
    test_en, test_de = {p.en for p in test}, {p.de for p in test}
    return [p for p in train if p.en not in test_en and p.de not in test_de], test
