"""The prefix-state cache: the recurrent state after a token prefix, kept so a later prompt that starts with
the same tokens skips their prefill.

A transformer server can reuse a cached prompt only block by block through its key/value cache; a recurrent
model's whole memory of a prefix is one small state, so any prefix whose state we kept can be resumed
exactly. Each entry is the state after ``tokens`` (a one-row :class:`~mambakit.models.cache.InferenceCache`)
and the logits that followed it, so a prompt equal to a kept prefix needs no forward at all. Memory is
bounded (``max_bytes``); the least recently used entries go first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..models.cache import InferenceCache


@dataclass(frozen=True)
class PrefixEntry:
    """The state after ``length`` tokens of a prompt and the logits (V,) for the token after them."""

    length: int
    state: InferenceCache
    logits: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.state.nbytes + self.logits.numel() * self.logits.element_size()


class PrefixCache:
    """An LRU map from token prefixes to :class:`PrefixEntry`, holding at most ``max_bytes`` of states.

    Not thread-safe: the engine's scheduler thread alone uses it.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._entries: OrderedDict[tuple[int, ...], PrefixEntry] = OrderedDict()
        self._lengths: dict[int, int] = {}  # prefix length -> how many entries have it
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def lookup(self, tokens: list[int]) -> PrefixEntry | None:
        """The entry of the longest kept prefix of ``tokens`` (the whole of it included), or None; counts a
        hit or a miss."""
        if not self.enabled:
            return None
        for length in sorted((n for n in self._lengths if n <= len(tokens)), reverse=True):
            key = tuple(tokens[:length])
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry
        self.misses += 1
        return None

    def store(self, tokens: list[int], state: InferenceCache, logits: torch.Tensor) -> None:
        """Keep ``state`` (one row, the cache's own from now on) and ``logits`` as ``tokens``' entry."""
        if not self.enabled or not tokens:
            return
        key = tuple(tokens)
        entry = PrefixEntry(len(key), state, logits)
        if entry.nbytes > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._forget(key, old)
        self._entries[key] = entry
        self._lengths[entry.length] = self._lengths.get(entry.length, 0) + 1
        self.nbytes += entry.nbytes
        while self.nbytes > self.max_bytes:
            oldest, gone = self._entries.popitem(last=False)
            self._forget(oldest, gone)

    def _forget(self, key: tuple[int, ...], entry: PrefixEntry) -> None:
        self.nbytes -= entry.nbytes
        left = self._lengths[len(key)] - 1
        if left:
            self._lengths[len(key)] = left
        else:
            del self._lengths[len(key)]
