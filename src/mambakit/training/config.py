"""TrainConfig: everything that defines a training run besides the model, and the named presets.

A run is reproducible from its ``run.json`` (model config + this config). On ``--resume`` every field
except :data:`MUTABLE_ON_RESUME` must match the saved run, because each one changes the loss curve.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

#: Fields that may change when resuming: where it runs and how often it reports, never what it computes.
MUTABLE_ON_RESUME = frozenset({"device", "threads", "log_every", "progress"})


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run.

    ``batch_size`` is the global batch in sequences per optimiser step (over all processes and
    accumulation steps); each process takes ``batch_size / (world_size * grad_accum)`` sequences per
    micro-step. ``time_budget`` (seconds) makes the trainer time its first steps, fix the step count that
    fits (at most ``steps``) and stop at the budget at the latest.
    """

    data: str | None = None
    tokenizer: str | None = None
    token_dtype: str | None = None
    val_fraction: float = 0.05
    seq_len: int = 256
    batch_size: int = 16
    grad_accum: int = 1
    steps: int = 1000
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    pack: bool = False
    bf16: bool = False
    seed: int = 0
    eval_every: int = 200
    eval_windows: int = 256
    ckpt_every: int = 200
    keep_checkpoints: int = 2
    time_budget: float | None = None
    device: str = "auto"
    threads: int | None = None
    log_every: int = 10
    progress: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first field out of range."""
        positive = ("seq_len", "batch_size", "grad_accum", "steps", "eval_every", "eval_windows",
                    "ckpt_every", "keep_checkpoints", "log_every")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}: expected a positive integer, got {value!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps: expected a non-negative integer, got {self.warmup_steps!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed: expected a non-negative integer, got {self.seed!r}")
        for name, low_open in (("lr", True), ("weight_decay", False), ("grad_clip", False)):
            value = getattr(self, name)
            bad = not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
            if bad or (low_open and value == 0):
                want = "a positive finite number" if low_open else "a non-negative finite number (0: off)"
                raise ConfigError(f"{name}: expected {want}, got {value!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio: expected a value in [0, 1], got {self.min_lr_ratio!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction: expected a value in (0, 1), got {self.val_fraction!r}")
        if self.time_budget is not None and (not math.isfinite(self.time_budget) or self.time_budget <= 0):
            raise ConfigError(f"time_budget: expected a positive number of seconds, got {self.time_budget!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads: expected a positive integer, got {self.threads!r}")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise ConfigError(f"device: expected one of auto, cpu, cuda, mps, got {self.device!r}")
        if self.progress not in ("auto", "bar", "lines", "none"):
            raise ConfigError(f"progress: expected one of auto, bar, lines, none, got {self.progress!r}")
        if self.token_dtype not in (None, "uint8", "uint16", "uint32"):
            raise ConfigError(f"token_dtype: expected uint8, uint16 or uint32, got {self.token_dtype!r}")

    def micro_batch(self, world_size: int) -> int:
        """Sequences per process per micro-step; the global batch must split evenly."""
        parts = world_size * self.grad_accum
        if self.batch_size % parts:
            raise ConfigError(f"batch_size: expected a multiple of world_size * grad_accum = {world_size} * "
                              f"{self.grad_accum} = {parts}, got {self.batch_size}")
        return self.batch_size // parts

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"train config: unknown key(s) {unknown}")
        return cls(**d)


#: Model hyper-parameters the command line exposes, with their defaults.
MODEL_DEFAULTS: dict[str, Any] = {"d_model": 128, "n_layer": 4, "d_state": 16, "d_conv": 4, "expand": 2}

#: Named presets: model and training values a ``--preset`` fills in (explicit flags still win).
PRESETS: dict[str, dict[str, Any]] = {
    # The README's demo: byte-level Shakespeare on 2 CPU cores, training stops after ~4 minutes.
    "demo": {
        "d_model": 128, "n_layer": 3, "d_state": 16, "expand": 2,
        "seq_len": 128, "batch_size": 16, "steps": 3000, "lr": 4e-3, "warmup_steps": 30, "weight_decay": 0.1,
        "eval_every": 100, "eval_windows": 64, "ckpt_every": 100, "time_budget": 225.0, "log_every": 25,
    },
    # A few seconds: for trying the command line.
    "tiny": {
        "d_model": 32, "n_layer": 2, "d_state": 8, "expand": 2,
        "seq_len": 64, "batch_size": 8, "steps": 50, "lr": 3e-3, "warmup_steps": 5,
        "eval_every": 25, "eval_windows": 16, "ckpt_every": 25, "log_every": 5,
    },
}
