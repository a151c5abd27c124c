"""Shared fixture for the training tests: a small text corpus."""

import random

import pytest


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """About 30 kB of pseudo-English text, the same every run."""
    rng = random.Random(0)
    words = ["the", "king", "queen", "sword", "love", "night", "day", "thou", "art", "my", "lord", "fair"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))).capitalize() + "."
             for _ in range(900)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)
