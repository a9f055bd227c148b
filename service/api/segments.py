"""A translation model's texts of several lines or sentences: each segment is translated on
its own, and the translation keeps everything between them (line breaks, blank lines,
indentation, the spaces between sentences), as translation services do.

`model.segment.split_text` cuts a text into its segments (why: see there); `start_segmented`
makes each one an engine request of its own (they run side by side in the batch), and
`in_order` streams their outputs as those of one translation, ending with `merge`'s.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from service.api.generation import Context, interleaved, merged_timings, start_all
from service.api.registry import ServedModel
from service.api.unreadable import Masked, restored
from service.engine import (
    FinishReason,
    Hypothesis,
    RequestOutput,
    SamplingParams,
    Segments,
    is_blank,
    split_text,
    trim_text,
)


@dataclass
class Segmented:
    """One generation's outputs (`outputs`, its last one finished), and what the model was given
    for it: its text whole, or its `segments`. `sources`: what each engine request was given.
    `finished_segments`: the last output of each segment that is done, in order, appended by
    `in_order` just before it yields that output (empty for a text given whole)."""

    outputs: AsyncIterator[RequestOutput]
    sources: list[str | list[int]]
    segments: Segments | None = None
    finished_segments: list[RequestOutput] = field(default_factory=list)
    queued: bool = True  # False: nothing went to the engine (`as_is` answered every segment)

    def parts(self, last: RequestOutput) -> list[RequestOutput]:
        """The finished outputs the generation's `last` output was made of (or itself)."""
        return self.finished_segments or [last]


def start_segmented(
    served: ServedModel,
    generations: Sequence[tuple[str | list[int], SamplingParams]],
    ctx: Context,
    param: str,
    choices_per_prompt: int = 1,
    split: bool = True,
    keep_blank: bool = False,
    mask_unreadable: bool = False,
) -> list[Segmented]:
    """`start_all`, with each text that a translation model is given cut into its lines and
    sentences (unless not `split`: then only the white space and invisible characters at its
    edges are kept from the model): one engine request per segment and choice, all queued or
    none. An error names the segment's line (`text[2], line 3: ...`). With `keep_blank`, a
    translation model's blank text (empty, or only whitespace) is its own translation and
    queues nothing; without, it is refused (`refuse_blank`). With `mask_unreadable`, what the
    model cannot read is kept out of each segment and put back in its translation
    (unreadable.py); a segment with nothing left to read is its own translation."""
    n = choices_per_prompt
    prompts = [prompt for prompt, _ in generations[::n]]
    jobs: list[tuple[str | list[int], SamplingParams]] = []
    names: list[str] = []  # what an error calls each job's input
    groups: list[tuple[Segments | None, list[str | list[int]], list[Masked | None]]] = []
    for g, prompt in enumerate(prompts):
        if keep_blank and served.is_translation and isinstance(prompt, str) and is_blank(prompt):
            groups.append((None, [], []))
            continue
        segments = None
        if served.is_translation and isinstance(prompt, str):
            segments = split_text(prompt) if split else trim_text(prompt)
        sources: list[str | list[int]] = list(segments.sources) if segments else [prompt]
        masks: list[Masked | None] = [
            served.unreadable.mask(source)
            if mask_unreadable and served.is_translation and isinstance(source, str)
            else None
            for source in sources
        ]
        sources = [m.source if m else source for m, source in zip(masks, sources, strict=True)]
        name = f"{ctx.input_param}[{g}]" if len(prompts) > 1 else ctx.input_param
        groups.append((segments, sources, masks))
        for s, source in enumerate(sources):
            if _as_it_is(masks[s]):
                continue
            line = f"{name}, line {segments.line_numbers[s]}" if segments else name
            for i in range(n):  # each choice of a segment: a job, as start_all orders them
                jobs.append((source, _for_segment(generations[g * n + i][1], s)))
                names.append(line)
    unit = "generations"
    if any(segments for segments, _, _ in groups):
        unit = "segments (lines and sentences)" if n == 1 else "generations (segments × n)"
    streams = iter(start_all(served, jobs, ctx, param, names, n, unit))
    started = []
    for g, (segments, sources, masks) in enumerate(groups):
        params = [generations[g * n + i][1] for i in range(n)]
        per_source = []  # each segment's stream of each choice
        for mask in masks:
            if mask is not None and _as_it_is(mask):
                text = mask.restore(mask.source)  # the segment itself
                per_source.append([as_is(text, p) for p in params])
                continue
            own = [next(streams) for _ in range(n)]
            if mask is not None and mask.runs:
                own = [restored(stream, mask) for stream in own]
            per_source.append(own)
        queued = not all(_as_it_is(mask) for mask in masks)
        for i in range(n):  # choice i of each segment, in order
            own = [choices[i] for choices in per_source]
            if not sources:
                blank, _ = generations[g * n + i]
                assert isinstance(blank, str)
                started.append(Segmented(as_is(blank, params[i]), [blank], queued=False))
            elif segments is None:
                started.append(Segmented(own[0], sources, queued=queued))
            else:
                finished: list[RequestOutput] = []
                outputs = in_order(segments, own, finished)
                started.append(Segmented(outputs, sources, segments, finished, queued))
    return started


def _as_it_is(mask: Masked | None) -> bool:
    """Whether a segment is its own translation: nothing in it for the model to read."""
    return mask is not None and not mask.is_readable


def abort(served: ServedModel, ctx: Context, started: list[Segmented]) -> None:
    """Abort what `start_segmented` queued, before anything has read its streams (a stream's
    own cleanup runs only once it is read)."""
    # start_all's jobs: one per source (at most: a segment that is its own translation has none)
    jobs = sum(len(s.sources) for s in started if s.queued)
    for k in range(jobs):
        served.async_engine.abort(ctx.job_id(k))


def _for_segment(params: SamplingParams, s: int) -> SamplingParams:
    """The s-th segment's parameters: a seed of its own, derived from the request's (the same
    seed would draw the same random numbers for every segment)."""
    if params.seed is None or s == 0:
        return params
    digest = hashlib.blake2b(f"{params.seed}/{s}".encode(), digest_size=8).digest()
    return dataclasses.replace(params, seed=int.from_bytes(digest) >> 1)


async def as_is(text: str, params: SamplingParams) -> AsyncIterator[RequestOutput]:
    """A blank text's one output: itself, finished at once (no tokens in or out; a beam
    search's one hypothesis, scored 0)."""
    hypotheses = [Hypothesis([], text, 0.0)] if params.beam_size > 1 else []
    timings = dict.fromkeys(("queue_ms", "prefill_ms", "decode_ms", "total_ms"), 0.0)
    yield RequestOutput("", [], [], text, [], text, 0, 0, FinishReason.STOP, hypotheses, timings)


# A text's finish reason is its segments' worst (check_finished then answers as for one).
WORST_FIRST = [
    FinishReason.ERROR, FinishReason.TIMEOUT, FinishReason.CANCELLED, FinishReason.LENGTH,
    FinishReason.STOP,
]  # fmt: skip


def merge(segments: Segments, outputs: list[RequestOutput]) -> RequestOutput:
    """One finished output for the whole text from its segments' finished outputs: the texts
    joined, tokens and log-probabilities one after the other, counts summed, the timings the
    slowest segment's (they ran side by side), the finish reason the worst segment's. The
    n-best list's k-th hypothesis joins every segment's k-th (or its last), scored as the sum of
    their scores, so the list stays sorted and its first is the text."""
    reason = min((o.finish_reason for o in outputs), key=WORST_FIRST.index)  # type: ignore[arg-type]
    hypotheses: list[Hypothesis] = []
    if all(o.hypotheses for o in outputs):
        for k in range(max(len(o.hypotheses) for o in outputs)):
            parts = [o.hypotheses[min(k, len(o.hypotheses) - 1)] for o in outputs]
            text = segments.join([h.text for h in parts])
            token_ids = [t for h in parts for t in h.token_ids]
            hypotheses.append(Hypothesis(token_ids, text, sum(h.score for h in parts)))
    return dataclasses.replace(
        outputs[-1],  # its new tokens and text_delta are the last step's
        token_ids=[t for o in outputs for t in o.token_ids],
        text=segments.join([o.text for o in outputs]),
        num_input_tokens=sum(o.num_input_tokens for o in outputs),
        num_output_tokens=sum(o.num_output_tokens for o in outputs),
        finish_reason=reason,
        hypotheses=hypotheses,
        timings_ms=merged_timings(outputs),
        error=next((o.error for o in outputs if o.error), None),
        logprobs=[p for o in outputs for p in o.logprobs],
        top_logprobs=[p for o in outputs for p in o.top_logprobs],
        was_scheduled=all(o.was_scheduled for o in outputs),
    )


def merge_alignments(alignments: list[dict]) -> dict:
    """The segments' alignments as one: tokens one after the other, and the weights
    block-diagonal (a segment's target tokens attend only to its own source)."""
    whole: dict = {"source_tokens": [], "target_tokens": [], "weights": [], "pairs": []}
    num_source = sum(len(a["source_tokens"]) for a in alignments)
    src_offset = tgt_offset = 0
    for a in alignments:
        n = len(a["source_tokens"])
        whole["source_tokens"] += a["source_tokens"]
        whole["target_tokens"] += a["target_tokens"]
        for row in a["weights"]:
            whole["weights"].append(
                [0.0] * src_offset + row + [0.0] * (num_source - src_offset - n)
            )
        whole["pairs"] += [[i + tgt_offset, j + src_offset] for i, j in a["pairs"]]
        src_offset += n
        tgt_offset += len(a["target_tokens"])
    return whole


async def in_order(
    segments: Segments,
    streams: list[AsyncIterator[RequestOutput]],
    finished: list[RequestOutput],
) -> AsyncIterator[RequestOutput]:
    """The segments' streams as the stream of one translation: each segment's outputs in turn,
    the text between segments going out with the next piece of text, and at the end `merge`'s
    output. The segments run side by side; a later segment's outputs wait here until those
    before it are done. Each segment's finished output is appended to `finished` (for the
    score and the alignments of the last event). Before the last, an output's `text` and
    `token_ids` are its segment's, not the whole text's so far (readers take only the last
    token's id from them)."""
    waiting: list[list[RequestOutput]] = [[] for _ in streams]
    current = 0
    unsent = segments.between[0]  # text between segments that no event has carried yet
    outputs = interleaved(streams)
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
                    yield dataclasses.replace(merge(segments, finished), text_delta=delta + unsent)
    finally:
        await outputs.aclose()  # type: ignore[attr-defined]
