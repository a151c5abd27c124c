"""Data sources (text file, directory, .bin) and the reproducible batch windows."""

import numpy as np
import pytest

from mambakit.data import (
    ByteTokenizer,
    DataError,
    RandomWindows,
    eval_batches,
    eval_starts,
    load_token_splits,
    write_token_bin,
)

BYTES = ByteTokenizer()


def test_text_file_and_directory(tmp_path):
    text = "".join(f"line {i} of the corpus\n" for i in range(200))
    (tmp_path / "a.txt").write_text(text)
    splits = load_token_splits(str(tmp_path / "a.txt"), BYTES, val_fraction=0.1)
    joined = np.concatenate([splits.train, splits.val]).tobytes().decode()
    assert joined == text
    assert len(splits.val) == round(0.1 * len(text)) and splits.bytes_per_token == 1.0
    d = tmp_path / "dir"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("second\n")
    (d / "sub" / "a.txt").write_text("first\n")  # sorted by path: b.txt < sub/a.txt
    (d / "ignored.md").write_text("not read")
    splits = load_token_splits(str(d), BYTES, val_fraction=0.2)
    assert np.concatenate([splits.train, splits.val]).tobytes().decode() == "second\n\nfirst\n"


def test_bin_files_dtype_from_sidecar_or_vocabulary(tmp_path):
    tokens = np.arange(1000) % 250
    path = write_token_bin(tokens, tmp_path / "t.bin", vocab_size=256)
    assert path.stat().st_size == 1000  # uint8 for a 256-token vocabulary
    splits = load_token_splits(str(path), BYTES, val_fraction=0.1)
    assert isinstance(splits.train, np.memmap)
    np.testing.assert_array_equal(np.concatenate([splits.train, splits.val]), tokens)
    raw = tmp_path / "raw.bin"
    np.asarray(tokens, dtype=np.uint16).tofile(raw)
    splits = load_token_splits(str(raw), BYTES, token_dtype="uint16")
    np.testing.assert_array_equal(np.concatenate([splits.train, splits.val]), tokens)


def test_bad_sources(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_token_splits(str(tmp_path / "nope.txt"), BYTES)
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="empty"):
        load_token_splits(str(tmp_path / "empty.txt"), BYTES)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="UTF-8"):
        load_token_splits(str(tmp_path / "latin1.txt"), BYTES)
    (tmp_path / "nodir").mkdir()
    with pytest.raises(DataError, match=".txt files"):
        load_token_splits(str(tmp_path / "nodir"), BYTES)
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(DataError, match="divisible by 2"):
        load_token_splits(str(tmp_path / "odd.bin"), BYTES, token_dtype="uint16")
    np.asarray([1, 2, 300], dtype=np.uint16).tofile(tmp_path / "big.bin")
    with pytest.raises(DataError, match="id 300"):
        load_token_splits(str(tmp_path / "big.bin"), BYTES, token_dtype="uint16")


def test_random_windows_are_keyed_by_step_and_split_across_ranks():
    tokens = np.arange(5000) % 256
    single = RandomWindows(tokens, seq_len=8, micro_batch=4, accumulation=1, world_size=1, seed=3)
    x, y = single.batch(step=7, micro=0, rank=0)
    assert x.shape == (4, 8) and y.shape == (4, 8)
    assert (x[:, 1:] == y[:, :-1]).all()
    x_again, _ = RandomWindows(tokens, 8, 4, 1, 1, seed=3).batch(7, 0, 0)
    assert (x == x_again).all()
    assert not (x == single.batch(8, 0, 0)[0]).all()
    split = RandomWindows(tokens, seq_len=8, micro_batch=1, accumulation=2, world_size=2, seed=3)
    rows = [split.batch(7, micro, rank)[0] for micro in range(2) for rank in range(2)]
    assert (np.concatenate(rows) == x.numpy()).all()  # the same global batch, sliced


def test_eval_windows_cover_the_split_and_shard_by_rank():
    tokens = np.arange(1000) % 256
    starts = eval_starts(len(tokens), 16, max_windows=10)
    assert len(starts) == 10 and starts[0] == 0 and starts[-1] + 16 + 1 <= len(tokens)
    whole = np.concatenate([x.numpy() for x, _ in eval_batches(tokens, 16, 3, 10)])
    parts = [np.concatenate([x.numpy() for x, _ in eval_batches(tokens, 16, 3, 10, rank=r, world_size=2)])
             for r in range(2)]
    assert len(whole) == 10 and sorted(map(tuple, whole)) == sorted(map(tuple, np.concatenate(parts)))
    with pytest.raises(DataError, match="fewer than one context"):
        list(eval_batches(tokens[:10], 16, 3, 10))
