"""Two CPU processes under torchrun (gloo): identical parameters on both ranks, and the same losses as one
process with the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_worker import MODEL, config
from train_helpers import losses

from mambakit.training import Trainer, latest_checkpoint

# Float32 sums in a different order (gradients all-reduced over ranks vs one batch): equal to ~1e-7
# relative per step, compounded over 4 steps.
LOSS_TOL = 1e-5
WEIGHT_TOL = 1e-5


@pytest.mark.slow
def test_two_process_gloo_matches_single_process(corpus, tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    ddp_run = tmp_path / "ddp"
    weights = str(tmp_path / "rank{rank}.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run([*launch, str(worker), corpus, str(ddp_run), weights], env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = torch.load(weights.format(rank=0), weights_only=True)
    rank1 = torch.load(weights.format(rank=1), weights_only=True)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert latest_checkpoint(ddp_run).name == "step-00000004"

    single_run = tmp_path / "single"
    trainer = Trainer(MODEL, config(corpus), single_run, log=lambda message: None)
    trainer.run()
    ddp_train, ddp_val = losses(ddp_run)
    single_train, single_val = losses(single_run)
    assert [s for s, _ in ddp_train] == [s for s, _ in single_train] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(ddp_train + ddp_val, single_train + single_val, strict=True):
        assert a == pytest.approx(b, abs=LOSS_TOL)
    for name, value in trainer.model.state_dict().items():
        torch.testing.assert_close(rank0[name], value, atol=WEIGHT_TOL, rtol=WEIGHT_TOL)
