"""The language model: structure and names, initialisation, the residual stack, prefill + steps ==
forward (Mamba-1 and Mamba-2), precisions, weight-decay groups, gradients, bad input."""

import math

import pytest
import torch
from model_helpers import VOCAB, ids_, m2_config, m2_model

from mambakit import InferenceCache, MambaBlock, MambaConfig, MambaLMHeadModel, RMSNorm
from mambakit.errors import ConfigError, DeviceError, DTypeError, ShapeError
from mambakit.models import TokenIdError


def tiny(**kw) -> MambaConfig:
    base = dict(d_model=32, n_layer=2, vocab_size=101, d_state=8)
    base.update(kw)
    return MambaConfig(**base)


def _perturb(model: MambaLMHeadModel) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))


def test_structure_names_and_padded_vocab():
    m = MambaLMHeadModel(tiny())
    names = set(m.state_dict())
    assert {
        "backbone.embedding.weight",
        "backbone.norm_f.weight",
        "lm_head.weight",
        "backbone.layers.0.norm.weight",
        "backbone.layers.1.mixer.A_log",
    } <= names
    assert isinstance(m.backbone.layers[0].mixer, MambaBlock) and isinstance(m.backbone.norm_f, RMSNorm)
    assert m.backbone.embedding.weight.shape == (104, 32)  # 101 padded to a multiple of 8
    assert m.lm_head.weight is m.backbone.embedding.weight  # tied
    logits = m(torch.randint(0, 101, (2, 7)))
    assert logits.shape == (2, 7, 104) and logits.dtype == torch.float32
    untied = MambaLMHeadModel(tiny(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.backbone.embedding.weight


def test_initialisation_embedding_and_out_proj_rescale():
    n_layer, d_model, expand = 4, 64, 2
    m = MambaLMHeadModel(MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=4096, expand=expand))
    emb = m.backbone.embedding.weight
    assert abs(emb.std().item() - 0.02) < 0.001 and abs(emb.mean().item()) < 0.001
    d_inner = expand * d_model
    # Kaiming-uniform(a=sqrt 5) on fan_in = d_inner has bound 1/sqrt(d_inner); then / sqrt(n_layer)
    bound = 1 / math.sqrt(d_inner) / math.sqrt(n_layer)
    for layer in m.backbone.layers:
        w = layer.mixer.out_proj.weight
        assert w.abs().max() <= bound * (1 + 1e-6)
        assert w.abs().max() >= 0.95 * bound
        assert abs(w.std().item() - bound / math.sqrt(3)) < 0.1 * bound
    # biases of the linear layers are zero, except the Δ bias which carries the initial step sizes
    mb = MambaLMHeadModel(tiny(bias=True))
    mixer = mb.backbone.layers[0].mixer
    assert torch.all(mixer.in_proj.bias == 0) and torch.all(mixer.out_proj.bias == 0)
    assert torch.all(mixer.dt_proj.bias < 0)  # inverse softplus of steps below 0.1
    # a generator makes the whole initialisation reproducible, and leaves the global random state alone
    state = torch.random.get_rng_state()
    a = MambaLMHeadModel(tiny(), generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.random.get_rng_state(), state)
    b = MambaLMHeadModel(tiny(), generator=torch.Generator().manual_seed(3))
    c = MambaLMHeadModel(tiny(), generator=torch.Generator().manual_seed(4))
    b_state = b.state_dict()
    for name, pa in a.state_dict().items():
        assert torch.equal(pa, b_state[name]), name
    assert not torch.equal(
        a.backbone.layers[0].mixer.in_proj.weight, c.backbone.layers[0].mixer.in_proj.weight
    )


def test_forward_is_the_residual_stack():
    """Recompute the logits from the parts: embedding, (norm -> mixer, residual) per layer, norm_f, head."""
    m = MambaLMHeadModel(tiny(n_layer=3)).double()
    _perturb(m)
    ids = torch.randint(0, 101, (2, 9))
    residual = m.backbone.embedding.weight[ids]
    for layer in m.backbone.layers:
        x = residual
        normed = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * layer.norm.weight
        residual = residual + layer.mixer(normed)
    x = residual
    final = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * m.backbone.norm_f.weight
    torch.testing.assert_close(m(ids), final @ m.backbone.embedding.weight.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_prefill_then_step_equals_forward(dtype, tol):
    m = MambaLMHeadModel(tiny(d_conv=3)).to(dtype)
    _perturb(m)
    ids = torch.randint(0, 101, (2, 20))
    full = m(ids)
    cache = m.allocate_inference_cache(2)
    assert len(cache) == 2 and cache[0]["conv_state"].shape == (2, 64, 3)
    assert cache[0]["ssm_state"].shape == (2, 64, 8)
    head = m(ids[:, :6], state=cache)
    steps = torch.stack([m.step(ids[:, t], cache) for t in range(6, 20)], dim=1)
    assert (torch.cat([head, steps], 1) - full).abs().max().item() <= tol


def test_bfloat16_runs_and_keeps_fp32_residual():
    m = MambaLMHeadModel(tiny()).to(torch.bfloat16)
    logits = m(torch.randint(0, 101, (1, 12)))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    ref = MambaLMHeadModel(tiny())
    ref.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    ids = torch.randint(0, 101, (1, 12))
    assert (m(ids).float() - ref(ids)).abs().max() < 0.1


def test_num_last_tokens():
    m = MambaLMHeadModel(tiny())
    ids = torch.randint(0, 101, (2, 9))
    torch.testing.assert_close(m(ids, num_last_tokens=3), m(ids)[:, -3:])
    with pytest.raises(ConfigError, match="num_last_tokens"):
        m(ids, num_last_tokens=-1)


def test_autocast_mixed_precision_forward_backward():
    """Under autocast activations are bfloat16 while weights stay float32 (mixed-precision training)."""
    m = MambaLMHeadModel(tiny())
    ids = torch.randint(0, 101, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = m(ids)
        logits.float().logsumexp(-1).mean().backward()
    assert logits.dtype == torch.bfloat16
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    with torch.no_grad():
        assert (logits.float() - m(ids)).abs().max() < 0.05


def test_layernorm_variant():
    m = MambaLMHeadModel(tiny(rms_norm=False))
    assert isinstance(m.backbone.norm_f, torch.nn.LayerNorm) and "backbone.norm_f.bias" in m.state_dict()
    ids = torch.randint(0, 101, (1, 8))
    cache = m.allocate_inference_cache(1)
    head = m(ids[:, :3], state=cache)
    steps = torch.stack([m.step(ids[:, t], cache) for t in range(3, 8)], dim=1)
    assert (torch.cat([head, steps], 1) - m(ids)).abs().max() <= 1e-4


def test_no_weight_decay_names_and_param_groups():
    m = MambaLMHeadModel(tiny(bias=True))
    skip = m.no_weight_decay_param_names()
    assert "backbone.embedding.weight" in skip and "backbone.norm_f.weight" in skip
    for i in range(2):
        pre = f"backbone.layers.{i}."
        for name in (
            "norm.weight",
            "mixer.A_log",
            "mixer.D",
            "mixer.dt_proj.bias",
            "mixer.conv1d.bias",
            "mixer.in_proj.bias",
            "mixer.out_proj.bias",
        ):
            assert pre + name in skip
        for name in (
            "mixer.in_proj.weight",
            "mixer.x_proj.weight",
            "mixer.dt_proj.weight",
            "mixer.out_proj.weight",
            "mixer.conv1d.weight",
        ):
            assert pre + name not in skip
    groups = m.param_groups(0.1)
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    n_params = len(list(m.parameters()))
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == n_params
    torch.optim.AdamW(groups, lr=1e-3)  # accepted as-is by an optimiser


def test_gradients_flow_to_every_parameter():
    m = MambaLMHeadModel(tiny())
    ids = torch.randint(0, 101, (2, 10))
    logits = m(ids)
    torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 104), ids[:, 1:].reshape(-1)).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_bad_input_ids():
    m = MambaLMHeadModel(tiny())
    with pytest.raises(DTypeError, match="input_ids.*integer.*float32"):
        m(torch.rand(2, 5))
    with pytest.raises(DTypeError, match="input_ids"):
        m(torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(DTypeError, match="input_ids"):
        m([[1, 2, 3]])
    with pytest.raises(ShapeError, match=r"input_ids.*\(batch, L\).*\(5,\)"):
        m(torch.ones(5, dtype=torch.long))
    with pytest.raises(TokenIdError, match=r"input_ids.*\[0, 101\).*101"):
        m(torch.full((1, 3), 101))  # a padding row is not a token
    with pytest.raises(TokenIdError, match="-1"):
        m(torch.tensor([[1, -1]]))
    with pytest.raises(ValueError):  # the error classes are ValueErrors too
        m(torch.tensor([[1, 500]]))
    cache = m.allocate_inference_cache(2)
    with pytest.raises(ShapeError, match=r"input_ids.*\(batch,\)"):
        m.step(torch.ones(2, 1, dtype=torch.long), cache)
    with pytest.raises(ConfigError, match="state.*InferenceCache of 2 layers.*got list"):
        m(torch.ones(2, 3, dtype=torch.long), state=cache[:1])
    with pytest.raises(ConfigError, match="state.*InferenceCache of 2 layers.*one of 1"):
        m(torch.ones(2, 3, dtype=torch.long), state=InferenceCache(cache.layers[:1]))
    with pytest.raises(ConfigError, match="state.*2 rows.*got 3"):
        m.step(torch.ones(2, dtype=torch.long), m.allocate_inference_cache(3))
    with pytest.raises(ConfigError, match="batch_size"):
        m.allocate_inference_cache(0)
    with pytest.raises(ConfigError, match="config"):
        MambaLMHeadModel({"d_model": 16})
    with pytest.raises(ConfigError, match="mixer"):
        MambaLMHeadModel(tiny(mixer="no-such-mixer"))


def test_input_on_another_device():
    m = MambaLMHeadModel(tiny()).to("meta")
    with pytest.raises(DeviceError, match="input_ids"):
        m(torch.ones(1, 3, dtype=torch.long))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_mamba2_prefill_then_steps_equals_forward(dtype, tol):
    model = m2_model(dtype=dtype)
    ids = ids_(2, 14)
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_inference_cache(2)
        assert cache[0]["ssm_state"].shape == (2, 8, 4, 8) and cache[0]["ssm_state"].dtype == dtype
        assert cache[0]["conv_state"].shape == (2, 32 + 2 * 2 * 8, 4)
        prefix = model(ids[:, :7], state=cache)  # longer than one chunk (5), not a multiple of it
        steps = [model.step(ids[:, t], cache) for t in range(7, 14)]
    torch.testing.assert_close(prefix, full[:, :7], rtol=0, atol=tol)
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 7:], rtol=0, atol=tol)


def test_initialisation_keeps_the_mamba2_parameters():
    """The LM's reset_parameters re-draws Linear biases, the embedding and out_proj, but must leave the
    block's A_log, dt_bias and D as the block initialised them."""
    cfg = m2_config(d_model=32, n_layer=3, bias=True, dt_min=0.01, dt_max=0.05, dt_init_floor=1e-4,
                    mixer_cfg={"A_init_range": (2.0, 4.0), "headdim": 4})
    model = MambaLMHeadModel(cfg, generator=torch.Generator().manual_seed(0))
    for layer in model.backbone.layers:
        mixer = layer.mixer
        A = torch.exp(mixer.A_log.detach())
        assert A.min() >= 2.0 - 1e-5 and A.max() <= 4.0 + 1e-5 and A.std() > 0
        dt = torch.nn.functional.softplus(mixer.dt_bias.detach())
        assert dt.min() >= 0.01 * (1 - 1e-4) and dt.max() <= 0.05 * (1 + 1e-4)
        assert torch.equal(mixer.D.detach(), torch.ones_like(mixer.D))
        assert torch.equal(mixer.norm.weight.detach(), torch.ones_like(mixer.norm.weight))
        assert torch.all(mixer.in_proj.bias == 0) and torch.all(mixer.out_proj.bias == 0)
        # out_proj: Kaiming-uniform bound 1/sqrt(fan_in), then the 1/sqrt(n_layer) residual rescaling
        bound = 1 / math.sqrt(mixer.out_proj.in_features) / math.sqrt(3)
        assert mixer.out_proj.weight.abs().max() <= bound + 1e-6
        assert mixer.out_proj.weight.abs().max() > 0.8 * bound
    no_decay = model.no_weight_decay_param_names()
    for name in ("A_log", "dt_bias", "D", "norm.weight", "in_proj.bias"):
        assert f"backbone.layers.1.mixer.{name}" in no_decay
    assert "backbone.layers.1.mixer.in_proj.weight" not in no_decay


def test_mamba2_training_step_reaches_every_parameter():
    model = m2_model().train()
    ids = ids_(2, 12)
    logits = model(ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits[..., :VOCAB].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name != "backbone.embedding.weight":
            assert p.grad.abs().sum() > 0, name
