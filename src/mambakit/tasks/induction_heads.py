"""Induction heads (Olsson et al., "In-context Learning and Induction Heads", 2022; the Mamba paper's §4.1.2
and Table 2): find the token that followed a trigger earlier in the sequence.

One sequence of length ``seq_len``: random data tokens, with the TRIGGER token once at a random position p
followed by the target token at p + 1, and the TRIGGER again at the last position. At that last position the
model must output the target. The trigger appears nowhere else, so the answer is unique.

Token ids: data tokens 0 .. vocab_size - 2, TRIGGER = vocab_size - 1. Trained at one length (the paper's 256),
the task asks whether a model extrapolates to much longer ones (2^6 .. 2^20): :meth:`InductionHeads.sample`
takes the length to draw as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_int
from .batch import IGNORE_INDEX, TaskBatch, make_generator


@dataclass(frozen=True)
class InductionHeads:
    """An induction-heads task; :meth:`sample` draws batches.

    Args:
        seq_len: training length (the paper's 256); at least 3 (trigger, target, trigger).
        vocab_size: all token ids, TRIGGER included (the paper's 16); at least 3.
    """

    seq_len: int = 256
    vocab_size: int = 16

    def __post_init__(self) -> None:
        check_int("seq_len", self.seq_len, 3)
        check_int("vocab_size", self.vocab_size, 3)

    @property
    def trigger(self) -> int:
        """The id of the trigger token."""
        return self.vocab_size - 1

    @property
    def total_length(self) -> int:
        """Length of one training sequence."""
        return self.seq_len

    def sample(
        self,
        batch_size: int,
        generator: int | torch.Generator | None = None,
        device=None,
        seq_len: int | None = None,
    ) -> TaskBatch:
        """Draw a batch: inputs, targets, mask each (batch_size, seq_len); one asked position per row (the
        last). ``seq_len`` overrides the task's length (for evaluation at other lengths)."""
        check_int("batch_size", batch_size, 1)
        L = self.seq_len if seq_len is None else check_int("seq_len", seq_len, 3)
        gen = make_generator(generator)
        b = batch_size
        inputs = torch.randint(0, self.vocab_size - 1, (b, L), generator=gen)
        first = torch.randint(0, L - 2, (b, 1), generator=gen)  # the trigger's first position, <= L - 3
        target = inputs.gather(1, first + 1)  # the data token already there becomes the answer
        inputs.scatter_(1, first, self.trigger)
        inputs[:, -1] = self.trigger
        targets = torch.full((b, L), IGNORE_INDEX, dtype=torch.long)
        targets[:, -1:] = target
        mask = targets != IGNORE_INDEX
        return TaskBatch(inputs.to(device), targets.to(device), mask.to(device))


PAPER = InductionHeads(seq_len=256, vocab_size=16)
"""The paper's setting: trained at L = 256 with vocabulary 16, evaluated at 2^6 .. 2^20."""

SMALL = InductionHeads(seq_len=64, vocab_size=16)
"""A CPU-sized training length."""

PAPER_EVAL_LENGTHS = tuple(2**p for p in range(6, 21))
"""The paper's evaluation lengths, 2^6 .. 2^20."""
