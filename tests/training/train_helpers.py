"""Helpers for the training tests: the flags of a tiny model, and reading a run's losses."""

from mambakit.training import read_metrics

# A model and batch small enough that a step takes milliseconds on one core.
TINY = ["--d-model", "16", "--n-layer", "1", "--d-state", "4", "--seq-len", "16", "--batch-size", "4",
        "--warmup-steps", "2", "--eval-windows", "4", "--log-every", "1", "--progress", "none",
        "--device", "cpu", "--threads", "1"]


def losses(run_dir):
    """The (step, loss) and (step, val_loss) records of a run, in order."""
    records = read_metrics(f"{run_dir}/metrics.jsonl")
    train = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    val = [(r["step"], r["val_loss"]) for r in records if r["kind"] == "val"]
    return train, val
