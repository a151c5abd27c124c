"""Selective copying (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023, §3.1
and Table 1): remember the data tokens scattered among noise, then recite them in order.

One sequence, of total length ``seq_len + num_tokens``::

    [ seq_len positions: num_tokens data tokens at random positions, BLANK everywhere else ]
    [ num_tokens MARKER tokens ]

At the i-th marker the model must output the i-th data token (in order of position). Because the data
tokens' positions vary, a time-invariant model (fixed convolution kernel) cannot know which inputs to keep:
this is the task that separates selective from time-invariant SSMs.

Token ids: BLANK = 0, data tokens 1 .. vocab_size - 2, MARKER = vocab_size - 1 (``vocab_size`` counts all
of them, so the model's embedding needs exactly ``vocab_size`` rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_int
from ..errors import ConfigError
from .batch import IGNORE_INDEX, TaskBatch, make_generator, random_positions

BLANK = 0


@dataclass(frozen=True)
class SelectiveCopying:
    """A selective-copying task; :meth:`sample` draws batches.

    Args:
        seq_len: length of the noisy region holding the data tokens (the paper's L = 4096).
        num_tokens: data tokens to copy, k (the paper's 16); at most ``seq_len``.
        vocab_size: all token ids, BLANK and MARKER included (the paper's 16); at least 3.
    """

    seq_len: int = 4096
    num_tokens: int = 16
    vocab_size: int = 16

    def __post_init__(self) -> None:
        check_int("seq_len", self.seq_len, 1)
        check_int("num_tokens", self.num_tokens, 1)
        check_int("vocab_size", self.vocab_size, 3)
        if self.num_tokens > self.seq_len:
            raise ConfigError(
                f"num_tokens: expected at most seq_len={self.seq_len} data tokens, got {self.num_tokens}"
            )

    @property
    def marker(self) -> int:
        """The id of the marker token that asks for the next data token."""
        return self.vocab_size - 1

    @property
    def total_length(self) -> int:
        """Length of one input sequence: seq_len + num_tokens."""
        return self.seq_len + self.num_tokens

    def sample(
        self, batch_size: int, generator: int | torch.Generator | None = None, device=None
    ) -> TaskBatch:
        """Draw a batch: inputs, targets, mask each (batch_size, seq_len + num_tokens).

        ``generator``: a torch.Generator (CPU), an int seed, or None (global random state)."""
        check_int("batch_size", batch_size, 1)
        gen = make_generator(generator)
        b, L, k = batch_size, self.seq_len, self.num_tokens
        data = torch.randint(1, self.vocab_size - 1, (b, k), generator=gen)
        positions = random_positions(b, L, k, gen)
        inputs = torch.full((b, L + k), BLANK, dtype=torch.long)
        inputs.scatter_(1, positions, data)
        inputs[:, L:] = self.marker
        targets = torch.full((b, L + k), IGNORE_INDEX, dtype=torch.long)
        targets[:, L:] = data
        mask = targets != IGNORE_INDEX
        return TaskBatch(inputs.to(device), targets.to(device), mask.to(device))


PAPER = SelectiveCopying(seq_len=4096, num_tokens=16, vocab_size=16)
"""The paper's setting (Table 1): L = 4096, 16 tokens to copy, vocabulary 16."""

SMALL = SelectiveCopying(seq_len=256, num_tokens=16, vocab_size=16)
"""A CPU-sized setting: the paper's k and vocabulary at L = 256."""

TINY = SelectiveCopying(seq_len=32, num_tokens=2, vocab_size=6)
"""Test-sized: learnable by a tiny Mamba in seconds."""
