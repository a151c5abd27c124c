"""Packed sequences: several documents in one row, told apart by ``seq_idx``.

``seq_idx`` (batch, L) integer gives each position the id of the sequence it belongs to; wherever it
changes from one position to the next, a new sequence starts: its recurrent state starts from zero and its
convolution window does not reach back across the boundary. A packed row then computes exactly what running
each of its sequences alone would. The forms people pass boundaries in are all turned into ``seq_idx`` here:

- ``cu_seqlens`` (n + 1,): cumulative lengths [0, l_0, l_0 + l_1, ...] of n sequences packed into one row
  (the flash-attention / mamba_ssm varlen convention);
- ``position_ids`` (batch, L): positions restarting at 0 at each sequence (transformers' padding-free
  training);
- ``attention_mask`` (batch, L) of a left-padded batch: 0 on the padding, 1 on the tokens (the padding is
  a sequence of its own, so it never leaks into the state of the real one).
"""

from __future__ import annotations

import torch

from .._checks import check_integer_tensor, check_shape, check_tensor
from ..errors import ConfigError, DeviceError, DTypeError


def check_seq_idx(seq_idx: object, batch: int, length: int, device: torch.device | None = None) -> None:
    """``seq_idx`` must be an integer (batch, L) tensor (on ``device`` when given)."""
    check_integer_tensor("seq_idx", seq_idx, 2)
    check_shape("seq_idx", seq_idx, (batch, length), "(batch, L)")
    if device is not None and seq_idx.device != device:
        raise DeviceError(f"seq_idx: expected a tensor on {device}, got {seq_idx.device}")


def sequence_starts(seq_idx: torch.Tensor) -> torch.Tensor:
    """(batch, L) bool: True where a new sequence starts after the row's first position (position 0
    continues whatever state the scan starts from)."""
    starts = torch.zeros_like(seq_idx, dtype=torch.bool)
    starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return starts


def sequence_start_index(seq_idx: torch.Tensor) -> torch.Tensor:
    """(batch, L) int64: for each position, the position where its sequence starts (0 for the first)."""
    positions = torch.arange(seq_idx.shape[1], device=seq_idx.device).expand(seq_idx.shape)
    return torch.where(sequence_starts(seq_idx), positions, 0).cummax(dim=1).values


def seq_idx_from_cu_seqlens(cu_seqlens: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """(1, L) int32 ids 0..n-1 for ``cu_seqlens`` (n + 1,) = [0, l_0, l_0 + l_1, ..., L].

    ``length`` (default ``cu_seqlens[-1]``) must equal the last entry: every position belongs to one
    sequence.
    """
    check_integer_tensor("cu_seqlens", cu_seqlens, 1)
    values = cu_seqlens.tolist()
    if len(values) < 2 or values[0] != 0 or any(b < a for a, b in zip(values, values[1:], strict=False)):
        raise ConfigError(f"cu_seqlens: expected non-decreasing offsets starting at 0, got {values}")
    if length is not None and values[-1] != length:
        raise ConfigError(f"cu_seqlens: expected the last offset to be the packed length {length}, "
                          f"got {values[-1]}")
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    ids = torch.arange(len(values) - 1, device=cu_seqlens.device, dtype=torch.int32)
    return torch.repeat_interleave(ids, lengths.to(torch.long)).unsqueeze(0)


def seq_idx_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """(batch, L) int32 ids: a new sequence wherever ``position_ids`` (batch, L) goes back to 0."""
    check_integer_tensor("position_ids", position_ids, 2)
    starts = position_ids == 0
    starts[:, 0] = True
    return (starts.cumsum(dim=1) - 1).to(torch.int32)


def seq_idx_from_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, L) int32 ids of a left-padded batch's ``attention_mask`` (batch, L) of 0/1: 0 on the padding,
    1 on the tokens. Raises ConfigError unless every row is zeros then ones with at least one token."""
    check_tensor("attention_mask", attention_mask, ndim=2, floating=False)
    if attention_mask.is_complex():
        raise DTypeError(f"attention_mask: expected 0/1 integers or bools, got {attention_mask.dtype}")
    mask = attention_mask.to(torch.int32)
    if bool(((mask != 0) & (mask != 1)).any()):
        raise ConfigError("attention_mask: expected 0 (padding) and 1 (token) entries only")
    if bool((mask[:, 1:] < mask[:, :-1]).any()) or bool((mask[:, -1] == 0).any()):
        raise ConfigError("attention_mask: expected left padding (each row zeros then ones, ending on a "
                          "token); pad prompts on the left for generation")
    return mask


def resolve_seq_idx(
    input_ids: torch.Tensor,
    *,
    seq_idx: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """The one packing argument of a model's forward that is given, as seq_idx (batch, L) for
    ``input_ids`` (batch, L); None when none is. Giving two is a ConfigError."""
    given = sorted(name for name, value in (("seq_idx", seq_idx), ("cu_seqlens", cu_seqlens),
                                            ("position_ids", position_ids),
                                            ("attention_mask", attention_mask)) if value is not None)
    if len(given) > 1:
        raise ConfigError(f"forward: expected at most one of seq_idx, cu_seqlens, position_ids and "
                          f"attention_mask, got {given}")
    batch, length = input_ids.shape
    if cu_seqlens is not None:
        if batch != 1:
            raise ConfigError(f"cu_seqlens: packs sequences into one row; expected input_ids of batch 1, "
                              f"got {batch}")
        seq_idx = seq_idx_from_cu_seqlens(cu_seqlens, length)
    elif position_ids is not None:
        seq_idx = seq_idx_from_position_ids(position_ids)
        check_shape("position_ids", position_ids, (batch, length), "that of input_ids")
    elif attention_mask is not None:
        seq_idx = seq_idx_from_attention_mask(attention_mask)
        check_shape("attention_mask", attention_mask, (batch, length), "that of input_ids")
    if seq_idx is not None:
        check_seq_idx(seq_idx, batch, length, device=input_ids.device)
    return seq_idx
