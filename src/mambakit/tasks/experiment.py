"""The Mamba paper's synthetic experiments, end to end: train two-layer models with different mixers on a
task, evaluate them exactly, and write a markdown table, a JSON record and a PNG plot.

- ``selective_copying``: Mamba (S6) against S4D (time-invariant) and causal attention (the paper's Table 1
  pattern).
- ``induction_heads``: train at one length, evaluate at 2^6 .. 2^20 (the paper's Table 2 / extrapolation
  figure). Mamba is evaluated chunk by chunk with its recurrent state carried (bounded memory, see
  :mod:`.chunked`); the other mixers need one full pass, so they are evaluated only up to
  ``attention_max_len`` / ``s4d_max_len``.

Each experiment has presets (``smoke``: under a minute on a CPU; ``cpu``: sized for 2 CPU cores, see
docs/experiments.md for its cost; ``paper``: the paper's task sizes, for an accelerator); any field can be
overridden. Run it with
``python experiments/run.py NAME [--preset P] [--set field=value ...]``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import write_bytes_atomic, write_text_atomic
from ..errors import ConfigError
from ..figures.canvas import new_figure, png_bytes
from ..models.config import MambaConfig
from ..models.lm import MambaLMHeadModel
from ..models.mixers import available_mixers
from .batch import check_int
from .induction_heads import InductionHeads
from .metrics import last_position_accuracy
from .selective_copying import SelectiveCopying
from .training import LR_SCHEDULES, TrainResult, TrainSettings, evaluate, train

MIXER_LABELS = {"mamba": "Mamba (S6)", "s4d": "S4D (time-invariant)", "attention": "Attention (RoPE)"}


def build_model(
    mixer: str, vocab_size: int, d_model: int, n_layer: int, d_state: int, seed: int
) -> MambaLMHeadModel:
    """A language model whose every layer uses ``mixer``; initial weights depend only on ``seed``."""
    config = MambaConfig(
        d_model=d_model, n_layer=n_layer, vocab_size=vocab_size, d_state=d_state, mixer=mixer
    )
    return MambaLMHeadModel(config, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------- settings
@dataclass
class SelectiveCopyingSettings:
    """One selective-copying experiment: the task, the models, the training and the evaluation."""

    seq_len: int = 128
    num_tokens: int = 4
    vocab_size: int = 16
    mixers: tuple[str, ...] = ("mamba", "s4d", "attention")
    d_model: int = 64
    n_layer: int = 2
    d_state: int = 16
    steps: int = 2000
    batch_size: int = 32
    lr: float = 2e-3
    lr_schedule: str = "cosine"  # or "constant", see TrainSettings
    warmup_steps: int = 100
    time_budget_s: float | None = 780.0  # per model
    eval_samples: int = 1024
    eval_batch_size: int = 128
    stop_at_accuracy: float | None = None  # stop a model's training once held-out accuracy reaches this
    seed: int = 0


@dataclass
class InductionHeadsSettings:
    """One induction-heads experiment: train at ``train_len``, evaluate at each of ``eval_lengths``."""

    train_len: int = 256
    vocab_size: int = 16
    mixers: tuple[str, ...] = ("mamba", "s4d", "attention")
    d_model: int = 64
    n_layer: int = 2
    d_state: int = 16
    steps: int = 3000
    batch_size: int = 8
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # or "constant", see TrainSettings
    warmup_steps: int = 100
    time_budget_s: float | None = 480.0  # per model
    eval_lengths: tuple[int, ...] = tuple(2**p for p in range(6, 21))
    eval_samples: int = 16
    chunk_len: int = 2048  # Mamba: evaluated chunk by chunk with its state carried (bounded memory)
    attention_max_len: int = 2**13  # other mixers need one full pass: evaluated only up to these lengths
    s4d_max_len: int = 2**16
    stop_at_accuracy: float | None = None  # stop a model's training once accuracy at train_len reaches this
    # Stop evaluating a model at longer lengths once it has been at chance (at most twice the chance rate
    # 1/(vocab_size - 1)) at this many consecutive lengths; those lengths show "·" in the table. 0: never.
    skip_after_chance: int = 2
    # Length curriculum before the main phase: at each of these (shorter) lengths, train until held-out
    # accuracy reaches curriculum_accuracy or curriculum_steps have passed. Empty: train at train_len only.
    curriculum_lengths: tuple[int, ...] = ()
    curriculum_steps: int = 600
    curriculum_accuracy: float = 0.99
    # The curriculum phases' batch size and peak lr (None: batch_size, lr); they always decay (cosine) over
    # curriculum_steps, while the main phase follows lr_schedule.
    curriculum_batch_size: int | None = None
    curriculum_lr: float | None = None
    seed: int = 0


PRESETS: dict[str, dict[str, object]] = {
    "selective_copying": {
        "smoke": SelectiveCopyingSettings(
            seq_len=32,
            num_tokens=2,
            vocab_size=6,
            d_model=64,
            d_state=4,
            steps=150,
            lr=3e-3,
            warmup_steps=0,
            time_budget_s=18.0,
            eval_samples=512,
        ),
        "cpu": SelectiveCopyingSettings(),
        "paper": SelectiveCopyingSettings(
            seq_len=4096,
            num_tokens=16,
            vocab_size=16,
            steps=400_000,
            batch_size=64,
            lr=1e-4,
            time_budget_s=None,
        ),
    },
    "induction_heads": {
        "smoke": InductionHeadsSettings(
            train_len=16,
            vocab_size=6,
            steps=300,
            batch_size=32,
            lr=3e-3,
            warmup_steps=0,
            time_budget_s=15.0,
            eval_lengths=tuple(2**p for p in range(4, 13)),
            eval_samples=32,
            chunk_len=1024,
            attention_max_len=2**10,
            s4d_max_len=2**12,
        ),
        "cpu": InductionHeadsSettings(
            curriculum_lengths=(32, 64, 128),
            curriculum_batch_size=32,
            curriculum_lr=2e-3,
            steps=3000,
            batch_size=8,
            lr=5e-3,
            lr_schedule="constant",
            warmup_steps=50,
            time_budget_s=600.0,
        ),
        "paper": InductionHeadsSettings(
            steps=204_800,
            batch_size=8,
            lr_schedule="constant",
            time_budget_s=None,
            eval_samples=128,
            attention_max_len=2**16,
        ),
    },
}


def settings_for(name: str, preset: str = "cpu", overrides: dict[str, object] | None = None):
    """The settings of experiment ``name`` in ``preset``, with ``overrides`` (field -> value) applied."""
    if name not in PRESETS:
        raise ConfigError(f"experiment: expected one of {sorted(PRESETS)}, got {name!r}")
    if preset not in PRESETS[name]:
        raise ConfigError(f"preset: expected one of {sorted(PRESETS[name])}, got {preset!r}")
    settings = PRESETS[name][preset]
    overrides = dict(overrides or {})
    names = {f.name for f in dataclasses.fields(settings)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(
            f"overrides: unknown field(s) {unknown} for {name}; expected some of {sorted(names)}"
        )
    for key in ("mixers", "eval_lengths", "curriculum_lengths"):
        if key in overrides and isinstance(overrides[key], (str, int)):
            overrides[key] = (overrides[key],)  # one name or length given alone
        if key in overrides and isinstance(overrides[key], list):
            overrides[key] = tuple(overrides[key])
    if "mixers" in overrides:
        bad = [m for m in overrides["mixers"] if m not in available_mixers()]
        if bad:
            raise ConfigError(f"mixers: expected names among {available_mixers()}, got {bad}")
    return dataclasses.replace(settings, **overrides)


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
        limit = {"mamba": None, "attention": s.attention_max_len}.get(mixer, s.s4d_max_len)
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


# ------------------------------------------------------------------------------------------------- reports
def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def selective_copying_table(record: dict) -> str:
    """The markdown results table of a selective-copying record."""
    s = record["settings"]
    lines = [
        f"Selective copying: L = {s['seq_len']}, {s['num_tokens']} tokens to copy,"
        f" vocabulary {s['vocab_size']}; {s['n_layer']} layers, d_model = {s['d_model']},"
        f" d_state = {s['d_state']}; batch {s['batch_size']},"
        f" lr {s['lr']}, seed {s['seed']}; accuracy on {s['eval_samples']} held-out sequences.",
        "",
        "| model | parameters | steps | train time (s) | accuracy (%) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in record["rows"]:
        lines.append(
            f"| {MIXER_LABELS.get(r['mixer'], r['mixer'])} | {r['parameters']:,} | {r['steps']} |"
            f" {r['train_seconds']} | {_pct(r['accuracy'])} |"
        )
    return "\n".join(lines) + "\n"


def induction_heads_table(record: dict) -> str:
    """The markdown results table (accuracy % by evaluation length) of an induction-heads record."""
    s = record["settings"]
    lengths = [int(L) for L in s["eval_lengths"]]
    header = "| model | steps | " + " | ".join(_length_label(L) for L in lengths) + " |"
    lines = [
        f"Induction heads: trained at L = {s['train_len']}, vocabulary {s['vocab_size']};"
        f" {s['n_layer']} layers,"
        f" d_model = {s['d_model']}, d_state = {s['d_state']}; batch {s['batch_size']}, lr {s['lr']}"
        f" ({s.get('lr_schedule', 'cosine')}), seed"
        f" {s['seed']}; accuracy (%) on {s['eval_samples']} sequences per length; — = not evaluated (one"
        " full pass would not fit); · = not evaluated, at chance at shorter lengths.",
        "",
        header,
        "|---|---:|" + "---:|" * len(lengths),
    ]
    if s.get("curriculum_lengths"):
        lines[0] += (
            f" Length curriculum first: L = {', '.join(map(str, s['curriculum_lengths']))}, each until"
            f" {100 * s['curriculum_accuracy']:g}% held-out accuracy or {s['curriculum_steps']} steps"
            f" (batch {s.get('curriculum_batch_size') or s['batch_size']},"
            f" lr {s.get('curriculum_lr') or s['lr']} decaying); steps are written curriculum + main phase."
        )
    for r in record["rows"]:
        accs = [r["accuracy_by_length"].get(str(L)) for L in lengths]
        at_chance = set(r.get("skipped_at_chance", []))
        phases = r.get("curriculum_steps") or []
        steps = " + ".join(map(str, [sum(phases), r["steps"]])) if phases else str(r["steps"])
        lines.append(
            f"| {MIXER_LABELS.get(r['mixer'], r['mixer'])} | {steps} | "
            + " | ".join("·" if L in at_chance else _pct(a) for L, a in zip(lengths, accs, strict=True))
            + " |"
        )
    return "\n".join(lines) + "\n"


def _length_label(L: int) -> str:
    p = int(math.log2(L))
    return f"2^{p}" if 2**p == L else str(L)


def _smoothed(values: list[float], window: int = 20) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def selective_copying_plot(record: dict) -> bytes:
    """PNG: accuracy per model (bars) and training loss curves."""
    fig = new_figure(9, 3.4)
    bars, curves = fig.subplots(1, 2)
    labels = [MIXER_LABELS.get(r["mixer"], r["mixer"]) for r in record["rows"]]
    values = [100 * r["accuracy"] for r in record["rows"]]
    bars.bar(range(len(values)), values, color=["C0", "C1", "C2", "C3"][: len(values)])
    bars.set_xticks(range(len(values)), labels, fontsize=8)
    bars.set_ylim(0, 112)  # room for the value labels above full bars
    bars.set_yticks(range(0, 101, 20))
    bars.set_ylabel("accuracy (%)")
    for i, v in enumerate(values):
        bars.text(i, v + 1, f"{v:.1f}", ha="center", fontsize=8)
    bars.set_title(f"Selective copying, L = {record['settings']['seq_len']}")
    for r, label in zip(record["rows"], labels, strict=True):
        curves.plot(_smoothed(r["losses"]), label=label)
    curves.set_xlabel("step")
    curves.set_ylabel("training loss (smoothed)")
    curves.set_yscale("log")
    curves.legend(fontsize=8)
    return png_bytes(fig)


def induction_heads_plot(record: dict) -> bytes:
    """PNG: accuracy against evaluation length (log x-axis), one line per model, training length marked."""
    fig = new_figure(6.5, 3.6)
    ax = fig.subplots()
    for r in record["rows"]:
        points = [(int(L), 100 * a) for L, a in r["accuracy_by_length"].items() if a is not None]
        ax.plot(*zip(*points, strict=True), marker="o", label=MIXER_LABELS.get(r["mixer"], r["mixer"]))
    ax.axvline(
        record["settings"]["train_len"], color="gray", linestyle="--", linewidth=1, label="train length"
    )
    ax.set_xscale("log", base=2)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("test sequence length")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Induction heads: extrapolation")
    ax.legend(fontsize=8, loc="center right")  # the top is where a model that extrapolates runs
    return png_bytes(fig)


RUNNERS = {
    "selective_copying": (run_selective_copying, selective_copying_table, selective_copying_plot),
    "induction_heads": (run_induction_heads, induction_heads_table, induction_heads_plot),
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


__all__ = [
    "PRESETS",
    "InductionHeadsSettings",
    "SelectiveCopyingSettings",
    "build_model",
    "run_experiment",
    "settings_for",
]
