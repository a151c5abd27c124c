"""Causal multi-head softmax attention as a sequence mixer (the Transformer baseline of the synthetic tasks),
with rotary position embeddings (Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding",
2021) and a key-value cache for :meth:`CausalSelfAttention.step`.

    q, k, v = split(in_proj(x));  q, k = rotary(q), rotary(k);  y = softmax(q kᵀ / √d_head + causal) v
    out = out_proj(concat_heads(y))

Unlike the SSM mixers, the generation state grows with the sequence: the cache holds every past key and value
(it starts at ``cache_len`` positions and doubles when full), and each step costs O(t).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int, check_shape, check_tensor
from ..errors import ConfigError


def rotary_angles(positions: Tensor, head_dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotary angles, each (len(positions), head_dim // 2), in float64.

    Pair i of a head (components i and i + head_dim/2) turns by ``position · base^(-2i / head_dim)``."""
    pair = torch.arange(0, head_dim // 2, dtype=torch.float64, device=positions.device)
    inv_freq = base ** (-2 * pair / head_dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the pairs (x[..., i], x[..., i + D/2]) of x (..., L, D) by the angles whose cos and sin are
    (L, D/2); the result has x's dtype."""
    half = x.shape[-1] // 2
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention mixer: (batch, L, d_model) -> (batch, L, d_model).

    Args:
        d_model: model width; a multiple of ``n_heads``.
        n_heads: attention heads (default ``max(1, d_model // 16)``); the head width d_model / n_heads must be
            even (rotary embeddings turn pairs of components).
        rope_base: the rotary embeddings' base (10000 as in RoFormer).
        bias: biases in the input and output projections.
        cache_len: initial capacity (positions) of the key-value cache made by :meth:`allocate_state`.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int | None = None,
        rope_base: float = 10000.0,
        bias: bool = False,
        cache_len: int = 256,
        layer_idx: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if not isinstance(d_model, int) or isinstance(d_model, bool) or d_model < 2:
            raise ConfigError(f"d_model: expected an integer >= 2, got {d_model!r}")
        if n_heads is None:
            n_heads = max(1, d_model // 16)
        check_int("n_heads", n_heads)
        if d_model % n_heads or (d_model // n_heads) % 2:
            raise ConfigError(
                f"n_heads: expected a divisor of d_model={d_model} leaving an even head width, got {n_heads}"
            )
        if not (isinstance(rope_base, (int, float)) and math.isfinite(rope_base) and rope_base > 1):
            raise ConfigError(f"rope_base: expected a finite number > 1, got {rope_base!r}")
        check_int("cache_len", cache_len)
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.rope_base = float(rope_base)
        self.cache_len = cache_len
        self.layer_idx = layer_idx
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias, **factory)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, **factory)

    @classmethod
    def from_config(cls, config, layer_idx: int, device=None, dtype=None) -> CausalSelfAttention:
        """Build from a MambaConfig: d_model and bias; ``mixer_cfg`` may hold n_heads, rope_base and cache_len
        (a config-like object may also carry n_heads as an attribute)."""
        options = dict(getattr(config, "mixer_cfg", None) or {})
        unknown = sorted(set(options) - {"n_heads", "rope_base", "cache_len"})
        if unknown:
            raise ConfigError(
                f"MambaConfig.mixer_cfg: unknown key(s) {unknown} for mixer 'attention'; "
                "expected some of ['cache_len', 'n_heads', 'rope_base']"
            )
        if "n_heads" not in options and getattr(config, "n_heads", None) is not None:
            options["n_heads"] = config.n_heads
        return cls(
            config.d_model,
            bias=getattr(config, "bias", False),
            **options,
            layer_idx=layer_idx,
            device=device,
            dtype=dtype,
        )

    # ------------------------------------------------------------------------------------------- checks
    def _check_hidden(self, hidden_states: Tensor, ndim: int) -> None:
        check_tensor("hidden_states", hidden_states, ndim=ndim)
        expected = (None, None, self.d_model) if ndim == 3 else (None, self.d_model)
        what = "(batch, L, d_model)" if ndim == 3 else "(batch, d_model)"
        check_shape("hidden_states", hidden_states, expected, what)

    def _check_state(self, state: object, batch: int) -> None:
        keys = ("key_cache", "value_cache", "length")
        if not isinstance(state, dict) or any(k not in state for k in keys):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ConfigError(f"state: expected a dict with keys {list(keys)} (allocate_state), got {got}")
        for name in keys[:2]:
            check_shape(
                f"state[{name!r}]",
                state[name],
                (batch, self.n_heads, None, self.head_dim),
                "(batch, n_heads, capacity, head_dim)",
            )

    # -------------------------------------------------------------------------------------------- pieces
    def _qkv(self, hidden_states: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(batch, L, d_model) -> q, k, v each (batch, n_heads, L, head_dim), without positions yet."""
        b, L, _ = hidden_states.shape
        qkv = self.in_proj(hidden_states).view(b, L, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def _rotate(self, t: Tensor, start: int) -> Tensor:
        positions = torch.arange(start, start + t.shape[-2], device=t.device)
        cos, sin = rotary_angles(positions, self.head_dim, self.rope_base)
        return apply_rotary(t, cos, sin)

    def _merge(self, y: Tensor) -> Tensor:
        """(batch, n_heads, L, head_dim) -> out_proj of (batch, L, d_model)."""
        b, _, L, _ = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(b, L, self.d_model))

    @staticmethod
    def _reserve(state: dict[str, Tensor], needed: int) -> None:
        """Grow the cache (doubling) so that it holds ``needed`` positions; old contents are kept."""
        capacity = state["key_cache"].shape[2]
        if needed <= capacity:
            return
        new_capacity = max(needed, 2 * capacity)
        for name in ("key_cache", "value_cache"):
            old = state[name]
            grown = old.new_zeros(old.shape[0], old.shape[1], new_capacity, old.shape[3])
            grown[:, :, :capacity] = old
            state[name] = grown

    # ------------------------------------------------------------------------------------------- protocol
    def forward(self, hidden_states: Tensor, state: dict[str, Tensor] | None = None) -> Tensor:
        """hidden_states (batch, L, d_model) -> (batch, L, d_model).

        With ``state`` (from :meth:`allocate_state`), the sequence is a fresh prompt: on return the cache
        holds its L rotated keys and values and ``state["length"]`` is L, ready for :meth:`step`."""
        self._check_hidden(hidden_states, 3)
        batch, L, _ = hidden_states.shape
        if state is not None:
            self._check_state(state, batch)
            if int(state["length"]) != 0:
                raise ConfigError("state: CausalSelfAttention.forward starts from an empty cache (a fresh "
                                  "prompt); continue a filled cache with step(), one token at a time")
        q, k, v = self._qkv(hidden_states)
        q, k = self._rotate(q, 0), self._rotate(k, 0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if state is not None:
            self._reserve(state, L)
            state["key_cache"][:, :, :L] = k.to(state["key_cache"].dtype)
            state["value_cache"][:, :, :L] = v.to(state["value_cache"].dtype)
            state["length"].fill_(L)
        return self._merge(y)

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> dict[str, Tensor]:
        """An empty cache: key_cache and value_cache (batch, n_heads, cache_len, head_dim) in ``dtype``
        (default: the weights'), and length, a long tensor () counting the positions filled."""
        check_int("batch_size", batch_size)
        weight = self.in_proj.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        shape = (batch_size, self.n_heads, self.cache_len, self.head_dim)
        return {
            "key_cache": torch.zeros(shape, device=device, dtype=dtype),
            "value_cache": torch.zeros(shape, device=device, dtype=dtype),
            "length": torch.zeros((), device=device, dtype=torch.long),
        }

    def step(self, hidden_states: Tensor, state: dict[str, Tensor]) -> Tensor:
        """One token: hidden_states (batch, d_model) -> (batch, d_model); appends its key and value to the
        cache (O(t) work for the t-th token: it attends to all of them)."""
        self._check_hidden(hidden_states, 2)
        self._check_state(state, hidden_states.shape[0])
        t = int(state["length"])
        q, k, v = self._qkv(hidden_states[:, None])  # (batch, n_heads, 1, head_dim)
        q, k = self._rotate(q, t), self._rotate(k, t)
        self._reserve(state, t + 1)
        state["key_cache"][:, :, t : t + 1] = k.to(state["key_cache"].dtype)
        state["value_cache"][:, :, t : t + 1] = v.to(state["value_cache"].dtype)
        state["length"].fill_(t + 1)
        keys = state["key_cache"][:, :, : t + 1].to(q.dtype)
        values = state["value_cache"][:, :, : t + 1].to(q.dtype)
        y = F.scaled_dot_product_attention(q, keys, values)  # one query sees every cached position
        return self._merge(y)[:, 0]

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}"
