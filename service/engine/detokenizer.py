"""Token ids → text for one generated sequence, streamed: never half a UTF-8 character, never text
that may still turn out to be a stop string (the offsets of TGI's and vLLM's detokenizers)."""

from __future__ import annotations

from collections.abc import Sequence

from model.tokenizer import Tokenizer

REPLACEMENT = "\ufffd"  # what decoding makes of incomplete (or invalid) UTF-8 bytes


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas, one instance per sequence.

    Two stages. Decoding: `_prefix_offset <= _read_offset` are token positions where the text so
    far ends on a whole character. Each `add` decodes only the window `ids[_prefix_offset:]`; the
    new text is what it adds to `ids[_prefix_offset:_read_offset]`, held back while it ends in
    U+FFFD (a character whose bytes are still arriving). Decoding byte-level tokens from a
    character boundary gives exactly that slice of decoding everything, so the deltas add up to
    `tokenizer.decode(ids)`. The window reaches back only to the last-but-one whole-character
    point, so each token costs O(1) (it grows only while the text keeps ending in U+FFFD, e.g.
    over a run of invalid bytes). The prefix matters for decoders that look at earlier tokens.

    Stop strings: decoded text waits in `_pending` while its end might begin a stop string; once
    a stop string appears, the text ends before it (or after it, with `include_stop_string`).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        stop_strings: Sequence[str] = (),
        include_stop_string: bool = False,
    ):
        if any(not s for s in stop_strings):
            raise ValueError("stop strings must not be empty")
        self._tokenizer = tokenizer
        self._stops = tuple(stop_strings)
        self._stop_prefixes = {s[:n] for s in self._stops for n in range(1, len(s))}
        self._longest_prefix = max((len(p) for p in self._stop_prefixes), default=0)
        self._include_stop = include_stop_string
        self._ids: list[int] = []
        self._prefix_offset = 0  # the decoding window starts here
        self._read_offset = 0  # text of the ids before this was decoded already
        self._pending = ""  # decoded, not yet emitted: it may begin a stop string
        self._text = ""
        self._stopped_on: str | None = None
        self._finished = False

    @property
    def text(self) -> str:
        """All text emitted so far (after `finish()`: the final text)."""
        return self._text

    @property
    def stopped_on(self) -> str | None:
        """The stop string that ended the text, or None."""
        return self._stopped_on

    def add(self, token_ids: Sequence[int]) -> str:
        """Append newly generated ids; return the new text that is safe to emit ("" if none)."""
        if self._finished:
            raise RuntimeError("add() after finish()")
        if self._stopped_on is not None:
            return ""
        new_text = ""
        for token_id in token_ids:  # one at a time: complete text before a split character shows
            self._ids.append(token_id)
            new_text += self._decode_new(flush=False)
        return self._release(new_text, final=False)

    def finish(self) -> str:
        """The sequence ended: return the text held back, incomplete characters included as
        `tokenizer.decode` renders them ("" after a stop string)."""
        if self._finished or self._stopped_on is not None:
            self._finished = True
            return ""
        self._finished = True
        return self._release(self._decode_new(flush=True), final=True)

    def _decode_new(self, flush: bool) -> str:
        """Text of the ids after `_read_offset`, or "" while it ends in an incomplete character."""
        decode = self._tokenizer.decode
        known = decode(self._ids[self._prefix_offset : self._read_offset])
        window = decode(self._ids[self._prefix_offset :])
        if window.endswith(REPLACEMENT) and not flush:
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return window[len(known) :]

    def _release(self, new_text: str, final: bool) -> str:
        """Emit what of `_pending + new_text` can no longer be (the start of) a stop string."""
        pending = self._pending + new_text
        stop = self._first_stop(pending)
        if stop is not None:
            start, self._stopped_on = stop
            end = start + len(self._stopped_on) if self._include_stop else start
            emitted, self._pending = pending[:end], ""
        else:
            keep = 0 if final else self._stop_prefix_length(pending)
            emitted, self._pending = pending[: len(pending) - keep], pending[len(pending) - keep :]
        self._text += emitted
        return emitted

    def _first_stop(self, text: str) -> tuple[int, str] | None:
        """(start, stop string) of the stop string that ends first in `text` (longest on a tie).

        Emitted text never holds the start of a stop string, so looking in `_pending` suffices.
        """
        hits = [(i + len(s), i, s) for s in self._stops if (i := text.find(s)) >= 0]
        if not hits:
            return None
        _, start, stop = min(hits)
        return start, stop

    def _stop_prefix_length(self, text: str) -> int:
        """Length of the longest end of `text` that begins some stop string."""
        for n in range(min(len(text), self._longest_prefix), 0, -1):
            if text[-n:] in self._stop_prefixes:
                return n
        return 0
