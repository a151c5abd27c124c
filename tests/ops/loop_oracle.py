"""Plainly written float64 oracles for the ops tests: nested Python loops over scalars, nothing vectorised.

These re-derive the selective scan and the causal convolution from their defining recurrences (Mamba paper,
Algorithm 2; the official ``selective_scan_ref`` layouts) one number at a time, so they share no code and no
tensor tricks with the functions under test. Keep the shapes you feed them tiny.
"""

from __future__ import annotations

import cmath
import math

import numpy as np
import torch


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    if t is None:
        return None
    t = t.detach().cpu()
    return t.to(torch.complex128).numpy() if t.is_complex() else t.to(torch.float64).numpy()


def softplus(x: float) -> float:
    """log(1 + e^x), written so that neither branch overflows."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def silu(x: float) -> float:
    """x * sigmoid(x), written so that exp never overflows."""
    if x >= 0:
        return x / (1.0 + math.exp(-x))
    e = math.exp(x)
    return x * e / (1.0 + e)


def _coefficient(X: np.ndarray, b: int, d: int, n: int, t: int, dim: int, complex_A: bool) -> complex | float:
    """The value of B or C used by channel d of batch row b at time t, for state index n."""
    if X.ndim == 2:                      # time-invariant (dim, N)
        return X[d, n]
    if X.ndim == 3:                      # input-dependent (batch, N, L or 2L), shared by every channel
        row = X[b, n]
    else:                                # grouped (batch, G, N, L or 2L): channel d reads group d // (dim/G)
        channels_per_group = dim // X.shape[1]
        row = X[b, d // channels_per_group, n]
    if complex_A:                        # interleaved pairs: (re, im) of time t at positions 2t, 2t+1
        return complex(row[2 * t], row[2 * t + 1])
    return row[t]


def selective_scan_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Selective scan by scalar loops in float64 / complex128.

    Returns ``(out, last_state)`` as numpy arrays of shapes (batch, dim, L) and (batch, dim, N).
    """
    u, delta, A, B, C, D, z, delta_bias = (_np(x) for x in (u, delta, A, B, C, D, z, delta_bias))
    batch, dim, L = u.shape
    N = A.shape[1]
    complex_A = np.iscomplexobj(A)
    out = np.zeros((batch, dim, L))
    last_state = np.zeros((batch, dim, N), dtype=complex if complex_A else float)
    for b in range(batch):
        for d in range(dim):
            h = [0j if complex_A else 0.0] * N
            for t in range(L):
                step = float(delta[b, d, t])
                if delta_bias is not None:
                    step += float(delta_bias[d])
                if delta_softplus:
                    step = softplus(step)
                x = float(u[b, d, t])
                y = 0j if complex_A else 0.0
                for n in range(N):
                    a = complex(A[d, n]) if complex_A else float(A[d, n])
                    decay = cmath.exp(step * a) if complex_A else math.exp(step * a)
                    h[n] = decay * h[n] + step * _coefficient(B, b, d, n, t, dim, complex_A) * x
                    y += _coefficient(C, b, d, n, t, dim, complex_A) * h[n]
                y = 2.0 * y.real if complex_A else y
                if D is not None:
                    y += float(D[d]) * x
                if z is not None:
                    y *= silu(float(z[b, d, t]))
                out[b, d, t] = y
            for n in range(N):
                last_state[b, d, n] = h[n]
    return out, last_state


def causal_conv1d_loop(x, weight, bias=None, activation=None):
    """Causal depthwise convolution by scalar loops.

    out[b, d, t] = act(bias[d] + sum_k weight[d, k] * x[b, d, t - W + 1 + k]), with x = 0 before the start.
    """
    x, weight, bias = _np(x), _np(weight), _np(bias)
    batch, dim, L = x.shape
    width = weight.shape[1]
    out = np.zeros((batch, dim, L))
    for b in range(batch):
        for d in range(dim):
            for t in range(L):
                acc = float(bias[d]) if bias is not None else 0.0
                for k in range(width):
                    source = t - (width - 1) + k     # weight[:, -1] meets the current input
                    if source >= 0:
                        acc += float(weight[d, k]) * float(x[b, d, source])
                out[b, d, t] = silu(acc) if activation in ("silu", "swish") else acc
    return out
