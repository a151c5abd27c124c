"""Tokenizers: byte-level (vocabulary 256, no dependency) and byte-level BPE from the ``tokenizers`` library.

Both share one small interface (``encode``, ``decode``, ``vocab_size``, ``save``) and are saved next to
a checkpoint, so ``mambakit generate`` needs nothing but the run directory:

- byte level: ``tokenizer_config.json`` with ``{"type": "byte"}``;
- BPE: the library's own ``tokenizer.json`` (also what Hugging Face checkpoints ship).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from ..atomic import write_text_atomic
from ..errors import ConfigError, TokenizerError

TOKENIZER_JSON = "tokenizer.json"
BYTE_CONFIG_JSON = "tokenizer_config.json"



class ByteTokenizer:
    """UTF-8 bytes as tokens: id = byte value, vocabulary 256, lossless on any text."""

    kind = "byte"
    vocab_size = 256
    eos_token_id: int | None = None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (its UTF-8 bytes)."""
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; invalid UTF-8 (a sequence cut inside a character) becomes U+FFFD."""
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``tokenizer_config.json`` into ``directory``."""
        config = json.dumps({"type": "byte", "vocab_size": 256}) + "\n"
        write_text_atomic(Path(directory) / BYTE_CONFIG_JSON, config)


class BPETokenizer:
    """A byte-level BPE from the Hugging Face ``tokenizers`` library, stored as ``tokenizer.json``."""

    kind = "bpe"

    def __init__(self, tokenizer) -> None:
        self._tok = tokenizer
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        eos = None
        for name in ("<|endoftext|>", "</s>", "<eos>"):
            tid = tokenizer.token_to_id(name)
            if tid is not None:
                eos = int(tid)
                break
        self.eos_token_id = eos

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> BPETokenizer:
        """Load a ``tokenizer.json``."""
        Tokenizer = _tokenizers_module().Tokenizer
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"tokenizer: expected a tokenizer.json file, got {str(path)!r} (not found)")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as exc:  # the library raises its own Exception subclass with a long message
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise TokenizerError(f"tokenizer: expected a valid tokenizer.json, got {str(path)!r} ({first})") \
                from None

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Train a byte-level BPE of ``vocab_size`` tokens (256 bytes and ``<|endoftext|>`` included)."""
        if vocab_size < 258:
            raise ConfigError(f"vocab_size: expected at least 258 for a byte-level BPE, got {vocab_size}")
        lib = _tokenizers_module()
        tok = lib.Tokenizer(lib.models.BPE())
        tok.pre_tokenizer = lib.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = lib.decoders.ByteLevel()
        trainer = lib.trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
            initial_alphabet=lib.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` into ``directory``."""
        write_text_atomic(Path(directory) / TOKENIZER_JSON, self._tok.to_str())


Tokenizer = ByteTokenizer | BPETokenizer


def _tokenizers_module():
    try:
        import tokenizers
    except ImportError:
        raise TokenizerError("tokenizer: BPE needs the 'tokenizers' package; install mambakit[train]") \
            from None
    return tokenizers


def load_tokenizer(directory: str | os.PathLike, default: Tokenizer | None = None) -> Tokenizer:
    """The tokenizer saved in ``directory`` (tokenizer.json or tokenizer_config.json).

    Without either file, returns ``default``, or raises :class:`TokenizerError` when it is ``None``.
    """
    directory = Path(directory)
    if (directory / TOKENIZER_JSON).is_file():
        return BPETokenizer.from_file(directory / TOKENIZER_JSON)
    config_path = directory / BYTE_CONFIG_JSON
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TokenizerError(f"tokenizer: expected JSON in {str(config_path)!r}, "
                                 f"got an unreadable file ({exc})") from None
        if isinstance(config, dict) and config.get("type") == "byte":
            return ByteTokenizer()
        if default is not None:  # e.g. a Hugging Face tokenizer_config.json without tokenizer.json
            return default
        raise TokenizerError(f"tokenizer: expected {{\"type\": \"byte\"}} in {str(config_path)!r}, "
                             f"got {str(config)[:80]}")
    if default is not None:
        return default
    raise TokenizerError("tokenizer: expected tokenizer.json or tokenizer_config.json in "
                         f"{str(directory)!r}, found neither")


def tokenizer_from_spec(spec: str | None) -> Tokenizer:
    """``None`` or ``"byte"`` gives the byte tokenizer; anything else is a path to a tokenizer.json
    (or a directory holding one)."""
    if spec is None or spec == "byte":
        return ByteTokenizer()
    path = Path(spec)
    if path.is_dir():
        return load_tokenizer(path)
    return BPETokenizer.from_file(path)
