"""The Mamba-2 block: parity with transformers' Mamba2Mixer, the mixer protocol, and bad configurations."""

from __future__ import annotations

import math

import pytest
import torch

from mambakit.errors import ConfigError, ShapeError
from mambakit.layers.mamba2 import Mamba2Block, RMSNormGated

# (d_model, heads, headdim, groups, d_state, chunk_size, L)
HF_CASES = [
    (16, 8, 4, 2, 6, 5, 13),
    (24, 4, 12, 4, 8, 16, 40),
    (8, 2, 8, 1, 4, 3, 7),
    (12, 6, 4, 3, 16, 8, 8),
]


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Non-default values everywhere (D, norm weight, biases...) so that every parameter is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            scale = 0.3 if name in ("A_log", "dt_bias") else 0.5
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float64).to(param.dtype) * scale)


def _hf_mixer(d_model, heads, headdim, groups, d_state, chunk_size):
    transformers = pytest.importorskip("transformers")
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    config = transformers.Mamba2Config(
        hidden_size=d_model, num_heads=heads, head_dim=headdim, expand=heads * headdim // d_model,
        n_groups=groups, state_size=d_state, conv_kernel=4, chunk_size=chunk_size, num_hidden_layers=1,
        vocab_size=16, layer_norm_epsilon=1e-5)
    return Mamba2Mixer(config, layer_idx=0)


def _ours_like(d_model, heads, headdim, groups, d_state, chunk_size, **kwargs) -> Mamba2Block:
    return Mamba2Block(d_model, d_state=d_state, d_conv=4, expand=heads * headdim // d_model, headdim=headdim,
                       ngroups=groups, nheads=heads, chunk_size=chunk_size, **kwargs)


@pytest.mark.parametrize("case", HF_CASES, ids=lambda c: "d{}h{}p{}g{}n{}Q{}L{}".format(*c))
def test_matches_transformers_mixer_forward_and_backward(case):
    d_model, heads, headdim, groups, d_state, chunk_size, L = case
    theirs = _hf_mixer(d_model, heads, headdim, groups, d_state, chunk_size)
    _randomise(theirs, seed=1)
    ours = _ours_like(d_model, heads, headdim, groups, d_state, chunk_size)
    ours.load_state_dict(theirs.state_dict(), strict=True)          # same names, same shapes
    u = torch.randn(2, L, d_model)
    for mode in ("eval", "train"):
        theirs.train(mode == "train")
        y_theirs = theirs(u)
        y_ours = ours(u)
        assert (y_ours - y_theirs).abs().max().item() <= 1e-4, mode
    (y_theirs ** 2).sum().backward()
    (y_ours ** 2).sum().backward()
    our_params = dict(ours.named_parameters())
    for name, param in theirs.named_parameters():
        g_ours, g_theirs = our_params[name].grad, param.grad
        assert ((g_ours - g_theirs).abs().max() / g_theirs.abs().max()).item() <= 1e-4, name


def test_parameter_names_and_shapes_follow_mamba_ssm():
    d_model, d_state, expand, headdim, ngroups, d_conv = 32, 16, 2, 8, 2, 3
    block = Mamba2Block(d_model, d_state=d_state, d_conv=d_conv, expand=expand, headdim=headdim,
                        ngroups=ngroups)
    d_inner = expand * d_model
    heads = d_inner // headdim
    conv_dim = d_inner + 2 * ngroups * d_state
    expected = {
        "in_proj.weight": (2 * d_inner + 2 * ngroups * d_state + heads, d_model),
        "conv1d.weight": (conv_dim, 1, d_conv),
        "conv1d.bias": (conv_dim,),
        "dt_bias": (heads,),
        "A_log": (heads,),
        "D": (heads,),
        "norm.weight": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }
    assert {k: tuple(v.shape) for k, v in block.state_dict().items()} == expected
    # Initialisation as mamba_ssm: A in A_init_range, softplus(dt_bias) in [dt_min, dt_max], D = 1.
    A = torch.exp(block.A_log)
    assert ((A >= 1) & (A <= 16)).all()
    dt = torch.nn.functional.softplus(block.dt_bias)
    assert ((dt >= 1e-3 * (1 - 1e-5)) & (dt <= 0.1 * (1 + 1e-5))).all()
    assert torch.equal(block.D, torch.ones(heads))


def test_gated_mlp_part_when_d_ssm_is_smaller():
    block = Mamba2Block(16, d_state=4, expand=2, headdim=4, d_ssm=16, ngroups=2, chunk_size=4)
    assert block.d_mlp == 16 and block.nheads == 4
    assert block.in_proj.weight.shape == (2 * 32 + 2 * 2 * 4 + 4, 16)
    assert block.norm.weight.shape == (16,) and block.out_proj.weight.shape == (16, 32)
    _randomise(block, seed=2)
    u = torch.randn(2, 9, 16)
    y = block(u)
    # The MLP channels: out_proj applied to [silu(z0) x0, 0] is the part of y they contribute.
    z0, x0, *_ = block._split(block.in_proj(u))
    mlp_only = torch.nn.functional.linear(torch.cat([torch.nn.functional.silu(z0) * x0,
                                                     torch.zeros(2, 9, 16)], -1), block.out_proj.weight)
    ssm_only = torch.nn.functional.linear(torch.cat([torch.zeros(2, 9, 16), _ssm_channels(block, u)], -1),
                                          block.out_proj.weight)
    assert torch.allclose(y, mlp_only + ssm_only, atol=1e-5)


def _ssm_channels(block: Mamba2Block, u: torch.Tensor) -> torch.Tensor:
    """The normed SSD output channels, recomputed from the pieces with the reference recurrence."""
    from mambakit.ops.conv1d import causal_conv1d_ref
    from mambakit.ops.ssd import ssd_ref

    _, _, z, xBC, dt = block._split(block.in_proj(u))
    xBC = causal_conv1d_ref(xBC.transpose(1, 2), block.conv1d.weight[:, 0], block.conv1d.bias, "silu")
    sizes = [block.d_ssm, block.ngroups * block.d_state, block.ngroups * block.d_state]
    x, B, C = torch.split(xBC.transpose(1, 2), sizes, -1)
    y = ssd_ref(x.unflatten(-1, (block.nheads, block.headdim)), dt, -torch.exp(block.A_log),
                B.unflatten(-1, (block.ngroups, -1)), C.unflatten(-1, (block.ngroups, -1)), D=block.D,
                dt_bias=block.dt_bias, dt_softplus=True)
    return block.norm(y.flatten(-2), z)


BLOCK_VARIANTS = {
    "default": dict(),
    "mlp-Dhdim": dict(d_ssm=16, D_has_hdim=True),
    "no-norm": dict(rmsnorm=False),
    "norm-before-gate": dict(norm_before_gate=True),
    "dt-limit-bias": dict(dt_limit=(0.01, 0.5), bias=True, conv_bias=False),
}


@pytest.mark.parametrize("variant", list(BLOCK_VARIANTS))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.parametrize("prefix", [2, 7])                          # shorter and longer than d_conv
def test_prefix_then_steps_equals_forward(variant, dtype, tol, prefix):
    block = Mamba2Block(16, d_state=4, d_conv=4, expand=2, headdim=4, ngroups=2, chunk_size=3, dtype=dtype,
                        **BLOCK_VARIANTS[variant])
    _randomise(block, seed=3)
    L = 11
    u = torch.randn(2, L, 16, dtype=dtype)
    full = block(u)
    state = block.allocate_state(2)
    pieces = [block(u[:, :prefix], state)]
    storage = {k: v.data_ptr() for k, v in state.items()}
    pieces += [block.step(u[:, t], state)[:, None] for t in range(prefix, L)]
    assert {k: v.data_ptr() for k, v in state.items()} == storage     # updated in place
    assert (torch.cat(pieces, 1) - full).abs().max().item() <= tol


def test_allocate_state_shapes_and_dtype():
    block = Mamba2Block(16, d_state=4, d_conv=3, expand=2, headdim=8, ngroups=2)
    state = block.allocate_state(3)
    assert state["conv_state"].shape == (3, 32 + 2 * 2 * 4, 3)
    assert state["ssm_state"].shape == (3, 4, 8, 4)
    assert all(v.dtype == torch.float32 and not v.any() for v in state.values())
    assert block.allocate_state(1, dtype=torch.float64)["ssm_state"].dtype == torch.float64


def test_bfloat16_block_runs_in_bfloat16():
    block = Mamba2Block(32, d_state=8, expand=2, headdim=8, ngroups=2, chunk_size=8)
    _randomise(block, seed=4)
    u = torch.randn(2, 20, 32)
    y32 = block(u)
    y16 = block.to(torch.bfloat16)(u.bfloat16())
    assert y16.dtype == torch.bfloat16
    assert ((y16.float() - y32).abs().max() / y32.abs().max()).item() <= 0.1


def test_rmsnorm_gated_matches_transformers():
    modeling = pytest.importorskip("transformers.models.mamba2.modeling_mamba2")
    theirs = modeling.MambaRMSNormGated(12, group_size=4, eps=1e-5)
    ours = RMSNormGated(12, eps=1e-5, group_size=4)
    with torch.no_grad():
        theirs.weight.normal_()
        ours.weight.copy_(theirs.weight)
    x, z = torch.randn(3, 5, 12), torch.randn(3, 5, 12)
    assert torch.allclose(ours(x, z), theirs(x, z), atol=1e-6)
    # Each group is normalised on its own.
    y = RMSNormGated(12, group_size=4)(x)
    assert torch.allclose(y.unflatten(-1, (3, 4)).pow(2).mean(-1), torch.ones(3, 5, 3), atol=1e-3)


@pytest.mark.parametrize("kwargs,field", [
    (dict(d_model=16, expand=2, headdim=5), "headdim"),                  # heads would not divide d_ssm
    (dict(d_model=16, expand=2, headdim=4, ngroups=3), "ngroups"),       # 8 heads, 3 groups
    (dict(d_model=16, expand=2, headdim=4, nheads=4), "nheads"),         # headdim mismatch
    (dict(d_model=16, chunk_size=0, headdim=4), "chunk_size"),
    (dict(d_model=16, d_ssm=64, headdim=4), "d_ssm"),
    (dict(d_model=10, expand=1.25, headdim=4), "expand"),
    (dict(d_model=16, headdim=4, dt_limit=(1.0, 0.0)), "dt_limit"),
])
def test_bad_configuration_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=rf"^{field}\b"):
        Mamba2Block(**kwargs)


def test_bad_input_names_the_argument():
    block = Mamba2Block(16, d_state=4, headdim=8)
    with pytest.raises(ShapeError, match="^hidden_states"):
        block(torch.randn(2, 5, 15))
    with pytest.raises(ShapeError, match="^hidden_states"):
        block.step(torch.randn(2, 5, 16), block.allocate_state(2))
    with pytest.raises(ShapeError, match="conv_state"):
        block(torch.randn(3, 5, 16), block.allocate_state(2))
    with pytest.raises(ConfigError, match="^state"):
        block.step(torch.randn(2, 16), {"ssm_state": torch.zeros(2, 4, 8, 4)})


def test_long_prompt_with_extreme_inputs_stays_finite():
    block = Mamba2Block(8, d_state=4, expand=2, headdim=4, chunk_size=64)
    with torch.no_grad():
        block.in_proj.weight.mul_(40.0)                                  # dt far outside the usual range
    u = torch.randn(1, 4096, 8)
    y = block(u)
    assert torch.isfinite(y).all()
    assert math.isfinite(y.float().pow(2).sum().item())
