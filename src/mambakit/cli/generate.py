"""``mambakit generate``: stream text from a run or checkpoint directory.

The sampling flags are judged by the library's :class:`~mambakit.models.sampling.SamplingOptions`, so the
command accepts exactly what ``generate()`` accepts (temperature 0 = greedy, any repetition penalty > 0).
"""

from __future__ import annotations

import codecs
import sys
import time

from ..errors import ConfigError
from ..models import SamplingOptions, generate
from .flags import finite_float, log, non_negative_int, positive_int
from .loading import load_model, load_tokenizer


def add_parser(sub) -> None:
    """Add the ``generate`` subcommand to ``sub``."""
    p = sub.add_parser("generate", help="stream text from a trained run or a checkpoint directory")
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="run directory, checkpoint directory, or Hugging Face / state-spaces directory")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=positive_int, default=300)
    p.add_argument("--temperature", type=finite_float, default=0.8, help=">= 0, 0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=positive_int, default=None)
    p.add_argument("--top-p", type=finite_float, default=None, help="nucleus mass in (0, 1]")
    p.add_argument("--repetition-penalty", type=finite_float, default=1.0,
                   help="> 0; 1 = off, > 1 discourages repeats (default 1)")
    p.add_argument("--seed", type=non_negative_int, default=None)
    p.add_argument("--tokenizer", metavar="SPEC", help="'byte' or a tokenizer.json (default: saved)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--dtype", choices=["fp32", "bf16", "int8"], default="fp32",
                   help="weights of the large matrices: fp32 (default), bf16, or int8 with per-channel "
                        "scales; the recurrence stays fp32")
    p.set_defaults(func=_cmd_generate)


def _sampling_options(args) -> SamplingOptions:
    """The sampling flags as the library's options, which alone decide what is valid; a refusal names the
    flag (``--top-p``) rather than the field (``top_p``), since that is what the user typed."""
    try:
        return SamplingOptions(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                               repetition_penalty=args.repetition_penalty)
    except ConfigError as exc:
        field, _, rest = str(exc).partition(":")
        raise ConfigError(f"--{field.replace('_', '-')}:{rest}") from None


class TextStream:
    """Prints tokens as text the moment they arrive (UTF-8 bytes completed incrementally); called with each
    new token (batch,) of a one-row generation."""

    def __init__(self, tokenizer, out=None) -> None:
        from ..data import ByteTokenizer

        self.tokenizer, self.out = tokenizer, out if out is not None else sys.stdout
        self.is_bytes = isinstance(tokenizer, ByteTokenizer)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._ids: list[int] = []
        self._printed = ""
        self.count = 0
        self.first_token_time: float | None = None

    def __call__(self, token) -> None:
        if self.first_token_time is None:
            self.first_token_time = time.perf_counter()
        self.count += 1
        tid = int(token.reshape(-1)[0])
        if self.is_bytes:
            text = self._utf8.decode(bytes([tid]))
        else:  # BPE: decode everything so far, print what is new; hold back a character cut mid-way (U+FFFD)
            self._ids.append(tid)
            stable = self.tokenizer.decode(self._ids).rstrip("\ufffd")
            text = stable[len(self._printed):] if stable.startswith(self._printed) else ""
            if stable.startswith(self._printed):
                self._printed = stable
        self.out.write(text)
        self.out.flush()

    def finish(self) -> None:
        if self.is_bytes:
            self.out.write(self._utf8.decode(b"", final=True))
        else:
            full = self.tokenizer.decode(self._ids)
            self.out.write(full[len(self._printed):] if full.startswith(self._printed) else "")
        self.out.write("\n")
        self.out.flush()


def _cmd_generate(args) -> int:
    import torch

    options = _sampling_options(args)
    if not args.prompt:
        raise ConfigError("prompt: expected at least one character, got an empty string")
    model, directory = load_model(args.checkpoint, args.device, args.dtype)
    tokenizer = load_tokenizer(directory, args.tokenizer, model.config.vocab_size)
    ids = tokenizer.encode(args.prompt)
    if not ids:
        raise ConfigError("prompt: expected text that encodes to at least one token, got none")
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    generator = torch.Generator(device=device)
    generator.manual_seed(args.seed if args.seed is not None else int(torch.seed() % (2**63)))
    stream = TextStream(tokenizer)
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    start = time.perf_counter()
    generate(model, input_ids, args.max_new_tokens, options=options, eos_token_id=tokenizer.eos_token_id,
             generator=generator, streamer=stream)
    end = time.perf_counter()
    stream.finish()
    first = stream.first_token_time or end
    decode_rate = (stream.count - 1) / (end - first) if stream.count > 1 and end > first else float("nan")
    log(f"[{stream.count} tokens in {end - start:.2f}s: prompt of {len(ids)} tokens in "
         f"{first - start:.3f}s, then {decode_rate:.1f} tokens/s]")
    return 0
