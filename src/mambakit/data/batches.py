"""Context windows from a token array, reproducible from the step number alone.

Training windows are random: the windows of optimiser step ``s`` come from a generator seeded with
``(seed, s)``, so the data position after a restart is just the step counter, and a run split over
``world_size`` processes sees exactly the windows of a single process with the same global batch (each
rank reads its own slice of the global batch).

Packed training (:class:`PackedWindows`) reads the same windows but keeps the documents in them apart: each
window comes with ``seq_idx`` (which document each position belongs to), and the target of a document's
last position (the next document's first token) is masked out of the loss with ``IGNORE_INDEX``.

Evaluation windows are fixed and evenly spread over the validation tokens.
"""

from __future__ import annotations

import numpy as np
import torch

from .sources import DataError


def check_fits_context(name: str, tokens: np.ndarray, seq_len: int) -> None:
    """A split must hold at least one window of ``seq_len`` inputs plus its shifted targets."""
    if len(tokens) < seq_len + 1:
        raise DataError(f"data: the {name} split has {len(tokens)} tokens, fewer than one context "
                        f"(seq_len + 1 = {seq_len + 1}); use more data or a smaller --seq-len")


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.stack([np.asarray(tokens[s:s + seq_len + 1], dtype=np.int64) for s in starts])
    rows_t = torch.from_numpy(rows)
    return rows_t[:, :-1], rows_t[:, 1:]


class RandomWindows:
    """Random training windows keyed by ``(seed, step)``.

    ``batch(step, micro, rank)`` returns ``(inputs, targets)``, each (micro_batch, seq_len) int64, where the
    global batch of ``micro_batch * accumulation * world_size`` windows is split first by micro-step,
    then by rank.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, micro_batch: int, accumulation: int, world_size: int,
                 seed: int) -> None:
        check_fits_context("train", tokens, seq_len)
        self.tokens, self.seq_len, self.seed = tokens, seq_len, seed
        self.micro_batch, self.accumulation, self.world_size = micro_batch, accumulation, world_size

    def global_starts(self, step: int) -> np.ndarray:
        """Start offsets of the step's whole batch, shape (accumulation, world_size, micro_batch)."""
        rng = np.random.default_rng([self.seed, step])
        high = len(self.tokens) - self.seq_len  # exclusive: the last start leaves room for the targets
        starts = rng.integers(0, high, size=self.accumulation * self.world_size * self.micro_batch)
        return starts.reshape(self.accumulation, self.world_size, self.micro_batch)

    def batch(self, step: int, micro: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _windows(self.tokens, self.global_starts(step)[micro, rank], self.seq_len)


IGNORE_INDEX = -100  # the targets no loss is computed on (torch's cross_entropy default)


class PackedWindows(RandomWindows):
    """:class:`RandomWindows` whose documents (starting at the offsets ``doc_starts``) stay apart.

    ``batch(step, micro, rank)`` returns ``(inputs, targets, seq_idx)``, each (micro_batch, seq_len):
    ``seq_idx`` (int32) numbers the documents of each window from 0, and ``targets`` is ``IGNORE_INDEX``
    where the next token belongs to another document.
    """

    def __init__(self, tokens: np.ndarray, doc_starts: np.ndarray, seq_len: int, micro_batch: int,
                 accumulation: int, world_size: int, seed: int) -> None:
        super().__init__(tokens, seq_len, micro_batch, accumulation, world_size, seed)
        self.doc_starts = np.asarray(doc_starts, dtype=np.int64)

    def batch(self, step: int, micro: int, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        starts = self.global_starts(step)[micro, rank]
        inputs, targets = _windows(self.tokens, starts, self.seq_len)
        positions = starts[:, None] + np.arange(self.seq_len + 1)[None, :]
        doc = np.searchsorted(self.doc_starts, positions, side="right")   # document number of each position
        same = torch.from_numpy(doc[:, 1:] == doc[:, :-1])
        seq_idx = torch.from_numpy((doc[:, :-1] - doc[:, :1]).astype(np.int32))
        return inputs, targets.masked_fill(~same, IGNORE_INDEX), seq_idx


def eval_starts(n_tokens: int, seq_len: int, max_windows: int) -> np.ndarray:
    """Up to ``max_windows`` start offsets spread evenly over a split of ``n_tokens`` tokens."""
    high = n_tokens - seq_len - 1
    count = max(1, min(max_windows, n_tokens // seq_len))
    return np.unique(np.linspace(0, high, count).astype(np.int64))


def eval_batches(tokens: np.ndarray, seq_len: int, batch_size: int, max_windows: int, rank: int = 0,
                 world_size: int = 1):
    """Yield ``(inputs, targets)`` evaluation batches; rank ``r`` takes every ``world_size``-th window."""
    check_fits_context("validation", tokens, seq_len)
    starts = eval_starts(len(tokens), seq_len, max_windows)[rank::world_size]
    for i in range(0, len(starts), batch_size):
        yield _windows(tokens, starts[i:i + batch_size], seq_len)
