"""A mixture-of-experts feed-forward layer with a top-k router (Shazeer et al. 2017; Mixtral, Jamba, Granite
4.0, Nemotron-H), and an optional shared expert every token goes through.

    scores  = softmax(router(x))  or  sigmoid(router(x))                        (batch·L, n_experts)
    chosen  = top_k(scores [+ score_bias])        weights = scores[chosen] (/ their sum if normalize) · scale
    out     = Σ_chosen weight_e · expert_e(x)  [+ shared(x)]                  each expert a (gated) MLP

Expert weights are stacked: ``fc1`` (n_experts, (2·)d_intermediate, d_model) with rows [value | gate] when
gated (as :class:`~mambakit.layers.mlp.GatedMLP`), ``fc2`` (n_experts, d_model, d_intermediate). Only the
chosen experts run on each token. Stateless as a mixer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._checks import check_int, check_tensor
from ..errors import ConfigError, ShapeError
from .mlp import GatedMLP, StatelessMixer, combine, get_activation

_OPTIONS = ("n_experts", "top_k", "d_intermediate", "activation", "gated", "scoring", "normalize",
            "routed_scaling", "d_shared")


class MoE(StatelessMixer):
    """Top-k routed experts: (..., d_model) -> (..., d_model).

    Args:
        d_model: model width.  n_experts: experts.  top_k: experts per token (<= n_experts).
        d_intermediate: hidden width of each expert.  activation, gated: the experts' MLP (see GatedMLP).
        scoring: "softmax" (Mixtral, Jamba, Granite) or "sigmoid" (with a ``score_bias`` buffer that steers
            the choice only, as DeepSeek-V3 and Nemotron-H).
        normalize: divide the chosen weights by their sum.  routed_scaling: factor of the chosen weights.
        d_shared: width of a shared expert (same activation and gating) added to every token; 0: none.
    """

    def __init__(self, d_model: int, n_experts: int, top_k: int, d_intermediate: int,
                 activation: str = "silu", gated: bool = True, scoring: str = "softmax",
                 normalize: bool = True, routed_scaling: float = 1.0, d_shared: int = 0,
                 layer_idx: int | None = None, device=None, dtype=None) -> None:
        super().__init__()
        for name, v in (("d_model", d_model), ("n_experts", n_experts), ("top_k", top_k),
                        ("d_intermediate", d_intermediate)):
            check_int(name, v)
        check_int("d_shared", d_shared, minimum=0)
        if top_k > n_experts:
            raise ConfigError(f"top_k: expected at most n_experts={n_experts}, got {top_k}")
        if scoring not in ("softmax", "sigmoid"):
            raise ConfigError(f"scoring: expected 'softmax' or 'sigmoid', got {scoring!r}")
        for name, v in (("gated", gated), ("normalize", normalize)):
            if not isinstance(v, bool):
                raise ConfigError(f"{name}: expected a bool, got {v!r}")
        if not (isinstance(routed_scaling, (int, float)) and math.isfinite(routed_scaling)):
            raise ConfigError(f"routed_scaling: expected a finite number, got {routed_scaling!r}")
        self.act = get_activation(activation)
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.n_experts, self.top_k = d_model, n_experts, top_k
        self.d_intermediate = d_intermediate
        self.activation, self.gated, self.scoring, self.normalize = activation, gated, scoring, normalize
        self.routed_scaling, self.layer_idx = float(routed_scaling), layer_idx
        self.router = nn.Linear(d_model, n_experts, bias=False, **factory)
        rows = (2 if gated else 1) * d_intermediate
        self.fc1 = nn.Parameter(torch.empty(n_experts, rows, d_model, **factory))
        self.fc2 = nn.Parameter(torch.empty(n_experts, d_model, d_intermediate, **factory))
        if scoring == "sigmoid":
            self.register_buffer("score_bias", torch.zeros(n_experts, device=device, dtype=torch.float32))
        self.shared = (GatedMLP(d_model, d_shared, activation, gated, **factory) if d_shared else None)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Each expert's matrices as nn.Linear initialises a layer of that shape (Kaiming-uniform)."""
        for w in (self.fc1, self.fc2):
            bound = 1 / math.sqrt(w.shape[-1])
            w.uniform_(-bound, bound)

    @classmethod
    def from_config(cls, config, layer_idx: int, device=None, dtype=None) -> MoE:
        """Build from a MambaConfig whose ``mixer_cfg`` holds the keyword options (n_experts, top_k and
        d_intermediate required)."""
        options = dict(getattr(config, "mixer_cfg", None) or {})
        unknown = sorted(set(options) - set(_OPTIONS))
        missing = [k for k in ("n_experts", "top_k", "d_intermediate") if k not in options]
        if unknown or missing:
            raise ConfigError(f"MambaConfig.layer_cfg['moe']: unknown key(s) {unknown}, missing {missing}; "
                              f"expected some of {sorted(_OPTIONS)} with n_experts, top_k, d_intermediate")
        return cls(config.d_model, **options, layer_idx=layer_idx, device=device, dtype=dtype)

    # ------------------------------------------------------------------------------------------------
    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (tokens, d_model) -> the chosen experts (tokens, top_k) long and their weights (tokens, top_k)
        in float32."""
        logits = self.router(x).float()
        if self.scoring == "softmax":
            scores = torch.softmax(logits, dim=-1)
            weights, chosen = scores.topk(self.top_k, dim=-1)
        else:
            scores = torch.sigmoid(logits)
            chosen = (scores + self.score_bias).topk(self.top_k, dim=-1).indices
            weights = scores.gather(1, chosen)
        if self.normalize:
            tiny = 1e-20 if self.scoring == "sigmoid" else 0.0  # sigmoid scores may all be ~0
            weights = weights / (weights.sum(-1, keepdim=True) + tiny)
        return chosen, weights * self.routed_scaling

    def _expert(self, e: int, x: Tensor) -> Tensor:
        return combine(x @ self.fc1[e].T, self.act, self.gated) @ self.fc2[e].T

    def forward(self, hidden_states: Tensor, state: dict | None = None,
                seq_idx: Tensor | None = None) -> Tensor:
        """hidden_states (..., d_model) -> (..., d_model); ``state`` (stateless: {}) and ``seq_idx`` (each
        position on its own: packing changes nothing) are ignored."""
        check_tensor("hidden_states", hidden_states)
        if hidden_states.shape[-1] != self.d_model:
            raise ShapeError(f"hidden_states: expected last dimension d_model={self.d_model}, "
                             f"got shape {tuple(hidden_states.shape)}")
        x = hidden_states.reshape(-1, self.d_model)
        chosen, weights = self.route(x)
        out = torch.zeros_like(x)
        for e in chosen.unique().tolist():
            token, slot = torch.where(chosen == e)
            y = self._expert(e, x[token]) * weights[token, slot, None].to(x.dtype)
            out.index_add_(0, token, y)
        if self.shared is not None:
            out = out + self.shared(x)
        return out.view(hidden_states.shape)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_experts={self.n_experts}, top_k={self.top_k}, "
                f"d_intermediate={self.d_intermediate}, scoring={self.scoring}")
