"""Streaming text out of generated token ids: whole UTF-8 characters only, stop strings never
leaked (torch-free; both helpers work on one completion at a time)."""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer

# Prompt tokens the detokenizer decodes ahead of the first new token, so a tokenizer that
# strips a leading space when decoding from scratch (SentencePiece) still spaces it right.
PROMPT_LOOKBACK = 5
REPLACEMENT_CHAR = "\ufffd"  # what decoding half a UTF-8 character yields


class IncrementalDecoder:
    """Turns generated token ids into text deltas that never end inside a UTF-8 character.

    Decodes a short window (the ids since the last emitted text plus a little context) rather
    than everything so far, so each step costs O(1); a delta is released once its decoded text
    no longer ends in U+FFFD (the replacement character of an incomplete byte sequence).
    """

    def __init__(self, tokenizer: Tokenizer, context: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.ids = list(context[-PROMPT_LOOKBACK:]) if PROMPT_LOOKBACK else []
        self.prefix = 0  # window start: decoded as context only
        self.read = len(self.ids)  # ids before this have been emitted

    def push(self, token: int) -> str:
        """Add one generated token; return the new text that is complete, or ""."""
        self.ids.append(token)
        return self._release(final=False)

    def flush(self) -> str:
        """End of stream: return whatever is held back, incomplete characters included."""
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        text = self.tokenizer.decode(self.ids[self.prefix :])
        if len(text) <= len(before) or (text.endswith(REPLACEMENT_CHAR) and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before) :]


class StopMatcher:
    """Finds stop strings in streamed text, holding back any tail that could start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add ``text``; return what is safe to emit and whether a stop string was reached."""
        if not self.stops:
            return text, False
        self.pending += text
        hits = [i for s in self.stops if (i := self.pending.find(s)) >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        keep = self._held_suffix_len()
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def feed_final(self, text: str) -> str:
        """End of stream: add ``text`` and release everything up to any stop string."""
        out, stopped = self.feed(text)
        if not stopped:
            out, self.pending = out + self.pending, ""
        return out

    def _held_suffix_len(self) -> int:
        longest = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.pending)), longest, -1):
                if self.pending.endswith(stop[:k]):
                    longest = k
                    break
        return longest
