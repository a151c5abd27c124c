"""The command line: ``mambakit train | generate | info | train-tokenizer | tokenize``
(also ``python -m mambakit``).

Bad input (missing or unreadable data, a data file smaller than one context, a missing, truncated or foreign
checkpoint, a ``--resume`` whose flags contradict the run, nonsense flag values) ends with one line on stderr
and exit code 2, before anything in the run directory is touched. Ctrl-C during training saves a checkpoint
and exits with code 130.
"""

from __future__ import annotations

import argparse
import codecs
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError, MambakitError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


# ------------------------------------------------------------------------------------------------ train
_MODEL_FLAGS = ("d_model", "n_layer", "d_state", "d_conv", "expand")
_TRAIN_FLAGS = ("data", "tokenizer", "token_dtype", "val_fraction", "seq_len", "batch_size", "grad_accum",
                "steps", "lr", "min_lr_ratio", "warmup_steps", "weight_decay", "grad_clip", "bf16", "seed",
                "eval_every", "eval_windows", "ckpt_every", "keep_checkpoints", "time_budget", "device",
                "threads", "log_every", "progress")


def _add_train_parser(sub) -> None:
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
    d.add_argument("--val-fraction", type=_finite_float, help="tail fraction held out (files; default 0.05)")
    m = p.add_argument_group("model")
    m.add_argument("--d-model", type=_positive_int)
    m.add_argument("--n-layer", type=_positive_int)
    m.add_argument("--d-state", type=_positive_int)
    m.add_argument("--d-conv", type=_positive_int)
    m.add_argument("--expand", type=_positive_int)
    t = p.add_argument_group("training")
    t.add_argument("--seq-len", type=_positive_int, help="context length in tokens (default 256)")
    t.add_argument("--batch-size", type=_positive_int, help="global sequences per step (default 16)")
    t.add_argument("--grad-accum", type=_positive_int, help="micro-steps per optimiser step (default 1)")
    t.add_argument("--steps", type=_positive_int, help="optimiser steps (default 1000)")
    t.add_argument("--lr", type=_finite_float, help="peak learning rate (default 3e-3)")
    t.add_argument("--min-lr-ratio", type=_finite_float, help="final lr / peak lr (default 0.1)")
    t.add_argument("--warmup-steps", type=_non_negative_int, help="linear warmup steps (default 100)")
    t.add_argument("--weight-decay", type=_finite_float, help="AdamW weight decay on matrices (default 0.1)")
    t.add_argument("--grad-clip", type=_finite_float, help="max gradient norm, 0 = off (default 1.0)")
    t.add_argument("--bf16", action="store_const", const=True, help="bfloat16 autocast")
    t.add_argument("--seed", type=_non_negative_int, help="seed for init and data order (default 0)")
    t.add_argument("--eval-every", type=_positive_int, help="steps between evaluations (default 200)")
    t.add_argument("--eval-windows", type=_positive_int, help="val windows per evaluation (default 256)")
    t.add_argument("--ckpt-every", type=_positive_int, help="steps between checkpoints (default 200)")
    t.add_argument("--keep-checkpoints", type=_positive_int, help="checkpoints kept (default 2)")
    t.add_argument("--time-budget", type=_finite_float, metavar="SECONDS",
                   help="fit the step count to this many seconds of training, and stop there")
    t.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="(default auto)")
    t.add_argument("--threads", type=_positive_int, help="CPU threads for torch (default: torch's choice)")
    t.add_argument("--log-every", type=_positive_int, help="steps between progress lines (default 10)")
    t.add_argument("--progress", choices=["auto", "bar", "lines", "none"], help="(default auto)")
    p.set_defaults(func=_cmd_train)


def _presets() -> dict[str, dict[str, Any]]:
    from .training.config import PRESETS

    return PRESETS


def _resolve_train_configs(args) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model fields, train fields): defaults < preset < flags, or for --resume the saved run's values,
    which explicit flags (and a preset) must match."""
    from .training import MODEL_DEFAULTS, TrainConfig, read_run_json

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
        from .training import check_resume_compatible

        check_resume_compatible(saved, {k: v for k, v in given.items() if k in _MODEL_FLAGS},
                                {k: v for k, v in given.items() if k in _TRAIN_FLAGS}, explicit,
                                Path(args.resume))
    model.update({k: v for k, v in given.items() if k in _MODEL_FLAGS})
    train.update({k: v for k, v in given.items() if k in _TRAIN_FLAGS})
    return model, train


def _cmd_train(args) -> int:
    from .training import TrainConfig, Trainer, TrainingInterrupted

    model, train = _resolve_train_configs(args)
    config = TrainConfig.from_dict(train)
    run_dir = Path(args.resume or args.out)
    if args.out and run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"out: expected a directory path, got an existing file {str(run_dir)!r}")
    if args.overwrite and args.resume:
        raise ConfigError("overwrite: expected --overwrite with --out (a new run), got it with --resume")
    trainer = Trainer(model, config, run_dir, resume=bool(args.resume), overwrite=args.overwrite, log=_log)
    main = trainer.info.is_main
    try:
        result = trainer.run()
    except TrainingInterrupted as stop:
        if main:
            _log(f"interrupted at step {stop.step}: checkpoint saved to {stop.checkpoint}; "
                 f"continue with: mambakit train --resume {run_dir}")
        return 128 + stop.signum  # the shell convention: 130 for Ctrl-C, 143 for SIGTERM
    if main:
        per_byte = "" if result.val_nats_per_byte is None else f" = {result.val_nats_per_byte:.4f} nats/byte"
        _log(f"done: step {result.step}/{result.total_steps} in {result.elapsed_s:.0f}s; validation loss "
             f"{result.val_loss:.4f} nats/token{per_byte}; run dir {run_dir} "
             f"(checkpoint {result.checkpoint.relative_to(run_dir)}, metrics.jsonl, loss_curve.png)")
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- loading
def _checkpoint_directory(path: str) -> Path:
    """A run directory's latest checkpoint, or ``path`` itself (checkpoint, Hugging Face, state-spaces)."""
    from .training import latest_checkpoint

    directory = Path(path)
    if not directory.exists():
        raise CheckpointError(f"checkpoint: expected a run or checkpoint directory, got {path!r} (not found)")
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint: expected a directory, got a file {path!r}")
    found = latest_checkpoint(directory)
    if found is not None:
        return found
    if not (directory / "config.json").is_file():
        raise CheckpointError("checkpoint: expected a run directory (with 'latest') or a checkpoint "
                              f"directory (with config.json), got {path!r}")
    return directory


def _load_model(path: str, device: str):
    from .models import MambaLMHeadModel
    from .training.distributed import resolve_device

    directory = _checkpoint_directory(path)
    target = resolve_device(device)
    try:
        model = MambaLMHeadModel.from_pretrained(directory)
    except MambakitError:
        raise
    except Exception as exc:  # anything else from a foreign or damaged directory becomes one line
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"checkpoint: cannot load {str(directory)!r} ({first})") from None
    return model.to(target).eval(), directory


def _load_tokenizer(directory: Path, spec: str | None, vocab_size: int):
    from .data import ByteTokenizer, TokenizerError, load_tokenizer, tokenizer_from_spec

    if spec is not None:
        tokenizer = tokenizer_from_spec(spec)
    elif (directory / "tokenizer.json").is_file() or (directory / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(directory, default=ByteTokenizer() if vocab_size <= 256 else None)
    elif vocab_size <= 256:
        tokenizer = ByteTokenizer()
    else:
        raise TokenizerError(f"tokenizer: the checkpoint's vocabulary has {vocab_size} tokens and "
                             f"{str(directory)!r} holds no tokenizer.json; pass --tokenizer PATH")
    if tokenizer.vocab_size > vocab_size:
        raise TokenizerError(f"tokenizer: expected at most the model's {vocab_size} tokens, got a tokenizer "
                             f"with {tokenizer.vocab_size}")
    return tokenizer


# ------------------------------------------------------------------------------------------------ generate
def _add_generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="stream text from a trained run or a checkpoint directory")
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="run directory, checkpoint directory, or Hugging Face / state-spaces directory")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=_positive_int, default=300)
    p.add_argument("--temperature", type=_finite_float, default=0.8, help="> 0 (default 0.8)")
    p.add_argument("--top-k", type=_positive_int, default=None)
    p.add_argument("--top-p", type=_finite_float, default=None, help="nucleus mass in (0, 1]")
    p.add_argument("--repetition-penalty", type=_finite_float, default=1.0, help=">= 1 (default 1: off)")
    p.add_argument("--seed", type=_non_negative_int, default=None)
    p.add_argument("--tokenizer", metavar="SPEC", help="'byte' or a tokenizer.json (default: saved)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.set_defaults(func=_cmd_generate)


def _check_sampling_flags(args) -> None:
    if args.temperature <= 0:
        raise ConfigError(f"temperature: expected a number > 0, got {args.temperature}")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise ConfigError(f"top_p: expected a value in (0, 1], got {args.top_p}")
    if args.repetition_penalty < 1.0:
        raise ConfigError(f"repetition_penalty: expected a number >= 1, got {args.repetition_penalty}")
    if not args.prompt:
        raise ConfigError("prompt: expected at least one character, got an empty string")


class _TextStream:
    """Prints tokens as text the moment they arrive (UTF-8 bytes completed incrementally)."""

    def __init__(self, tokenizer, out=None) -> None:
        from .data import ByteTokenizer

        self.tokenizer, self.out = tokenizer, out if out is not None else sys.stdout
        self.is_bytes = isinstance(tokenizer, ByteTokenizer)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._ids: list[int] = []
        self._printed = ""
        self.count = 0
        self.first_token_time: float | None = None

    def __call__(self, token) -> None:
        if self.first_token_time is None:
            self.first_token_time = time.perf_counter()
        self.count += 1
        tid = int(token.reshape(-1)[0])
        if self.is_bytes:
            text = self._utf8.decode(bytes([tid]))
        else:  # BPE: decode everything so far, print what is new; hold back a character cut mid-way (U+FFFD)
            self._ids.append(tid)
            stable = self.tokenizer.decode(self._ids).rstrip("\ufffd")
            text = stable[len(self._printed):] if stable.startswith(self._printed) else ""
            if stable.startswith(self._printed):
                self._printed = stable
        self.out.write(text)
        self.out.flush()

    def finish(self) -> None:
        if self.is_bytes:
            self.out.write(self._utf8.decode(b"", final=True))
        else:
            full = self.tokenizer.decode(self._ids)
            self.out.write(full[len(self._printed):] if full.startswith(self._printed) else "")
        self.out.write("\n")
        self.out.flush()


def _cmd_generate(args) -> int:
    import torch

    _check_sampling_flags(args)
    model, directory = _load_model(args.checkpoint, args.device)
    tokenizer = _load_tokenizer(directory, args.tokenizer, model.config.vocab_size)
    ids = tokenizer.encode(args.prompt)
    if not ids:
        raise ConfigError("prompt: expected text that encodes to at least one token, got none")
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    generator = torch.Generator(device=device)
    generator.manual_seed(args.seed if args.seed is not None else int(torch.seed() % (2**63)))
    stream = _TextStream(tokenizer)
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    start = time.perf_counter()
    model.generate(input_ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, eos_token_id=tokenizer.eos_token_id, generator=generator,
                   repetition_penalty=args.repetition_penalty, streamer=stream)
    end = time.perf_counter()
    stream.finish()
    first = stream.first_token_time or end
    decode_rate = (stream.count - 1) / (end - first) if stream.count > 1 and end > first else float("nan")
    _log(f"[{stream.count} tokens in {end - start:.2f}s: prompt of {len(ids)} tokens in "
         f"{first - start:.3f}s, then {decode_rate:.1f} tokens/s]")
    return 0


# ---------------------------------------------------------------------------------------------------- info
def _add_info_parser(sub) -> None:
    p = sub.add_parser("info", help="print a checkpoint's config, parameter count and memory")
    p.add_argument("path", metavar="PATH", help="run, checkpoint, Hugging Face or state-spaces dir")
    p.set_defaults(func=_cmd_info)


def _bytes(n: float) -> str:
    """A byte count for people: 812 B, 97.9 KiB, 1.5 GiB."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"


def _cmd_info(args) -> int:
    from .training.metrics import read_metrics

    model, directory = _load_model(args.path, "cpu")
    config = model.config
    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    state = model.allocate_inference_cache(1)
    state_bytes = sum(t.numel() * t.element_size() for layer in state for t in layer.values())
    print(f"checkpoint: {directory}")
    print("config:")
    print("  " + json.dumps(config.to_dict(), indent=2).replace("\n", "\n  "))
    print(f"parameters: {n_params:,} ({n_params / 1e6:.2f}M)")
    print(f"weights in memory: {_bytes(param_bytes)} ({params[0].dtype})")
    print(f"recurrent state per sequence (generation cache): {_bytes(state_bytes)}, constant in length")
    print("training memory, AdamW (weights + grads + 2 moments), activations excluded: "
          f"{_bytes(4 * param_bytes)}")
    run_dir = Path(args.path)
    val = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "val"]
    if val:
        last = val[-1]
        per_byte = last.get("val_nats_per_byte")
        extra = f" ({per_byte:.4f} nats/byte)" if per_byte is not None else ""
        print(f"last validation loss: {last['val_loss']:.4f} nats/token{extra} at step {last['step']}")
    return 0


# ------------------------------------------------------------------------------------- tokenizer commands
def _add_tokenizer_parsers(sub) -> None:
    p = sub.add_parser("train-tokenizer", help="train a byte-level BPE tokenizer on a corpus")
    p.add_argument("--data", metavar="PATH", help="text file or directory of .txt (default: embedded corpus)")
    p.add_argument("--vocab-size", type=_positive_int, required=True)
    p.add_argument("--out", required=True, metavar="FILE", help="tokenizer.json to write")
    p.set_defaults(func=_cmd_train_tokenizer)
    p = sub.add_parser("tokenize", help="pre-tokenise text into a .bin file (memory-mapped by train --data)")
    p.add_argument("--data", metavar="PATH", help="text file or directory of .txt (default: embedded corpus)")
    p.add_argument("--tokenizer", metavar="SPEC", help="'byte' (default) or a tokenizer.json")
    p.add_argument("--out", required=True, metavar="FILE.bin")
    p.set_defaults(func=_cmd_tokenize)


def _cmd_train_tokenizer(args) -> int:
    from .atomic import write_text_atomic
    from .data import BPETokenizer, read_text_source

    text = read_text_source(args.data)
    if not text.strip():
        raise ConfigError(f"data: expected some text, got an empty corpus {args.data!r}")
    tokenizer = BPETokenizer.train(text.split("\n\n"), args.vocab_size)
    write_text_atomic(args.out, tokenizer._tok.to_str())
    _log(f"wrote {args.out}: byte-level BPE with {tokenizer.vocab_size} tokens")
    return 0


def _cmd_tokenize(args) -> int:
    from .data import encode_text, read_text_source, tokenizer_from_spec, write_token_bin

    if not args.out.endswith(".bin"):
        raise ConfigError(f"out: expected a file name ending in .bin, got {args.out!r}")
    tokenizer = tokenizer_from_spec(args.tokenizer)
    tokens = encode_text(read_text_source(args.data), tokenizer)
    write_token_bin(tokens, args.out, tokenizer.vocab_size)
    _log(f"wrote {args.out}: {len(tokens):,} tokens (+ {args.out}.json with the dtype)")
    return 0


# ---------------------------------------------------------------------------------------------------- plot
def _add_plot_parser(sub) -> None:
    p = sub.add_parser("plot", help="write the docs' figures (HiPPO, S4D kernels, modes, SSD) as PNGs")
    p.add_argument("--out", default="docs/figures", help="output folder (default: docs/figures)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a quick look, not the docs' figures")
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args) -> int:
    from .figures import write_figures

    for path in write_figures(args.out, quick=args.quick):
        print(path)
    return 0


# ---------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mambakit", description="Mamba language models: train, generate, inspect, plot.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train_parser(sub)
    _add_generate_parser(sub)
    _add_info_parser(sub)
    _add_tokenizer_parsers(sub)
    _add_plot_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mambakit`` script; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a bad flag (2, one line already printed)
        return int(exit_.code or 0)
    try:
        return args.func(args)
    except MambakitError as exc:
        print(f"mambakit {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"mambakit {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `mambakit generate ... | head`
        return 0
    except OSError as exc:
        where = f" {exc.filename!r}" if getattr(exc, "filename", None) else ""
        print(f"mambakit {args.command}: error: cannot access{where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
