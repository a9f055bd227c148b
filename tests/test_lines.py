"""Multi-line texts for /v1/translate (service/api/lines.py): the split, and the joining of
the lines' outputs. The route itself is tested end to end in test_api.py."""

import pytest

from service.api.lines import merge, split_lines
from service.engine import FinishReason, Hypothesis, RequestOutput


@pytest.mark.parametrize(
    ("text", "sources", "numbers"),
    [
        ("a\nb", ["a", "b"], [1, 2]),
        ("  a  \n\n\tb\r\n", ["a", "b"], [1, 3]),
        ("\n\u200b\nsave as\n", ["save as"], [3]),  # a line of zero-width space is blank
        ("x \u200by", None, None),  # one line: translated as it is
        (" \n \n", None, None),  # nothing but blank lines: refused as any blank text
    ],
)
def test_split_lines_keeps_everything_between_the_lines(text, sources, numbers):
    lines = split_lines(text)
    if sources is None:
        assert lines is None
        return
    assert lines is not None
    assert (lines.sources, lines.numbers) == (sources, numbers)
    assert lines.join(lines.sources) == text  # the lines themselves give the text back


def output(text: str, ids: list[int], reason=FinishReason.STOP, hypotheses=(), **timings):
    return RequestOutput(
        "r", [], [], "", ids, text, 3, len(ids), reason, list(hypotheses), timings_ms=timings
    )


def test_merge_joins_texts_sums_counts_and_scores_the_hypotheses_as_one_sequence():
    lines = split_lines("a\n\nb")
    assert lines is not None
    first = output(
        "A", [1, 2], hypotheses=[Hypothesis([1, 2], "A", -1.0), Hypothesis([3], "C", -3.0)],
        queue_ms=1.0, total_ms=9.0,
    )  # fmt: skip
    second = output(
        "B", [4, 5, 6, 7], FinishReason.LENGTH, [Hypothesis([4, 5, 6, 7], "B", -0.5)],
        queue_ms=2.0, total_ms=5.0,
    )  # fmt: skip
    whole = merge(lines, [first, second], length_penalty=1.0)
    assert whole.text == "A\n\nB" and whole.token_ids == [1, 2, 4, 5, 6, 7]
    assert (whole.num_input_tokens, whole.num_output_tokens) == (6, 6)
    assert whole.finish_reason == FinishReason.LENGTH  # a line that ran out of tokens shows
    assert whole.timings_ms == {"queue_ms": 2.0, "total_ms": 9.0}  # the lines ran side by side
    # log-probabilities: -1 * 2 + -0.5 * 4 = -4 over 6 tokens; the second line has one
    # hypothesis, so the second joined one reuses it: -3 * 1 + -2 over 5 tokens
    assert [(h.text, h.score) for h in whole.hypotheses] == [("A\n\nB", -4 / 6), ("C\n\nB", -1.0)]
