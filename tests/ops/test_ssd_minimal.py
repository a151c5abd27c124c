"""The readable chunked SSD (mambakit.ops.ssd.minimal) against the recurrence, and the ``backend=`` choices of
``ssd`` against its reference."""

from __future__ import annotations

import pytest
import torch
from test_ssd_ref import make_inputs, rel_err

from mambakit.errors import ConfigError
from mambakit.ops import ssd_minimal
from mambakit.ops.ssd import available_backends, ssd, ssd_ref

GRAD_INPUTS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")


def _outputs_and_grads(fn, kw: dict, **flags) -> list[torch.Tensor]:
    leaves = {k: v.detach().clone().requires_grad_(k in GRAD_INPUTS) if isinstance(v, torch.Tensor) else v
              for k, v in kw.items()}
    y, final = fn(**leaves, dt_softplus=True, return_final_states=True, **flags)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    (y * weights).sum().add_((final * final).sum()).backward()
    return [y, final] + [leaves[k].grad for k in GRAD_INPUTS if leaves.get(k) is not None]


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 13, 64])   # 4 and 5 do not divide L = 13
@pytest.mark.parametrize("with_seq_idx", [False, True])
def test_minimal_matches_ref_forward_and_gradients_fp64(chunk_size, with_seq_idx):
    kw = make_inputs(2, 13, 4, 3, 2, 5, seed=3, with_D="headdim")
    if with_seq_idx:
        kw["seq_idx"] = torch.tensor([[0] * 6 + [1] * 7, [0] * 2 + [1] * 9 + [2] * 2])
    want = _outputs_and_grads(ssd_ref, kw)
    got = _outputs_and_grads(ssd_minimal, kw, chunk_size=chunk_size)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert rel_err(g, w) <= 1e-10


def test_minimal_gradcheck_fp64():
    kw = make_inputs(1, 7, 2, 2, 1, 3, seed=4)
    names = ["x", "dt", "B", "C"]

    def f(*tensors):
        args = {**kw, **dict(zip(names, tensors, strict=True))}
        return ssd_minimal(**args, dt_softplus=True, chunk_size=3)

    assert torch.autograd.gradcheck(f, [kw[k].detach().clone().requires_grad_() for k in names])


def test_minimal_empty_sequence_returns_the_initial_state():
    kw = make_inputs(1, 0, 2, 2, 1, 3)
    y, final = ssd_minimal(**kw, return_final_states=True, chunk_size=4)
    assert y.shape == kw["x"].shape and torch.equal(final, kw["initial_states"])


def test_minimal_chunk_size_is_keyword_only_and_checked():
    kw = make_inputs(1, 6, 2, 2, 1, 2)
    args = (kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"])
    with pytest.raises(TypeError):
        ssd_minimal(*args, None, None, None, None, None, False, (0.0, float("inf")), False, 4)
    with pytest.raises(ConfigError, match="chunk_size"):
        ssd_minimal(*args, chunk_size=0)


@pytest.mark.parametrize("backend", ["auto", *available_backends()])
def test_every_backend_matches_ref(backend):
    assert set(available_backends()) == {"chunked", "minimal", "quadratic", "ref"}
    kw = make_inputs(2, 11, 4, 3, 2, 4, seed=9)
    args = (kw.pop("x"), kw.pop("dt"), kw.pop("A"), kw.pop("B"), kw.pop("C"))
    y_ref, s_ref = ssd_ref(*args, **kw, dt_softplus=True, return_final_states=True)
    y, s = ssd(*args, 4, **kw, dt_softplus=True, return_final_states=True, backend=backend)
    assert rel_err(y, y_ref) <= 1e-10 and rel_err(s, s_ref) <= 1e-10


@pytest.mark.parametrize("backend", ["fast", "Chunked", None, 3])
def test_unknown_backend_is_a_config_error_listing_the_names(backend):
    kw = make_inputs(1, 6, 2, 2, 1, 2)
    with pytest.raises(ConfigError, match=r"^backend: .*'chunked', 'minimal', 'quadratic', 'ref'"):
        ssd(kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], 4, backend=backend)
