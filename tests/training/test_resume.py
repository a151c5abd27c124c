"""Resuming reproduces the uninterrupted loss curve exactly, after SIGKILL between checkpoints or while
a checkpoint is being written; Ctrl-C (or SIGTERM) saves and exits cleanly; a time budget stops training
early."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_helpers import TINY, losses

from mambakit.cli import main
from mambakit.training import latest_checkpoint, read_metrics

STEPS = ["--steps", "8", "--ckpt-every", "3", "--eval-every", "4"]


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "full"
    assert main(["train", "--data", corpus, "--out", str(run), *TINY, *STEPS]) == 0
    train, val = losses(run)
    assert [s for s, _ in train] == list(range(1, 9)) and [s for s, _ in val] == [4, 8]
    return train, val


def _train_subprocess(args, env_extra=None, **kwargs):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "mambakit", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("fault, expected_latest", [("after-step:5", 3), ("mid-checkpoint:6", 3)])
def test_resume_after_sigkill_matches_uninterrupted_run(corpus, tmp_path, uninterrupted, fault,
                                                        expected_latest):
    run = tmp_path / "killed"
    proc = _train_subprocess(["--data", corpus, "--out", str(run), *TINY, *STEPS],
                             {"MAMBAKIT_FAULT_INJECT": fault})
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    assert latest_checkpoint(run).name == f"step-{expected_latest:08d}"
    logged = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
    assert max(logged) > expected_latest  # steps after the checkpoint were lost and must be recomputed
    assert main(["train", "--resume", str(run)]) == 0
    assert losses(run) == uninterrupted  # bit-for-bit the same losses, train and validation
    assert not list((run / "checkpoints").glob(".*"))  # the half-written checkpoint was cleaned up


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_exits_cleanly(corpus, tmp_path, signum, code):
    run = tmp_path / "interrupted"
    proc = _train_subprocess(["--data", corpus, "--out", str(run), *TINY, "--steps", "100000",
                              "--ckpt-every", "100000", "--eval-every", "100000"])
    deadline = time.monotonic() + 120
    while len(read_metrics(run / "metrics.jsonl")) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "interrupted at step" in err
    step = int(latest_checkpoint(run).name.split("-")[1])
    assert step == max(r["step"] for r in read_metrics(run / "metrics.jsonl"))
    assert (run / "loss_curve.png").stat().st_size > 0


@pytest.mark.slow
def test_time_budget_stops_early_with_a_final_eval_and_checkpoint(corpus, tmp_path):
    run = tmp_path / "budget"
    start = time.monotonic()
    assert main(["train", "--data", corpus, "--out", str(run), *TINY, "--steps", "100000",
                 "--time-budget", "2", "--eval-every", "100000", "--ckpt-every", "100000"]) == 0
    assert time.monotonic() - start < 60
    train, val = losses(run)
    last = train[-1][0]
    assert 1 <= last < 100000 and val[-1][0] == last
    assert latest_checkpoint(run) == Path(run) / "checkpoints" / f"step-{last:08d}"
