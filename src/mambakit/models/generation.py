"""Autoregressive generation with the recurrent form: prefill the prompt with the scan, then one step per
token.

It works on any model that follows :class:`RecurrentLM` (``forward(ids, state=…)``, ``step(ids, state)``,
``allocate_inference_cache(batch, …)``, a ``config.vocab_size``); it never imports the model classes. The
inference cache holds every layer's recurrent state, so each new token costs O(1) work and memory whatever
the length so far. How tokens are picked is :class:`~mambakit.models.sampling.SamplingOptions`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from .._checks import check_input_ids, check_int
from ..errors import ConfigError
from ..ops.packing import resolve_seq_idx
from .sampling import SamplingOptions, apply_repetition_penalty, sample_next_token


class RecurrentLM(Protocol):
    """What generation needs of a language model (:class:`mambakit.MambaLMHeadModel` is one)."""

    config: Any  # with ``vocab_size``, the real vocabulary (logits beyond it are padding)
    training: bool

    def __call__(self, input_ids: torch.Tensor, state: Any = None, num_last_tokens: int = 0,
                 **padding: Any) -> torch.Tensor:
        """(batch, L) ids -> (batch, num_last_tokens or L, V) logits; with ``state``, fills it (prefill);
        ``attention_mask=`` is passed only for left-padded prompts."""
        ...

    def step(self, input_ids: torch.Tensor, state: Any) -> torch.Tensor:
        """(batch,) ids -> (batch, V) logits, advancing ``state`` by one token."""
        ...

    def allocate_inference_cache(self, batch_size: int, device: Any = None, dtype: Any = None) -> Any: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...


def _options(options: SamplingOptions | None, sampling: dict[str, Any]) -> SamplingOptions:
    """``options`` (default: the defaults) with the keyword options given on top; validated once here."""
    if options is not None and not isinstance(options, SamplingOptions):
        raise ConfigError(f"options: expected None or a SamplingOptions, got {type(options).__name__}")
    return dataclasses.replace(options or SamplingOptions(), **sampling)


def generate_tokens(
    model: RecurrentLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    attention_mask: torch.Tensor | None = None,
    options: SamplingOptions | None = None,
    generator: torch.Generator | None = None,
    **sampling: Any,
) -> Iterator[torch.Tensor]:
    """An iterator over the new tokens, one position at a time, each (batch,) long.

    ``input_ids`` (batch, L) long, L >= 1. Prompts of different lengths go in one batch left-padded, with
    ``attention_mask`` (batch, L) 0 on the padding and 1 on the tokens: each row then generates what its
    prompt alone would (the padding never reaches the model's state, nor the repetition penalty).

    Sampling follows ``options``, with any :class:`SamplingOptions` field given as a keyword
    (``temperature=0``, ``top_k=...``) on top. Rows that have produced
    ``eos_token_id`` keep yielding it; the iteration stops after ``max_new_tokens`` tokens or once every row
    has finished. Only the real vocabulary (``config.vocab_size``) is sampled. Arguments are checked here,
    before the first token.
    """
    vocab_size = model.config.vocab_size
    check_input_ids(input_ids, vocab_size)
    check_int("max_new_tokens", max_new_tokens, minimum=0)
    opts = _options(options, sampling)
    opts.check_vocab(vocab_size)
    if input_ids.shape[1] == 0:
        raise ConfigError("input_ids: expected a prompt of at least one token, got length 0")
    if attention_mask is not None:
        resolve_seq_idx(input_ids, attention_mask=attention_mask)  # checked here, before the first token
    return _token_stream(model, input_ids, max_new_tokens, opts, generator, attention_mask)


def _token_stream(
    model: RecurrentLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    opts: SamplingOptions,
    generator: torch.Generator | None,
    attention_mask: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    vocab_size = model.config.vocab_size
    eos = opts.eos_token_id
    batch = input_ids.shape[0]
    if max_new_tokens == 0:
        return
    was_training = model.training
    model.eval()
    try:
        # no_grad per call, not around the loop: the caller's code between tokens keeps its own grad mode.
        with torch.no_grad():
            param = next(model.parameters())
            cache = model.allocate_inference_cache(batch, device=param.device)
            padded = {} if attention_mask is None else {"attention_mask": attention_mask}
            logits = model(input_ids, state=cache, num_last_tokens=1, **padded)[:, -1, :vocab_size]
        seen = torch.zeros(batch, vocab_size, dtype=torch.bool, device=input_ids.device)
        if attention_mask is None:
            seen.scatter_(1, input_ids, True)
        else:  # amax: a padding position never unmarks a token id the prompt does use
            mask = attention_mask.to(device=input_ids.device, dtype=torch.int8)
            seen = torch.zeros(batch, vocab_size, dtype=torch.int8, device=input_ids.device).scatter_reduce_(
                1, input_ids, mask, reduce="amax").bool()
        finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        for i in range(max_new_tokens):
            scores = apply_repetition_penalty(logits.float(), seen, opts.repetition_penalty)
            token = sample_next_token(scores, opts.temperature, opts.top_k, opts.top_p, generator)
            if eos is not None:
                token = token.masked_fill(finished, eos)
                finished |= token == eos
            yield token
            if i + 1 == max_new_tokens or (eos is not None and bool(finished.all())):
                return
            seen.scatter_(1, token[:, None], True)
            with torch.no_grad():
                logits = model.step(token, cache)[:, :vocab_size]
    finally:
        model.train(was_training)


def generate(
    model: RecurrentLM,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    options: SamplingOptions | None = None,
    generator: torch.Generator | None = None,
    streamer: Callable[[torch.Tensor], Any] | Any = None,
    attention_mask: torch.Tensor | None = None,
    **sampling: Any,
) -> torch.Tensor:
    """Prompt (batch, L) long -> (batch, L + n) long, the prompt followed by n <= max_new_tokens new tokens.

    Sampling and ``attention_mask`` (left-padded prompts) as :func:`generate_tokens`. ``streamer`` receives
    each new token (batch,) as it comes: either a callable, or an object with ``put(tokens)`` and ``end()``
    methods (as transformers' streamers have).
    """
    put = getattr(streamer, "put", streamer)
    if streamer is not None and not callable(put):
        raise ConfigError(
            f"streamer: expected a callable or an object with put()/end(), got {type(streamer).__name__}"
        )
    new = []
    for token in generate_tokens(
        model, input_ids, max_new_tokens, attention_mask=attention_mask, options=options,
        generator=generator, **sampling
    ):
        new.append(token)
        if streamer is not None:
            put(token)
    if streamer is not None and hasattr(streamer, "end"):
        streamer.end()
    if not new:
        return input_ids.clone()
    return torch.cat([input_ids, torch.stack(new, dim=1).to(input_ids.dtype)], dim=1)
