"""Low-precision weights for inference: ``quantize_weights(model, "bf16" | "int8")``.

The large matrices become :class:`~mambakit.layers.lowp_linear.LowPrecisionLinear` layers: each Mamba /
Mamba-2 block's ``in_proj`` and ``out_proj``, each gated MLP's ``fc1`` and ``fc2``, and the LM head (untied
from the embedding, which stays float32: a lookup reads one row per token). Everything the recurrence is
sensitive to stays float32, as the official maintainers advise: ``x_proj`` and ``dt_proj`` (they make Δ, B
and C, and are a few percent of the bytes), A, D, Δ's bias, the convolution, the norms and the recurrent
state. Attention, MoE and Mamba-3 layers are left as they are. Decoding reads half (bf16) or about a
quarter (int8) of the float32 weight bytes per token.
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from ..layers import GatedMLP, Mamba2Block, MambaBlock
from ..layers.lowp_linear import LowPrecisionLinear
from ..ops.linear import WEIGHT_DTYPES

#: Which linear layers of which modules become low-precision.
QUANTIZED_LINEARS: dict[type, tuple[str, ...]] = {
    MambaBlock: ("in_proj", "out_proj"),
    Mamba2Block: ("in_proj", "out_proj"),
    GatedMLP: ("fc1", "fc2"),
}


def quantize_weights(model: nn.Module, weights: str) -> nn.Module:
    """Replace, in place, the model's large linear layers by low-precision ones (see the module docstring);
    returns the model, in eval mode, for inference only (its quantized weights are buffers; it can be run,
    not trained or saved). ``weights``: "bf16" or "int8" ("fp32" leaves the model as it is)."""
    if weights == "fp32":
        return model
    if weights not in WEIGHT_DTYPES:
        raise ConfigError(f"weights: expected 'fp32' or one of {sorted(WEIGHT_DTYPES)}, got {weights!r}")
    if getattr(model, "quantized_weights", None) is not None:
        raise ConfigError(f"model: its weights are already {model.quantized_weights}; quantize the float "
                          "model once")
    for module in list(model.modules()):
        for kind, names in QUANTIZED_LINEARS.items():
            if isinstance(module, kind):
                for name in names:
                    child = getattr(module, name)
                    if isinstance(child, nn.Linear):
                        setattr(module, name, LowPrecisionLinear.from_linear(child, weights))
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Linear):
        model.lm_head = LowPrecisionLinear.from_linear(head, weights)
    model.quantized_weights = weights
    return model.eval()
