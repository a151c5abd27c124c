"""The training loop: AdamW, warmup + cosine, clipping, accumulation, bf16 autocast, evaluation,
checkpoints that survive a kill, exact resume, Ctrl-C, DDP.

Exact resume: the only state a step depends on is the model, the optimiser state, the step number (the
learning rate and the data windows are pure functions of it) and the RNG states; all of them are in the
checkpoint. Resuming from step ``k`` therefore recomputes steps ``k+1, ...`` exactly as an uninterrupted
run (on CPU, bit for bit), and ``metrics.jsonl`` is cut back to step ``k`` so it reads as one run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..atomic import write_text_atomic
from ..data import (
    IGNORE_INDEX,
    ByteTokenizer,
    PackedWindows,
    RandomWindows,
    TokenSplits,
    check_fits_context,
    eval_batches,
    load_token_splits,
    tokenizer_from_spec,
)
from ..errors import CheckpointError, ConfigError, MambakitError
from ..models import MambaConfig, MambaLMHeadModel
from . import checkpointing as ckpt
from . import distributed as dist_utils
from .config import MUTABLE_ON_RESUME, TrainConfig
from .metrics import MetricsWriter, plot_loss_curve, truncate_metrics
from .optim import build_adamw, lr_at
from .progress import Progress

#: Test-only fault injection, e.g. ``after-step:6`` (SIGKILL itself after step 6) or ``mid-checkpoint:8``
#: (SIGKILL while checkpoint 8's files are written but not yet published).
FAULT_ENV = "MAMBAKIT_FAULT_INJECT"

#: With a time budget, the step count is re-fitted after this many steps of a (re)started loop; timing
#: starts after the first _UNTIMED_STEPS, which include one-off compilation.
_CALIBRATION_STEPS = (10, 40, 150, 300, 600, 1200)
_UNTIMED_STEPS = 2


class TrainingInterrupted(MambakitError):
    """Ctrl-C or SIGTERM: a checkpoint was saved at ``step`` and training stopped."""

    def __init__(self, step: int, checkpoint: Path | None, signum: int = signal.SIGINT) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint saved to {checkpoint}")
        self.step, self.checkpoint, self.signum = step, checkpoint, int(signum)


@dataclass
class TrainResult:
    step: int
    total_steps: int
    train_loss: float | None
    val_loss: float | None
    val_nats_per_byte: float | None
    run_dir: Path
    checkpoint: Path | None
    elapsed_s: float


def _fault(kind: str, step: int) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if spec and spec == f"{kind}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def check_resume_compatible(saved: dict[str, Any], model: dict[str, Any], train: dict[str, Any],
                            explicit: set[str], run_dir: Path) -> None:
    """Every field set explicitly on the command line must equal the saved run's value."""
    for section, given in (("model", model), ("train", train)):
        for key, value in given.items():
            if key not in explicit or key in MUTABLE_ON_RESUME:
                continue
            old = saved[section].get(key)
            if old != value:
                raise ConfigError(f"resume: {key} = {value!r} does not match the run's {key} = {old!r} "
                                  f"({run_dir / ckpt.RUN_JSON}); drop the flag or start a new run with --out")


class Trainer:
    """One training run in ``run_dir``: a new one, a continued one (``resume=True``), or a new one replacing
    an earlier run there (``overwrite=True``; the old run is deleted only once the new one has started)."""

    def __init__(self, model_config: dict[str, Any], train_config: TrainConfig, run_dir: str | os.PathLike,
                 resume: bool = False, overwrite: bool = False, log=print) -> None:
        self.cfg = train_config
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.overwrite = overwrite and not resume
        self.log = log
        self._threads_before = torch.get_num_threads()
        self.info = dist_utils.setup(train_config.device)
        try:
            self._prepare(model_config)
        except BaseException:
            self._finish()
            raise

    # --------------------------------------------------------------------------------------------- set-up
    def _prepare(self, model_config: dict[str, Any]) -> None:
        cfg, info = self.cfg, self.info
        self.micro_batch = cfg.micro_batch(info.world_size)
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        if self.resume:
            self.checkpoint = ckpt.latest_checkpoint(self.run_dir)
            if self.checkpoint is None:
                raise CheckpointError(f"resume: {str(self.run_dir)!r} holds no complete checkpoint yet "
                                      f"({ckpt.LATEST} not found); start it again with --out")
            self.tokenizer = _load_run_tokenizer(self.checkpoint)
        else:
            self.checkpoint = None
            if (self.run_dir / ckpt.LATEST).exists() and not self.overwrite:
                raise CheckpointError(f"out: {str(self.run_dir)!r} already holds a run with a checkpoint; "
                                      f"continue it with --resume {self.run_dir} or choose another --out")
            self.tokenizer = tokenizer_from_spec(cfg.tokenizer)
        self.splits: TokenSplits = load_token_splits(cfg.data, self.tokenizer, cfg.val_fraction,
                                                     cfg.token_dtype)
        check_fits_context("train", self.splits.train, cfg.seq_len)
        check_fits_context("validation", self.splits.val, cfg.seq_len)
        if self.checkpoint is not None:
            self._check_same_data(ckpt.read_run_json(self.checkpoint))
        self.model_config = MambaConfig(**{**model_config, "vocab_size": self.tokenizer.vocab_size})
        torch.manual_seed(cfg.seed)
        init = torch.Generator().manual_seed(cfg.seed)
        if self.checkpoint is not None:
            model = MambaLMHeadModel.from_pretrained(self.checkpoint)
            saved, wanted = model.config.to_dict(), self.model_config.to_dict()
            if saved != wanted:
                diff = [k for k, v in wanted.items() if saved.get(k) != v]
                raise ConfigError(f"resume: model config field(s) {diff} do not match the checkpoint "
                                  f"{str(self.checkpoint)!r}")
        else:
            model = MambaLMHeadModel(self.model_config, generator=init)
        self.model = model.to(info.device)
        if cfg.pack:
            self.model.backbone.check_packing()
        self.optimizer = build_adamw(self.model, cfg.lr, cfg.weight_decay)
        if cfg.pack:
            if self.splits.train_starts is None:
                raise ConfigError(f"pack: packed training needs text data, whose blank lines separate the "
                                  f"documents; {self.splits.description} has no document boundaries")
            self.windows = PackedWindows(self.splits.train, self.splits.train_starts, cfg.seq_len,
                                         self.micro_batch, cfg.grad_accum, info.world_size, cfg.seed)
        else:
            self.windows = RandomWindows(self.splits.train, cfg.seq_len, self.micro_batch, cfg.grad_accum,
                                         info.world_size, cfg.seed)
        self.step = 0
        self.elapsed_before = 0.0
        self.total_steps = cfg.steps
        self.calibrations_done = 0
        if self.checkpoint is not None:
            state = ckpt.load_trainer_state(self.checkpoint)
            try:
                self.optimizer.load_state_dict(state["optimizer"])
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"checkpoint: optimiser state in {str(self.checkpoint)!r} does not fit "
                                      f"the model ({exc})") from None
            self.step = int(state["step"])
            self.elapsed_before = float(state["elapsed_s"])
            self.total_steps = int(state["total_steps"])
            self.calibrations_done = int(state.get("calibrations_done", 0))
            ckpt.set_rng_state(state["rng"])
        self.ddp = None
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [info.device] if info.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def _check_same_data(self, saved: dict[str, Any]) -> None:
        """Resuming on different data would silently change the loss curve: compare the token counts."""
        for key, now in (("train_tokens", len(self.splits.train)), ("val_tokens", len(self.splits.val))):
            if key in saved and saved[key] != now:
                raise ConfigError(f"resume: the data now has {key} = {now:,}, the run was trained with "
                                  f"{saved[key]:,} ({saved.get('data')}); resume with the same --data")

    def _run_record(self) -> dict[str, Any]:
        return {
            "model": self.model_config.to_dict(),
            "train": self.cfg.to_dict(),
            "tokenizer": self.tokenizer.kind,
            "data": self.splits.description,
            "train_tokens": len(self.splits.train),
            "val_tokens": len(self.splits.val),
            "bytes_per_token": self.splits.bytes_per_token,
            "world_size": self.info.world_size,
        }

    # ------------------------------------------------------------------------------------------ one step
    def _autocast(self):
        if not self.cfg.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.info.device.type, dtype=torch.bfloat16)

    def _loss(self, module, inputs: torch.Tensor, targets: torch.Tensor,
              seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy over the targets that are not IGNORE_INDEX (a packed window's document
        ends); with ``seq_idx``, the model keeps the window's documents apart."""
        with self._autocast():
            logits = module(inputs) if seq_idx is None else module(inputs, seq_idx=seq_idx)
        logits = getattr(logits, "logits", logits)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX)

    def train_step(self, step: int) -> tuple[float, float, float]:
        """One optimiser step; returns (mean loss over the global batch, grad norm, lr)."""
        cfg, info = self.cfg, self.info
        lr = lr_at(step, cfg.lr, cfg.warmup_steps, self.total_steps, cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        module = self.ddp if self.ddp is not None else self.model
        self.model.train()
        total = torch.zeros((), device=info.device)
        for micro in range(cfg.grad_accum):
            inputs, targets, *packing = self.windows.batch(step, micro, info.rank)
            inputs, targets = inputs.to(info.device), targets.to(info.device)
            seq_idx = packing[0].to(info.device) if packing else None
            sync = self.ddp is None or micro == cfg.grad_accum - 1
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                loss = self._loss(module, inputs, targets, seq_idx) / cfg.grad_accum
                loss.backward()
            total += loss.detach()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=False)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_mean = dist_utils.all_mean(total, info)
        return float(loss_mean.item()), float(grad_norm.item()), lr

    @torch.no_grad()
    def evaluate(self, max_windows: int | None = None) -> tuple[float, float | None]:
        """Validation loss (nats per token, nats per byte or None) over up to ``max_windows`` (default
        ``eval_windows``) fixed windows spread evenly over the validation split."""
        cfg, info = self.cfg, self.info
        max_windows = max_windows or cfg.eval_windows
        self.model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=info.device)
        batch = max(self.micro_batch, 1) * 2
        for inputs, targets in eval_batches(self.splits.val, cfg.seq_len, batch, max_windows, info.rank,
                                            info.world_size):
            inputs, targets = inputs.to(info.device), targets.to(info.device)
            with self._autocast():
                logits = self.model(inputs)
            logits = getattr(logits, "logits", logits)
            nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                  reduction="sum")
            sums += torch.stack([nll.double(), torch.tensor(float(targets.numel()), dtype=torch.float64,
                                                            device=info.device)])
        sums = dist_utils.all_sum(sums, info)
        self.model.train()
        per_token = float(sums[0] / sums[1])
        bpt = self.splits.bytes_per_token
        return per_token, (per_token / bpt if bpt else None)

    # ------------------------------------------------------------------------------------- checkpoints
    def save(self, elapsed: float) -> Path:
        """Write a complete checkpoint of the current step (rank 0 only) and return its directory."""
        step = self.step

        def write_files(directory: Path) -> None:
            self.model.save_pretrained(directory)
            self.tokenizer.save(directory)
            (directory / ckpt.RUN_JSON).write_text(json.dumps(self._run_record(), indent=2) + "\n")
            ckpt.save_trainer_state(directory, {
                "step": step,
                "total_steps": self.total_steps,
                "elapsed_s": elapsed,
                "calibrations_done": self.calibrations_done,
                "optimizer": self.optimizer.state_dict(),
                "rng": ckpt.rng_state(),
                # The data windows of step s are drawn from (seed, s): the next step is the data position.
                "data_position": {"sampler": "random-windows", "seed": self.cfg.seed, "next_step": step + 1},
            })

        return ckpt.save_checkpoint(self.run_dir, step, write_files, keep=self.cfg.keep_checkpoints,
                                    before_publish=lambda: _fault("mid-checkpoint", step))

    # ------------------------------------------------------------------------------------------ the loop
    def _calibrate(self, step: int, elapsed: float, timing_start_step: int,
                   timing_start: float | None) -> None:
        """Fix the step count so that training ends at the time budget (rank 0 measures, all ranks agree)."""
        budget = self.cfg.time_budget
        if budget is None or timing_start is None or self.calibrations_done >= len(_CALIBRATION_STEPS):
            return
        if step - timing_start_step < _CALIBRATION_STEPS[self.calibrations_done]:
            return
        per_step = (time.perf_counter() - timing_start) / max(step - timing_start_step, 1)
        remaining = max(budget - elapsed, 0.0)
        planned = min(self.cfg.steps, step + int(remaining / per_step))
        planned = max(planned, step + 1)
        self.total_steps = dist_utils.broadcast_int(planned, self.info)
        self.calibrations_done += 1

    def run(self) -> TrainResult:
        """Train to the end (or the time budget, or Ctrl-C) and return the final numbers."""
        try:
            return self._run()
        finally:
            self._finish()

    def _finish(self) -> None:
        """Leave the process as found: no process group, torch's previous thread count."""
        dist_utils.teardown(self.info)
        torch.set_num_threads(self._threads_before)

    def _run(self) -> TrainResult:
        cfg, info = self.cfg, self.info
        main = info.is_main
        metrics_path = self.run_dir / ckpt.METRICS_JSONL
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.resume:
                truncate_metrics(metrics_path, self.step)
            else:
                if self.overwrite:
                    ckpt.remove_run_files(self.run_dir)
                metrics_path.unlink(missing_ok=True)
                record = json.dumps(self._run_record(), indent=2) + "\n"
                write_text_atomic(self.run_dir / ckpt.RUN_JSON, record)
        writer = MetricsWriter(metrics_path) if main else None
        n_params = sum(p.numel() for p in self.model.parameters())
        if main:
            action = f"resuming at step {self.step}" if self.resume else "training"
            self.log(f"{action}: {n_params / 1e6:.2f}M parameters, {self.splits.description}, "
                     f"{len(self.splits.train):,} train / {len(self.splits.val):,} val tokens, "
                     f"{info.world_size} process(es) on {info.device}, run dir {self.run_dir}")
        # Ctrl-C (SIGINT) and SIGTERM (schedulers; torchrun passes Ctrl-C on to its workers as SIGTERM)
        # finish the step, save and stop; a second signal stops at once.
        interrupted: dict[str, int | None] = {"signal": None}
        previous_handlers = {}
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            def on_signal(signum, frame):
                interrupted["signal"] = signum
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)

            for signum in (signal.SIGINT, signal.SIGTERM):
                previous_handlers[signum] = signal.signal(signum, on_signal)
        progress = Progress(cfg.progress, self.total_steps, self.step, enabled=main, log=self.log,
                            every=cfg.log_every)
        tokens_per_step = cfg.batch_size * cfg.seq_len
        loop_start_time, loop_start_step = time.perf_counter(), self.step
        window_time, window_step = loop_start_time, self.step
        timing_start, timing_start_step = None, self.step
        last_loss = None
        last_val: tuple[float, float | None] | None = None
        last_ckpt: Path | None = self.checkpoint
        stopped_by = None
        try:
            while self.step < self.total_steps:
                step = self.step + 1
                loss, grad_norm, lr = self.train_step(step)
                self.step = step
                last_loss = loss
                now = time.perf_counter()
                elapsed = self.elapsed_before + (now - loop_start_time)
                tok_s = tokens_per_step * (step - window_step) / max(now - window_time, 1e-9)
                if writer:
                    writer.write({"kind": "train", "step": step, "loss": loss, "lr": lr,
                                  "grad_norm": grad_norm, "tokens": step * tokens_per_step,
                                  "tokens_per_s": round(tok_s, 1),
                                  "elapsed_s": round(elapsed, 3)})
                if step - window_step >= cfg.log_every:
                    window_time, window_step = now, step
                if step == loop_start_step + _UNTIMED_STEPS:
                    timing_start, timing_start_step = now, step
                self._calibrate(step, elapsed, timing_start_step, timing_start)
                progress.update(step, self.total_steps, loss, tok_s)
                last_step = step >= self.total_steps
                if step % cfg.eval_every == 0 and not last_step:
                    last_val = self.evaluate()
                    if writer:
                        writer.write({"kind": "val", "step": step, "val_loss": last_val[0],
                                      "val_nats_per_byte": last_val[1]})
                    progress.note(f"step {step}: val loss {last_val[0]:.4f} nats/token")
                if step % cfg.ckpt_every == 0 and not last_step and main:
                    last_ckpt = self.save(elapsed)
                _fault("after-step", step)
                if dist_utils.any_rank(interrupted["signal"] is not None, info):
                    stopped_by = "interrupt"
                    break
                over_budget = cfg.time_budget is not None and elapsed >= cfg.time_budget
                if dist_utils.any_rank(over_budget, info) and not last_step:
                    stopped_by = "time budget"
                    self.total_steps = step
                    break
            progress.close()
            elapsed = self.elapsed_before + (time.perf_counter() - loop_start_time)
            if stopped_by == "interrupt":
                if main:
                    last_ckpt = self.save(elapsed)
                    plot_loss_curve(metrics_path, self.run_dir / ckpt.LOSS_CURVE_PNG)
                raise TrainingInterrupted(self.step, last_ckpt, interrupted["signal"] or signal.SIGINT)
            # The final evaluation reads 4x more windows than the periodic ones: the number the run reports.
            last_val = self.evaluate(4 * cfg.eval_windows)
            if writer:
                writer.write({"kind": "val", "step": self.step, "val_loss": last_val[0],
                              "val_nats_per_byte": last_val[1]})
            if main:
                last_ckpt = self.save(elapsed)
                plot_loss_curve(metrics_path, self.run_dir / ckpt.LOSS_CURVE_PNG,
                                title=f"mambakit: {self.splits.description}")
        finally:
            progress.close()
            if writer:
                writer.close()
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
        return TrainResult(self.step, self.total_steps, last_loss, last_val[0], last_val[1], self.run_dir,
                           last_ckpt, elapsed)


def _load_run_tokenizer(checkpoint: Path):
    from ..data import load_tokenizer

    return load_tokenizer(checkpoint, default=ByteTokenizer())
