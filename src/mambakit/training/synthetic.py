"""A small, self-contained training loop for the synthetic tasks: AdamW on freshly drawn batches, a step limit
and a time budget, loss only on the asked positions, exact evaluation on held-out batches.

Independent of :mod:`mambakit.training` on purpose: the synthetic experiments need nothing but this.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from .._checks import check_int
from ..errors import ConfigError
from ..models.lm import MambaLMHeadModel
from ..tasks.batch import IGNORE_INDEX, TaskBatch, make_generator
from ..tasks.metrics import correct_and_asked
from .optim import LR_SCHEDULES, build_adamw, lr_at


class Task(Protocol):
    """What the loop needs from a task: its vocabulary and a seeded sampler."""

    vocab_size: int

    def sample(self, batch_size: int, generator=None, device=None) -> TaskBatch: ...


@dataclass
class TrainSettings:
    """Optimisation settings of one run (defaults: the Mamba paper's synthetic-task choices, scaled down)."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    # "cosine": linear warm-up, then cosine decay to 10% of lr; "constant": linear warm-up, then lr (the Mamba
    # paper's synthetic runs; Adam's steps keep their size while the loss is tiny, see docs/experiments.md).
    lr_schedule: str = "cosine"
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    time_budget_s: float | None = None
    seed: int = 0
    stop_at_accuracy: float | None = None  # stop early once a held-out batch is answered this well
    eval_every: int = 25
    eval_samples: int = 256

    def __post_init__(self) -> None:
        check_int("steps", self.steps, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("warmup_steps", self.warmup_steps, 0)
        check_int("seed", self.seed, 0)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr: expected a positive finite number, got {self.lr!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule: expected one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay: expected a number >= 0, got {self.weight_decay!r}")
        check_int("eval_every", self.eval_every, 1)
        check_int("eval_samples", self.eval_samples, 1)
        if self.stop_at_accuracy is not None and not 0 < self.stop_at_accuracy <= 1:
            raise ConfigError(
                f"stop_at_accuracy: expected a number in (0, 1] or None, got {self.stop_at_accuracy!r}"
            )
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ConfigError(
                f"time_budget_s: expected a positive number or None, got {self.time_budget_s!r}"
            )


@dataclass
class TrainResult:
    """What a run did: steps taken, seconds spent, the loss curve (one value per step)."""

    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    stopped_by_budget: bool = False
    stopped_by_accuracy: float | None = None  # the held-out accuracy that stopped the run early, if any


def task_loss(model: torch.nn.Module, batch: TaskBatch) -> torch.Tensor:
    """Mean cross-entropy over the asked positions of a batch."""
    logits = model(batch.inputs)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=IGNORE_INDEX)


def train(
    model: MambaLMHeadModel,
    task: Task,
    settings: TrainSettings,
    progress: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on fresh batches of ``task`` (drawn from a generator seeded with
    ``settings.seed``) until ``settings.steps``, the time budget (counted from the end of the first step,
    which may include one-off kernel compilation) or, with ``settings.stop_at_accuracy``, until a held-out
    batch is answered that well. ``progress(step, loss)`` is called after every step (e.g. a tqdm update)."""
    gen = make_generator(settings.seed)
    device = next(model.parameters()).device
    # The language-model trainer's optimiser and no-decay rule; the synthetic tasks' betas.
    optimizer = build_adamw(model, settings.lr, settings.weight_decay, betas=(0.9, 0.98))
    # LambdaLR counts from 0 before the first step; lr_at counts optimiser steps from 1.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(
        step + 1, 1.0, settings.warmup_steps, settings.steps, 0.1, settings.lr_schedule))
    held_out = None
    if settings.stop_at_accuracy is not None:  # drawn from its own seed, never seen in training
        held_out = [
            task.sample(settings.eval_samples, make_generator(settings.seed + 1_000_003), device=device)
        ]
    model.train()
    start = time.perf_counter()
    result = TrainResult(steps=0, seconds=0.0)
    for step in range(settings.steps):
        batch = task.sample(settings.batch_size, gen, device=device)
        loss = task_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        schedule.step()
        result.losses.append(float(loss.detach()))
        result.steps = step + 1
        if progress is not None:
            progress(step + 1, result.losses[-1])
        if held_out is not None and (step + 1) % settings.eval_every == 0:
            accuracy = evaluate(model, held_out)
            if accuracy >= settings.stop_at_accuracy:
                result.stopped_by_accuracy = accuracy
                break
        if step == 0:  # the budget starts after the first step, which may compile kernels once
            budget_start = time.perf_counter()
            continue
        elapsed = time.perf_counter() - budget_start
        if settings.time_budget_s is not None and elapsed > settings.time_budget_s:
            result.stopped_by_budget = step + 1 < settings.steps
            break
    result.seconds = time.perf_counter() - start
    model.eval()
    return result


@torch.no_grad()
def evaluate(model: MambaLMHeadModel, batches: list[TaskBatch]) -> float:
    """Exact token accuracy over the asked positions of ``batches`` (full-sequence forward)."""
    correct = asked = 0
    was_training = model.training
    model.eval()
    for batch in batches:
        c, a = correct_and_asked(model(batch.inputs), batch.targets, batch.mask)
        correct, asked = correct + c, asked + a
    model.train(was_training)
    return correct / asked
