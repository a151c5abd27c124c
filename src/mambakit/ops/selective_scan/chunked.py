"""Pure-torch chunked selective scan (backend ``"chunked"``): runs on any device torch supports.

The sequence is cut into chunks of K steps (a power of two sized to the problem, see ``_chunk_length``).
Within a chunk the linear recurrence
``h_t = a_t ⊙ h_{t-1} + x_t`` (a_t = exp(dt_t A), x_t = dt_t u_t B_t) is solved by a log-depth parallel
scan (Hillis and Steele, "Data parallel algorithms", 1986): after the step with stride s, every position
holds the combined decay and input of the last 2s steps. Only products of decays appear, never their
inverses, so the scan is as stable as the loop for any step sizes (the cumulative-log-decay form
``exp(S_t - S_tau)`` overflows in float32 once a chunk's decays span more than ~88 nats). Between chunks a
short sequential pass carries the state, from zeros or a given initial state. At most one chunk of
(batch, dim, K, N) is alive: under autograd each chunk is checkpointed (recomputed in the backward pass), so
training keeps only the states at chunk boundaries.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from .common import run_real_scan

CHUNK: int | None = None        # steps per chunk; None: chosen from the problem size by _chunk_length
CHUNK_ELEMENTS = 1 << 20        # aim for about this many (batch·dim·K·N) elements per chunk


def _chunk_length(batch: int, dim: int, N: int) -> int:
    """A power of two in [16, 4096] so one chunk holds about CHUNK_ELEMENTS: big enough that the Python
    overhead per chunk does not dominate, small enough to stay in cache."""
    if CHUNK is not None:
        return CHUNK
    target = CHUNK_ELEMENTS // max(1, batch * dim * N)
    return 1 << min(12, max(4, target.bit_length() - 1))


def _per_step(X_chunk: torch.Tensor, dim: int) -> torch.Tensor:
    """B or C for one chunk, broadcastable to (batch, dim, K, N); X_chunk: (dim, N) or a chunk along L."""
    if X_chunk.dim() == 2:                      # (dim, N): the same at every step
        return X_chunk[None, :, None, :]
    if X_chunk.dim() == 3:                      # (batch, N, K): shared by all channels
        return X_chunk[:, None].transpose(-1, -2)
    groups = X_chunk.shape[1]                   # (batch, groups, N, K): channel d reads group d·groups//dim
    Xc = X_chunk.transpose(-1, -2)              # (batch, groups, K, N)
    return Xc if groups == 1 else Xc.repeat_interleave(dim // groups, dim=1)


def _split_steps(X: torch.Tensor, chunk: int) -> list[torch.Tensor] | None:
    """Chunks of X along its last (time) axis, or None for a time-invariant (dim, N) X.

    ``split`` rather than slicing: autograd then joins the chunks' gradients once (slicing would build a
    full-length zero gradient per chunk, quadratic in L).
    """
    return None if X.dim() == 2 else list(X.split(chunk, dim=-1))


def _scan_chunk(h0: torch.Tensor, u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, Bc: torch.Tensor,
                Cc: torch.Tensor, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk: h0 (batch, dim, N); u, dt (batch, dim, K); Bc, Cc broadcastable to (batch, dim, K, N);
    keep (batch, K) 0/1 or None: 0 where a packed sequence starts (the decay into it is cut).

    Returns y (batch, dim, K) and the state after the chunk (batch, dim, N).
    """
    decay = torch.exp(dt[..., None] * A[:, None, :])    # (batch, dim, K, N)
    if keep is not None:
        decay = decay * keep[:, None, :, None]
    drive = (dt * u)[..., None] * Bc                    # (batch, dim, K, N)
    K = decay.shape[2]
    stride = 1
    while stride < K:
        # position t absorbs position t - stride: x_t += a_t x_{t-s}, a_t *= a_{t-s}
        carried = drive[:, :, stride:] + decay[:, :, stride:] * drive[:, :, :-stride]
        drive = torch.cat([drive[:, :, :stride], carried], dim=2)
        decay = torch.cat([decay[:, :, :stride], decay[:, :, stride:] * decay[:, :, :-stride]], dim=2)
        stride *= 2
    h = drive + decay * h0[:, :, None, :]
    return (h * Cc).sum(-1), h[:, :, -1].clone()  # a copy: a view would keep the whole chunk alive


def _chunked_core(u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                  h0: torch.Tensor | None = None, starts: torch.Tensor | None = None):
    """(y, last_state) of the bare recurrence from h0 (batch, dim, N; None: zeros), chunk by chunk;
    ``starts`` (batch, L) bool marks where packed sequences start."""
    batch, dim, L = u.shape
    h = u.new_zeros(batch, dim, A.shape[1]) if h0 is None else h0
    if L == 0:  # nothing to scan; the sums keep A, B and C in the graph so their gradients are zeros
        return u.new_zeros(batch, dim, 0) + 0 * (A.sum() + B.sum() + C.sum()), h.clone()
    recompute = torch.is_grad_enabled() and any(t.requires_grad for t in (u, dt, A, B, C, h))
    chunk = _chunk_length(batch, dim, A.shape[1])
    B_chunks, C_chunks = _split_steps(B, chunk), _split_steps(C, chunk)
    keeps = None if starts is None else (~starts).to(u.dtype).split(chunk, dim=1)
    ys = []
    for c, (u_c, dt_c) in enumerate(zip(u.split(chunk, dim=2), dt.split(chunk, dim=2), strict=True)):
        B_c = _per_step(B if B_chunks is None else B_chunks[c], dim)
        C_c = _per_step(C if C_chunks is None else C_chunks[c], dim)
        args = (h, u_c, dt_c, A, B_c, C_c, None if keeps is None else keeps[c])
        y, h = checkpoint(_scan_chunk, *args, use_reentrant=False) if recompute else _scan_chunk(*args)
        ys.append(y)
    return torch.cat(ys, dim=2), h


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    initial_state: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Chunked selective scan in torch; arguments, results and gradients as :func:`selective_scan_ref`.

    Args:
        u, delta, z: (batch, dim, L); A: real (dim, N); B, C: (dim, N), (batch, N, L) or
        (batch, groups, N, L); D, delta_bias: (dim,); initial_state: (batch, dim, N) state to start from
        (default zeros); seq_idx: (batch, L) ids of packed sequences. Complex A raises DTypeError
        (``selective_scan`` hands it to ``ref``).

    Returns:
        out (batch, dim, L) in u's dtype, and with ``return_last_state`` the last state (batch, dim, N).
    """
    return run_real_scan(_chunked_core, "chunked", u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                         return_last_state, initial_state=initial_state, seq_idx=seq_idx)
