"""Multi-line text for `/v1/translate`: every line is translated on its own, and the translation
keeps the text's line breaks, blank lines and indentation, as translation services do.

The model was trained on single lines: given "Open the file.\\nSave it." whole, it turns the
line break into a space. So a text with line breaks becomes one engine request per non-blank
line (they run side by side in the batch), and `merge` puts their outputs back together as the
output of one translation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

from service.api.generation import is_blank, merged
from service.engine import FinishReason, Hypothesis, RequestOutput


@dataclass
class Lines:
    """A text cut into its non-blank lines (`sources`, stripped) and what lies around them:
    the text is `between[0] + sources[0] + between[1] + ... + sources[-1] + between[-1]`.
    `numbers`: each source's line number, from 1."""

    sources: list[str]
    between: list[str]
    numbers: list[int]

    def join(self, translations: list[str]) -> str:
        parts = [self.between[0]]
        for translation, after in zip(translations, self.between[1:], strict=True):
            parts += [translation, after]
        return "".join(parts)


def split_lines(text: str) -> Lines | None:
    """The lines of a text with line breaks; None for a text of one line, or of nothing but
    whitespace (which the caller refuses as it refuses any blank text)."""
    if "\n" not in text:
        return None
    sources: list[str] = []
    between: list[str] = []
    numbers: list[int] = []
    pending = ""  # text since the last source line
    for k, line in enumerate(text.split("\n")):
        if k:
            pending += "\n"
        if is_blank(line):
            pending += line
            continue
        core = line.strip()
        start = line.index(core)
        between.append(pending + line[:start])
        sources.append(core)
        numbers.append(k + 1)
        pending = line[start + len(core) :]
    if not sources:
        return None
    between.append(pending)
    return Lines(sources, between, numbers)


def merge(lines: Lines, outputs: list[RequestOutput], length_penalty: float) -> RequestOutput:
    """One finished output for the whole text from its lines' finished outputs: the texts
    joined, tokens and log-probabilities one after the other, counts summed, each timing the
    longest line's (they ran side by side). The finish reason is the first line's that did not
    simply stop. The n-best list's k-th hypothesis joins every line's k-th (or its last), scored
    as one sequence: the sum of its lines' log-probabilities / its length ** length_penalty."""
    first = outputs[0]
    reason = next(
        (o.finish_reason for o in outputs if o.finish_reason != FinishReason.STOP),
        FinishReason.STOP,
    )
    hypotheses: list[Hypothesis] = []
    if all(o.hypotheses for o in outputs):
        for k in range(max(len(o.hypotheses) for o in outputs)):
            parts = [o.hypotheses[min(k, len(o.hypotheses) - 1)] for o in outputs]
            hypotheses.append(_joined(lines, parts, length_penalty))
        hypotheses.sort(key=lambda h: h.score, reverse=True)
    return dataclasses.replace(
        first,
        new_token_ids=[],
        new_logprobs=[],
        text_delta="",
        token_ids=[t for o in outputs for t in o.token_ids],
        text=lines.join([o.text for o in outputs]),
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


def _joined(lines: Lines, parts: list[Hypothesis], length_penalty: float) -> Hypothesis:
    logprob = sum(h.score * max(len(h.token_ids), 1) ** length_penalty for h in parts)
    token_ids = [t for h in parts for t in h.token_ids]
    score = logprob / max(len(token_ids), 1) ** length_penalty
    return Hypothesis(token_ids, lines.join([h.text for h in parts]), score)


def merge_alignments(alignments: list[dict]) -> dict:
    """The lines' alignments as one: tokens one after the other, and the weights block-diagonal
    (a line's target tokens attend only to its own source)."""
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
    lines: Lines,
    streams: list[AsyncIterator[RequestOutput]],
    length_penalty: float,
    finished: list[RequestOutput],
) -> AsyncIterator[RequestOutput]:
    """The lines' streams as the stream of one translation: each line's outputs in turn, the
    text between lines going out with the next piece of text, and at the end `merge`'s output.
    The lines run side by side; a later line's outputs wait here until the lines before it are
    done. Each line's finished output is appended to `finished` (for alignments)."""
    waiting: list[list[RequestOutput]] = [[] for _ in streams]
    current = 0
    unsent = lines.between[0]  # text between lines that no event has carried yet
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
                unsent += lines.between[current]
                if current < len(streams):
                    yield dataclasses.replace(output, text_delta=delta, finish_reason=None)
                else:
                    whole = merge(lines, finished, length_penalty)
                    whole.new_token_ids = output.new_token_ids
                    whole.text_delta = delta + unsent
                    yield whole
    finally:
        await outputs.aclose()  # type: ignore[attr-defined]
