"""``mambakit serve``: an OpenAI-compatible HTTP server over a run or checkpoint directory.

The flags only; the server is :mod:`mambakit.serve` (it needs the ``serve`` extra: starlette, uvicorn).
"""

from __future__ import annotations

import os

from ..errors import ConfigError
from .flags import finite_float, non_negative_int, positive_int


def add_parser(sub) -> None:
    """Add the ``serve`` subcommand to ``sub``."""
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API (continuous batching)")
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="run directory, checkpoint directory, or Hugging Face / state-spaces directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=non_negative_int, default=8000, help="0 = any free port (default 8000)")
    p.add_argument("--slots", type=positive_int, default=8,
                   help="requests generated at once, one recurrent state each; more wait (default 8)")
    p.add_argument("--api-key", default=os.environ.get("MAMBAKIT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $MAMBAKIT_API_KEY, else none)")
    p.add_argument("--max-new-tokens-limit", type=positive_int, default=1024,
                   help="the largest max_tokens a request may ask for (default 1024)")
    p.add_argument("--max-prompt-tokens", type=positive_int, default=8192,
                   help="longer prompts are refused (default 8192)")
    p.add_argument("--prefill-chunk", type=positive_int, default=256,
                   help="prompt tokens prefilled between two decode steps (default 256)")
    p.add_argument("--prefix-cache-mb", type=finite_float, default=256.0,
                   help="memory for kept prefix states, least recently used go first; 0 = off (default 256)")
    p.add_argument("--max-queue", type=non_negative_int, default=1024,
                   help="requests that may wait for a slot before new ones get 503 (default 1024)")
    p.add_argument("--model-name", help="the model id clients send (default: the checkpoint folder's name)")
    p.add_argument("--tokenizer", metavar="SPEC", help="'byte' or a tokenizer.json (default: saved)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--dtype", choices=["fp32", "bf16", "int8"], default="fp32",
                   help="weights of the large matrices (as `mambakit generate --dtype`; default fp32)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--engine-thread", action="store_true",
                   help="run the scheduler on a thread of its own rather than between the HTTP loop's work "
                        "(for models large enough that their kernels, not Python, take the time)")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args) -> int:
    if args.prefix_cache_mb < 0:
        raise ConfigError(f"--prefix-cache-mb: expected a number >= 0 (0 = off), got {args.prefix_cache_mb}")
    if args.api_key is not None and not args.api_key.strip():
        raise ConfigError("--api-key: expected a non-empty key, got an empty string")
    try:
        from ..serve.server import ServeConfig, serve
    except ImportError as exc:
        raise ConfigError(f"serve: needs the 'serve' extra (pip install 'mambakit[serve]'): {exc}") from None
    fields = ServeConfig.__dataclass_fields__
    return serve(ServeConfig(**{name: getattr(args, name) for name in fields}))
