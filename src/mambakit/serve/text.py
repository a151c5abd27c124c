"""Turning a request's new tokens into text as they come, and stopping at a stop sequence.

Text is released only once it is final: a UTF-8 character cut between byte tokens, or a BPE piece that still
decodes to U+FFFD, waits for its next token; and text that could be the start of a stop sequence waits until
it is clearly not one, so a stop string never reaches the client, not even half of it in a stream.
"""

from __future__ import annotations

import codecs


class TextAssembler:
    """Feed token ids with :meth:`push`; each call returns (new final text, whether a stop sequence ended the
    text). :meth:`flush` returns what was held back, at the end of a generation not ended by a stop."""

    def __init__(self, tokenizer, stops: list[str] | tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self._longest = max((len(s) for s in self.stops), default=0)
        self._is_bytes = getattr(tokenizer, "kind", None) == "byte"
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._ids: list[int] = []
        self.text = ""  # the decoded text so far (what is final of it)
        self.sent = 0  # how many characters of it were released
        self.stopped = False

    def _decode(self, token: int) -> None:
        if token >= self.tokenizer.vocab_size:  # a model id the tokenizer has no text for (padding rows)
            return
        if self._is_bytes:
            self.text += self._utf8.decode(bytes([token]))
            return
        self._ids.append(token)
        decoded = self.tokenizer.decode(self._ids)
        stable = decoded.rstrip("\ufffd")
        if stable.startswith(self.text):
            self.text = stable

    def push(self, token: int) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        self._decode(int(token))
        start = max(0, self.sent - self._longest + 1)
        found = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if found:
            end = min(found)
            self.stopped = True
        else:
            end = len(self.text) - self._held_back()
        out = self.text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        if self.stopped:
            self.text = self.text[:end]
        return out, self.stopped

    def _held_back(self) -> int:
        """The length of the longest end of the text that is a proper start of a stop sequence."""
        for k in range(min(self._longest - 1, len(self.text) - self.sent), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0

    def flush(self) -> str:
        """The rest of the text at the end of a generation (what was held back; a cut character: U+FFFD)."""
        if self.stopped:
            return ""
        if self._is_bytes:
            self.text += self._utf8.decode(b"", final=True)
        elif self._ids:
            full = self.tokenizer.decode(self._ids)
            if full.startswith(self.text):
                self.text = full
        out = self.text[self.sent:]
        self.sent = len(self.text)
        return out
