"""Autoregressive generation with the recurrent form: prefill the prompt with the scan, then one step per
token.

The inference cache is a list of per-layer mixer state dicts (``model.allocate_inference_cache``); each new
token costs O(1) work and memory whatever the length so far. Sampling: greedy when ``temperature == 0``;
otherwise repetition penalty (CTRL-style), temperature, top-k, top-p (nucleus), then a draw from
``generator``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import ConfigError
from .lm import check_input_ids


def _check_sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, eos_token_id, vocab_size):
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens: expected a non-negative integer, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"temperature: expected a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ConfigError(f"top_k: expected None or a positive integer, got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ConfigError(f"top_p: expected None or a number in (0, 1], got {top_p!r}")
    if not isinstance(repetition_penalty, (int, float)) or not repetition_penalty > 0:
        raise ConfigError(f"repetition_penalty: expected a number > 0 (1 = none), got {repetition_penalty!r}")
    if eos_token_id is not None and (not isinstance(eos_token_id, int) or not 0 <= eos_token_id < vocab_size):
        raise ConfigError(
            f"eos_token_id: expected None or an integer in [0, {vocab_size}), got {eos_token_id!r}"
        )


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make already-seen tokens less likely: positive logits divided by ``penalty``, negative ones multiplied.

    logits (batch, V); seen (batch, V) bool. Returns a new tensor.
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row from logits (batch, V) -> (batch,) long. Greedy when ``temperature == 0``."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(-1) - probs  # probability of the strictly better tokens
        drop_sorted = mass_before >= top_p  # the first token is never dropped
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def generate_tokens(
    model: Any,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
    repetition_penalty: float = 1.0,
) -> Iterator[torch.Tensor]:
    """An iterator over the new tokens, one position at a time, each (batch,) long.

    Rows that have produced ``eos_token_id`` keep yielding it; the iteration stops after ``max_new_tokens``
    tokens or once every row has finished. Only the real vocabulary (``config.vocab_size``) is sampled.
    Arguments are checked here, before the first token.
    """
    vocab_size = model.config.vocab_size
    check_input_ids(input_ids, vocab_size)
    _check_sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, eos_token_id, vocab_size)
    if input_ids.shape[1] == 0:
        raise ConfigError("input_ids: expected a prompt of at least one token, got length 0")
    return _token_stream(
        model,
        input_ids,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        eos_token_id,
        generator,
        repetition_penalty,
    )


def _token_stream(
    model, input_ids, max_new_tokens, temperature, top_k, top_p, eos_token_id, generator, repetition_penalty
) -> Iterator[torch.Tensor]:
    vocab_size = model.config.vocab_size
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
            logits = model(input_ids, state=cache, num_last_tokens=1)[:, -1, :vocab_size]
        seen = torch.zeros(batch, vocab_size, dtype=torch.bool, device=input_ids.device)
        seen.scatter_(1, input_ids, True)
        finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        for i in range(max_new_tokens):
            scores = apply_repetition_penalty(logits.float(), seen, repetition_penalty)
            token = sample_next_token(scores, temperature, top_k, top_p, generator)
            if eos_token_id is not None:
                token = token.masked_fill(finished, eos_token_id)
                finished |= token == eos_token_id
            yield token
            if i + 1 == max_new_tokens or (eos_token_id is not None and bool(finished.all())):
                return
            seen.scatter_(1, token[:, None], True)
            with torch.no_grad():
                logits = model.step(token, cache)[:, :vocab_size]
    finally:
        model.train(was_training)


def generate(
    model: Any,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
    repetition_penalty: float = 1.0,
    streamer: Any = None,
) -> torch.Tensor:
    """Prompt (batch, L) long -> (batch, L + n) long, the prompt followed by n <= max_new_tokens new tokens.

    ``streamer`` receives each new token (batch,) as it comes: either a callable, or an object with
    ``put(tokens)`` and ``end()`` methods (as transformers' streamers have).
    """
    put = getattr(streamer, "put", streamer)
    if streamer is not None and not callable(put):
        raise ConfigError(
            f"streamer: expected a callable or an object with put()/end(), got {type(streamer).__name__}"
        )
    new = []
    for token in generate_tokens(
        model,
        input_ids,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_token_id=eos_token_id,
        generator=generator,
        repetition_penalty=repetition_penalty,
    ):
        new.append(token)
        if streamer is not None:
            put(token)
    if streamer is not None and hasattr(streamer, "end"):
        streamer.end()
    if not new:
        return input_ids.clone()
    return torch.cat([input_ids, torch.stack(new, dim=1).to(input_ids.dtype)], dim=1)
