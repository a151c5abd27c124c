"""Grouped-query attention with partial rotary, no positions, sliding window and a set softmax scale, against
a plain float64 loop; a chunked prefill (forward continuing the cache) equals one forward."""

import pytest
import torch

from mambakit.errors import ConfigError
from mambakit.layers import CausalSelfAttention
from mambakit.layers.attention import apply_rotary, rotary_angles

F64 = torch.float64


def naive(layer: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    b, L, _ = x.shape
    H, Hkv, D, R = layer.n_heads, layer.n_kv_heads, layer.head_dim, layer.rotary_dim
    qkv = x @ layer.in_proj.weight.T
    q = qkv[..., : H * D].view(b, L, H, D)
    k = qkv[..., H * D : (H + Hkv) * D].view(b, L, Hkv, D)
    v = qkv[..., (H + Hkv) * D :].view(b, L, Hkv, D)
    if R:
        cos, sin = rotary_angles(torch.arange(L), R, layer.rope_base)
        turn = lambda t: torch.cat([apply_rotary(t[..., :R].transpose(1, 2), cos, sin).transpose(1, 2),  # noqa
                                    t[..., R:]], -1)
        q, k = turn(q), turn(k)
    out = torch.zeros(b, L, H, D, dtype=x.dtype)
    window = layer.sliding_window or L
    for h in range(H):
        g = h // (H // Hkv)
        for t in range(L):
            lo = max(0, t - window + 1)
            scores = (q[:, t, h, None] * k[:, lo : t + 1, g]).sum(-1) * layer.softmax_scale
            out[:, t, h] = (torch.softmax(scores, -1)[..., None] * v[:, lo : t + 1, g]).sum(1)
    return out.reshape(b, L, H * D) @ layer.out_proj.weight.T


CASES = {
    "gqa-partial-rope-window": dict(n_heads=4, n_kv_heads=2, head_dim=6, rotary_dim=4, sliding_window=5),
    "mqa-no-positions-scale": dict(n_heads=3, n_kv_heads=1, head_dim=8, rotary_dim=0, softmax_scale=0.3),
    "mha-full": dict(n_heads=2),
}


@pytest.mark.parametrize("name", list(CASES))
@torch.no_grad()
def test_matches_a_plain_loop_and_chunked_prefill_and_steps(name):
    layer = CausalSelfAttention(16, **CASES[name], cache_len=3, dtype=F64)
    x = torch.randn(2, 13, 16, dtype=F64)
    full = layer(x)
    torch.testing.assert_close(full, naive(layer, x), rtol=1e-10, atol=1e-10)
    state = layer.allocate_state(2)
    outs = [layer(x[:, :4], state=state), layer(x[:, 4:9], state=state)]
    outs += [layer.step(x[:, t], state)[:, None] for t in range(9, 13)]
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)
    assert int(state["length"]) == 13 and state["key_cache"].shape[1] == layer.n_kv_heads


@pytest.mark.parametrize("kwargs, name", [
    (dict(n_heads=4, n_kv_heads=3), "n_kv_heads"),
    (dict(n_heads=4, head_dim=6, rotary_dim=5), "rotary_dim"),
    (dict(n_heads=4, sliding_window=0), "sliding_window"),
    (dict(n_heads=4, softmax_scale=-1.0), "softmax_scale"),
])
def test_bad_options_name_the_argument(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        CausalSelfAttention(16, **kwargs)
