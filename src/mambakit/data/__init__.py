"""Corpora and tokenizers: the embedded Shakespeare corpus, text / .bin files, byte-level and BPE tokens."""

from .batches import RandomWindows, check_fits_context, eval_batches, eval_starts
from .corpus import VALIDATION_PLAYS, markdown_to_text, shakespeare_plays, shakespeare_split
from .sources import (
    EMBEDDED,
    DataError,
    TokenSplits,
    encode_text,
    load_token_splits,
    read_text_source,
    write_token_bin,
)
from .tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    TokenizerError,
    load_tokenizer,
    tokenizer_from_spec,
)

__all__ = [
    "BPETokenizer", "ByteTokenizer", "DataError", "EMBEDDED", "RandomWindows", "TokenSplits", "Tokenizer",
    "TokenizerError", "VALIDATION_PLAYS", "check_fits_context", "encode_text", "eval_batches", "eval_starts",
    "load_token_splits", "load_tokenizer", "read_text_source", "markdown_to_text", "shakespeare_plays",
    "shakespeare_split",
    "tokenizer_from_spec", "write_token_bin",
]
