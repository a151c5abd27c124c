"""The fused decoding step of a whole Mamba stack (models.stack_decode, ops.decode.stack_cpu) against the
layer-by-layer step, its reference: logits and every layer's states, over several steps, on fresh random
weights, for each precision, norm, bias setting, batch and thread count."""

from __future__ import annotations

import pytest
import torch

from mambakit.models import MambaConfig, MambaLMHeadModel, stack_decode
from mambakit.models.quantize import quantize_weights


def _model(dtype=torch.float32, weights="fp32", seed=0, **overrides) -> MambaLMHeadModel:
    fields = dict(d_model=48, n_layer=3, vocab_size=97, d_state=8) | overrides
    model = MambaLMHeadModel(MambaConfig(**fields), dtype=dtype,
                             generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():   # non-trivial D, norm weights and biases, so a dropped term shows
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", ".D")) or name.endswith("bias"):
                p.add_(0.3 * torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(7)))
    return quantize_weights(model.eval(), weights)


def _run_both(model, batch, steps=6, workers=None, seed=1):
    """Logits and caches of the fused and the layer-by-layer step, fed the same token sequence."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.config.vocab_size, (steps, batch), generator=gen)
    caches = [model.allocate_inference_cache(batch) for _ in range(2)]
    logits = [[], []]
    original = stack_decode.StackPlan.step
    try:
        stack_decode.StackPlan.step = lambda self, r, s, workers_=None: original(self, r, s, workers=workers)
        with torch.no_grad():
            for t in range(steps):
                for k, fused in enumerate((True, False)):
                    model.backbone.fused_stack_decode = fused
                    logits[k].append(model.step(tokens[t], caches[k]))
    finally:
        stack_decode.StackPlan.step = original
        model.backbone.fused_stack_decode = True
    return torch.stack(logits[0]), torch.stack(logits[1]), caches


def _assert_close(model, batch, workers, rtol, atol):
    fused, ref, (c_fused, c_ref) = _run_both(model, batch, workers=workers)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(fused, ref, rtol=rtol, atol=atol)
    for layer_fused, layer_ref in zip(c_fused, c_ref, strict=True):
        for name in ("conv_state", "ssm_state"):
            assert layer_ref[name].abs().max() > 0
            torch.testing.assert_close(layer_fused[name], layer_ref[name], rtol=rtol, atol=atol)


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("options", [{}, {"rms_norm": False}, {"bias": True, "conv_bias": False}])
def test_fused_stack_float64_matches_layerwise(options, batch, workers):
    _assert_close(_model(torch.float64, **options), batch, workers, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8"])
def test_fused_stack_float32_and_low_precision_match_layerwise(weights, workers):
    _assert_close(_model(torch.float32, weights, bias=True), 2, workers, rtol=2e-5, atol=2e-5)


def test_plan_applies_only_where_it_computes_the_same_thing():
    model = _model()
    residual = torch.zeros(1, 48)
    states = list(model.allocate_inference_cache(1))
    with torch.no_grad():
        assert stack_decode.stack_decoder(model.backbone, residual, states) is not None
        big = torch.zeros(stack_decode.MAX_ROWS + 1, 48)
        big_states = list(model.allocate_inference_cache(stack_decode.MAX_ROWS + 1))
        assert stack_decode.stack_decoder(model.backbone, big, big_states) is None
        assert stack_decode.stack_decoder(model.backbone, residual.bfloat16(), states) is None
        other = list(model.allocate_inference_cache(2))   # states of another batch size
        assert stack_decode.stack_decoder(model.backbone, residual, other) is None
        wider = list(_model(d_state=16).allocate_inference_cache(1))   # another model's states
        assert stack_decode.stack_decoder(model.backbone, residual, wider) is None
    assert stack_decode.stack_decoder(model.backbone, residual, states) is None   # autograd on
    with torch.no_grad():
        hybrid = {"layer_types": "M*M", "layer_cfg": {"mamba2": {"headdim": 16}}}
        for overrides in ({"mixer": "mamba2", "mixer_cfg": {"headdim": 16}}, hybrid):
            other_model = _model(**overrides)
            other_states = list(other_model.allocate_inference_cache(1))
            assert stack_decode.stack_decoder(other_model.backbone, residual, other_states) is None


def test_plan_follows_weight_updates_and_new_caches():
    model = _model(torch.float64)
    _assert_close(model, 1, 2, rtol=1e-12, atol=1e-12)
    with torch.no_grad():   # an in-place update (an optimiser step) and a replaced parameter
        model.backbone.layers[1].mixer.D.mul_(-2)
        model.backbone.layers[2].mixer.A_log.add_(0.5)
        model.backbone.layers[0].mixer.out_proj.weight = torch.nn.Parameter(
            torch.randn_like(model.backbone.layers[0].mixer.out_proj.weight))
    _assert_close(model, 1, 2, rtol=1e-12, atol=1e-12)


def test_greedy_generation_is_unchanged_by_the_fused_step():
    model = _model(torch.float32)
    prompt = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(3))
    fused = model.generate(prompt, max_new_tokens=24, temperature=0)
    model.backbone.fused_stack_decode = False
    try:
        ref = model.generate(prompt, max_new_tokens=24, temperature=0)
    finally:
        model.backbone.fused_stack_decode = True
    assert torch.equal(fused, ref)


def test_head_logits_row_kernel_matches_the_linear_layer():
    head = torch.nn.Linear(48, 1003, bias=False)
    hidden = torch.randn(3, 48)
    with torch.no_grad():
        torch.testing.assert_close(stack_decode.head_logits(head, hidden), head(hidden), rtol=1e-5, atol=1e-5)
    out = stack_decode.head_logits(head, hidden)   # under autograd: the layer itself, with its gradient
    out.sum().backward()
    assert head.weight.grad is not None


def test_plan_follows_quantization_and_conversion_after_a_first_step():
    model = _model(torch.float32)
    _assert_close(model, 1, 2, rtol=2e-5, atol=2e-5)
    quantize_weights(model, "int8")   # modules replaced after the plan was built
    _assert_close(model, 1, 2, rtol=2e-5, atol=2e-5)
    model = _model(torch.float32)
    _assert_close(model, 1, 2, rtol=2e-5, atol=2e-5)
    model.double()   # parameters converted in place (their storage changes, no registration)
    _assert_close(model, 1, 2, rtol=1e-12, atol=1e-12)


def test_a_model_with_a_plan_still_deep_copies():
    import copy

    model = _model()
    _run_both(model, 1, steps=2)
    twin = copy.deepcopy(model)
    torch.testing.assert_close(_run_both(twin, 1)[0], _run_both(model, 1)[0])


def test_a_cache_of_another_shape_is_refused_with_the_layers_error():
    from mambakit.errors import ShapeError

    model, other = _model(), _model(d_state=16)
    with torch.no_grad(), pytest.raises(ShapeError, match="ssm_state"):
        model.step(torch.tensor([1]), other.allocate_inference_cache(1))
