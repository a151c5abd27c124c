"""The synthetic experiments' settings: one dataclass per experiment, its presets (``smoke``: under a minute
on a CPU; ``cpu``: sized for 2 CPU cores, see docs/experiments.md for its cost; ``paper``: the paper's task
sizes, for an accelerator) and field overrides; and the models they compare."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from mambakit.errors import ConfigError
from mambakit.models.config import MambaConfig
from mambakit.models.lm import MambaLMHeadModel
from mambakit.models.mixers import available_mixers

MIXER_LABELS = {
    "mamba": "Mamba (S6)",
    "mamba2": "Mamba-2 (SSD)",
    "mamba3": "Mamba-3 SISO",
    "mamba3-mimo": "Mamba-3 MIMO (R = 2)",
    "hybrid": "Hybrid (Mamba-2 + 1 attention)",
    "s4d": "S4D (time-invariant)",
    "attention": "Attention (RoPE)",
}

#: Model names of the experiments that are not mixer names: a variant of a mixer or a hybrid stack.
MODEL_NAMES = ("mamba3-mimo", "hybrid")
#: The small models' head size of Mamba-2 and Mamba-3 (d_inner = 128: 8 heads), and Mamba-3 MIMO's rank.
HEADDIM, MIMO_RANK = 16, 2


def model_config(
    name: str, vocab_size: int, d_model: int, n_layer: int, d_state: int, **fields: object
) -> MambaConfig:
    """The config of model ``name``: a registered mixer in every layer; "mamba3-mimo" (Mamba-3 with MIMO
    rank MIMO_RANK); or "hybrid" (Mamba-2 layers with the last one attention). ``fields``: more MambaConfig
    fields (e.g. dt_min, dt_max)."""
    base = dict(d_model=d_model, n_layer=n_layer, vocab_size=vocab_size, d_state=d_state, **fields)
    if name == "mamba2":
        return MambaConfig(**base, mixer="mamba2", mixer_cfg={"headdim": HEADDIM})
    if name in ("mamba3", "mamba3-mimo"):
        mimo = {"is_mimo": True, "mimo_rank": MIMO_RANK, "chunk_size": 32} if name == "mamba3-mimo" else {}
        return MambaConfig(**base, mixer="mamba3", mixer_cfg={"headdim": HEADDIM, **mimo})
    if name == "hybrid":
        return MambaConfig(**base, mixer="mamba2", mixer_cfg={"headdim": HEADDIM},
                           layer_types=["mamba2"] * (n_layer - 1) + ["attention"])
    return MambaConfig(**base, mixer=name)


def model_names() -> list[str]:
    """Every name ``build_model`` accepts."""
    return sorted({*available_mixers(), *MODEL_NAMES})


def build_model(
    mixer: str, vocab_size: int, d_model: int, n_layer: int, d_state: int, seed: int, **fields: object
) -> MambaLMHeadModel:
    """A language model of kind ``mixer`` (see :func:`model_config`); initial weights depend only on
    ``seed``."""
    config = model_config(mixer, vocab_size, d_model, n_layer, d_state, **fields)
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


@dataclass
class MQARSettings:
    """One MQAR experiment: every model trained on a mix of key-value pair counts (an equal share of each
    batch per count, one sequence length), then evaluated at each count on held-out sequences."""

    seq_len: int = 64
    vocab_size: int = 32  # keys 1 .. 15, values 16 .. 31
    num_pairs: tuple[int, ...] = (2, 4, 8, 12)
    mixers: tuple[str, ...] = ("attention", "mamba", "mamba2", "mamba3", "mamba3-mimo", "hybrid")
    d_model: int = 64
    n_layer: int = 2
    d_state: int = 8  # the SSMs' state: N = 8 per channel, fewer than the largest pair counts
    steps: int = 3000
    batch_size: int = 32  # split evenly over num_pairs
    lr: float = 3e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 50
    time_budget_s: float | None = 120.0  # per model
    eval_samples: int = 256  # per pair count
    stop_at_accuracy: float | None = None
    seed: int = 0


@dataclass
class StateTrackingSettings:
    """One state-tracking experiment (running sums in Z_modulus, :mod:`mambakit.tasks.state_tracking`):
    train at ``train_len`` with every position asked, evaluate the last position at each of
    ``eval_lengths``."""

    train_len: int = 32
    modulus: int = 2
    mixers: tuple[str, ...] = ("mamba", "mamba2", "mamba3", "mamba3-mimo", "attention")
    d_model: int = 64
    n_layer: int = 2
    d_state: int = 16
    # The SSMs' Δ initialisation range (MambaConfig.dt_min / dt_max), the same for every SSM: a rotation by
    # π per step needs Δ·tanh(angle) = 1, far above the default range 1e-3 .. 0.1.
    dt_min: float = 0.1
    dt_max: float = 1.0
    steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 20
    time_budget_s: float | None = 120.0  # per model
    eval_lengths: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)
    eval_samples: int = 256
    stop_at_accuracy: float | None = None
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
    "mqar": {
        "smoke": MQARSettings(
            seq_len=32, vocab_size=32, num_pairs=(2, 4, 8), d_model=32, steps=60, batch_size=12,
            warmup_steps=0, time_budget_s=10.0, eval_samples=64,
        ),
        "cpu": MQARSettings(),
        "paper": MQARSettings(
            seq_len=512, vocab_size=8192, num_pairs=(4, 8, 16, 32, 64), d_model=128, steps=100_000,
            batch_size=64 * 5, lr=1e-3, time_budget_s=None, eval_samples=1000,
        ),
    },
    "state_tracking": {
        "smoke": StateTrackingSettings(
            train_len=16, d_model=32, steps=60, batch_size=32, warmup_steps=0, time_budget_s=10.0,
            eval_lengths=(16, 32, 64), eval_samples=64,
        ),
        "cpu": StateTrackingSettings(),
        "paper": StateTrackingSettings(
            train_len=64, steps=100_000, batch_size=256, lr=1e-3, time_budget_s=None,
            eval_lengths=(64, 128, 256, 512, 1024, 4096), eval_samples=1024,
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
    for key in ("mixers", "eval_lengths", "curriculum_lengths", "num_pairs"):
        if key in overrides and isinstance(overrides[key], (str, int)):
            overrides[key] = (overrides[key],)  # one name or length given alone
        if key in overrides and isinstance(overrides[key], list):
            overrides[key] = tuple(overrides[key])
    if "mixers" in overrides:
        bad = [m for m in overrides["mixers"] if m not in model_names()]
        if bad:
            raise ConfigError(f"mixers: expected names among {model_names()}, got {bad}")
    return dataclasses.replace(settings, **overrides)
