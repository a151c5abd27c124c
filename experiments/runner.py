"""The Mamba paper's synthetic experiments, end to end: train two-layer models with different mixers on a
task, evaluate them exactly, and write a markdown table, a JSON record and a PNG plot.

- ``selective_copying``: Mamba (S6) against S4D (time-invariant) and causal attention (the paper's Table 1
  pattern).
- ``induction_heads``: train at one length, evaluate at 2^6 .. 2^20 (the paper's Table 2 / extrapolation
  figure). Mamba, Mamba-2 and Mamba-3 are evaluated chunk by chunk with their recurrent state carried
  (bounded memory, see ``mambakit.tasks.metrics.last_position_accuracy``); the other models need one full
  pass, so they are evaluated only up to ``attention_max_len`` (attention, the hybrid) / ``s4d_max_len``.
- ``mqar``: multi-query associative recall (Zoology): one model per mixer trained on a mix of key-value
  pair counts, accuracy at each count.
- ``state_tracking``: running sums over Z_m (parity for m = 2), trained short and evaluated longer (the
  Mamba-3 paper's motivation for a complex, rotational state).

Run it with ``python experiments/run.py NAME [--preset P] [--set field=value ...]``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mambakit._checks import check_int
from mambakit.atomic import write_bytes_atomic, write_text_atomic
from mambakit.errors import ConfigError
from mambakit.tasks import MQAR, InductionHeads, ModularSum, MQARMixture, SelectiveCopying
from mambakit.tasks.batch import IGNORE_INDEX
from mambakit.tasks.metrics import last_position_accuracy
from mambakit.training.optim import LR_SCHEDULES
from mambakit.training.synthetic import TrainResult, TrainSettings, evaluate, train

from .report import (
    induction_heads_plot,
    induction_heads_table,
    mqar_plot,
    mqar_table,
    selective_copying_plot,
    selective_copying_table,
    state_tracking_plot,
    state_tracking_table,
)
from .settings import (
    InductionHeadsSettings,
    MQARSettings,
    SelectiveCopyingSettings,
    StateTrackingSettings,
    build_model,
    settings_for,
)

#: Models whose every layer continues from a recurrent state: evaluated chunk by chunk at any length.
RECURRENT_MODELS = ("mamba", "mamba2", "mamba3", "mamba3-mimo")


# ------------------------------------------------------------------------------------------------- progress
def _progress_bar(
    total: int, description: str, enabled: bool
) -> tuple[Callable[[int, float], None], Callable]:
    """(update(step, loss), close()) for a tqdm bar, or no-ops when disabled or tqdm is missing."""
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            enabled = False
    if not enabled:
        return (lambda step, loss: None), (lambda: None)
    bar = tqdm(total=total, desc=description, unit="step", leave=True)

    def update(step: int, loss: float) -> None:
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")

    return update, bar.close


def _train_one(
    model, task, s, label: str, progress: bool, steps: int | None = None, stop_at: float | None = None,
    budget: bool = True, seed_offset: int = 0, batch_size: int | None = None, lr: float | None = None,
    lr_schedule: str | None = None,
) -> TrainResult:
    steps = s.steps if steps is None else steps
    settings = TrainSettings(
        steps=steps,
        batch_size=s.batch_size if batch_size is None else batch_size,
        lr=s.lr if lr is None else lr,
        lr_schedule=s.lr_schedule if lr_schedule is None else lr_schedule,
        warmup_steps=min(s.warmup_steps, steps - 1),
        time_budget_s=s.time_budget_s if budget else None,
        seed=s.seed + seed_offset,
        stop_at_accuracy=s.stop_at_accuracy if stop_at is None else stop_at,
    )
    update, close = _progress_bar(steps, f"train {label}", progress)
    try:
        return train(model, task, settings, progress=update)
    finally:
        close()


# ---------------------------------------------------------------------------------------------- experiments
def run_selective_copying(s: SelectiveCopyingSettings, progress: bool = True) -> dict:
    """Train and evaluate every mixer of ``s``; returns the JSON-able record of the run."""
    task = SelectiveCopying(seq_len=s.seq_len, num_tokens=s.num_tokens, vocab_size=s.vocab_size)
    eval_gen = torch.Generator().manual_seed(10_000 + s.seed)  # held out: training draws from seed s.seed
    n_batches = math.ceil(s.eval_samples / s.eval_batch_size)
    eval_batches = [task.sample(s.eval_batch_size, eval_gen) for _ in range(n_batches)]
    rows = []
    for mixer in s.mixers:
        model = build_model(mixer, task.vocab_size, s.d_model, s.n_layer, s.d_state, s.seed)
        result = _train_one(model, task, s, mixer, progress)
        accuracy = evaluate(model, eval_batches)
        rows.append(
            {
                "mixer": mixer,
                "parameters": sum(p.numel() for p in model.parameters()),
                "steps": result.steps,
                "train_seconds": round(result.seconds, 1),
                "accuracy": accuracy,
                "losses": result.losses,
            }
        )
    return {"experiment": "selective_copying", "settings": dataclasses.asdict(s), "rows": rows}


def run_induction_heads(s: InductionHeadsSettings, progress: bool = True) -> dict:
    """Train every mixer of ``s`` at ``train_len`` and evaluate it at each of ``eval_lengths``."""
    task = InductionHeads(seq_len=s.train_len, vocab_size=s.vocab_size)
    _check_induction_settings(s)
    rows = []
    for mixer in s.mixers:
        model = build_model(mixer, task.vocab_size, s.d_model, s.n_layer, s.d_state, s.seed)
        # A length curriculum: each phase a fresh optimiser and its own data seed, stopping once solved.
        phases = [
            _train_one(model, InductionHeads(seq_len=L, vocab_size=s.vocab_size), s, f"{mixer} L={L}",
                       progress, steps=s.curriculum_steps, stop_at=s.curriculum_accuracy, budget=False,
                       seed_offset=L, batch_size=s.curriculum_batch_size, lr=s.curriculum_lr,
                       lr_schedule="cosine")
            for L in s.curriculum_lengths
        ]
        result = _train_one(model, task, s, f"{mixer} L={s.train_len}", progress)
        by_length: dict[int, float | None] = {}
        seconds: dict[int, float] = {}
        limit = None if mixer in RECURRENT_MODELS else (
            s.attention_max_len if mixer in ("attention", "hybrid") else s.s4d_max_len)
        chance_streak, skipped = 0, []
        for L in s.eval_lengths:
            if limit is not None and L > limit:
                by_length[L] = None  # not evaluated: one full pass at this length would not fit
                continue
            if s.skip_after_chance and chance_streak >= s.skip_after_chance:
                by_length[L] = None  # not evaluated: already at chance at shorter lengths
                skipped.append(L)
                continue
            batch = task.sample(s.eval_samples, generator=20_000 + s.seed + L, seq_len=L)
            start = time.perf_counter()
            by_length[L] = last_position_accuracy(model, batch, chunk_len=s.chunk_len)
            seconds[L] = round(time.perf_counter() - start, 1)
            chance_streak = chance_streak + 1 if by_length[L] <= 2 / (s.vocab_size - 1) else 0
            if progress:
                print(f"  {mixer} L={L}: accuracy {by_length[L]:.3f} ({seconds[L]} s)", flush=True)
        rows.append(
            {
                "mixer": mixer,
                "parameters": sum(p.numel() for p in model.parameters()),
                "steps": result.steps,
                "curriculum_steps": [p.steps for p in phases],
                "train_seconds": round(result.seconds + sum(p.seconds for p in phases), 1),
                "accuracy_by_length": {str(k): v for k, v in by_length.items()},
                "eval_seconds_by_length": {str(k): v for k, v in seconds.items()},
                "skipped_at_chance": skipped,
                "losses": [x for p in phases for x in p.losses] + result.losses,
            }
        )
    return {"experiment": "induction_heads", "settings": dataclasses.asdict(s), "rows": rows}


def run_mqar(s: MQARSettings, progress: bool = True) -> dict:
    """Train every model of ``s`` on the mix of ``s.num_pairs`` and evaluate it at each pair count."""
    if not s.num_pairs or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in s.num_pairs):
        raise ConfigError(f"num_pairs: expected positive integers, got {s.num_pairs!r}")
    tasks = {n: MQAR(seq_len=s.seq_len, num_pairs=n, vocab_size=s.vocab_size) for n in s.num_pairs}
    mixture = MQARMixture(tuple(tasks.values()))
    held_out = {n: t.sample(s.eval_samples, generator=30_000 + s.seed + n) for n, t in tasks.items()}
    rows = []
    for mixer in s.mixers:
        model = build_model(mixer, s.vocab_size, s.d_model, s.n_layer, s.d_state, s.seed)
        result = _train_one(model, mixture, s, mixer, progress)
        by_pairs = {str(n): evaluate(model, [batch]) for n, batch in held_out.items()}
        if progress:
            print(f"  {mixer}: " + ", ".join(f"{n} pairs {a:.3f}" for n, a in by_pairs.items()), flush=True)
        rows.append(_row(model, mixer, result, accuracy_by_pairs=by_pairs))
    return {"experiment": "mqar", "settings": dataclasses.asdict(s), "rows": rows}


def run_state_tracking(s: StateTrackingSettings, progress: bool = True) -> dict:
    """Train every model of ``s`` at ``train_len`` (every running sum asked) and evaluate the last position
    (the sum of the whole sequence) at each of ``eval_lengths``."""
    task = ModularSum(seq_len=s.train_len, modulus=s.modulus)
    rows = []
    for mixer in s.mixers:
        model = build_model(mixer, task.vocab_size, s.d_model, s.n_layer, s.d_state, s.seed,
                            dt_min=s.dt_min, dt_max=s.dt_max)
        result = _train_one(model, task, s, mixer, progress)
        by_length, all_positions = {}, {}
        for L in s.eval_lengths:
            batch = task.sample(s.eval_samples, generator=40_000 + s.seed + L, seq_len=L)
            last = batch._replace(targets=batch.targets.clone(), mask=batch.mask.clone())
            last.targets[:, :-1], last.mask[:, :-1] = IGNORE_INDEX, False
            by_length[str(L)] = last_position_accuracy(model, last, chunk_len=1024)
            all_positions[str(L)] = evaluate(model, [batch])
            if progress:
                print(f"  {mixer} L={L}: last {by_length[str(L)]:.3f}, all {all_positions[str(L)]:.3f}",
                      flush=True)
        rows.append(_row(model, mixer, result, accuracy_by_length=by_length,
                         all_positions_by_length=all_positions))
    return {"experiment": "state_tracking", "settings": dataclasses.asdict(s), "rows": rows}


def _row(model, mixer: str, result: TrainResult, **accuracies) -> dict:
    return {
        "mixer": mixer,
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": result.steps,
        "train_seconds": round(result.seconds, 1),
        **accuracies,
        "losses": result.losses,
    }


def _check_induction_settings(s: InductionHeadsSettings) -> None:
    check_int("skip_after_chance", s.skip_after_chance, 0)
    lengths = list(s.curriculum_lengths)
    if any(isinstance(L, bool) or not isinstance(L, int) or not 3 <= L < s.train_len for L in lengths):
        raise ConfigError(
            f"curriculum_lengths: expected integers in [3, train_len = {s.train_len}), got {lengths}"
        )
    if lengths != sorted(set(lengths)):
        raise ConfigError(f"curriculum_lengths: expected increasing lengths, got {lengths}")
    if lengths:
        check_int("curriculum_steps", s.curriculum_steps, 1)
    if lengths and not 0 < s.curriculum_accuracy <= 1:
        raise ConfigError(f"curriculum_accuracy: expected a number in (0, 1], got {s.curriculum_accuracy!r}")
    if s.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule: expected one of {LR_SCHEDULES}, got {s.lr_schedule!r}")
    if s.curriculum_batch_size is not None:
        check_int("curriculum_batch_size", s.curriculum_batch_size, 1)
    if s.curriculum_lr is not None and not (
        isinstance(s.curriculum_lr, (int, float)) and math.isfinite(s.curriculum_lr) and s.curriculum_lr > 0
    ):
        raise ConfigError(
            f"curriculum_lr: expected a positive finite number or None, got {s.curriculum_lr!r}"
        )


RUNNERS = {
    "selective_copying": (run_selective_copying, selective_copying_table, selective_copying_plot),
    "induction_heads": (run_induction_heads, induction_heads_table, induction_heads_plot),
    "mqar": (run_mqar, mqar_table, mqar_plot),
    "state_tracking": (run_state_tracking, state_tracking_table, state_tracking_plot),
}


def run_experiment(
    name: str,
    out_dir: str | Path,
    preset: str = "cpu",
    overrides: dict[str, object] | None = None,
    progress: bool = True,
    command: str | None = None,
) -> Path:
    """Run experiment ``name`` and write ``results.md``, ``results.json`` and ``<name>.png`` into ``out_dir``;
    returns the path of ``results.md``."""
    settings = settings_for(name, preset, overrides)
    runner, table, plot = RUNNERS[name]
    start = time.perf_counter()
    record = runner(settings, progress=progress)
    record.update(
        {
            "preset": preset,
            "overrides": overrides or {},
            "command": command,
            "total_seconds": round(time.perf_counter() - start, 1),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        }
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = [f"# {name} ({preset})", ""]
    if command:
        markdown += ["Command:", "", f"    {command}", ""]
    markdown += [
        table(record),
        "",
        f"Total time {record['total_seconds']} s on {record['threads']} threads (torch {record['torch']}).",
        "",
        f"![{name}]({name}.png)",
        "",
    ]
    write_bytes_atomic(out / f"{name}.png", plot(record))
    write_text_atomic(out / "results.json", json.dumps(record, indent=1) + "\n")
    write_text_atomic(out / "results.md", "\n".join(markdown))
    return out / "results.md"
