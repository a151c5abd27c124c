"""quantize_weights: bf16 and int8 inference weights in Mamba, Mamba-2 and hybrid models stay close to the
float32 model, keep step == forward, keep the precise parts float32, and refuse saving and requantizing."""

import pytest
import torch
from torch import nn

from mambakit import MambaConfig, MambaLMHeadModel
from mambakit.errors import ConfigError
from mambakit.layers import LowPrecisionLinear
from mambakit.models.quantize import quantize_weights

CONFIGS = {
    "mamba": dict(d_model=32, n_layer=2, vocab_size=64, d_state=8),
    "mamba2": dict(d_model=32, n_layer=2, vocab_size=64, d_state=8, mixer="mamba2",
                   mixer_cfg={"headdim": 8, "chunk_size": 8}),
    "hybrid": dict(d_model=32, n_layer=3, vocab_size=64, d_state=8, layer_types=["mamba", "mlp", "attention"],
                   layer_cfg={"mlp": {"d_intermediate": 48}, "attention": {"n_heads": 2}}),
}
# int8 per-channel rounding moves logits by a few percent of their spread; bf16 by well under one
TOLERANCE = {"bf16": 0.02, "int8": 0.06}


def _model(kind):
    return MambaLMHeadModel(MambaConfig(**CONFIGS[kind]), generator=torch.Generator().manual_seed(0)).eval()


@pytest.mark.parametrize("weights", ["bf16", "int8"])
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_quantized_model_is_close_and_steps_equal_forward(kind, weights):
    model = _model(kind)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids)
        quantize_weights(model, weights)
        got = model(ids)
        spread = ref.std()
        assert (got - ref).abs().max() <= TOLERANCE[weights] * 10 * spread
        assert (got - ref).abs().mean() <= TOLERANCE[weights] * spread
        cache = model.allocate_inference_cache(2)
        model(ids[:, :-1], state=cache)
        stepped = model.step(ids[:, -1], cache)       # the fused few-row kernels
    assert (stepped - got[:, -1]).abs().max() <= 1e-4 * got.abs().max()
    kinds = {name: type(m) for name, m in model.named_modules()}
    assert kinds["lm_head"] is LowPrecisionLinear and kinds["backbone.embedding"] is nn.Embedding
    for name, kind_ in kinds.items():
        if name.endswith(("x_proj", "dt_proj")):
            assert kind_ is nn.Linear and dict(model.named_modules())[name].weight.dtype == torch.float32


def test_greedy_generation_runs_and_mostly_agrees():
    model = _model("mamba")
    prompt = torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(2))
    ref = model.generate(prompt, 32, temperature=0)
    quantize_weights(model, "bf16")
    got = model.generate(prompt, 32, temperature=0)
    assert got.shape == ref.shape and bool((got[:, 8:12] == ref[:, 8:12]).all())


def test_refusals():
    model = _model("mamba")
    with pytest.raises(ConfigError, match="weights: expected 'fp32' or one of"):
        quantize_weights(model, "int4")
    assert quantize_weights(model, "fp32") is model and not any(
        isinstance(m, LowPrecisionLinear) for m in model.modules())
    quantize_weights(model, "int8")
    with pytest.raises(ConfigError, match="already int8"):
        quantize_weights(model, "bf16")
    with pytest.raises(ConfigError, match="save_pretrained: this model holds int8 inference weights"):
        model.save_pretrained("/nonexistent/never-written")
