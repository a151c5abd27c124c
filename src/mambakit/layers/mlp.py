"""The feed-forward layers of hybrid stacks: a (gated) MLP, and the activations the hybrid checkpoints use.

    gated:     out = fc2(fc1_value(x) · act(fc1_gate(x)))      fc1 = [value | gate] (2 · d_intermediate rows)
    not gated: out = fc2(act(fc1(x)))                           fc1: d_intermediate rows

The [value | gate] order of ``fc1`` is ``mamba_ssm``'s ``GatedMLP``; the formats that store gate and value
separately (transformers' ``gate_proj`` / ``up_proj``) are converted in :mod:`mambakit.models.formats`.
As a mixer it is stateless: ``allocate_state`` gives an empty dict and ``step`` is the forward of one token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int, check_tensor
from ..errors import ConfigError, ShapeError


def _relu2(x: Tensor) -> Tensor:
    return torch.relu(x).square()


#: Activation names (transformers' ACT2FN names) -> functions.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": torch.relu,
    "relu2": _relu2,
}


def get_activation(name: str) -> Callable[[Tensor], Tensor]:
    """The activation function called ``name``; unknown names raise :class:`ConfigError`."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]



def combine(h: Tensor, act, gated: bool) -> Tensor:
    """A feed-forward layer's first projection (..., rows) -> the second's input: value · act(gate) for a
    gated layer (h = [value, gate]), else act(h); shared with the experts of :mod:`.moe`."""
    if gated:
        value, gate = h.chunk(2, dim=-1)
        return value * act(gate)
    return act(h)

class StatelessMixer(nn.Module):
    """The mixer protocol of a position-wise layer: no state (an empty dict), and a step is the forward of
    one token."""

    def allocate_state(self, batch_size: int, device=None, dtype=None) -> dict:
        """No state: an empty dict."""
        check_int("batch_size", batch_size)
        return {}

    def step(self, hidden_states: Tensor, state: dict) -> Tensor:
        """One token: (batch, d_model) -> (batch, d_model)."""
        return self.forward(hidden_states)


class GatedMLP(StatelessMixer):
    """Position-wise feed-forward mixer: (..., d_model) -> (..., d_model).

    Args:
        d_model: model width.  d_intermediate: hidden width (default 4 · d_model).
        activation: an :data:`ACTIVATIONS` name ("silu" by default).
        gated: fc1 gives value and gate (SwiGLU-style) or just the activated hidden layer.
        bias: biases in fc1 and fc2.
    """

    def __init__(self, d_model: int, d_intermediate: int | None = None, activation: str = "silu",
                 gated: bool = True, bias: bool = False, layer_idx: int | None = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        check_int("d_model", d_model)
        d_intermediate = 4 * d_model if d_intermediate is None else d_intermediate
        check_int("d_intermediate", d_intermediate)
        if not isinstance(gated, bool):
            raise ConfigError(f"gated: expected a bool, got {gated!r}")
        self.act = get_activation(activation)
        self.activation, self.gated, self.layer_idx = activation, gated, layer_idx
        self.d_model, self.d_intermediate = d_model, d_intermediate
        factory = {"device": device, "dtype": dtype}
        self.fc1 = nn.Linear(d_model, (2 if gated else 1) * d_intermediate, bias=bias, **factory)
        self.fc2 = nn.Linear(d_intermediate, d_model, bias=bias, **factory)

    @classmethod
    def from_config(cls, config, layer_idx: int, device=None, dtype=None) -> GatedMLP:
        """Build from a MambaConfig whose ``mixer_cfg`` holds the keyword options (d_intermediate,
        activation, gated, bias)."""
        options = dict(getattr(config, "mixer_cfg", None) or {})
        unknown = sorted(set(options) - {"d_intermediate", "activation", "gated", "bias"})
        if unknown:
            raise ConfigError(f"MambaConfig.layer_cfg['mlp']: unknown key(s) {unknown}; expected some of "
                              "['activation', 'bias', 'd_intermediate', 'gated']")
        return cls(config.d_model, **options, layer_idx=layer_idx, device=device, dtype=dtype)

    def forward(self, hidden_states: Tensor, state: dict | None = None,
                seq_idx: Tensor | None = None) -> Tensor:
        """hidden_states (..., d_model) -> (..., d_model); ``state`` (stateless: {}) and ``seq_idx`` (each
        position on its own: packing changes nothing) are ignored."""
        check_tensor("hidden_states", hidden_states)
        if hidden_states.shape[-1] != self.d_model:
            raise ShapeError(f"hidden_states: expected last dimension d_model={self.d_model}, "
                             f"got shape {tuple(hidden_states.shape)}")
        return self.fc2(self.combine(self.fc1(hidden_states)))

    def combine(self, h: Tensor) -> Tensor:
        """fc1's output (..., rows) -> fc2's input (..., d_intermediate): value · act(gate), or act(h)."""
        return combine(h, self.act, self.gated)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_intermediate={self.d_intermediate}, "
                f"activation={self.activation}, gated={self.gated}")
