"""``mambakit train``: flags, presets and resume checks resolved into the trainer's configs, then the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .flags import finite_float, log, non_negative_int, positive_int

_MODEL_FLAGS = ("d_model", "n_layer", "d_state", "d_conv", "expand")
_TRAIN_FLAGS = ("data", "tokenizer", "token_dtype", "val_fraction", "seq_len", "batch_size", "grad_accum",
                "steps", "lr", "min_lr_ratio", "warmup_steps", "weight_decay", "grad_clip", "pack", "bf16",
                "seed", "eval_every", "eval_windows", "ckpt_every", "keep_checkpoints", "time_budget",
                "device", "threads", "log_every", "progress")


def add_parser(sub) -> None:
    """Add the ``train`` subcommand to ``sub`` (argparse subparsers)."""
    p = sub.add_parser("train", help="train a Mamba language model (default: byte-level Shakespeare)",
                       description="Train a Mamba language model. Flags left out take the preset's value, "
                                   "then the default; with --resume they take the run's saved value.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", metavar="RUN_DIR", help="new run directory to create")
    where.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="with --out: replace a run already in RUN_DIR (deleted once the new run has started)")
    p.add_argument("--preset", choices=sorted(_presets()), help="named settings (demo: ~4 min, 2 cores)")
    d = p.add_argument_group("data")
    d.add_argument("--data", metavar="PATH", help="text file, directory of .txt, or .bin tokens "
                                                  "(default: the embedded Shakespeare corpus)")
    d.add_argument("--tokenizer", metavar="SPEC", help="'byte' (default) or a tokenizer.json (BPE)")
    d.add_argument("--token-dtype", choices=["uint8", "uint16", "uint32"], help="dtype of a bare .bin")
    d.add_argument("--val-fraction", type=finite_float, help="tail fraction held out (files; default 0.05)")
    m = p.add_argument_group("model")
    m.add_argument("--d-model", type=positive_int)
    m.add_argument("--n-layer", type=positive_int)
    m.add_argument("--d-state", type=positive_int)
    m.add_argument("--d-conv", type=positive_int)
    m.add_argument("--expand", type=positive_int)
    t = p.add_argument_group("training")
    t.add_argument("--seq-len", type=positive_int, help="context length in tokens (default 256)")
    t.add_argument("--batch-size", type=positive_int, help="global sequences per step (default 16)")
    t.add_argument("--grad-accum", type=positive_int, help="micro-steps per optimiser step (default 1)")
    t.add_argument("--steps", type=positive_int, help="optimiser steps (default 1000)")
    t.add_argument("--lr", type=finite_float, help="peak learning rate (default 3e-3)")
    t.add_argument("--min-lr-ratio", type=finite_float, help="final lr / peak lr (default 0.1)")
    t.add_argument("--warmup-steps", type=non_negative_int, help="linear warmup steps (default 100)")
    t.add_argument("--weight-decay", type=finite_float, help="AdamW weight decay on matrices (default 0.1)")
    t.add_argument("--grad-clip", type=finite_float, help="max gradient norm, 0 = off (default 1.0)")
    t.add_argument("--pack", action="store_const", const=True,
                   help="keep documents (blank-line separated blocks) apart in each window: the state "
                        "restarts and no loss crosses a boundary (Mamba and Mamba-2 models)")
    t.add_argument("--bf16", action="store_const", const=True, help="bfloat16 autocast")
    t.add_argument("--seed", type=non_negative_int, help="seed for init and data order (default 0)")
    t.add_argument("--eval-every", type=positive_int, help="steps between evaluations (default 200)")
    t.add_argument("--eval-windows", type=positive_int, help="val windows per evaluation (default 256)")
    t.add_argument("--ckpt-every", type=positive_int, help="steps between checkpoints (default 200)")
    t.add_argument("--keep-checkpoints", type=positive_int, help="checkpoints kept (default 2)")
    t.add_argument("--time-budget", type=finite_float, metavar="SECONDS",
                   help="fit the step count to this many seconds of training, and stop there")
    t.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="(default auto)")
    t.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")
    t.add_argument("--log-every", type=positive_int, help="steps between progress lines (default 10)")
    t.add_argument("--progress", choices=["auto", "bar", "lines", "none"], help="(default auto)")
    p.set_defaults(func=_cmd_train)


def _presets() -> dict[str, dict[str, Any]]:
    from ..training.config import PRESETS

    return PRESETS


def _resolve_train_configs(args) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model fields, train fields): defaults < preset < flags, or for --resume the saved run's values,
    which explicit flags (and a preset) must match."""
    from ..training import MODEL_DEFAULTS, TrainConfig, read_run_json

    explicit = {name for name in _MODEL_FLAGS + _TRAIN_FLAGS if getattr(args, name) is not None}
    given = {name: getattr(args, name) for name in explicit}
    if args.resume:
        saved = read_run_json(args.resume)
        model = {k: saved["model"][k] for k in _MODEL_FLAGS if k in saved["model"]}
        train = dict(saved["train"])
    else:
        model = dict(MODEL_DEFAULTS)
        train = TrainConfig().to_dict()
    if args.preset:
        preset = _presets()[args.preset]
        if args.resume:
            explicit |= set(preset)
            given = {**preset, **given}
        else:
            model.update({k: v for k, v in preset.items() if k in _MODEL_FLAGS})
            train.update({k: v for k, v in preset.items() if k not in _MODEL_FLAGS})
    if args.resume:
        from ..training import check_resume_compatible

        check_resume_compatible(saved, {k: v for k, v in given.items() if k in _MODEL_FLAGS},
                                {k: v for k, v in given.items() if k in _TRAIN_FLAGS}, explicit,
                                Path(args.resume))
    model.update({k: v for k, v in given.items() if k in _MODEL_FLAGS})
    train.update({k: v for k, v in given.items() if k in _TRAIN_FLAGS})
    return model, train


def _cmd_train(args) -> int:
    from ..training import TrainConfig, Trainer, TrainingInterrupted
    from ..training.memory import keep_freed_memory

    model, train = _resolve_train_configs(args)
    config = TrainConfig.from_dict(train)
    run_dir = Path(args.resume or args.out)
    if args.out and run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"out: expected a directory path, got an existing file {str(run_dir)!r}")
    if args.overwrite and args.resume:
        raise ConfigError("overwrite: expected --overwrite with --out (a new run), got it with --resume")
    trainer = Trainer(model, config, run_dir, resume=bool(args.resume), overwrite=args.overwrite, log=log)
    main = trainer.info.is_main
    if trainer.info.device.type == "cpu":   # this process is the run's: freed tensors stay for the next step
        keep_freed_memory()
    try:
        result = trainer.run()
    except TrainingInterrupted as stop:
        if main:
            log(f"interrupted at step {stop.step}: checkpoint saved to {stop.checkpoint}; "
                 f"continue with: mambakit train --resume {run_dir}")
        return 128 + stop.signum  # the shell convention: 130 for Ctrl-C, 143 for SIGTERM
    if main:
        per_byte = "" if result.val_nats_per_byte is None else f" = {result.val_nats_per_byte:.4f} nats/byte"
        log(f"done: step {result.step}/{result.total_steps} in {result.elapsed_s:.0f}s; validation loss "
             f"{result.val_loss:.4f} nats/token{per_byte}; run dir {run_dir} "
             f"(checkpoint {result.checkpoint.relative_to(run_dir)}, metrics.jsonl, loss_curve.png)")
    return 0
