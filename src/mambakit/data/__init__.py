"""Corpora and tokenizers: the embedded Shakespeare corpus, text / .bin files, byte-level and BPE tokens."""

from .batches import IGNORE_INDEX, PackedWindows, RandomWindows, check_fits_context, eval_batches, eval_starts
from .corpus import VALIDATION_PLAYS, markdown_to_text, shakespeare_plays, shakespeare_split
from .sources import (
    EMBEDDED,
    DataError,
    TokenSplits,
    encode_documents,
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
    "BPETokenizer", "ByteTokenizer", "check_fits_context", "DataError", "EMBEDDED", "encode_documents",
    "encode_text", "eval_batches", "eval_starts", "IGNORE_INDEX", "load_token_splits", "load_tokenizer",
    "markdown_to_text", "PackedWindows", "RandomWindows", "read_text_source", "shakespeare_plays",
    "shakespeare_split", "Tokenizer", "tokenizer_from_spec", "TokenizerError", "TokenSplits",
    "VALIDATION_PLAYS", "write_token_bin",
]
