"""Byte-level and BPE tokenizers: lossless round trips, saving with a checkpoint, bad files."""

import pytest

from mambakit.data import BPETokenizer, ByteTokenizer, TokenizerError, load_tokenizer, tokenizer_from_spec
from mambakit.errors import ConfigError

TEXT = "To be, or not to be: that is the question. Naïve café — ünïcödé ✓\n" * 3


def test_byte_tokenizer_round_trip_and_save(tmp_path):
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    assert len(ids) == len(TEXT.encode("utf-8")) and max(ids) < 256
    assert tok.decode(ids) == TEXT
    assert tok.decode(ids[:-1] + [0xC3]).endswith("\ufffd")  # a cut multi-byte character does not raise
    tok.save(tmp_path)
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)
    assert isinstance(tokenizer_from_spec(None), ByteTokenizer)


def test_bpe_train_round_trip_save_load(tmp_path):
    corpus = ["the quick brown fox jumps over the lazy dog " * 20, "to be or not to be " * 30, TEXT]
    tok = BPETokenizer.train(corpus, vocab_size=300)
    assert 258 <= tok.vocab_size <= 300
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert len(ids) < len(TEXT.encode("utf-8"))  # merges happened
    assert tok.eos_token_id is not None
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, BPETokenizer) and again.encode(TEXT) == ids
    assert tokenizer_from_spec(str(tmp_path / "tokenizer.json")).encode(TEXT) == ids


def test_bad_tokenizer_files(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{ not json")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        BPETokenizer.from_file(bad)
    with pytest.raises(TokenizerError, match="not found"):
        tokenizer_from_spec(str(tmp_path / "missing.json"))
    with pytest.raises(TokenizerError, match="found neither"):
        load_tokenizer(tmp_path / "empty_dir_that_does_not_exist")
    with pytest.raises(ConfigError, match="vocab_size"):
        BPETokenizer.train(["abc"], vocab_size=100)
