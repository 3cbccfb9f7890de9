"""One request's completion as it grows token by token: token budget, end-of-text, stop strings, text deltas."""

from __future__ import annotations

from llmdual.core.tokenizer import Tokenizer


class Completion:
    """Tokens fed one at a time; ``delta()`` hands out what is safe to stream (text held back while it could
    still turn into a stop string or ends in half a UTF-8 character)."""

    def __init__(self, max_tokens: int, eot_id: int | None, tokenizer: Tokenizer | None, stops: list[str]) -> None:
        self.max_tokens, self.eot_id, self.tokenizer, self.stops = max_tokens, eot_id, tokenizer, stops
        self.tokens: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self._sent_tokens = 0
        self._sent_text = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def feed(self, token: int) -> None:
        """Take the next generated token (ignored once done)."""
        if self.done:
            return
        if token == self.eot_id:
            self.finish("stop")
            return
        self.tokens.append(int(token))
        if self.tokenizer is not None:
            self.text = self.tokenizer.decode(self.tokens)
            hits = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.finish("stop")
                return
        if len(self.tokens) >= self.max_tokens:
            self.finish("length")

    def finish(self, reason: str) -> None:
        """Mark the completion finished (first reason wins)."""
        if self.finish_reason is None:
            self.finish_reason = reason

    def delta(self) -> tuple[list[int], str]:
        """New token ids and new text since the last call."""
        ids = self.tokens[self._sent_tokens:]
        self._sent_tokens = len(self.tokens)
        end = len(self.text)
        if not self.done:
            end -= max((len(s) - 1 for s in self.stops), default=0)
            while end > self._sent_text and self.text[end - 1] == "\ufffd":
                end -= 1
        text = self.text[self._sent_text:end] if end > self._sent_text else ""
        self._sent_text = max(self._sent_text, end)
        return ids, text
