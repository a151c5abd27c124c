"""``mambakit train-tokenizer`` and ``mambakit tokenize``: a BPE tokenizer trained on a corpus, and a corpus
pre-tokenised into a ``.bin`` file."""

from __future__ import annotations

from ..errors import ConfigError
from .flags import log, positive_int


def add_parsers(sub) -> None:
    """Add the ``train-tokenizer`` and ``tokenize`` subcommands to ``sub``."""
    p = sub.add_parser("train-tokenizer", help="train a byte-level BPE tokenizer on a corpus")
    p.add_argument("--data", metavar="PATH", help="text file or directory of .txt (default: embedded corpus)")
    p.add_argument("--vocab-size", type=positive_int, required=True)
    p.add_argument("--out", required=True, metavar="FILE", help="tokenizer.json to write")
    p.set_defaults(func=_cmd_train_tokenizer)
    p = sub.add_parser("tokenize", help="pre-tokenise text into a .bin file (memory-mapped by train --data)")
    p.add_argument("--data", metavar="PATH", help="text file or directory of .txt (default: embedded corpus)")
    p.add_argument("--tokenizer", metavar="SPEC", help="'byte' (default) or a tokenizer.json")
    p.add_argument("--out", required=True, metavar="FILE.bin")
    p.set_defaults(func=_cmd_tokenize)


def _cmd_train_tokenizer(args) -> int:
    from ..atomic import write_text_atomic
    from ..data import BPETokenizer, read_text_source

    text = read_text_source(args.data)
    if not text.strip():
        raise ConfigError(f"data: expected some text, got an empty corpus {args.data!r}")
    tokenizer = BPETokenizer.train(text.split("\n\n"), args.vocab_size)
    write_text_atomic(args.out, tokenizer._tok.to_str())
    log(f"wrote {args.out}: byte-level BPE with {tokenizer.vocab_size} tokens")
    return 0


def _cmd_tokenize(args) -> int:
    from ..data import encode_text, read_text_source, tokenizer_from_spec, write_token_bin

    if not args.out.endswith(".bin"):
        raise ConfigError(f"out: expected a file name ending in .bin, got {args.out!r}")
    tokenizer = tokenizer_from_spec(args.tokenizer)
    tokens = encode_text(read_text_source(args.data), tokenizer)
    write_token_bin(tokens, args.out, tokenizer.vocab_size)
    log(f"wrote {args.out}: {len(tokens):,} tokens (+ {args.out}.json with the dtype)")
    return 0
