"""Texts of several lines or sentences for /v1/translate: the split (model/segment.py), and
the joining of the segments' outputs (service/api/segments.py). The route itself is tested end
to end in test_api.py."""

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from unittest.mock import patch

import pytest

from model.evaluate import translate
from model.segment import split_sentences, split_text, trim_text
from model.tokenizer import Tokenizer, train_tokenizer
from service.api.segments import _for_segment, in_order, merge, start_segmented
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
    assert (segments.sources, segments.line_numbers) == (sources, numbers)
    assert segments.join(segments.sources) == text  # the segments give the text back


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
        ("It is plan B. It works. Ask J. Smith. Take vitamin C. The rest is fine.",
         ["It is plan B.", "It works.", "Ask J. Smith.", "Take vitamin C.", "The rest is fine."]),
        ("Franklin D. Roosevelt and John F. Kennedy.", ["Franklin D. Roosevelt and John F. Kennedy."]),
        ("Save as...", ["Save as..."]),
    ],
)  # fmt: skip
def test_split_sentences_at_their_ends_but_not_after_abbreviations(line, sentences):
    pieces = split_sentences(line)
    assert [sentence for sentence, _ in pieces] == sentences
    assert "".join(s + gap for s, gap in pieces) == line


TIMINGS = dict.fromkeys(("queue_ms", "prefill_ms", "decode_ms", "total_ms"), 1.0)


def output(text: str, ids: list[int], reason=FinishReason.STOP, hypotheses=(), **timings):
    return RequestOutput(
        "r", [], [], "", ids, text, 3, len(ids), reason, list(hypotheses),
        timings_ms=TIMINGS | timings,
    )  # fmt: skip


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
    # the timings the slowest segment's (they ran side by side): its parts add up
    assert whole.timings_ms == TIMINGS | {"queue_ms": 1.0, "total_ms": 9.0}
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


def test_translate_split_into_sentences_puts_each_translation_where_its_segment_was():
    tokenizer = Tokenizer(train_tokenizer(TEXTS, vocab_size=300))
    model = tiny_model(vocab_size=tokenizer.vocab_size, seed=7)  # three distinct outputs
    sources = ["Open the file.", "Save the document as PDF!", "Größe ändern"]
    args = (1, 8, 6)  # greedy, batches of 8, 6 new tokens
    a, b, c = translate(model, tokenizer, sources, *args)
    assert len({a, b, c}) == 3  # so that a misplaced one would show
    text = "Open the file.  Save the document as PDF!\n\n  Größe ändern"
    assert translate(model, tokenizer, [text, sources[0]], *args, split_sentences=True) == [
        f"{a}  {b}\n\n  {c}",
        a,
    ]


def test_each_segment_of_a_seeded_request_draws_from_a_seed_of_its_own():
    params = SamplingParams(temperature=1.0, seed=7)
    seeds = [_for_segment(params, s).seed for s in range(4)]
    assert seeds[0] == 7 and len(set(seeds)) == 4  # the first keeps the request's
    assert seeds == [_for_segment(params, s).seed for s in range(4)]  # reproducibly
    assert _for_segment(SamplingParams(), 3).seed is None


def test_start_segmented_queues_each_segment_and_choice_and_gives_each_choice_its_own():
    """Two prompts, the first of two sentences, with two choices each: six jobs (each segment's
    choices in turn, as start_all counts a prompt's tokens once), each choice reading its own."""
    queued: list = []

    def fake_start_all(served, jobs, ctx, param, names, n, unit):
        queued.extend(zip(jobs, names, strict=True))
        return [f"job {k}" for k in range(len(jobs))]

    served = SimpleNamespace(is_translation=True)
    ctx = SimpleNamespace(input_param="prompt")
    choice = [SamplingParams(seed=10), SamplingParams(seed=11)]
    generations = [("Open it. Save it.", choice[0]), ("Open it. Save it.", choice[1]),
                   ("Close it", choice[0]), ("Close it", choice[1])]  # fmt: skip
    with (
        patch("service.api.segments.start_all", fake_start_all),
        patch("service.api.segments.in_order", lambda segments, own, finished: own),
    ):
        started = start_segmented(served, generations, ctx, "n", choices_per_prompt=2)
    jobs = [(source, params.seed, name) for (source, params), name in queued]
    assert jobs[0::2] == [("Open it.", 10, "prompt[0], line 1"),
                          ("Save it.", jobs[2][1], "prompt[0], line 1"),
                          ("Close it", 10, "prompt[1]")]  # fmt: skip
    assert [seed for _, seed, _ in jobs[:4]] == [10, 11, jobs[2][1], jobs[3][1]]
    assert len({seed for _, seed, _ in jobs[:4]}) == 4  # each segment and choice its own seed
    # a split prompt's choice reads its segments' streams in order, a whole one its own stream
    assert [s.sources for s in started] == [["Open it.", "Save it."]] * 2 + [["Close it"]] * 2
    assert [s.outputs for s in started] == [["job 0", "job 2"], ["job 1", "job 3"], "job 4",
                                            "job 5"]  # fmt: skip


def test_in_order_streams_the_segments_one_after_the_other_whatever_finishes_first():
    segments = split_text("Go. Run.\n\nStop.")
    assert segments is not None and segments.between == ["", " ", "\n\n", ""]

    def step(delta: str, text: str, ids: list[int], done: bool = False) -> RequestOutput:
        out = output(text, ids, FinishReason.STOP if done else None, queue_ms=1.0)
        out.text_delta, out.new_token_ids = delta, ids[-1:]
        return out

    # the second segment finishes before the first has said anything; the third says nothing
    streams = {
        0: [step("Geh", "Geh", [1]), step(".", "Geh.", [1, 2], done=True)],
        1: [step("Lauf.", "Lauf.", [3], done=True)],
        2: [step("", "", [], done=True)],
    }
    arrival = [(1, 0), (0, 0), (2, 0), (0, 1)]  # (segment, its k-th output) as they come

    async def stream(k: int) -> AsyncIterator[RequestOutput]:
        for out in streams[k]:
            while (k, streams[k].index(out)) != arrival[0]:
                await asyncio.sleep(0)
            arrival.pop(0)
            yield out

    async def run() -> list[RequestOutput]:
        finished: list[RequestOutput] = []
        outs = [o async for o in in_order(segments, [stream(k) for k in range(3)], finished)]
        assert len(finished) == 3
        return outs

    outs = asyncio.run(run())
    assert [o.text_delta for o in outs] == ["Geh", ".", " Lauf.", "\n\n"]
    assert [o.finished for o in outs] == [False, False, False, True]
    assert outs[-1].text == "Geh. Lauf.\n\n"  # the third segment translated to nothing
    assert "".join(o.text_delta for o in outs) == outs[-1].text


def test_trim_text_keeps_the_edges_of_a_text_given_whole():
    trimmed = trim_text("\ufeff  Open the file. Save it.\n")
    assert trimmed is not None and trimmed.sources == ["Open the file. Save it."]
    assert trimmed.join(["X"]) == "\ufeff  X\n"
    assert trim_text("Open the file") is None and trim_text(" \u200b") is None
