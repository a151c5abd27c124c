"""Causal softmax attention as a sequence mixer: the Transformer baseline of the synthetic tasks and the
attention layers of hybrid models (Jamba, Bamba, Granite 4.0, Nemotron-H, ...).

    q, k, v = split(in_proj(x))          q: n_heads heads, k and v: n_kv_heads heads (grouped-query)
    q, k    = rotary(q), rotary(k)       on the first rotary_dim channels of each head (0: no positions)
    y       = softmax(q kᵀ · softmax_scale + causal [+ sliding window]) v
    out     = out_proj(concat_heads(y))

Rotary position embeddings follow Su et al., "RoFormer" (2021), in the half-split form (pairs i, i + D/2).
The key-value cache (:meth:`CausalSelfAttention.allocate_state`) holds every past key and value: it starts at
``cache_len`` positions and doubles when full, and each step costs O(t). ``forward`` with a state continues
it (a chunked prefill), so a sequence fed in pieces gives the same outputs as fed whole.

Packed sequences (``seq_idx``, see :mod:`mambakit.ops.packing`): a query sees only keys of its own
sequence, and rotary positions restart at each sequence's start. The cache remembers, per row, where the
row's last sequence starts (``first_key``), so a left-padded prompt's padding stays out of every later step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int, check_shape, check_tensor
from ..errors import ConfigError

_OPTIONS = ("n_heads", "n_kv_heads", "head_dim", "rope_base", "rotary_dim", "sliding_window", "softmax_scale",
            "bias", "cache_len", "d_out")


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


def _positive_or_none(name: str, value: object) -> None:
    if value is not None:
        check_int(name, value)


class CausalSelfAttention(nn.Module):
    """Causal multi-head (or grouped-query) self-attention mixer: (batch, L, d_model) -> (batch, L, d_model).

    Args:
        d_model: model width.
        n_heads: query heads (default ``max(1, d_model // 16)``).
        n_kv_heads: key/value heads (default n_heads); a divisor of n_heads (grouped-query attention).
        head_dim: channels per head (default d_model / n_heads, which must then divide).
        rope_base: the rotary embeddings' base (10000 as in RoFormer).
        rotary_dim: channels of each head that turn (default head_dim; 0: no positional encoding, as Jamba
            and Nemotron-H); even.
        sliding_window: if given, query t sees keys t - sliding_window + 1 .. t only.
        softmax_scale: factor of q·k (default 1/sqrt(head_dim)).
        bias: biases in the input and output projections.
        cache_len: initial capacity (positions) of the key-value cache made by :meth:`allocate_state`.
        d_out: width of the output (default d_model; Zamba's shared attention reads 2 · d_model channels and
            writes d_model).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int | None = None,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        rope_base: float = 10000.0,
        rotary_dim: int | None = None,
        sliding_window: int | None = None,
        softmax_scale: float | None = None,
        bias: bool = False,
        cache_len: int = 256,
        d_out: int | None = None,
        layer_idx: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if not isinstance(d_model, int) or isinstance(d_model, bool) or d_model < 2:
            raise ConfigError(f"d_model: expected an integer >= 2, got {d_model!r}")
        n_heads = max(1, d_model // 16) if n_heads is None else n_heads
        check_int("n_heads", n_heads)
        if head_dim is None:
            if d_model % n_heads:
                raise ConfigError(f"n_heads: expected a divisor of d_model={d_model} (or give head_dim), "
                                  f"got {n_heads}")
            head_dim = d_model // n_heads
        check_int("head_dim", head_dim)
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        check_int("n_kv_heads", n_kv_heads)
        if n_heads % n_kv_heads:
            raise ConfigError(f"n_kv_heads: expected a divisor of n_heads={n_heads}, got {n_kv_heads}")
        rotary_dim = head_dim if rotary_dim is None else rotary_dim
        check_int("rotary_dim", rotary_dim, minimum=0)
        if rotary_dim % 2 or rotary_dim > head_dim:
            what = "n_heads" if rotary_dim == head_dim else "rotary_dim"
            raise ConfigError(f"{what}: expected an even rotary width <= head_dim={head_dim} (rotary "
                              f"embeddings turn pairs of components), got rotary_dim={rotary_dim} with "
                              f"n_heads={n_heads}")
        if not (isinstance(rope_base, (int, float)) and math.isfinite(rope_base) and rope_base > 1):
            raise ConfigError(f"rope_base: expected a finite number > 1, got {rope_base!r}")
        _positive_or_none("sliding_window", sliding_window)
        if softmax_scale is not None and not (isinstance(softmax_scale, (int, float)) and softmax_scale > 0):
            raise ConfigError(f"softmax_scale: expected None or a positive number, got {softmax_scale!r}")
        check_int("cache_len", cache_len)
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = d_model, n_heads, n_kv_heads, head_dim
        self.rope_base, self.rotary_dim, self.sliding_window = float(rope_base), rotary_dim, sliding_window
        self.softmax_scale = head_dim**-0.5 if softmax_scale is None else float(softmax_scale)
        self.cache_len = cache_len
        self.layer_idx = layer_idx
        self.in_proj = nn.Linear(d_model, (n_heads + 2 * n_kv_heads) * head_dim, bias=bias, **factory)
        self.d_out = d_model if d_out is None else check_int("d_out", d_out)
        self.out_proj = nn.Linear(n_heads * head_dim, self.d_out, bias=bias, **factory)

    @classmethod
    def from_config(cls, config, layer_idx: int, device=None, dtype=None) -> CausalSelfAttention:
        """Build from a MambaConfig: d_model and bias; ``mixer_cfg`` may hold the keyword options (n_heads,
        n_kv_heads, head_dim, rope_base, rotary_dim, sliding_window, softmax_scale, bias, cache_len); a
        config-like object may also carry n_heads as an attribute."""
        options = dict(getattr(config, "mixer_cfg", None) or {})
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ConfigError(
                f"MambaConfig.mixer_cfg: unknown key(s) {unknown} for mixer 'attention'; "
                f"expected some of {sorted(_OPTIONS)}"
            )
        if "n_heads" not in options and getattr(config, "n_heads", None) is not None:
            options["n_heads"] = config.n_heads
        options.setdefault("bias", getattr(config, "bias", False))
        return cls(config.d_model, **options, layer_idx=layer_idx, device=device, dtype=dtype)

    # ------------------------------------------------------------------------------------------- checks
    def _check_hidden(self, hidden_states: Tensor, ndim: int) -> None:
        check_tensor("hidden_states", hidden_states, ndim=ndim)
        expected = (None, None, self.d_model) if ndim == 3 else (None, self.d_model)
        what = "(batch, L, d_model)" if ndim == 3 else "(batch, d_model)"
        check_shape("hidden_states", hidden_states, expected, what)

    def _check_state(self, state: object, batch: int) -> None:
        keys = ("key_cache", "value_cache", "length", "first_key")
        if not isinstance(state, dict) or any(k not in state for k in keys):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ConfigError(f"state: expected a dict with keys {list(keys)} (allocate_state), got {got}")
        for name in keys[:2]:
            check_shape(f"state[{name!r}]", state[name], (batch, self.n_kv_heads, None, self.head_dim),
                        "(batch, n_kv_heads, capacity, head_dim)")
        check_shape("state['first_key']", state["first_key"], (batch,), "(batch,)")

    # -------------------------------------------------------------------------------------------- pieces
    def _qkv(self, hidden_states: Tensor, positions: Tensor,
             qkv_delta: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(batch, L, d_model) -> q (batch, n_heads, L, head_dim), k and v (batch, n_kv_heads, L, head_dim),
        q and k turned for ``positions``: (L,) shared by the rows, or (batch, L); ``qkv_delta`` is added to
        in_proj's output."""
        b, L, _ = hidden_states.shape
        qkv = self.in_proj(hidden_states)
        if qkv_delta is not None:
            qkv = qkv + qkv_delta
        kv = self.n_kv_heads * self.head_dim
        sizes = [self.n_heads * self.head_dim, kv, kv]
        q, k, v = (t.view(b, L, -1, self.head_dim).transpose(1, 2) for t in torch.split(qkv, sizes, dim=-1))
        return self._rotate(q, positions), self._rotate(k, positions), v

    def _rotate(self, t: Tensor, positions: Tensor) -> Tensor:
        if self.rotary_dim == 0:
            return t
        cos, sin = rotary_angles(positions.reshape(-1), self.rotary_dim, self.rope_base)
        if positions.dim() == 2:  # per row: (batch, 1, L, D/2), broadcast over the heads
            cos, sin = (c.view(*positions.shape, -1)[:, None] for c in (cos, sin))
        if self.rotary_dim == self.head_dim:
            return apply_rotary(t, cos, sin)
        turned = apply_rotary(t[..., : self.rotary_dim], cos, sin)
        return torch.cat([turned, t[..., self.rotary_dim :]], dim=-1)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, start: int, same: Tensor | None = None) -> Tensor:
        """q (batch, H, L, D) at cache slots start.., k and v (batch, H_kv, start + L, D) -> out_proj of
        (batch, L, H · D); ``same`` (batch, L, start + L) bool, if given: which keys are of each query's own
        sequence."""
        b, _, L, _ = q.shape
        total = k.shape[-2]
        mask = None
        if start > 0 or self.sliding_window is not None or same is not None:
            query_pos = torch.arange(start, start + L, device=q.device)[:, None]
            key_pos = torch.arange(total, device=q.device)[None, :]
            mask = key_pos <= query_pos
            if self.sliding_window is not None:
                mask &= key_pos > query_pos - self.sliding_window
            if same is not None:
                mask = (mask & same)[:, None]   # (batch, 1, L, total), broadcast over the heads
        y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask,
                                           is_causal=mask is None and L > 1, scale=self.softmax_scale,
                                           enable_gqa=self.n_kv_heads != self.n_heads)
        return self.out_proj(y.transpose(1, 2).reshape(b, L, self.n_heads * self.head_dim))

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

    def _append(self, state: dict[str, Tensor], k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """Write k, v (batch, H_kv, L, D) after the ``start`` cached positions; returns all keys and values
        so far."""
        L = k.shape[-2]
        self._reserve(state, start + L)
        state["key_cache"][:, :, start : start + L] = k.to(state["key_cache"].dtype)
        state["value_cache"][:, :, start : start + L] = v.to(state["value_cache"].dtype)
        state["length"].fill_(start + L)
        return state["key_cache"][:, :, : start + L], state["value_cache"][:, :, : start + L]

    @staticmethod
    def _sequences(seq_idx: Tensor | None, first_key: Tensor | None, start: int, L: int, device):
        """Rotary positions (batch, L) of the new tokens, which keys each may see (batch, L, start + L), and
        where each row's last sequence starts in the cache afterwards (batch,); None, None, None when every
        row is one sequence from slot 0 (the plain causal case).

        The cached slots from ``first_key`` on belong to the row's first new sequence (it continues them);
        slots before it to no new query."""
        plain_cache = first_key is None or not bool(first_key.any())
        if seq_idx is None and plain_cache:
            return None, None, None
        batch = seq_idx.shape[0] if seq_idx is not None else first_key.shape[0]
        ids = (seq_idx.to(device=device, dtype=torch.long) if seq_idx is not None
               else torch.zeros(batch, L, dtype=torch.long, device=device))
        first = torch.zeros(batch, dtype=torch.long, device=device) if first_key is None else first_key
        slots = torch.arange(start, start + L, device=device).expand(batch, L)
        new_start = torch.ones_like(ids, dtype=torch.bool)
        new_start[:, 1:] = ids[:, 1:] != ids[:, :-1]
        new_start[:, 0] = start == 0                       # slot 0 starts a sequence; later, it continues
        seq_first = torch.where(new_start, slots, first[:, None]).cummax(dim=1).values
        cached_ids = torch.where(torch.arange(start, device=device)[None, :] >= first[:, None],
                                 ids[:, :1], -1)          # -1: seen by no query
        same = torch.cat([cached_ids, ids], dim=1)[:, None, :] == ids[:, :, None]
        return slots - seq_first, same, seq_first[:, -1]

    # ------------------------------------------------------------------------------------------- protocol
    def forward(self, hidden_states: Tensor, state: dict[str, Tensor] | None = None,
                seq_idx: Tensor | None = None, *, qkv_delta: Tensor | None = None) -> Tensor:
        """hidden_states (batch, L, d_model) -> (batch, L, d_out); ``qkv_delta`` (batch, L, in_proj's width),
        if given, is added to the [q | k | v] projection (a low-rank adapter's output).

        With ``state`` (from :meth:`allocate_state`, or left by an earlier call), the sequence continues the
        cached one (an empty cache: a fresh prompt): its queries also see the cached keys, and on return the
        cache holds its keys and values too, ready for :meth:`step` or another ``forward``. ``seq_idx``
        (batch, L): packed sequences, each attending only to itself (with ``state``, the first continues the
        cached one)."""
        self._check_hidden(hidden_states, 3)
        batch, L, _ = hidden_states.shape
        if seq_idx is not None:
            check_shape("seq_idx", seq_idx, (batch, L), "(batch, L)")
        if state is not None:
            self._check_state(state, batch)
        start = 0 if state is None else int(state["length"])
        first_key = None if state is None else state["first_key"]
        positions, same, last_first = self._sequences(seq_idx, first_key, start, L, hidden_states.device)
        if positions is None:
            positions = torch.arange(start, start + L, device=hidden_states.device)
        q, k, v = self._qkv(hidden_states, positions, qkv_delta)
        if state is None:
            return self._attend(q, k, v, 0, same)
        keys, values = self._append(state, k, v, start)
        if last_first is not None:
            state["first_key"].copy_(last_first)
        return self._attend(q, keys, values, start, same)

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> dict[str, Tensor]:
        """An empty cache: key_cache and value_cache (batch, n_kv_heads, cache_len, head_dim) in ``dtype``
        (default: the weights'), length, a long tensor () counting the slots filled, and first_key (batch,)
        long, the slot where each row's current sequence starts (keys before it are not attended to)."""
        check_int("batch_size", batch_size)
        weight = self.in_proj.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        shape = (batch_size, self.n_kv_heads, self.cache_len, self.head_dim)
        return {
            "key_cache": torch.zeros(shape, device=device, dtype=dtype),
            "value_cache": torch.zeros(shape, device=device, dtype=dtype),
            "length": torch.zeros((), device=device, dtype=torch.long),
            "first_key": torch.zeros(batch_size, device=device, dtype=torch.long),
        }

    def step(self, hidden_states: Tensor, state: dict[str, Tensor], *,
             qkv_delta: Tensor | None = None) -> Tensor:
        """One token: hidden_states (batch, d_model) -> (batch, d_out); appends its key and value to the
        cache (O(t) work for the t-th token: it attends to all of them, or to the sliding window)."""
        self._check_hidden(hidden_states, 2)
        delta = None if qkv_delta is None else qkv_delta[:, None]
        return self.forward(hidden_states[:, None], state, qkv_delta=delta)[:, 0]

    def extra_repr(self) -> str:
        window = f", sliding_window={self.sliding_window}" if self.sliding_window else ""
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
                f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}{window}")
