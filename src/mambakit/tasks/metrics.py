"""Exact accuracy of a model's answers on a task batch (counts, not estimates)."""

from __future__ import annotations

import torch

from .._checks import check_shape
from ..errors import DTypeError, ShapeError


def _predictions(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Token predictions (batch, L) from logits (batch, L, V) or from predictions already (batch, L)."""
    if not isinstance(outputs, torch.Tensor):
        raise DTypeError(f"outputs: expected a torch.Tensor, got {type(outputs).__name__}")
    if outputs.is_floating_point():
        if outputs.dim() != targets.dim() + 1:
            raise ShapeError(
                f"outputs: expected logits of shape {tuple(targets.shape)} + (vocab,), "
                f"got {tuple(outputs.shape)}"
            )
        outputs = outputs.argmax(dim=-1)
    check_shape("outputs", outputs, tuple(targets.shape), "predictions the shape of targets")
    return outputs


def correct_and_asked(outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[int, int]:
    """(number of asked positions answered correctly, number of asked positions).

    outputs: logits (batch, L, V) or predicted ids (batch, L); targets, mask: (batch, L)."""
    check_shape("mask", mask, tuple(targets.shape), "the shape of targets")
    predictions = _predictions(outputs, targets)
    correct = (predictions == targets) & mask
    return int(correct.sum()), int(mask.sum())


def token_accuracy(outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of asked positions (mask True) answered correctly; outputs are logits or predicted ids."""
    correct, asked = correct_and_asked(outputs, targets, mask)
    if asked == 0:
        raise ShapeError("mask: expected at least one asked position, got none")
    return correct / asked


def sequence_accuracy(outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of rows whose every asked position is answered correctly."""
    check_shape("mask", mask, tuple(targets.shape), "the shape of targets")
    predictions = _predictions(outputs, targets)
    wrong = ((predictions != targets) & mask).any(dim=1)
    return float((~wrong).float().mean())
