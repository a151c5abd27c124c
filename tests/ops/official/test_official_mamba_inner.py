"""mamba_inner_fn (fused, recomputing backward) == mamba_inner_ref == a plain composition == MambaBlock."""

import pytest
import torch
import torch.nn.functional as F
from official_helpers import assert_same, forward_and_grads, leaves, module_grads

from mambakit.errors import ConfigError, ShapeError
from mambakit.layers.mamba import MambaBlock
from mambakit.ops import selective_scan_ref
from mambakit.ops.official.selective_scan_interface import mamba_inner_fn, mamba_inner_ref

BATCH, D, L, N, RANK, D_OUT, WIDTH = 2, 6, 9, 3, 2, 5, 4


def plain_inner(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
                out_proj_bias, A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None, C_proj_bias=None,
                delta_softplus=True, b_rms_weight=None, c_rms_weight=None, dt_rms_weight=None, eps=1e-6):
    """The official recipe written out with torch's conv1d and einsum (independent of mambakit's code)."""
    x, z = xz.chunk(2, dim=1)
    width = conv1d_weight.shape[-1]
    x = F.conv1d(x, conv1d_weight, conv1d_bias, padding=width - 1, groups=x.shape[1])
    x = F.silu(x[..., :xz.shape[-1]])
    x_dbl = torch.einsum("rd,bdl->blr", x_proj_weight, x)
    d_state = A.shape[1] * (2 if A.is_complex() else 1)

    def rms(v, w):
        return v if w is None else v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps) * w

    delta = rms(torch.einsum("dr,blr->bld", delta_proj_weight, x_dbl[..., :RANK]), dt_rms_weight)
    parts = {"B": (B, x_dbl[..., RANK:RANK + d_state], B_proj_bias, b_rms_weight),
             "C": (C, x_dbl[..., x_dbl.shape[-1] - d_state:], C_proj_bias, c_rms_weight)}
    BC = []
    for given, rows, bias, w in parts.values():
        if given is not None:
            BC.append(given)
            continue
        rows = rms(rows + (0 if bias is None else bias), w)              # (b, l, d_state)
        if A.is_complex():
            rows = rows.reshape(*rows.shape[:2], -1, 2).permute(0, 2, 1, 3).reshape(rows.shape[0], -1,
                                                                                   2 * rows.shape[1])
        else:
            rows = rows.permute(0, 2, 1)
        BC.append(rows)
    y = selective_scan_ref(x, delta.permute(0, 2, 1), A, BC[0], BC[1], D, z, delta_bias, delta_softplus)
    return torch.einsum("ed,bdl->ble", out_proj_weight, y) + (0 if out_proj_bias is None else out_proj_bias)


def inputs(projected=("B", "C"), complex_A=False, seed=0, bc_layout="shared", **extra):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    d_state = 2 * N if complex_A else N
    A = -torch.exp(r(D, N) * 0.5)
    if complex_A:
        A = torch.complex(A, r(D, N))
    t = dict(xz=r(BATCH, 2 * D, L), conv1d_weight=r(D, 1, WIDTH, scale=0.5), conv1d_bias=r(D, scale=0.5),
             x_proj_weight=r(RANK + d_state * len(projected), D, scale=0.5), delta_proj_weight=r(D, RANK),
             out_proj_weight=r(D_OUT, D, scale=0.5), out_proj_bias=r(D_OUT), A=A, D=r(D),
             delta_bias=r(D, scale=0.5))
    for name in ("B", "C"):
        if name not in projected:
            t[name] = {"fixed": lambda: r(D, N), "shared": lambda: r(BATCH, N, L),
                       "grouped": lambda: r(BATCH, 2, N, L)}[bc_layout]()
    for name, size in extra.items():
        t[name] = r(size, scale=0.3) + (1.0 if "rms" in name else 0.0)
    return t


@pytest.mark.parametrize("checkpoint_lvl", [1, 0])
@pytest.mark.parametrize("projected, bc_layout", [(("B", "C"), None), (("C",), "fixed"), (("B",), "shared"),
                                                   ((), "grouped"), ((), "fixed")])
def test_fused_equals_ref_and_plain_float64(projected, bc_layout, checkpoint_lvl):
    t = inputs(projected, bc_layout=bc_layout)
    want = forward_and_grads(plain_inner, leaves(t))
    got = forward_and_grads(lambda **a: mamba_inner_fn(**a, checkpoint_lvl=checkpoint_lvl), leaves(t))
    ref = forward_and_grads(mamba_inner_ref, leaves(t))
    assert_same(got, want)
    assert_same(ref, want)


def test_projection_biases_and_rms_norms():
    t = inputs(B_proj_bias=N, C_proj_bias=N, b_rms_weight=N, c_rms_weight=N, dt_rms_weight=D)
    want = forward_and_grads(lambda b_c_dt_rms_eps=1e-6, **a: plain_inner(**a, eps=b_c_dt_rms_eps), leaves(t))
    assert_same(forward_and_grads(mamba_inner_fn, leaves(t)), want)
    assert_same(forward_and_grads(mamba_inner_ref, leaves(t)), want)
    assert all(torch.count_nonzero(want[1][k]) > 0 for k in ("b_rms_weight", "c_rms_weight", "dt_rms_weight"))


def test_complex_A_projected_interleaved():
    t = inputs(complex_A=True, seed=3)
    want = forward_and_grads(plain_inner, leaves(t))
    assert_same(forward_and_grads(mamba_inner_fn, leaves(t)), want)


def test_no_softplus_and_no_biases():
    t = inputs(seed=5)
    t.update(conv1d_bias=None, out_proj_bias=None, delta_bias=None, D=None)
    t["xz"] = t["xz"].abs()  # delta without softplus: keep it mostly positive
    want = forward_and_grads(lambda **a: plain_inner(**a, delta_softplus=False), leaves(t))
    assert_same(forward_and_grads(lambda **a: mamba_inner_fn(**a, delta_softplus=False), leaves(t)), want)


def test_float32_matches_float64_reference():
    t = inputs(seed=7)
    want = forward_and_grads(plain_inner, leaves(t))
    got = forward_and_grads(mamba_inner_fn, leaves(t, torch.float32))
    got = ([o.double() for o in got[0]], {k: v.double() for k, v in got[1].items()})
    assert_same(got, want, rtol=1e-4, atol=1e-5)
    assert_same(forward_and_grads(mamba_inner_fn, leaves(t, torch.float32)),
                forward_and_grads(mamba_inner_ref, leaves(t, torch.float32)), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_equals_mamba_block_forward_and_parameter_gradients(dtype):
    torch.manual_seed(11)
    block = MambaBlock(4, d_state=3, d_conv=3, bias=True).to(dtype)
    h = torch.randn(2, 8, 4, dtype=dtype)
    cot = torch.randn(2, 8, 4, dtype=dtype)

    def fused():
        return mamba_inner_fn(block.in_proj(h).transpose(1, 2), block.conv1d.weight, block.conv1d.bias,
                              block.x_proj.weight, block.dt_proj.weight, block.out_proj.weight,
                              block.out_proj.bias, -torch.exp(block.A_log), D=block.D,
                              delta_bias=block.dt_proj.bias)

    got, want = module_grads(block, fused, cot), module_grads(block, lambda: block(h), cot)
    assert set(got[1]) == {n for n, _ in block.named_parameters()}
    assert_same(got, want, dtype)


def test_backward_recomputes_from_the_inputs_only():
    t = leaves(inputs())
    given = {id(v) for v in t.values() if isinstance(v, torch.Tensor)}
    saved = []

    def pack(x):
        saved.append(x)
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = mamba_inner_fn(**t)
    assert saved and all(id(s) in given for s in saved), "something besides the inputs was saved"
    out.sum().backward()


def test_refusals_name_the_argument():
    t = inputs()
    with pytest.raises(ConfigError, match="checkpoint_lvl"):
        mamba_inner_fn(**t, checkpoint_lvl=2)
    with pytest.raises(ConfigError, match="B_proj_bias: applies to the projected B"):
        mamba_inner_fn(**{**inputs(("C",), bc_layout="fixed"), "B_proj_bias": torch.zeros(N)})
    with pytest.raises(ConfigError, match="c_rms_weight"):
        mamba_inner_fn(**{**inputs(("B",), bc_layout="shared"), "c_rms_weight": torch.ones(N)})
    with pytest.raises(ShapeError, match="x_proj_weight: expected at least"):
        mamba_inner_fn(**{**t, "x_proj_weight": torch.zeros(RANK + N, D, dtype=torch.float64)})
    with pytest.raises(ShapeError, match="xz"):
        mamba_inner_fn(**{**t, "xz": torch.zeros(BATCH, 2 * D + 1, L, dtype=torch.float64)})
