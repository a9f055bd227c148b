"""TGI's token lists (`details.tokens`, `top_tokens`, a stream's `token`): each token's id, text,
log-probability and whether it is special. The texts spell the generated text, as TGI's do, a
translation in segments included (`TokenTexts`)."""

from __future__ import annotations

from service.api.registry import ServedModel
from service.api.segments import Segmented
from service.engine import RequestOutput, Segments
from service.engine.detokenizer import IncrementalDetokenizer


class TokenTexts:
    """The texts of a generation's tokens as TGI gives them (`ServedModel.token_text`), which
    add up to its text. A translation in segments (segments.py): each segment's tokens are
    decoded on their own; the text between two segments goes at the start of the next one's
    first token, and the text after the last at the end of the last token's text (before a
    special token's own string); a segment's EOS has no text (only the generation's last keeps
    its "</s>"), so the texts read as the translation whether or not a client skips them."""

    def __init__(self, served: ServedModel, segments: Segments | None):
        self.served = served
        self.segments = segments
        self.detokenizer = IncrementalDetokenizer(served.llm.tokenizer)
        self.num_done = 0  # segments whose tokens have all been given out
        self.unsent = segments.between[0] if segments else ""

    def token(self, token_id: int, ends_segment: bool, is_last: bool) -> str:
        """The next token's text; `ends_segment`: its segment's last (the text's, for a text
        given whole); `is_last`: the generation's last."""
        text = self.unsent + self.served.token_text(self.detokenizer, token_id, ends_segment)
        self.unsent = ""
        if not ends_segment:
            return text
        special = self.served.special_text(token_id)
        own, after = text.removesuffix(special), self._next_segment()
        if is_last:
            return own + after + special
        self.unsent = after
        return own

    def without_token(self, is_last: bool) -> str:
        """A segment ended without a new token (its deadline passed between two steps): the
        text left over waits for the next token, or is returned if the generation ended too
        (for a stream's made-up last event)."""
        left = self.unsent + self.detokenizer.finish() + self._next_segment()
        self.unsent = "" if is_last else left
        return left if is_last else ""

    def _next_segment(self) -> str:
        """Starts decoding the next segment; returns the text after the one that ended."""
        self.num_done += 1
        self.detokenizer = IncrementalDetokenizer(self.served.llm.tokenizer)
        return self.segments.between[self.num_done] if self.segments else ""


def sequence_tokens(served: ServedModel, started: Segmented, output: RequestOutput) -> list[dict]:
    """`details.tokens`, each with its text as the stream gives it (`TokenTexts`)."""
    tokens = token_list(served, output.token_ids, output.logprobs)
    texts = TokenTexts(served, started.segments)
    parts = started.parts(output)
    n = 0
    for k, part in enumerate(parts):
        is_last_part = k == len(parts) - 1
        if not part.token_ids:
            left = texts.without_token(is_last_part)
            if left and tokens:
                tokens[-1]["text"] += left
        for j in range(len(part.token_ids)):
            ends_segment = j == len(part.token_ids) - 1
            is_last = ends_segment and is_last_part
            tokens[n]["text"] = texts.token(tokens[n]["id"], ends_segment, is_last)
            n += 1
    return tokens


def token_list(served: ServedModel, ids: list[int], logprobs: list[float]) -> list[dict]:
    tokenizer = served.llm.tokenizer
    return [
        {
            "id": i,
            "text": tokenizer.decode([i]) + served.special_text(i),
            "logprob": lp,
            "special": i in served.special_ids,
        }
        for i, lp in zip(ids, logprobs, strict=False)
    ]


def top_tokens(served: ServedModel, step: dict[int, float], n: int) -> list[dict]:
    """TGI's `top_tokens` of one step: the `n` likeliest, best first."""
    best = sorted(step.items(), key=lambda item: -item[1])[:n]
    return token_list(served, [i for i, _ in best], [lp for _, lp in best])
