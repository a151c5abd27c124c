"""Helpers for the command-line tests."""

# Flags of a model and batch small enough that a step takes milliseconds.
TINY = ["--d-model", "16", "--n-layer", "1", "--d-state", "4", "--seq-len", "16", "--batch-size", "4",
        "--warmup-steps", "1", "--eval-windows", "4", "--progress", "none", "--device", "cpu",
        "--threads", "1"]
