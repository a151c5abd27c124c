"""What every synthetic task returns, and the helpers the generators share.

A task batch is three tensors of the same shape (batch, L):

- ``inputs``: the token ids the model reads (torch.long);
- ``targets``: the token the model must output at each position, :data:`IGNORE_INDEX` where nothing is asked
  (so ``F.cross_entropy(..., ignore_index=IGNORE_INDEX)`` uses them directly);
- ``mask``: True exactly where a target is asked (``targets != IGNORE_INDEX``).

Targets are aligned with inputs: the model's output at position t is compared with ``targets[:, t]``
(no shift).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import ConfigError

IGNORE_INDEX = -100


class TaskBatch(NamedTuple):
    """inputs, targets (IGNORE_INDEX where unasked) and mask, each (batch, L)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor


def make_generator(seed_or_generator: int | torch.Generator | None) -> torch.Generator:
    """A CPU torch.Generator: the one given, a fresh one seeded with the int given, or one seeded from the
    global random state when None."""
    if isinstance(seed_or_generator, torch.Generator):
        return seed_or_generator
    if seed_or_generator is None:
        seed_or_generator = int(torch.randint(0, 2**62, (1,)))
    if not isinstance(seed_or_generator, int) or isinstance(seed_or_generator, bool):
        raise ConfigError(
            "generator: expected a torch.Generator, an int seed or None, "
            f"got {type(seed_or_generator).__name__}"
        )
    gen = torch.Generator()
    gen.manual_seed(seed_or_generator)
    return gen


def random_positions(batch: int, length: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` distinct positions in [0, length) per row, sorted ascending: (batch, count) long.

    Drawn by sorting uniform keys, so every subset is equally likely."""
    keys = torch.rand(batch, length, generator=generator)
    return keys.topk(count, dim=1).indices.sort(dim=1).values
