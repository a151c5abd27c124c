"""The boundary forms (cu_seqlens, position_ids, a left-padded attention_mask) turned into seq_idx."""

import pytest
import torch

from mambakit.errors import ConfigError, DTypeError
from mambakit.ops.packing import (
    seq_idx_from_attention_mask,
    seq_idx_from_cu_seqlens,
    seq_idx_from_position_ids,
    sequence_start_index,
    sequence_starts,
)


def test_cu_seqlens_and_position_ids_give_the_same_ids():
    lengths = [3, 1, 4]
    seq_idx = seq_idx_from_cu_seqlens(torch.tensor([0, 3, 4, 8]))
    assert seq_idx.tolist() == [[0, 0, 0, 1, 2, 2, 2, 2]]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    assert torch.equal(seq_idx_from_position_ids(positions), seq_idx)
    assert sequence_starts(seq_idx).tolist() == [[False, False, False, True, True, False, False, False]]
    assert sequence_start_index(seq_idx).tolist() == [[0, 0, 0, 3, 4, 4, 4, 4]]


def test_position_ids_not_starting_at_zero_continue_one_sequence():
    # a row that starts mid-document (e.g. the second piece of a chunked prefill) is one sequence until a 0
    assert seq_idx_from_position_ids(torch.tensor([[5, 6, 0, 1]])).tolist() == [[0, 0, 1, 1]]


def test_left_padded_mask_is_two_sequences_per_padded_row():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert seq_idx_from_attention_mask(mask).tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert seq_idx_from_attention_mask(mask.bool()).tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]


@pytest.mark.parametrize("mask", [[[1, 1, 0]], [[0, 1, 0, 1]], [[0, 0, 0]], [[0, 2, 2]]])
def test_masks_that_are_not_left_padding_are_refused(mask):
    with pytest.raises(ConfigError, match="attention_mask"):
        seq_idx_from_attention_mask(torch.tensor(mask))


@pytest.mark.parametrize("cu", [[0], [1, 3], [0, 3, 2], [0, 2, 5]])
def test_bad_cu_seqlens_are_refused(cu):
    with pytest.raises(ConfigError, match="cu_seqlens"):
        seq_idx_from_cu_seqlens(torch.tensor(cu), length=4)


def test_float_inputs_are_refused():
    with pytest.raises(DTypeError, match="cu_seqlens: expected an integer tensor"):
        seq_idx_from_cu_seqlens(torch.tensor([0.0, 2.0]))
    with pytest.raises(DTypeError, match="position_ids: expected an integer tensor"):
        seq_idx_from_position_ids(torch.zeros(1, 3))
