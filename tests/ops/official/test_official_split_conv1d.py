"""mamba_split_conv1d_scan_combined == mamba_split_conv1d_scan_ref == a plain composition == Mamba2Block,
forward and every gradient."""

import math

import pytest
import torch
import torch.nn.functional as F
from official_helpers import assert_same, forward_and_grads, leaves, module_grads

from mambakit.errors import ConfigError, ShapeError
from mambakit.layers.mamba2 import Mamba2Block
from mambakit.ops import ssd_ref
from mambakit.ops.official.ssd_combined import mamba_split_conv1d_scan_combined, mamba_split_conv1d_scan_ref

BATCH, L, HEADS, HEADDIM, N, WIDTH, OUT = 2, 11, 4, 3, 5, 4, 6


def plain_conv(x, weight, bias, seq_idx):
    """Causal depthwise conv + SiLU by windows; taps reaching into another packed sequence read zero."""
    W = weight.shape[-1]
    windows = F.pad(x, (W - 1, 0)).unfold(-1, W, 1)                  # (b, c, L, W)
    if seq_idx is not None:
        ids = F.pad(seq_idx, (W - 1, 0), value=-1).unfold(-1, W, 1)   # (b, L, W)
        windows = windows * (ids == seq_idx[..., None])[:, None].to(x.dtype)
    return F.silu((windows * weight[:, None, :]).sum(-1) + bias[:, None])


def plain_split(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, rmsnorm_weight=None, outproj_weight=None,
                outproj_bias=None, initial_states=None, *, ngroups, d_mlp, norm_before_gate, seq_idx=None,
                dt_limit=(0.0, math.inf), eps=1e-6, return_final_states=False):
    dim = HEADS * HEADDIM
    z0, x0, z, xBC, dt = zxbcdt.split([d_mlp, d_mlp, dim, dim + 2 * ngroups * N, HEADS], -1)
    xBC = plain_conv(xBC.transpose(1, 2), conv1d_weight, conv1d_bias, seq_idx).transpose(1, 2)
    x, B, C = xBC.split([dim, ngroups * N, ngroups * N], -1)
    y, final = ssd_ref(x.unflatten(-1, (HEADS, HEADDIM)), dt, A, B.unflatten(-1, (ngroups, N)),
                       C.unflatten(-1, (ngroups, N)),
                       D=D if D.dim() == 2 else D[:, None].expand(HEADS, HEADDIM),
                       z=None if rmsnorm_weight is not None else z.unflatten(-1, (HEADS, HEADDIM)),
                       dt_bias=dt_bias, initial_states=initial_states, seq_idx=seq_idx, dt_softplus=True,
                       dt_limit=dt_limit, return_final_states=True)
    y = y.flatten(-2)
    if rmsnorm_weight is not None:
        g = y * F.silu(z) if not norm_before_gate else y
        g = g.unflatten(-1, (ngroups, -1))
        g = (g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + eps)).flatten(-2) * rmsnorm_weight
        y = g * F.silu(z) if norm_before_gate else g
    if d_mlp:
        y = torch.cat([F.silu(z0) * x0, y], -1)
    if outproj_weight is not None:
        y = y @ outproj_weight.T + (0 if outproj_bias is None else outproj_bias)
    return (y, final) if return_final_states else y


def inputs(ngroups=2, d_mlp=0, rmsnorm=True, outproj=True, D_heads=False, seed=0, initial=False):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    dim = HEADS * HEADDIM
    conv_dim = dim + 2 * ngroups * N
    t = dict(zxbcdt=r(BATCH, L, 2 * d_mlp + dim + conv_dim + HEADS),
             conv1d_weight=r(conv_dim, WIDTH, scale=0.5),
             conv1d_bias=r(conv_dim, scale=0.5), dt_bias=r(HEADS, scale=0.5), A=-torch.exp(r(HEADS) * 0.5),
             D=r(HEADS) if D_heads else r(HEADS, HEADDIM))
    if rmsnorm:
        t["rmsnorm_weight"] = 1 + r(dim, scale=0.3)
    if outproj:
        t.update(outproj_weight=r(OUT, d_mlp + dim, scale=0.5), outproj_bias=r(OUT))
    if initial:
        t["initial_states"] = r(BATCH, HEADS, HEADDIM, N)
    return t


CASES = {
    "norm_after_gate": dict(norm_before_gate=False),
    "norm_before_gate": dict(norm_before_gate=True, ngroups=1),
    "gate_only_no_outproj": dict(rmsnorm=False, outproj=False),
    "gated_mlp_D_per_head": dict(d_mlp=3, D_heads=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fused_equals_ref_and_plain_float64(case):
    spec = dict(CASES[case])
    norm_before_gate = spec.pop("norm_before_gate", True)
    t = inputs(**spec, seed=len(case))
    opts = dict(headdim=HEADDIM, ngroups=spec.get("ngroups", 2), norm_before_gate=norm_before_gate)
    want = forward_and_grads(lambda **a: plain_split(**a, ngroups=opts["ngroups"], d_mlp=spec.get("d_mlp", 0),
                                                     norm_before_gate=norm_before_gate), leaves(t))
    got = forward_and_grads(lambda **a: mamba_split_conv1d_scan_combined(**a, chunk_size=4, **opts),
                            leaves(t))
    ref = forward_and_grads(lambda **a: mamba_split_conv1d_scan_ref(**a, chunk_size=4, **opts), leaves(t))
    assert_same(got, want)
    assert_same(ref, want)


def test_initial_and_final_states_dt_limit_and_no_activation_refusal():
    t = inputs(initial=True, seed=9)
    limit = (0.2, 1.5)
    want = forward_and_grads(lambda **a: plain_split(**a, ngroups=2, d_mlp=0, norm_before_gate=False,
                                                     dt_limit=limit, return_final_states=True), leaves(t))
    got = forward_and_grads(lambda **a: mamba_split_conv1d_scan_combined(
        **a, chunk_size=3, headdim=HEADDIM, ngroups=2, norm_before_gate=False, dt_limit=limit,
        return_final_states=True), leaves(t))
    assert_same(got, want)


def test_float32_matches_float64():
    t = inputs(seed=4, d_mlp=2)

    def fn(**a):
        return mamba_split_conv1d_scan_combined(**a, chunk_size=4, headdim=HEADDIM, ngroups=2)

    want = forward_and_grads(fn, leaves(t))
    got = forward_and_grads(fn, leaves(t, torch.float32))
    got = ([o.double() for o in got[0]], {k: v.double() for k, v in got[1].items()})
    assert_same(got, want, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("d_ssm, rmsnorm", [(None, True), (8, True), (None, False)])
def test_equals_mamba2_block(d_ssm, rmsnorm, dtype):
    torch.manual_seed(3)
    block = Mamba2Block(8, d_state=4, d_conv=3, expand=2, headdim=4, d_ssm=d_ssm, ngroups=2, chunk_size=4,
                        rmsnorm=rmsnorm, bias=True, dt_limit=(0.01, 2.0)).to(dtype)
    h = torch.randn(2, 9, 8, dtype=dtype)
    cot = torch.randn(2, 9, 8, dtype=dtype)

    def fused():
        return mamba_split_conv1d_scan_combined(
            block.in_proj(h), block.conv1d.weight, block.conv1d.bias, block.dt_bias, -torch.exp(block.A_log),
            block.D, block.chunk_size, dt_limit=block.dt_limit,
            rmsnorm_weight=block.norm.weight if rmsnorm else None,
            rmsnorm_eps=block.norm.eps if rmsnorm else 1e-6,
            outproj_weight=block.out_proj.weight, outproj_bias=block.out_proj.bias, headdim=block.headdim,
            ngroups=block.ngroups, norm_before_gate=False)

    got, want = module_grads(block, fused, cot), module_grads(block, lambda: block(h), cot)
    assert_same(got, want, dtype)


def test_keeps_only_its_inputs():
    t = leaves(inputs())
    given = {id(v) for v in t.values()}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x) or x, lambda x: x):
        mamba_split_conv1d_scan_combined(**t, chunk_size=4, headdim=HEADDIM, ngroups=2)
    assert saved and all(id(s) in given for s in saved)


def test_refusals_name_the_argument():
    t = inputs()
    with pytest.raises(ConfigError, match="headdim: required"):
        mamba_split_conv1d_scan_combined(**{**t, "D": t["D"][:, 0]}, chunk_size=4, ngroups=2)
    with pytest.raises(ShapeError, match="conv1d_weight"):
        mamba_split_conv1d_scan_combined(**t, chunk_size=4, ngroups=4)
    with pytest.raises(ShapeError, match="zxbcdt"):
        mamba_split_conv1d_scan_combined(**{**t, "zxbcdt": t["zxbcdt"][..., 1:]}, chunk_size=4, ngroups=2)
    with pytest.raises(ConfigError, match="outproj_bias: given without outproj_weight"):
        mamba_split_conv1d_scan_combined(**{**t, "outproj_weight": None}, chunk_size=4, ngroups=2)
    with pytest.raises(ConfigError, match="activation"):
        mamba_split_conv1d_scan_combined(**t, chunk_size=4, ngroups=2, activation="relu")


def test_packed_sequences_with_seq_idx_equal_each_alone():
    lengths = [4, 1, 6]
    t = inputs(seed=12, initial=True)
    t["zxbcdt"] = t["zxbcdt"][:1]
    t["initial_states"] = t["initial_states"][:1]
    seq_idx = torch.repeat_interleave(torch.arange(3, dtype=torch.int32), torch.tensor(lengths))[None]
    opts = dict(chunk_size=4, headdim=HEADDIM, ngroups=2)

    def packed(**a):
        return mamba_split_conv1d_scan_combined(**a, seq_idx=seq_idx, **opts)

    def alone(zxbcdt, initial_states, **a):
        outs, start = [], 0
        for s, n in enumerate(lengths):
            h0 = initial_states if s == 0 else torch.zeros_like(initial_states)
            outs.append(mamba_split_conv1d_scan_combined(zxbcdt[:, start:start + n], **a, initial_states=h0,
                                                         **opts))
            start += n
        return torch.cat(outs, 1)

    want = forward_and_grads(alone, leaves(t))
    assert_same(forward_and_grads(packed, leaves(t)), want)
    plain = forward_and_grads(lambda **a: plain_split(**a, ngroups=2, d_mlp=0, norm_before_gate=True,
                                                      seq_idx=seq_idx), leaves(t))
    assert_same(plain, want)
