"""Shared transformer blocks reused at several depths of a stack (Zamba, Glorioso et al. 2024; Zamba2): each
use reads the residual stream beside the original embeddings and gives a term added to the input of its
layer's norm,

    x   = norm_in([h | e])                            h: the residual stream, e: the embeddings (2 · d_model)
    a   = attention(x)                                q/k/v + this use's low-rank adapters, out to d_model
    t   = linear_use(mlp(norm_ff(a)))                 fc1 + this use's low-rank adapter
    layer i:  h = h + mixer(norm(h + t))

Use j of the ``layers`` list runs block ``j % n_blocks``: a block's parameters are one set of tensors,
whatever the number of its uses. Each use has parameters of its own: ``linear`` (d_model -> d_model) and,
when ``adapter_rank > 0``, low-rank adapters (down then up, no biases) on the MLP's fc1 and, with
``attention_adapters``, on q, k and v. Each use keeps its own key-value cache (:meth:`allocate_state`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..errors import ConfigError
from .attention import CausalSelfAttention
from .mlp import GatedMLP
from .norm import RMSNorm

_OPTIONS = ("layers", "n_blocks", "attention", "mlp", "adapter_rank", "attention_adapters", "norm_eps")


def _low_rank(d_in: int, rank: int, d_out: int, factory: dict) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, rank, bias=False, **factory),
                         nn.Linear(rank, d_out, bias=False, **factory))


class SharedBlock(nn.Module):
    """The shared weights: norm_in (2 · d_model), attention (2 · d_model -> d_model), norm_ff, mlp."""

    def __init__(self, d_model: int, attention: dict[str, Any], mlp: dict[str, Any], norm_eps: float,
                 factory: dict) -> None:
        super().__init__()
        self.norm_in = RMSNorm(2 * d_model, eps=norm_eps, **factory)
        self.attention = CausalSelfAttention(2 * d_model, **attention, d_out=d_model, **factory)
        self.norm_ff = RMSNorm(d_model, eps=norm_eps, **factory)
        self.mlp = GatedMLP(d_model, **mlp, **factory)


class SharedUse(nn.Module):
    """One use's own parameters: ``linear`` and the optional adapters (q, k, v, fc1)."""

    def __init__(self, d_model: int, block: SharedBlock, rank: int, attention_adapters: bool,
                 factory: dict) -> None:
        super().__init__()
        self.linear = nn.Linear(d_model, d_model, bias=False, **factory)
        attn = block.attention
        q, kv = attn.n_heads * attn.head_dim, attn.n_kv_heads * attn.head_dim
        self.qkv_adapters = nn.ModuleList(_low_rank(2 * d_model, rank, n, factory) for n in (q, kv, kv)) \
            if rank and attention_adapters else None
        self.fc1_adapter = _low_rank(d_model, rank, block.mlp.fc1.out_features, factory) if rank else None

    def qkv_delta(self, x: Tensor) -> Tensor | None:
        return None if self.qkv_adapters is None else torch.cat([a(x) for a in self.qkv_adapters], dim=-1)


class SharedTransformer(nn.Module):
    """The shared blocks of a stack and their uses; ``forward(i, h, e)`` is the term of layer i.

    Args:
        d_model: model width.  layers: the stack's layers preceded by a use, in order.
        n_blocks: shared blocks (use j runs block j % n_blocks).
        attention: options of the blocks' :class:`CausalSelfAttention` (on 2 · d_model channels).
        mlp: options of their :class:`GatedMLP` (d_intermediate, activation, gated, bias).
        adapter_rank: rank of each use's adapters (0: none).  attention_adapters: adapters on q, k, v too.
        norm_eps: epsilon of the two RMSNorms.
    """

    def __init__(self, d_model: int, layers: list[int], n_blocks: int = 1, attention: dict | None = None,
                 mlp: dict | None = None, adapter_rank: int = 0, attention_adapters: bool = False,
                 norm_eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        check_int("n_blocks", n_blocks)
        check_int("adapter_rank", adapter_rank, minimum=0)
        if not isinstance(layers, (list, tuple)) or not layers or len(set(layers)) != len(layers):
            raise ConfigError(f"layers: expected a non-empty list of distinct layer indices, got {layers!r}")
        if n_blocks > len(layers):
            raise ConfigError(f"n_blocks: expected at most the {len(layers)} uses, got {n_blocks}")
        factory = {"device": device, "dtype": dtype}
        self.layers = [int(i) for i in layers]
        self._use_of = {layer: j for j, layer in enumerate(self.layers)}
        self.n_blocks = n_blocks
        self.blocks = nn.ModuleList(
            SharedBlock(d_model, dict(attention or {}), dict(mlp or {}), norm_eps, factory)
            for _ in range(n_blocks))
        self.uses = nn.ModuleList(
            SharedUse(d_model, self.blocks[j % n_blocks], adapter_rank, attention_adapters, factory)
            for j in range(len(self.layers)))

    @classmethod
    def from_config(cls, config, device=None, dtype=None) -> SharedTransformer | None:
        """From ``MambaConfig.shared_cfg`` (None when it is empty)."""
        options = dict(config.shared_cfg or {})
        if not options:
            return None
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown or "layers" not in options:
            raise ConfigError(f"MambaConfig.shared_cfg: unknown key(s) {unknown}; expected 'layers' and some "
                              f"of {sorted(_OPTIONS)}")
        if any(not isinstance(i, int) or not 0 <= i < config.n_layer for i in options["layers"]):
            raise ConfigError(f"MambaConfig.shared_cfg['layers']: expected layer indices in [0, "
                              f"{config.n_layer}), got {options['layers']!r}")
        try:
            return cls(config.d_model, **options, device=device, dtype=dtype)
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"MambaConfig.shared_cfg: {e}") from e

    def uses_at(self, layer: int) -> bool:
        """Whether a use precedes layer ``layer``."""
        return layer in self._use_of

    def _run(self, layer: int, hidden: Tensor, embeddings: Tensor, state: dict | None, one: bool,
             seq_idx: Tensor | None = None) -> Tensor:
        j = self._use_of[layer]
        block, use = self.blocks[j % self.n_blocks], self.uses[j]
        x = block.norm_in(torch.cat([hidden, embeddings], dim=-1).to(block.norm_in.weight.dtype))
        delta = use.qkv_delta(x)
        if one:
            a = block.attention.step(x, state, qkv_delta=delta)
        else:
            a = block.attention(x, state=state, seq_idx=seq_idx, qkv_delta=delta)
        y = block.norm_ff(a)
        h = block.mlp.fc1(y)
        if use.fc1_adapter is not None:
            h = h + use.fc1_adapter(y)
        return use.linear(block.mlp.fc2(block.mlp.combine(h)))

    def forward(self, layer: int, hidden: Tensor, embeddings: Tensor, state: dict | None = None,
                seq_idx: Tensor | None = None) -> Tensor:
        """The term of layer ``layer``: hidden and embeddings (batch, L, d_model) -> (batch, L, d_model);
        with ``state`` (this use's key-value cache) the attention continues it; ``seq_idx`` (batch, L):
        packed sequences, each attending to itself only."""
        return self._run(layer, hidden, embeddings, state, one=False, seq_idx=seq_idx)

    def step(self, layer: int, hidden: Tensor, embeddings: Tensor, state: dict) -> Tensor:
        """One token: (batch, d_model) each -> (batch, d_model); appends to the use's cache."""
        return self._run(layer, hidden, embeddings, state, one=True)

    def allocate_state(self, layer: int, batch_size: int, device=None, dtype=None) -> dict[str, Tensor]:
        """The empty key-value cache of the use before layer ``layer``."""
        block = self.blocks[self._use_of[layer] % self.n_blocks]
        return block.attention.allocate_state(batch_size, device=device, dtype=dtype)
