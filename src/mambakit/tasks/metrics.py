"""Exact accuracy of a model's answers on a task batch (counts, not estimates), for sequences of any length:
a model whose mixers continue from a state (Mamba, Mamba-2, Mamba-3) is evaluated chunk by chunk."""

from __future__ import annotations

import torch

from .._checks import check_int, check_shape
from ..errors import ConfigError, DTypeError, ShapeError
from ..layers import Mamba2Block, MambaBlock
from ..layers.mamba3 import Mamba3Block
from .batch import TaskBatch


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


# Mixers whose forward continues from a non-empty state, so a long sequence can be fed in chunks.
_CONTINUING_MIXERS = (MambaBlock, Mamba2Block, Mamba3Block)


@torch.no_grad()
def chunked_last_logits(model, input_ids: torch.Tensor, chunk_len: int = 4096) -> torch.Tensor:
    """Logits at the last position, (batch, vocab_size_padded), of a language model over input_ids (batch, L),
    fed ``chunk_len`` tokens at a time through the model's own forward with its inference cache carried
    from chunk to chunk: memory O(batch · chunk_len), whatever L.

    Every layer's mixer must continue from a state (Mamba, Mamba-2, Mamba-3)."""
    check_int("chunk_len", chunk_len)
    for i, layer in enumerate(model.backbone.layers):
        if not isinstance(layer.mixer, _CONTINUING_MIXERS):
            raise ConfigError(f"model: chunked evaluation needs mixers that continue from a state (Mamba, "
                              f"Mamba-2, Mamba-3), layer {i} is {type(layer.mixer).__name__}")
    cache = model.allocate_inference_cache(input_ids.shape[0], device=input_ids.device)
    logits = None
    for start in range(0, input_ids.shape[1], chunk_len):
        logits = model(input_ids[:, start : start + chunk_len], state=cache, num_last_tokens=1)
    return logits[:, -1]


@torch.no_grad()
def last_position_accuracy(model, batch: TaskBatch, chunk_len: int = 2048, max_tokens: int = 2**18) -> float:
    """Accuracy at the last position of every row of ``batch`` (only that position may be asked, as in
    induction heads), for sequences of any length.

    A model of continuing mixers runs chunk by chunk (:func:`chunked_last_logits`, memory O(batch ·
    chunk_len)); any other model runs one full forward pass per group of rows holding at most ``max_tokens``
    tokens (memory grows with L: the caller caps L for those)."""
    if bool(batch.mask[:, :-1].any()) or not bool(batch.mask[:, -1].all()):
        raise ConfigError("batch: expected exactly the last position of every row to be asked")
    check_int("max_tokens", max_tokens)
    was_training = model.training
    model.eval()
    b, L = batch.inputs.shape
    if all(isinstance(layer.mixer, _CONTINUING_MIXERS) for layer in model.backbone.layers):
        logits = chunked_last_logits(model, batch.inputs, chunk_len)
    else:
        rows = max(1, max_tokens // L)
        logits = torch.cat(
            [model(batch.inputs[i : i + rows], num_last_tokens=1)[:, -1] for i in range(0, b, rows)]
        )
    model.train(was_training)
    return float((logits.argmax(-1) == batch.targets[:, -1]).float().mean())
