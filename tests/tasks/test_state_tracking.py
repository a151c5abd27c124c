"""The state-tracking generator (running sums over Z_m): every label recomputed in plain Python, BOS first,
the asked positions, other lengths, determinism, and bad parameters."""

import pytest
import torch

from mambakit.errors import ConfigError
from mambakit.tasks import IGNORE_INDEX, ModularSum, state_tracking


@pytest.mark.parametrize(
    "task", [ModularSum(12, 2), ModularSum(9, 5), state_tracking.PARITY, state_tracking.Z5]
)
def test_every_label_is_the_running_sum_mod_m(task):
    batch = task.sample(32, generator=3)
    assert batch.inputs.shape == batch.targets.shape == batch.mask.shape == (32, task.seq_len)
    assert torch.equal(batch.mask, batch.targets != IGNORE_INDEX)
    assert task.vocab_size == task.modulus + 1
    for row, target in zip(batch.inputs.tolist(), batch.targets.tolist(), strict=True):
        assert row[0] == task.bos and all(0 <= x < task.modulus for x in row[1:])
        assert target[0] == IGNORE_INDEX
        total = 0
        for x, y in zip(row[1:], target[1:], strict=True):
            total = (total + x) % task.modulus
            assert y == total


def test_parity_is_the_number_of_ones_mod_2():
    batch = ModularSum(seq_len=40, modulus=2, answer="last").sample(64, generator=0)
    assert bool(batch.mask[:, -1].all()) and not bool(batch.mask[:, :-1].any())
    ones = (batch.inputs[:, 1:] == 1).sum(dim=1)
    assert torch.equal(batch.targets[:, -1], ones % 2)


def test_other_lengths_and_seeds():
    task = ModularSum(seq_len=8, modulus=3)
    assert task.sample(4, generator=1, seq_len=100).inputs.shape == (4, 100)
    a, b = task.sample(5, generator=7), task.sample(5, generator=7)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, task.sample(5, generator=8).inputs)
    # elements are drawn uniformly: every residue appears
    assert set(task.sample(64, generator=0).inputs[:, 1:].unique().tolist()) == {0, 1, 2}


@pytest.mark.parametrize("kwargs, name", [({"seq_len": 1}, "seq_len"), ({"modulus": 1}, "modulus"),
                                          ({"answer": "first"}, "answer")])
def test_bad_parameters_name_the_argument(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        ModularSum(**kwargs)
