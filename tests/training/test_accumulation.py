"""Gradient accumulation and bf16 autocast: the same global batch gives the same losses."""

import pytest
from train_helpers import TINY, losses

from mambakit.cli import main


def test_accumulation_matches_one_big_batch(corpus, tmp_path):
    runs = {}
    for accum in (1, 2):
        run = tmp_path / f"accum{accum}"
        assert main(["train", "--data", corpus, "--out", str(run), *TINY, "--steps", "3", "--eval-every", "3",
                     "--grad-accum", str(accum)]) == 0
        runs[accum] = losses(run)
    # Same windows (keyed by step) split into two micro-batches; only float32 summation order differs.
    for (s1, a), (s2, b) in zip(runs[1][0] + runs[1][1], runs[2][0] + runs[2][1], strict=True):
        assert s1 == s2 and a == pytest.approx(b, abs=1e-5)


def test_bf16_autocast_trains_close_to_float32(corpus, tmp_path):
    train32, _ = losses_of(corpus, tmp_path / "fp32", [])
    train16, _ = losses_of(corpus, tmp_path / "bf16", ["--bf16"])
    assert train16[0][1] != train32[0][1]  # autocast did change the arithmetic
    assert train16[0][1] == pytest.approx(train32[0][1], abs=0.05)  # bf16 has ~3 significant digits
    assert train16[-1][1] < train16[0][1]


def losses_of(corpus, run, extra):
    argv = ["train", "--data", corpus, "--out", str(run), *TINY, "--steps", "3", "--lr", "0.01", *extra]
    assert main(argv) == 0
    return losses(run)
