"""Training: the trainer, optimiser groups and schedule, checkpoints and resume, distributed set-up."""

from .checkpointing import latest_checkpoint, read_run_json
from .config import MODEL_DEFAULTS, PRESETS, TrainConfig
from .metrics import plot_loss_curve, read_metrics
from .optim import LR_SCHEDULES, build_adamw, lr_at, no_decay_parameter_names
from .trainer import Trainer, TrainingInterrupted, TrainResult, check_resume_compatible

__all__ = [
    "LR_SCHEDULES", "MODEL_DEFAULTS", "PRESETS", "TrainConfig", "TrainResult", "Trainer",
    "TrainingInterrupted",
    "build_adamw",
    "check_resume_compatible", "latest_checkpoint", "lr_at", "no_decay_parameter_names", "plot_loss_curve",
    "read_metrics", "read_run_json",
]
