"""Task generators: every label recomputed independently from the inputs (one row at a time, plain Python),
counts of data tokens, determinism with a seed, and bad parameters."""

import pytest
import torch

from mambakit.errors import ConfigError, ShapeError
from mambakit.tasks import (
    IGNORE_INDEX,
    MQAR,
    InductionHeads,
    SelectiveCopying,
    induction_heads,
    mqar,
    selective_copying,
    sequence_accuracy,
    token_accuracy,
)


def check_mask(batch):
    assert batch.inputs.dtype == batch.targets.dtype == torch.long and batch.mask.dtype == torch.bool
    assert batch.inputs.shape == batch.targets.shape == batch.mask.shape
    assert torch.equal(batch.mask, batch.targets != IGNORE_INDEX)


@pytest.mark.parametrize(
    "task", [SelectiveCopying(40, 6, 9), SelectiveCopying(5, 5, 3), selective_copying.SMALL]
)
def test_selective_copying_labels_are_the_data_tokens_in_order(task):
    batch = task.sample(16, generator=1)
    check_mask(batch)
    L, k, marker = task.seq_len, task.num_tokens, task.vocab_size - 1
    assert batch.inputs.shape == (16, L + k)
    for row, target in zip(batch.inputs.tolist(), batch.targets.tolist(), strict=True):
        region, tail = row[:L], row[L:]
        data = [t for t in region if t != selective_copying.BLANK]
        assert len(data) == k  # data tokens are never BLANK, so exactly k are non-blank
        assert all(1 <= t <= marker - 1 for t in data)
        assert tail == [marker] * k and marker not in region
        assert target[:L] == [IGNORE_INDEX] * L and target[L:] == data


def test_selective_copying_positions_are_spread_over_the_region():
    task = SelectiveCopying(64, 4, 8)
    hits = (task.sample(2000, generator=0).inputs[:, :64] != 0).float().mean(0)  # ~ 4/64 everywhere
    assert float(hits.min()) > 0.03 and float(hits.max()) < 0.10


@pytest.mark.parametrize("L", [3, 4, 17, 256])
def test_induction_heads_label_follows_the_first_trigger(L):
    task = InductionHeads(seq_len=L, vocab_size=6)
    batch = task.sample(64, generator=2)
    check_mask(batch)
    assert batch.inputs.shape == (64, L)
    for row, target in zip(batch.inputs.tolist(), batch.targets.tolist(), strict=True):
        triggers = [i for i, t in enumerate(row) if t == task.trigger]
        assert len(triggers) == 2 and triggers[1] == L - 1
        assert target[:-1] == [IGNORE_INDEX] * (L - 1)
        assert target[-1] == row[triggers[0] + 1] != task.trigger
        assert all(0 <= t < task.trigger for i, t in enumerate(row) if i not in triggers)


def test_induction_heads_other_lengths_and_first_trigger_anywhere():
    task = induction_heads.PAPER
    batch = task.sample(4, generator=0, seq_len=2**12)
    assert batch.inputs.shape == (4, 2**12) and int(batch.mask.sum()) == 4
    first = (task.sample(3000, generator=0, seq_len=8).inputs[:, :-1] == task.trigger).float().argmax(1)
    assert set(first.tolist()) == set(range(6))  # every allowed position 0..L-3 occurs
    assert induction_heads.PAPER_EVAL_LENGTHS[0] == 64 and induction_heads.PAPER_EVAL_LENGTHS[-1] == 2**20


@pytest.mark.parametrize("task", [MQAR(24, 5, vocab_size=13), MQAR(20, 6, 3, vocab_size=64), mqar.SMALL])
def test_mqar_queries_are_answered_by_their_pairs(task):
    batch = task.sample(16, generator=3)
    check_mask(batch)
    n, K = task.num_pairs, task.num_keys
    for row, target in zip(batch.inputs.tolist(), batch.targets.tolist(), strict=True):
        keys, values = row[0 : 2 * n : 2], row[1 : 2 * n : 2]
        assert len(set(keys)) == n and all(1 <= k <= K for k in keys)
        assert all(K < v < task.vocab_size for v in values)
        pairs = dict(zip(keys, values, strict=True))
        asked = [(i, t) for i, t in enumerate(row) if i >= 2 * n and t != mqar.BLANK]
        assert len(asked) == task.queries and len({t for _, t in asked}) == task.queries
        for i, t in enumerate(target):
            assert t == (pairs[row[i]] if i in dict(asked) else IGNORE_INDEX)


@pytest.mark.parametrize(
    "task", [SelectiveCopying(30, 5, 8), InductionHeads(20, 8), MQAR(30, 4, vocab_size=20)]
)
def test_same_seed_same_batch_other_seed_other_batch(task):
    a, b, c = task.sample(8, generator=5), task.sample(8, generator=5), task.sample(8, generator=6)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a.inputs, c.inputs)
    gen = torch.Generator().manual_seed(5)
    first, second = task.sample(8, gen), task.sample(8, gen)  # a generator advances between batches
    assert torch.equal(first.inputs, a.inputs) and not torch.equal(first.inputs, second.inputs)


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: SelectiveCopying(seq_len=8, num_tokens=9), "num_tokens"),
        (lambda: SelectiveCopying(vocab_size=2), "vocab_size"),
        (lambda: SelectiveCopying(seq_len=0), "seq_len"),
        (lambda: SelectiveCopying(num_tokens=1.5), "num_tokens"),
        (lambda: InductionHeads(seq_len=2), "seq_len"),
        (lambda: InductionHeads(vocab_size=2), "vocab_size"),
        (lambda: MQAR(seq_len=20, num_pairs=8), "seq_len"),  # 2·8 pairs + 8 queries > 20
        (lambda: MQAR(seq_len=64, num_pairs=6, vocab_size=11), "num_pairs"),  # only 5 distinct keys
        (lambda: MQAR(num_pairs=4, num_queries=5), "num_queries"),
        (lambda: MQAR(vocab_size=2), "vocab_size"),
        (lambda: InductionHeads().sample(0), "batch_size"),
        (lambda: InductionHeads().sample(2, seq_len=1), "seq_len"),
        (lambda: SelectiveCopying().sample(2, generator="seed"), "generator"),
    ],
)
def test_bad_parameters_name_the_argument(make, name):
    with pytest.raises(ConfigError, match=name):
        make()


def test_accuracy_metrics_count_exactly():
    targets = torch.tensor([[IGNORE_INDEX, 3, 4], [IGNORE_INDEX, IGNORE_INDEX, 1]])
    mask = targets != IGNORE_INDEX
    predictions = torch.tensor([[9, 3, 0], [9, 9, 1]])  # 2 of 3 asked right; only row 2 fully right
    assert token_accuracy(predictions, targets, mask) == pytest.approx(2 / 3)
    assert sequence_accuracy(predictions, targets, mask) == pytest.approx(0.5)
    logits = torch.nn.functional.one_hot(predictions, 10).float()
    assert token_accuracy(logits, targets, mask) == pytest.approx(2 / 3)
    with pytest.raises(ShapeError, match="outputs"):
        token_accuracy(predictions[:, :2], targets, mask)
    with pytest.raises(ShapeError, match="mask"):
        token_accuracy(predictions, targets, torch.zeros_like(mask))


def test_mqar_mixture_splits_the_batch_between_pair_counts():
    from mambakit.tasks import MQARMixture

    tasks = tuple(MQAR(seq_len=40, num_pairs=n, vocab_size=41) for n in (2, 4, 8))
    batch = MQARMixture(tasks).sample(8, generator=0)
    assert batch.inputs.shape == (8, 40)
    asked = batch.mask.sum(dim=1).tolist()
    assert asked == [2, 2, 2, 4, 4, 4, 8, 8]  # shares 3, 3, 2 in task order, every key queried once
    with pytest.raises(ConfigError, match="tasks"):
        MQARMixture((tasks[0], MQAR(seq_len=32, num_pairs=2, vocab_size=41)))
    with pytest.raises(ConfigError, match="batch_size"):
        MQARMixture(tasks).sample(2)
