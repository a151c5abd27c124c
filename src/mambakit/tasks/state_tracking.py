"""State tracking over a cyclic group: the running sum modulo m of a stream of group elements (m = 2 is the
parity of a bit string).

The task that motivates complex-valued (rotational) SSM states: a diagonal linear recurrence with real,
non-negative decays — Mamba, Mamba-2 — cannot track the parity of an arbitrarily long input (Grazzi et al.,
"Unlocking State-Tracking in Linear RNNs Through Negative Eigenvalues", 2024; Sarrof et al., "The
Expressive Capacity of State Space Models: A Formal Language Perspective", 2024), while a data-dependent
rotation by 2π·x_t/m tracks Z_m exactly: the Mamba-3 paper (Lahoti et al., "Mamba-3: Improved Sequence
Modeling using State Space Principles", 2026) motivates its complex state with parity and modular
arithmetic. Trained on short sequences, a model that has learnt the group's rule answers at any length.

One sequence of length ``seq_len``::

    BOS x_1 x_2 ... x_{L-1}        x_t uniform in {0, ..., m - 1}

and the target at position t >= 1 is (x_1 + ... + x_t) mod m; BOS (id m) is not asked. Token ids:
elements 0 .. m - 1, BOS = m, so ``vocab_size`` = m + 1. The BOS token gives every model a fixed origin
(a rotation's reference phase).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_int
from ..errors import ConfigError
from .batch import IGNORE_INDEX, TaskBatch, make_generator


@dataclass(frozen=True)
class ModularSum:
    """Running sums over the cyclic group Z_modulus; :meth:`sample` draws batches.

    Args:
        seq_len: training length, BOS included; at least 2.
        modulus: the group's order m (2: parity); at least 2.
        answer: "every" (each position's running sum is asked: the training signal) or "last" (only the
            last position, the sum of the whole sequence).
    """

    seq_len: int = 32
    modulus: int = 2
    answer: str = "every"

    def __post_init__(self) -> None:
        check_int("seq_len", self.seq_len, 2)
        check_int("modulus", self.modulus, 2)
        if self.answer not in ("every", "last"):
            raise ConfigError(f"answer: expected 'every' or 'last', got {self.answer!r}")

    @property
    def bos(self) -> int:
        """The id of the start token."""
        return self.modulus

    @property
    def vocab_size(self) -> int:
        """modulus + 1 (the elements and BOS)."""
        return self.modulus + 1

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
        """Draw a batch: inputs, targets, mask each (batch_size, seq_len). ``seq_len`` overrides the task's
        length (for evaluation at other lengths)."""
        check_int("batch_size", batch_size, 1)
        L = self.seq_len if seq_len is None else check_int("seq_len", seq_len, 2)
        gen = make_generator(generator)
        elements = torch.randint(0, self.modulus, (batch_size, L - 1), generator=gen)
        inputs = torch.cat([torch.full((batch_size, 1), self.bos, dtype=torch.long), elements], dim=1)
        targets = torch.full((batch_size, L), IGNORE_INDEX, dtype=torch.long)
        sums = elements.cumsum(dim=1) % self.modulus
        if self.answer == "every":
            targets[:, 1:] = sums
        else:
            targets[:, -1] = sums[:, -1]
        mask = targets != IGNORE_INDEX
        return TaskBatch(inputs.to(device), targets.to(device), mask.to(device))


PARITY = ModularSum(seq_len=32, modulus=2)
"""Parity of a bit string, trained at L = 32."""

Z5 = ModularSum(seq_len=32, modulus=5)
"""Addition in Z_5, trained at L = 32."""
