"""Helpers for the command-line tests."""

from mambakit.cli import main

# Flags of a model and batch small enough that a step takes milliseconds.
TINY = ["--d-model", "16", "--n-layer", "1", "--d-state", "4", "--seq-len", "16", "--batch-size", "4",
        "--warmup-steps", "1", "--eval-windows", "4", "--progress", "none", "--device", "cpu",
        "--threads", "1"]


def fails(capsys, argv, *fragments):
    """Run the command line; it must return 2 with one stderr line that names each fragment."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    print(lines[0])  # shown with -s: the messages a user sees


def run_generate(capsys, *argv):
    """``mambakit generate ARGV``, which must succeed; returns (stdout, stderr)."""
    assert main(["generate", *argv]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err
