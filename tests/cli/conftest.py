"""Shared set-up for the command-line tests: a small corpus, tiny-model flags, and one trained run."""

import random

import pytest
from cli_helpers import TINY

from mambakit.cli import main


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    rng = random.Random(1)
    words = ["hark", "what", "light", "through", "yonder", "window", "breaks", "it", "is", "the", "east"]
    text = "\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(400)) + "\n"
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="session")
def trained_run(corpus, tmp_path_factory):
    """A finished 3-step run (with two checkpoints) to generate from, inspect and try to break."""
    run = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--data", corpus, "--out", str(run), *TINY, "--steps", "3", "--ckpt-every", "2",
                 "--eval-every", "2"]) == 0
    return run
