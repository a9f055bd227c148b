"""Texts of several lines or sentences for /v1/translate: the split (model/segment.py), and
the joining of the segments' outputs (service/api/segments.py). The route itself is tested end
to end in test_api.py."""

import pytest

from model.evaluate import translate, translate_segments
from model.segment import split_sentences, split_text
from model.tokenizer import Tokenizer, train_tokenizer
from service.api.segments import _for_segment, merge
from service.engine import FinishReason, Hypothesis, RequestOutput, SamplingParams
from tests.conftest import tiny_model
from tests.server import TEXTS


@pytest.mark.parametrize(
    ("text", "sources", "numbers"),
    [
        ("a\nb", ["a", "b"], [1, 2]),
        ("  a  \n\n\tb\r\n", ["a", "b"], [1, 3]),
        ("\n\u200b\nsave as\n", ["save as"], [3]),  # a line of zero-width space is blank
        ("Hi.  How are you?\nFine!", ["Hi.", "How are you?", "Fine!"], [1, 1, 2]),
        ("\ufeffOpen it. Save it.", ["Open it.", "Save it."], [1, 1]),  # a BOM is kept aside
        ("Open it.\u200b Save it.", ["Open it.", "Save it."], [1, 1]),  # zero-width space too
        ("Open it\rSave it\u2028Close it", ["Open it", "Save it", "Close it"], [1, 2, 3]),
        (" Save as ", ["Save as"], [1]),  # white space around a text is kept, not translated
        ("x \u200by", None, None),  # one sentence: translated as it is
        (" \n \n", None, None),  # nothing but blank lines: refused as any blank text
    ],
)
def test_split_text_keeps_everything_between_the_segments(text, sources, numbers):
    segments = split_text(text)
    if sources is None:
        assert segments is None
        return
    assert segments is not None
    assert (segments.sources, segments.numbers) == (sources, numbers)
    assert segments.join(segments.sources) == text  # the segments give the text back
    lines = split_text(text, sentences=False)  # lines only (None: one line, nothing around)
    assert lines is None or lines.join(lines.sources) == text
    assert len(lines.sources if lines else [text]) == len(set(numbers))


@pytest.mark.parametrize(
    ("line", "sentences"),
    [
        ("Hello, how are you? I am fine. The weather is nice today.",
         ["Hello, how are you?", "I am fine.", "The weather is nice today."]),
        ('He said "Stop!" Then he left.', ['He said "Stop!"', "Then he left."]),
        ("Wait... (It is late.) Go!", ["Wait...", "(It is late.)", "Go!"]),
        ("Ask Dr. Smith, e.g. Monday. Or J. R. Miller.", ["Ask Dr. Smith, e.g. Monday.",
                                                          "Or J. R. Miller."]),
        ("Version 2.0. Save it.", ["Version 2.0.", "Save it."]),
        ("I said no. Give it to Jan. Hello. Émile came.",
         ["I said no.", "Give it to Jan.", "Hello.", "Émile came."]),
        ("The U.S. Army, J.R.R. Tolkien, a Ph.D. Student.", ["The U.S. Army, J.R.R. Tolkien, a Ph.D. Student."]),
        ("1. Open the file. 2. Save it.", ["1. Open the file.", "2. Save it."]),
        ("I have 3 cats. 2 are black.", ["I have 3 cats. 2 are black."]),
        ('He said, "Hello. How are you?" Then he left.', ['He said, "Hello. How are you?"', "Then he left."]),
        ("Mr. Smith left. “Go.” Then.", ["Mr. Smith left.", "“Go.”", "Then."]),
        ("Open the file. then save it", ["Open the file. then save it"]),  # no capital: one
        ("Save as...", ["Save as..."]),
    ],
)  # fmt: skip
def test_split_sentences_at_their_ends_but_not_after_abbreviations(line, sentences):
    pieces = split_sentences(line)
    assert [sentence for sentence, _ in pieces] == sentences
    assert "".join(s + gap for s, gap in pieces) == line


def output(text: str, ids: list[int], reason=FinishReason.STOP, hypotheses=(), **timings):
    return RequestOutput(
        "r", [], [], "", ids, text, 3, len(ids), reason, list(hypotheses), timings_ms=timings
    )


def test_merge_joins_texts_sums_counts_and_scores_and_keeps_the_worst_finish():
    segments = split_text("a\n\nb")
    assert segments is not None
    first = output(
        "A", [1, 2], FinishReason.LENGTH, [Hypothesis([1, 2], "A", -1.0), Hypothesis([3], "C", -3.0)],
        queue_ms=1.0, total_ms=9.0,
    )  # fmt: skip
    second = output(
        "B", [4, 5, 6, 7], FinishReason.STOP, [Hypothesis([4, 5, 6, 7], "B", -0.5)],
        queue_ms=2.0, total_ms=5.0,
    )  # fmt: skip
    whole = merge(segments, [first, second])
    assert whole.text == "A\n\nB" and whole.token_ids == [1, 2, 4, 5, 6, 7]
    assert (whole.num_input_tokens, whole.num_output_tokens) == (6, 6)
    assert whole.finish_reason == FinishReason.LENGTH  # a segment that ran out of tokens shows
    assert whole.timings_ms == {"queue_ms": 2.0, "total_ms": 9.0}  # they ran side by side
    # the k-th hypothesis joins every segment's k-th (the second has one: it is reused), scored
    # as the sum of theirs: sorted, and the first is the text
    assert [(h.text, h.score) for h in whole.hypotheses] == [("A\n\nB", -1.5), ("C\n\nB", -3.5)]
    # a segment that expired in the queue or failed is the text's finish, whatever came first
    expired = output("", [], FinishReason.TIMEOUT)
    expired.was_scheduled = False
    timed_out = merge(segments, [first, expired])
    assert timed_out.finish_reason == FinishReason.TIMEOUT and not timed_out.was_scheduled
    failed = output("", [], FinishReason.ERROR)
    failed.error = "boom"
    assert merge(segments, [failed, expired]).finish_reason == FinishReason.ERROR
    assert merge(segments, [expired, failed]).error == "boom"


def test_the_evaluation_translates_segments_as_the_server_does():
    tokenizer = Tokenizer(train_tokenizer(TEXTS, vocab_size=300))
    model = tiny_model(vocab_size=tokenizer.vocab_size)
    text = "Open the file.  Save the document as PDF!\n\n  Größe ändern"
    args = (1, 8, 6)  # greedy, batches of 8, 6 new tokens
    a, b, c = translate(model, tokenizer, ["Open the file.", "Save the document as PDF!",
                                           "Größe ändern"], *args)  # fmt: skip
    assert translate_segments(model, tokenizer, [text, "Open the file."], *args) == [
        f"{a}  {b}\n\n  {c}",
        a,
    ]


def test_each_segment_of_a_seeded_request_draws_from_a_seed_of_its_own():
    params = SamplingParams(temperature=1.0, seed=7)
    seeds = [_for_segment(params, s).seed for s in range(4)]
    assert seeds[0] == 7 and len(set(seeds)) == 4  # the first keeps the request's
    assert seeds == [_for_segment(params, s).seed for s in range(4)]  # reproducibly
    assert _for_segment(SamplingParams(), 3).seed is None
