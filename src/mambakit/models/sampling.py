"""Choosing the next token from logits: the sampling options and the steps they drive.

Greedy when ``temperature == 0``; otherwise repetition penalty (CTRL-style), temperature, top-k, top-p
(nucleus), then a draw from a ``torch.Generator``. :class:`SamplingOptions` is the one place that says which
values are valid, for the library and the command line alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import check_int
from ..errors import ConfigError


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float))


@dataclass(frozen=True)
class SamplingOptions:
    """How :func:`mambakit.models.generate` picks each new token; checked when built.

    ``temperature``: >= 0, finite; 0 = greedy. ``top_k``: None or a positive integer. ``top_p``: None or a
    number in (0, 1]. ``repetition_penalty``: > 0; 1 = none, > 1 discourages tokens already seen.
    ``eos_token_id``: None or a token id at which a row stops (checked against the vocabulary by
    :meth:`check_vocab`).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        t = self.temperature
        if not _is_number(t) or not math.isfinite(t) or t < 0:
            raise ConfigError(f"temperature: expected a finite number >= 0 (0 = greedy), got {t!r}")
        if self.top_k is not None:
            check_int("top_k", self.top_k)
        if self.top_p is not None and (not _is_number(self.top_p) or not 0 < self.top_p <= 1):
            raise ConfigError(f"top_p: expected None or a number in (0, 1], got {self.top_p!r}")
        penalty = self.repetition_penalty
        if not _is_number(penalty) or not penalty > 0:
            raise ConfigError(f"repetition_penalty: expected a number > 0 (1 = none), got {penalty!r}")
        if self.eos_token_id is not None:
            check_int("eos_token_id", self.eos_token_id, minimum=0)

    def check_vocab(self, vocab_size: int) -> None:
        """Raise :class:`ConfigError` if ``eos_token_id`` is not a token of a ``vocab_size`` vocabulary."""
        if self.eos_token_id is not None and not self.eos_token_id < vocab_size:
            raise ConfigError(
                f"eos_token_id: expected None or an integer in [0, {vocab_size}), got {self.eos_token_id!r}"
            )


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make already-seen tokens less likely: positive logits divided by ``penalty``, negative ones multiplied.

    logits (batch, V); seen (batch, V) bool. Returns a new tensor.
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row from logits (batch, V) -> (batch,) long. Greedy when ``temperature == 0``."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(-1) - probs  # probability of the strictly better tokens
        drop_sorted = mass_before >= top_p  # the first token is never dropped
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
