"""Texts of several lines or sentences on `/v1/translate`: each segment is translated on its
own, and the translation keeps everything between them (line breaks, blank lines, indentation,
the spaces between sentences), as translation services do.

`model.segment.split_text` cuts a text into its segments (why: see there); each one is an
engine request of its own (they run side by side in the batch), and `merge` puts their outputs
back together as the output of one translation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

from service.api.generation import merged
from service.engine import FinishReason, Hypothesis, RequestOutput, Segments


def merge(segments: Segments, outputs: list[RequestOutput], length_penalty: float) -> RequestOutput:
    """One finished output for the whole text from its segments' finished outputs: the texts
    joined, tokens and log-probabilities one after the other, counts summed, each timing the
    longest segment's (they ran side by side). The finish reason is the first segment's that
    did not simply stop. The n-best list's k-th hypothesis joins every segment's k-th (or its
    last), scored as one sequence: its segments' log-probabilities summed, over its length **
    length_penalty."""
    first = outputs[0]
    reason = next(
        (o.finish_reason for o in outputs if o.finish_reason != FinishReason.STOP),
        FinishReason.STOP,
    )
    hypotheses: list[Hypothesis] = []
    if all(o.hypotheses for o in outputs):
        for k in range(max(len(o.hypotheses) for o in outputs)):
            parts = [o.hypotheses[min(k, len(o.hypotheses) - 1)] for o in outputs]
            hypotheses.append(_joined(segments, parts, length_penalty))
        hypotheses.sort(key=lambda h: h.score, reverse=True)
    return dataclasses.replace(
        first,
        new_token_ids=[],
        new_logprobs=[],
        text_delta="",
        token_ids=[t for o in outputs for t in o.token_ids],
        text=segments.join([o.text for o in outputs]),
        num_input_tokens=sum(o.num_input_tokens for o in outputs),
        num_output_tokens=sum(o.num_output_tokens for o in outputs),
        finish_reason=reason,
        hypotheses=hypotheses,
        timings_ms={
            name: max(o.timings_ms.get(name, 0.0) for o in outputs) for name in first.timings_ms
        },
        error=next((o.error for o in outputs if o.error), None),
        logprobs=[p for o in outputs for p in o.logprobs],
        new_top_logprobs=[],
        top_logprobs=[p for o in outputs for p in o.top_logprobs],
        was_scheduled=all(o.was_scheduled for o in outputs),
    )


def _joined(segments: Segments, parts: list[Hypothesis], length_penalty: float) -> Hypothesis:
    logprob = sum(h.score * max(len(h.token_ids), 1) ** length_penalty for h in parts)
    token_ids = [t for h in parts for t in h.token_ids]
    score = logprob / max(len(token_ids), 1) ** length_penalty
    return Hypothesis(token_ids, segments.join([h.text for h in parts]), score)


def merge_alignments(alignments: list[dict]) -> dict:
    """The segments' alignments as one: tokens one after the other, and the weights
    block-diagonal (a segment's target tokens attend only to its own source)."""
    merged: dict = {"source_tokens": [], "target_tokens": [], "weights": [], "pairs": []}
    num_source = sum(len(a["source_tokens"]) for a in alignments)
    src_offset = tgt_offset = 0
    for a in alignments:
        n = len(a["source_tokens"])
        merged["source_tokens"] += a["source_tokens"]
        merged["target_tokens"] += a["target_tokens"]
        for row in a["weights"]:
            merged["weights"].append(
                [0.0] * src_offset + row + [0.0] * (num_source - src_offset - n)
            )
        merged["pairs"] += [[i + tgt_offset, j + src_offset] for i, j in a["pairs"]]
        src_offset += n
        tgt_offset += len(a["target_tokens"])
    return merged


async def in_order(
    segments: Segments,
    streams: list[AsyncIterator[RequestOutput]],
    length_penalty: float,
    finished: list[RequestOutput],
) -> AsyncIterator[RequestOutput]:
    """The segments' streams as the stream of one translation: each segment's outputs in turn,
    the text between segments going out with the next piece of text, and at the end `merge`'s
    output. The segments run side by side; a later segment's outputs wait here until those
    before it are done. Each segment's finished output is appended to `finished` (for the
    alignments)."""
    waiting: list[list[RequestOutput]] = [[] for _ in streams]
    current = 0
    unsent = segments.between[0]  # text between segments that no event has carried yet
    outputs = merged(streams)
    try:
        async for k, output in outputs:
            waiting[k].append(output)
            while current < len(streams) and waiting[current]:
                output = waiting[current].pop(0)
                delta = output.text_delta
                if delta:
                    delta, unsent = unsent + delta, ""
                if not output.finished:
                    yield dataclasses.replace(output, text_delta=delta)
                    continue
                finished.append(output)
                current += 1
                unsent += segments.between[current]
                if current < len(streams):
                    yield dataclasses.replace(output, text_delta=delta, finish_reason=None)
                else:
                    whole = merge(segments, finished, length_penalty)
                    whole.new_token_ids = output.new_token_ids
                    whole.text_delta = delta + unsent
                    yield whole
    finally:
        await outputs.aclose()  # type: ignore[attr-defined]
