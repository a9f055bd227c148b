"""Read gettext catalogs (.mo/.po) into EN→DE pairs, and the cleaning rules applied to them.

Pure functions over files and strings, so every rule is unit-tested on fixture catalogs.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polib


@dataclass(frozen=True)
class Pair:
    en: str
    de: str
    package: str  # the source package the pair came from (the unit of the train/eval split)


# msgids whose "translation" is a list of translator names, not a translation.
CREDIT_MSGIDS = {
    "translator-credits",
    "translator_credits",
    "translators",
    "your names",
    "your emails",
    "roles_of_translators",
    "credit_for_translators",
    "name of translators",
    "email of translators",
    "_: name of translators\nyour names",
    "_: email of translators\nyour emails",
}

_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9:_-]*(\s[^<>]*)?/?>")
_FORMAT = re.compile(
    r"%\d+(?![\d.]*[diouxXeEfFgGs])"  # Qt/KDE %1 (before printf, which would read `%1 o` as one code)
    r"|%(\([^)]*\))?[-+ #0-9.*]*[hlLqjzt]*[diouxXeEfFgGcrsaAp%@]"  # printf / python %-format
    r"|\{[^{}]*\}"  # str.format / ICU {0}, {name}
    r"|\$\{?\w+\}?"  # shell-ish $var
)
_ENTITY = re.compile(
    r"&(#\d+|#x[0-9a-fA-F]+|[A-Za-z]\w*);"
)  # only with the semicolon: `&region=` is a URL
_LETTER = re.compile(r"[^\W\d_]")
_SPACE = re.compile(r"\s+")


def read_catalog(path: Path) -> Iterator[tuple[str, str]]:
    """Yield (msgid, msgstr) of a .mo or .po file: singular, translated, not fuzzy entries only."""
    catalog = polib.mofile(str(path)) if path.suffix == ".mo" else polib.pofile(str(path))
    for entry in catalog:
        if entry.msgid_plural or entry.obsolete or "fuzzy" in entry.flags:
            continue
        if not entry.msgid or not entry.msgstr:
            continue
        yield entry.msgid, entry.msgstr


def strip_accelerator(text: str) -> str:
    """Remove one keyboard-accelerator marker: GTK `_File`, Qt/KDE `&File`, LibreOffice `~File`."""
    for marker in ("_", "&", "~"):
        # `&amp;` is an entity, not a marker. GTK puts the marker mid-word too (`Spei_chern`),
        # so a lone marker before a letter or digit is removed wherever it stands.
        positions = [i for i, c in enumerate(text) if c == marker and not _ENTITY.match(text, i)]
        if len(positions) == 1 and text[positions[0] + 1 : positions[0] + 2].isalnum():
            i = positions[0]
            return text[:i] + text[i + 1 :]
    return text


def normalize(text: str) -> str:
    """Markup and accelerators out, entities unescaped, whitespace collapsed."""
    text = _TAG.sub("", text)  # first: a `_` or `&` inside a tag is no accelerator
    text = strip_accelerator(text)
    text = _ENTITY.sub(lambda m: html.unescape(m.group(0)), text)
    return _SPACE.sub(" ", text).strip()


def is_keyword_list(text: str) -> bool:
    """Desktop-file keyword lists (`Files;Folder;Browse;`) are not sentences."""
    return text.rstrip().endswith(";") and text.count(";") >= 2


def has_words(text: str) -> bool:
    """False for format-only strings (`%s: %d`, `{0}`): nothing left to translate."""
    return len(_LETTER.findall(_FORMAT.sub("", text))) >= 2


def clean_pair(
    msgid: str, msgstr: str, max_chars: int = 400, max_ratio: float = 3.0
) -> tuple[str, str] | None:
    """Apply every cleaning rule to one catalog entry; the cleaned (en, de) or None to drop it."""
    if msgid.strip().lower() in CREDIT_MSGIDS or "translator" in msgid.lower()[:20]:
        return None
    if is_keyword_list(msgid) or is_keyword_list(msgstr):
        return None
    en, de = normalize(msgid), normalize(msgstr)
    if not en or not de or en == de:
        return None
    if not has_words(en) or not has_words(de):
        return None
    if len(en) > max_chars or len(de) > max_chars:
        return None
    short, long = sorted((len(en), len(de)))
    if long > max_ratio * short and long > 12:
        return None
    return en, de


def dedupe(pairs: list[Pair]) -> list[Pair]:
    """Keep the first occurrence of each (en, de): a pair belongs to the first package that has it."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for pair in pairs:
        key = (pair.en, pair.de)
        if key not in seen:
            seen.add(key)
            unique.append(pair)
    return unique


def pairs_from_catalogs(paths: list[Path], package: str) -> list[Pair]:
    """Clean pairs from several catalogs of one package."""
    pairs = []
    for path in paths:
        try:
            entries = list(read_catalog(path))
        except (OSError, ValueError, UnicodeDecodeError):
            continue  # a damaged or non-UTF-8 catalog: skip the file, keep the package
        for msgid, msgstr in entries:
            cleaned = clean_pair(msgid, msgstr)
            if cleaned:
                pairs.append(Pair(cleaned[0], cleaned[1], package))
    return pairs


def is_german_catalog(path: Path) -> bool:
    """A catalog under a `de` (not `de_CH`, `de_AT`) locale directory."""
    parts = path.parts
    return path.suffix in (".mo", ".po") and any(
        p in ("de", "de_DE") and i + 1 < len(parts) and parts[i + 1] == "LC_MESSAGES"
        for i, p in enumerate(parts)
    )
