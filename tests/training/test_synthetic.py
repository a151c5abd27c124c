"""The synthetic-task training loop: reproducible with a seed, stops on its time budget or on a held-out
accuracy, rejects bad settings."""

import pytest
import torch
from experiments.settings import build_model

from mambakit.errors import ConfigError
from mambakit.tasks import TaskBatch
from mambakit.tasks.selective_copying import SelectiveCopying
from mambakit.training.optim import lr_at
from mambakit.training.synthetic import TrainSettings, train


class AlwaysZero:
    """A task whose answer is token 0 everywhere: any model learns it in a few steps."""

    vocab_size = 8

    def sample(self, batch_size, generator=None, device=None):
        inputs = torch.randint(0, 8, (batch_size, 6), generator=generator)
        targets = torch.zeros_like(inputs)
        return TaskBatch(inputs, targets, torch.ones_like(inputs, dtype=torch.bool))


def test_same_seed_same_losses():
    task = SelectiveCopying(10, 2, 6)
    runs = []
    for _ in range(2):
        model = build_model("mamba", 6, d_model=16, n_layer=1, d_state=4, seed=3)
        runs.append(train(model, task, TrainSettings(steps=3, batch_size=4, seed=3)).losses)
    assert runs[0] == runs[1] and len(runs[0]) == 3


def test_time_budget_counts_from_the_second_step():
    model = build_model("s4d", 6, d_model=16, n_layer=1, d_state=4, seed=0)
    result = train(
        model, SelectiveCopying(10, 2, 6), TrainSettings(steps=50, batch_size=2, time_budget_s=1e-9)
    )
    assert result.steps == 2 and result.stopped_by_budget


def test_stops_once_the_held_out_batch_is_answered():
    model = build_model("s4d", 8, d_model=16, n_layer=1, d_state=4, seed=0)
    settings = TrainSettings(steps=400, batch_size=8, lr=1e-2, stop_at_accuracy=0.99, eval_every=5)
    result = train(model, AlwaysZero(), settings)
    assert result.steps < 400 and result.steps % 5 == 0 and result.stopped_by_accuracy >= 0.99


def test_lr_schedules_warm_up_then_decay_or_hold():
    cosine = dict(peak_lr=1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    constant = dict(cosine, schedule="constant")
    for s in (cosine, constant):
        assert [lr_at(k, **s) for k in (1, 5, 10)] == pytest.approx([0.1, 0.5, 1.0])
    decay = [lr_at(k, **cosine) for k in range(10, 111)]
    assert decay[0] == pytest.approx(1.0) and decay[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))
    assert all(lr_at(k, **constant) == 1.0 for k in range(10, 500))
    with pytest.raises(ConfigError, match="lr_schedule"):
        lr_at(1, schedule="linear", **{k: v for k, v in cosine.items()})


def test_the_task_loop_steps_with_the_shared_schedule():
    model = build_model("s4d", 8, d_model=16, n_layer=1, d_state=4, seed=0)
    seen = []
    settings = TrainSettings(steps=6, batch_size=2, lr=1e-2, warmup_steps=2, lr_schedule="cosine")
    real_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    torch.optim.AdamW.step = recording_step
    try:
        train(model, AlwaysZero(), settings)
    finally:
        torch.optim.AdamW.step = real_step
    assert seen == pytest.approx([lr_at(k, 1e-2, 2, 6, 0.1) for k in range(1, 7)])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"steps": 0}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": -1.0}, "lr"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"time_budget_s": 0}, "time_budget_s"),
        ({"stop_at_accuracy": 1.5}, "stop_at_accuracy"),
        ({"eval_every": 0}, "eval_every"),
        ({"seed": -1}, "seed"),
        ({"lr_schedule": "linear"}, "lr_schedule"),
    ],
)
def test_bad_settings_name_the_field(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        TrainSettings(**kwargs)
