"""Packed training (``--pack``): documents are the blank-line separated blocks of the text; each window
carries seq_idx, the targets across a document end are masked, and a packed run trains."""

import numpy as np
import pytest
import torch
from train_helpers import TINY, losses

from mambakit.cli import main
from mambakit.data import IGNORE_INDEX, ByteTokenizer, PackedWindows, RandomWindows, encode_documents
from mambakit.training.checkpointing import read_run_json


def test_documents_are_the_blank_line_blocks():
    text = "First one.\n\nSecond,\nlonger one.\n\n\n\nThird"
    tokens, starts = encode_documents(text, ByteTokenizer())
    assert bytes(tokens).decode() == text
    pieces = [bytes(tokens[a:b]).decode() for a, b in zip(starts, [*starts[1:], len(tokens)], strict=True)]
    assert pieces == ["First one.\n\n", "Second,\nlonger one.\n\n", "\n\n", "Third"]


def test_packed_windows_mark_documents_and_mask_their_ends():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 12, size=40)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    tokens = rng.integers(0, 50, size=int(lengths.sum())).astype(np.int64)
    packed = PackedWindows(tokens, starts, seq_len=16, micro_batch=8, accumulation=1, world_size=1, seed=3)
    plain = RandomWindows(tokens, seq_len=16, micro_batch=8, accumulation=1, world_size=1, seed=3)
    for step in range(3):
        inputs, targets, seq_idx = packed.batch(step, 0, 0)
        plain_inputs, plain_targets = plain.batch(step, 0, 0)
        assert torch.equal(inputs, plain_inputs)   # the same windows, only kept apart
        offsets = packed.global_starts(step)[0, 0]
        for row, offset in enumerate(offsets):
            doc = np.searchsorted(starts, offset + np.arange(17), side="right")
            assert seq_idx[row].tolist() == (doc[:-1] - doc[0]).tolist()
            crosses = doc[1:] != doc[:-1]
            assert (targets[row][torch.from_numpy(crosses)] == IGNORE_INDEX).all()
            assert torch.equal(targets[row][torch.from_numpy(~crosses)],
                               plain_targets[row][torch.from_numpy(~crosses)])


@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    """Speech-like documents of mixed length separated by blank lines."""
    rng = np.random.default_rng(1)
    words = ["the", "king", "queen", "sword", "love", "night", "thou", "art", "my", "lord", "fair"]
    docs = [" ".join(rng.choice(words, size=rng.integers(2, 40))) + "." for _ in range(400)]
    path = tmp_path_factory.mktemp("docs") / "docs.txt"
    path.write_text("\n\n".join(docs) + "\n")
    return str(path)


def test_packed_run_trains(documents, tmp_path):
    run = tmp_path / "packed"
    argv = ["train", "--data", documents, "--out", str(run), *TINY, "--steps", "8", "--lr", "0.01",
            "--eval-every", "8", "--pack"]
    assert main(argv) == 0
    train, val = losses(run)
    assert len(train) == 8 and train[-1][1] < train[0][1] and val
    assert read_run_json(run)["train"]["pack"] is True


def test_pack_refuses_data_without_documents(tmp_path, capsys):
    tokens = tmp_path / "tokens.bin"
    np.arange(2000, dtype=np.uint8).tofile(tokens)
    argv = ["train", "--data", str(tokens), "--token-dtype", "uint8", "--out", str(tmp_path / "run"), *TINY,
            "--steps", "2", "--pack"]
    assert main(argv) == 2
    assert "pack: packed training needs text data" in capsys.readouterr().err
