"""The Ding dictionary's lines become EN→DE pairs: aligned senses, first synonyms, no annotations
or placeholders, and a held-out set of whole lines that train never sees."""

from pathlib import Path

import pytest

from model.ding import (
    clean_sense,
    ding_pairs,
    ends_a_sentence,
    is_held_out,
    is_sentence,
    line_pairs,
)

LINES = [
    "# Version :: devel 2023-01-30\n",
    "Wetter {n} [meteo.] | bei jedem Wetter | Das Wetter ist heute schön. :: weather | in all"
    " weathers | The weather is nice today.\n",
    "Haus {n}; Gebäude {n} | Häuser {pl} :: house; building | houses\n",
    "außer jdm./etw. {prp} | außer dir :: apart from sb./sth. | apart from you\n",
    "suchen {vt} | Er sucht (dringend) eine Stelle. :: to look for | He’s looking for a job."
    " | an extra English sense\n",
]


def test_aligned_senses_become_pairs_of_first_synonyms_without_annotations() -> None:
    assert line_pairs(LINES[1]) == [
        ("weather", "Wetter"),
        ("in all weathers", "bei jedem Wetter"),
        ("The weather is nice today.", "Das Wetter ist heute schön."),
    ]
    assert line_pairs(LINES[2]) == [("house", "Haus"), ("houses", "Häuser")]


def test_placeholders_and_comments_are_dropped() -> None:
    assert line_pairs(LINES[0]) == []
    assert line_pairs(LINES[3]) == [("apart from you", "außer dir")]


def test_unaligned_senses_keep_only_the_headword() -> None:
    assert line_pairs(LINES[4]) == [("to look for", "suchen")]


def test_alternatives_and_apostrophes_are_normalised() -> None:
    assert clean_sense("She's trying to get/land/find a job.") == "She's trying to get a job."
    assert line_pairs("Er sucht Arbeit. :: He’s looking for work.\n") == [
        ("He's looking for work.", "Er sucht Arbeit.")
    ]


def test_annotations_go_before_synonyms_are_split() -> None:
    assert clean_sense("to hear {heard; heard}; to learn") == "to hear"
    assert clean_sense("dropout <drop-out> <drop out>") == "dropout"
    assert clean_sense("estimated time of departure /ETD/") == "estimated time of departure"
    assert clean_sense("zuzüglich /zzgl., zuzgl./") == "zuzüglich"


@pytest.mark.parametrize(
    "sense",
    [
        "ein verzweifelter / krampfhafter Versuch",
        "She fails … 101.",
        "behaviour /behavior",
        "a/the",
    ],
)
def test_senses_that_cannot_be_made_plain_text_are_dropped(sense: str) -> None:
    assert clean_sense(sense) == ""


def test_held_out_lines_give_test_sentences_that_train_never_sees(tmp_path: Path) -> None:
    lines = [
        f"Satz {i} | Das ist Satz Nummer {i}. :: sentence {i} | This is sentence number {i}.\n"
        for i in range(400)
    ]
    held = next(i for i, line in enumerate(lines) if is_held_out(line))
    # Another (kept) line repeats the held-out sentence, once in English and once in German
    lines += [
        f"Gemeinsam | Ein anderer Satz. :: common | This is sentence number {held}.\n",
        f"Auch | Das ist Satz Nummer {held}. :: also | Yet another sentence here.\n",
    ]
    assert not any(is_held_out(line) for line in lines[-2:])
    path = tmp_path / "de-en"
    path.write_text("".join(lines), encoding="utf-8")
    train, test = ding_pairs(path)
    held_out = [line for line in lines if is_held_out(line)]
    assert 0 < len(held_out) < len(lines) / 10
    assert len(test) == len(held_out) and all(is_sentence(p.en) for p in test)
    assert not {p.en for p in train} & {p.en for p in test}
    assert not {p.de for p in train} & {p.de for p in test}
    assert ("common", "Gemeinsam") in [(p.en, p.de) for p in train]  # only the sentence goes


def test_sentences_and_exclamations_are_the_everyday_text_training_repeats() -> None:
    assert ends_a_sentence("How are you?") and ends_a_sentence("Hello!")
    assert ends_a_sentence("The weather is nice today.")
    assert not ends_a_sentence("in all weathers") and not ends_a_sentence("weather")
    assert not ends_a_sentence("e.g.")  # an abbreviation, not a sentence
