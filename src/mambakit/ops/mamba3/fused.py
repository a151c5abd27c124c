"""The fused Mamba-3 (:func:`mamba3_fused`): the block decomposition of :mod:`.chunked` as one autograd
function whose backward is written by hand, for training on CPU.

Per chunk of T positions and head, with the rank folded into the rows (row (r, t) of a (T·R, ·) matrix,
rank-major, so that sums over the rank run over an outer axis):

    K, Q = R(θ)(B + B_bias), R(θ)(C + C_bias)   (T·R, N)     V = x ⊙ mimo_x      (T·R, p)
    M = (Q Kᵀ) ∘ (1_{R×R} ⊗ W)                   (T·R, T·R)  W as in :mod:`.chunked`
    Y = M V + diag(e) Q Sᵀ,   S' = exp(c_end) S + Vᵀ diag(reach) K
    out = Σ_r mimo_o_r ⊙ silu(z ⊙ mimo_z_r) ⊙ (Y_r + D V_r)

with e_t = exp(c_t), reach_s = exp(c_end - c_s) w_s, S the state a chunk starts with (p, N). Every product
is a batched matmul over (batch, heads, chunks), of (T·R) × (T·R) scores for MIMO: the rank adds to the
matmuls' sizes, not to the number of passes over memory. Four matmuls in the forward, nine in the backward.

Kept for the backward: the inputs, the chunk start states (batch, heads, chunks, p, N) and, when a gate or
mimo_o follows, the per-rank output Y before the skip (batch, L, R, heads, p). Keys, queries, values, scores
and decays are recomputed; the recurrence over chunks runs backwards in place. The decays' gradient comes
from the (T, T) rank-pair sums of dM ∘ G, the columns and rows of W, e, reach and the chunk decays.

Large intermediates come from a per-thread pool (:class:`_Pool`) that keeps them between calls: on CPU a
fresh multi-MiB tensor costs its page faults, several times the arithmetic of a pass over it, and MIMO has R
times Mamba-2's per-position intermediates. :func:`release_buffers` frees them. Nothing returned or saved
lives in a pooled buffer.

What stays outside, to autograd: the angles' cumulative sum, the trapezoid weights (per position and head)
and the state's start and end, all small.
"""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F

from .chunked import per_position, prologue
from .common import Mamba3State, heads_of, rotate

# exp is finite and normal on these ranges; exponents are clamped into them (masked entries are zeroed after).
_EXP_RANGE = {torch.float32: (-87.0, 88.0), torch.float64: (-708.0, 709.0)}


class _Geometry:
    """Sizes and the layout conversions. Per-position tensors live head-major and chunked, zero-padded to
    whole chunks; inside a chunk the rows are rank-major, (b, h, nc, R, T, d), so that a chunk's keys,
    queries and values are (T·R, d) matrices (n = b·h·nc of them per batched matmul) and sums over the
    rank run over an outer axis."""

    def __init__(self, x: torch.Tensor, B: torch.Tensor, chunk_size: int) -> None:
        self.b, self.length, self.h, self.p = x.shape
        self.R, self.g, self.N = B.shape[2:]
        self.hg = self.h // self.g
        self.T = min(chunk_size, self.length)
        self.nc = -(-self.length // self.T)
        self.Lp = self.nc * self.T
        self.pad = self.Lp - self.length
        self.n = self.b * self.h * self.nc
        self.TR = self.T * self.R

    def head_major(self, t: torch.Tensor, dtype: torch.dtype, pool: _Pool | None = None) -> torch.Tensor:
        """(b, L, h, ...) -> (b, h, Lp, ...) contiguous in ``dtype``, zero-padded (in ``pool``'s buffer)."""
        shape = (self.b, self.h, self.Lp, *t.shape[3:])
        out = t.new_empty(shape, dtype=dtype) if pool is None else pool.take(*shape)
        if self.pad:
            out[:, :, self.length:].zero_()
        out[:, :, :self.length].copy_(t.transpose(1, 2))
        return out

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """(b, h, Lp, d) -> (b, h, nc, 1, T, d) view: one rank's rows."""
        return t.view(self.b, self.h, self.nc, 1, self.T, t.shape[-1])

    def six(self, t: torch.Tensor) -> torch.Tensor:
        """(n, T·R, d) -> (b, h, nc, R, T, d) view."""
        return t.view(self.b, self.h, self.nc, self.R, self.T, t.shape[-1])

    def seq(self, t: torch.Tensor) -> torch.Tensor:
        """(b, h, nc, T, ...) head-major -> (b, L, h, ...) view, without the padding."""
        return t.reshape(self.b, self.h, self.Lp, *t.shape[4:])[:, :, :self.length].transpose(1, 2)

    def per_rank_seq(self, t: torch.Tensor) -> torch.Tensor:
        """(b, h, nc, R, T, d) -> (b, L, R, h, d) view, without the padding."""
        t = t.permute(0, 2, 4, 3, 1, 5).reshape(self.b, self.Lp, self.R, self.h, t.shape[-1])
        return t[:, :self.length]

    def small(self, t: torch.Tensor) -> torch.Tensor:
        """(b, L, h) -> (n, T) contiguous, zero-padded."""
        return F.pad(t.transpose(1, 2), (0, self.pad)).reshape(self.n, self.T)

    def per_head(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A (h, R, d) parameter as (1, h, 1, R, 1, d), against (b, h, nc, R, T, d)."""
        return t.to(dtype).view(1, self.h, 1, self.R, 1, t.shape[-1])


def _sum_positions(t: torch.Tensor) -> torch.Tensor:
    """(b, h, nc, R, T, d) summed over batch, chunks and positions: (h, R, d) (one axis at a time, which
    is much faster on CPU than a sum over several)."""
    return t.sum(4).sum(2).sum(0)


class _Pool:
    """Large buffers handed back when no longer used and handed out again for the next intermediate that
    fits, kept from one call to the next (per thread, dtype and device; see :func:`release_buffers`). On
    CPU a fresh multi-MiB tensor costs its page faults, several times the arithmetic of one pass over it;
    MIMO's per-rank intermediates are R times Mamba-2's, so this is where it would lose most."""

    MAX_HELD = 16                                                    # buffers kept between calls

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.free: list[torch.Tensor] = []
        self.dtype, self.device = dtype, device

    def take(self, *shape: int) -> torch.Tensor:
        numel = math.prod(shape)
        fits = [i for i, f in enumerate(self.free) if f.numel() >= numel]
        if fits:
            flat = self.free.pop(min(fits, key=lambda i: self.free[i].numel()))
        else:
            flat = torch.empty(numel, dtype=self.dtype, device=self.device)
        return flat[:numel].view(shape)

    def give(self, *tensors: torch.Tensor) -> None:
        """Hand back buffers from :meth:`take` that nothing uses any more (no views of them escape)."""
        for t in tensors:
            self.free.append((t if t._base is None else t._base).view(-1))
        if len(self.free) > self.MAX_HELD:
            self.free.sort(key=torch.Tensor.numel)
            del self.free[:len(self.free) - self.MAX_HELD]


_POOLS = threading.local()


def _pool(dtype: torch.dtype, device: torch.device) -> _Pool:
    pools = getattr(_POOLS, "pools", None)
    if pools is None:
        pools = _POOLS.pools = {}
    key = (dtype, device)
    if key not in pools:
        pools[key] = _Pool(dtype, device)
    return pools[key]


def release_buffers() -> None:
    """Free the buffers the fused form keeps between calls on this thread (they are made again as needed)."""
    _POOLS.pools = {}


def _fresh(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t`` in memory of its own (for results computed in pooled buffers)."""
    return t.clone(memory_format=torch.contiguous_format)


class _Turn:
    """The rotation R(θ) of keys and queries: for the pairing (2i, 2i+1), whose pairs are adjacent, one
    complex multiplication (real arithmetic on every other number is several times slower); for (i, i + N/2)
    real arithmetic on the two contiguous halves (faster there than reordering for complex numbers)."""

    def __init__(self, theta: torch.Tensor, N: int, pairwise: bool) -> None:
        self.m, self.N, self.pairwise = theta.shape[-1], N, pairwise  # theta (b, h, nc, 1, T, m)
        self.complex = pairwise and N % 2 == 0
        cos, sin = torch.cos(theta), torch.sin(theta)
        if self.complex:
            self.rot, self.rot_conj = torch.complex(cos, sin), torch.complex(cos, -sin)
        else:
            self.cos, self.sin = cos, sin

    def _turned(self, t: torch.Tensor) -> torch.Tensor:
        return torch.view_as_complex(t.unflatten(-1, (self.N // 2, 2)))[..., :self.m]

    def rotate_(self, K: torch.Tensor, pool: _Pool) -> None:
        """K (b, h, nc, R, T, N) <- R(θ) K, in place."""
        if self.complex:
            self._turned(K).mul_(self.rot)
            return
        first, second = _pairs(K, self.m, self.pairwise)
        turned = torch.mul(first, self.sin, out=pool.take(*first.shape))
        first.mul_(self.cos).addcmul_(second, self.sin, value=-1)
        second.mul_(self.cos).add_(turned)
        pool.give(turned)

    def unrotate_grad_(self, d: torch.Tensor, K: torch.Tensor, pool: _Pool) -> torch.Tensor:
        """From the gradient ``d`` of the rotated keys ``K`` (b, h, nc, R, T, N): the gradient of the angles
        (b, h, nc, T, m), and in place in ``d`` that of the keys before the rotation (R(θ)ᵀ d)."""
        if self.complex:
            dc = self._turned(d)
            work = pool.take(*dc.shape, 2)
            prod = torch.mul(self._turned(K).conj(), dc, out=torch.view_as_complex(work))
            d_theta = prod.imag.sum(3)                                   # Σ_r k_a d_b - k_b d_a
            pool.give(work)
            dc.mul_(self.rot_conj)
            return d_theta
        da, db = _pairs(d, self.m, self.pairwise)
        ka, kb = _pairs(K, self.m, self.pairwise)
        one, other = pool.take(*da.shape), pool.take(*da.shape)
        d_theta = torch.mul(db, ka, out=one).sub_(torch.mul(da, kb, out=other)).sum(3)
        turned = torch.mul(da, self.sin, out=one)
        da.mul_(self.cos).addcmul_(db, self.sin)
        db.mul_(self.cos).sub_(turned)
        pool.give(one, other)
        return d_theta


def _pairs(t: torch.Tensor, m: int, pairwise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The two coordinates of the first ``m`` rotated pairs of the last axis of ``t`` (views)."""
    n = t.shape[-1]
    if pairwise:
        pairs = t.unflatten(-1, (n // 2, 2))
        return pairs[..., :m, 0], pairs[..., :m, 1]
    return t[..., :m], t[..., n // 2:n // 2 + m]


def _keys(geo: _Geometry, X: torch.Tensor, bias: torch.Tensor, turn: _Turn, pool: _Pool) -> torch.Tensor:
    """R(θ)(X + bias) per head, (n, T·R, N) rank-major, from X (b, L, R, g, N) and bias (h, R, N)."""
    b, g, hg, nc, T, R, N, dtype = geo.b, geo.g, geo.hg, geo.nc, geo.T, geo.R, geo.N, pool.dtype
    padded = F.pad(X, (0, 0, 0, 0, 0, 0, 0, geo.pad)) if geo.pad else X
    grouped = pool.take(b, g, 1, nc, R, T, N)                        # rank-major, one copy per group
    grouped.copy_(padded.view(b, nc, T, R, g, N).permute(0, 4, 1, 3, 2, 5).unsqueeze(2))
    out = pool.take(b, geo.h, nc, R, T, N)
    torch.add(grouped, bias.to(dtype).view(g, hg, 1, R, 1, N), out=out.view(b, g, hg, nc, R, T, N))
    pool.give(grouped)
    turn.rotate_(out, pool)
    return out.view(geo.n, geo.TR, N)


def _keys_grads(geo: _Geometry, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient (n, T·R, N) of the keys before the rotation -> those of B (b, L, R, g, N) and the
    bias (h, R, N)."""
    six = geo.six(d)
    grouped = six.view(geo.b, geo.g, geo.hg, geo.nc, geo.R, geo.T, geo.N).sum(2)
    grouped = grouped.permute(0, 2, 4, 3, 1, 5).reshape(geo.b, geo.Lp, geo.R, geo.g, geo.N)
    return grouped[:, :geo.length], _sum_positions(six)


def _decays(geo: _Geometry, la: torch.Tensor, w: torch.Tensor, gam: torch.Tensor, seq_idx):
    """The chunk's decays from the log-decays la, weights w, γ (b, L, h).

    Returns Lmat (n, T, T) [t, s] = exp(c_t - c_s) below the diagonal (within one sequence, else 0), W =
    Lmat·w_s with γ_t on the diagonal, e (n, T) = exp(c_t), to_end (n, T) = exp(c_end - c_s), decay (n,) =
    exp(c_end), each 0 across a change of sequence (c the log-decays' cumulative sum in the chunk), and w.
    """
    n, T = geo.n, geo.T
    lo, hi = _EXP_RANGE[la.dtype]
    c = geo.small(la).cumsum(-1)
    wc = geo.small(w)
    below = torch.ones(T, T, dtype=torch.bool, device=la.device).tril(-1)
    e, to_end, decay = torch.exp(c), torch.exp((c[:, -1:] - c).clamp(lo, hi)), torch.exp(c[:, -1])
    if seq_idx is not None:
        seq = torch.cat([seq_idx, seq_idx[:, -1:].expand(geo.b, geo.pad)], dim=1).view(geo.b, 1, geo.nc, T)
        seq_start = torch.cat([seq[:, :, :1, 0], seq[:, :, :-1, -1]], dim=2)         # of each start state
        seq = seq.expand(geo.b, geo.h, geo.nc, T).reshape(n, T)
        seq_start = seq_start.expand(geo.b, geo.h, geo.nc).reshape(n)
        below = below & (seq[:, :, None] == seq[:, None, :])
        e = e * (seq == seq_start[:, None])
        to_end = to_end * (seq == seq[:, -1:])
        decay = decay * (seq[:, -1] == seq_start)
    Lmat = torch.exp((c[:, :, None] - c[:, None, :]).clamp_(lo, hi)).mul_(below)
    W = Lmat * wc[:, None, :]
    W.diagonal(dim1=-2, dim2=-1).copy_(geo.small(gam))
    return Lmat, W, e, to_end, decay, wc


def _kron_mul_(G: torch.Tensor, W: torch.Tensor, geo: _Geometry) -> torch.Tensor:
    """G (n, T·R, T·R) ∘= 1_{R×R} ⊗ W (n, T, T) (rows and columns rank-major), in place."""
    G.view(geo.n, geo.R, geo.T, geo.R, geo.T).mul_(W.view(geo.n, 1, geo.T, 1, geo.T))
    return G


def _rank_sum(P: torch.Tensor, geo: _Geometry) -> torch.Tensor:
    """P (n, T·R, T·R) summed over the rank pairs: (n, T, T)."""
    if geo.R == 1:
        return P
    return P.view(geo.n, geo.R, geo.T, geo.R, geo.T).sum(3).sum(1)


def _scale_rows(t: torch.Tensor, s: torch.Tensor, geo: _Geometry, out: torch.Tensor) -> torch.Tensor:
    """t (n, T·R, d) with row (r, t) times s (n, T)[t], into ``out``."""
    d = t.shape[-1]
    shape = (geo.n, geo.R, geo.T, d)
    torch.mul(t.view(shape), s.view(geo.n, 1, geo.T, 1), out=out.view(shape))
    return out


def _row_dots(a: torch.Tensor, b: torch.Tensor, geo: _Geometry, scratch: torch.Tensor) -> torch.Tensor:
    """Σ_{r, d} a ∘ b of rows (r, t) of (n, T·R, d) matrices: (n, T)."""
    prod = torch.mul(a, b, out=scratch)
    return prod.view(geo.n, geo.R, geo.T, a.shape[-1]).sum(-1).sum(1)


class Mamba3Fused(torch.autograd.Function):
    """out, final S = the chunked Mamba-3 of (x, la, w, γ, θ, B, C, biases, D, z, mimo_x/z/o, S0).

    la = AΔ, w, γ (b, L, h) as in :mod:`.chunked`; θ (b, L, h, m) the wrapped cumulative angles; S0 (b, h,
    p, N) the start value of S (or None). Returns out (b, L, h, p) (per rank (b, L, R, h, p) for MIMO
    without mimo_o) and S after the last position, in the compute dtype of la.
    """

    @staticmethod
    def forward(ctx, x, la, w, gam, theta, B, C, B_bias, C_bias, D, z, mimo_x, mimo_z, mimo_o, S0,
                seq_idx, chunk_size, pairwise):
        cd = la.dtype
        geo = _Geometry(x, B, chunk_size)
        b, h, nc, TR, p, N, n = geo.b, geo.h, geo.nc, geo.TR, geo.p, geo.N, geo.n
        Lmat, W, e, to_end, decay, wc = _decays(geo, la, w, gam, seq_idx)
        turn = _Turn(geo.rows(geo.head_major(theta, cd)), N, pairwise)   # θ (b, h, nc, 1, T, m)
        pool = _pool(cd, x.device)
        K = _keys(geo, B, B_bias, turn, pool)                        # (n, T·R, N)
        Q = _keys(geo, C, C_bias, turn, pool)
        xh = geo.head_major(x, cd, pool)                             # (b, h, Lp, p)
        V = _values(geo, xh, mimo_x, pool)                           # (n, T·R, p)

        # Inside the chunks, then each chunk's increment of the state it passes on.
        M = _kron_mul_(torch.bmm(Q, K.transpose(1, 2), out=pool.take(n, TR, TR)), W, geo)
        Y = torch.bmm(M, V)
        pool.give(M)
        scaled = _scale_rows(V, to_end * wc, geo, pool.take(n, TR, p))
        slot = p * N
        chained = torch.empty((n + 1) * slot, dtype=cd, device=x.device)
        torch.bmm(scaled.transpose(1, 2), K, out=chained[slot:].view(n, p, N))
        pool.give(scaled, K)
        # The recurrence over chunks in place: slot j·nc + k holds increment k - 1 of row j = (batch, head)
        # and becomes the state chunk k starts with; row j's last increment, in the slot of row j + 1's
        # first state, is set aside first.
        starts = chained[:n * slot].view(b * h, nc, p, N)
        last = chained.view(-1, slot)[nc::nc].view(b * h, p, N).clone()
        if S0 is None:
            starts[:, 0].zero_()
        else:
            starts[:, 0].copy_(S0.reshape(b * h, p, N))
        dec = decay.view(b * h, nc, 1, 1)
        for k in range(1, nc):
            starts[:, k].addcmul_(dec[:, k - 1], starts[:, k - 1])
        final = last.addcmul_(dec[:, nc - 1], starts[:, nc - 1]).view(b, h, p, N)
        starts = starts.view(n, p, N)
        # Each chunk's output from its start state.
        Qe = _scale_rows(Q, e, geo, pool.take(n, TR, N))
        Y.baddbmm_(Qe, starts.transpose(1, 2))
        pool.give(Qe, Q)

        out = _finish(geo, pool, Y, V, D, z, mimo_x, mimo_z, mimo_o, cd)
        pool.give(xh) if mimo_x is None else pool.give(xh, V)
        keep_y = z is not None or mimo_o is not None
        ctx.save_for_backward(x, la, w, gam, theta, B, C, B_bias, C_bias, D, z, mimo_x, mimo_z, mimo_o,
                              seq_idx, starts, Y if keep_y else None)
        ctx.chunk_size, ctx.pairwise, ctx.has_S0 = chunk_size, pairwise, S0 is not None
        return out, final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_final):
        (x, la, w, gam, theta, B, C, B_bias, C_bias, D, z, mimo_x, mimo_z, mimo_o, seq_idx, starts,
         Y) = ctx.saved_tensors
        cd = la.dtype
        geo = _Geometry(x, B, ctx.chunk_size)
        b, h, nc, T, R, p, N, n, TR = geo.b, geo.h, geo.nc, geo.T, geo.R, geo.p, geo.N, geo.n, geo.TR
        Lmat, W, e, to_end, decay, wc = _decays(geo, la, w, gam, seq_idx)
        turn = _Turn(geo.rows(geo.head_major(theta, cd)), N, ctx.pairwise)
        pool = _pool(cd, x.device)
        K = _keys(geo, B, B_bias, turn, pool)
        Q = _keys(geo, C, C_bias, turn, pool)
        xh = geo.head_major(x, cd, pool)                             # (b, h, Lp, p)
        V = _values(geo, xh, mimo_x, pool)

        # Skip, gate and output projection: dY, the gradient of Y (n, T·R, p).
        dY, d_D, d_z, d_mz, d_mo = _finish_backward(geo, pool, d_out, Y, V, D, z, mimo_x, mimo_z, mimo_o, cd)
        dV = pool.take(n, TR, p)
        if D is None:
            dV.zero_()
        else:
            torch.mul(geo.six(dY), D.to(cd).view(1, h, 1, 1, 1, 1), out=geo.six(dV))

        # Inside the chunks: M = G ∘ W̃, Y = M V.
        G = torch.bmm(Q, K.transpose(1, 2), out=pool.take(n, TR, TR))
        dM = torch.bmm(dY, V.transpose(1, 2), out=pool.take(n, TR, TR))
        work = pool.take(n, TR, TR)
        E = _rank_sum(torch.mul(dM, G, out=work), geo).clone()     # gradient of W, (n, T, T)
        pool.give(work)
        M = _kron_mul_(G, W, geo)
        dG = _kron_mul_(dM, W, geo)
        dV.baddbmm_(M.transpose(1, 2), dY)
        pool.give(M)
        dQ = torch.bmm(dG, K, out=pool.take(n, TR, N))
        dK = torch.bmm(dG.transpose(1, 2), Q, out=pool.take(n, TR, N))
        pool.give(dG)

        # Output from the start states: Y += diag(e) Q Sᵀ.
        dYS = torch.bmm(dY, starts, out=pool.take(n, TR, N))
        work = pool.take(n, TR, N)
        d_e = _row_dots(dYS, Q, geo, work)
        dQ.view(n, R, T, N).addcmul_(dYS.view(n, R, T, N), e.view(n, 1, T, 1))
        pool.give(dYS, work)
        dYe = _scale_rows(dY, e, geo, pool.take(n, TR, p))
        slot = p * N
        chained = pool.take((n + 1) * slot)
        torch.bmm(dYe.transpose(1, 2), Q, out=chained[:n * slot].view(n, p, N))
        pool.give(dYe, dY)

        # The recurrence, backwards, in place: the gradient of chunk k's increment (that of the state after
        # it) lands on slot k + 1 of the row's part; row j's first part is set aside first.
        first = chained.view(-1, slot)[:n:nc].view(b * h, p, N).clone()
        d_inc = chained[slot:].view(b * h, nc, p, N)
        if d_final is None:
            d_inc[:, nc - 1].zero_()
        else:
            d_inc[:, nc - 1].copy_(d_final.reshape(b * h, p, N))
        dec = decay.view(b * h, nc, 1, 1)
        for k in range(nc - 1, 0, -1):
            d_inc[:, k - 1].addcmul_(dec[:, k], d_inc[:, k])
        d_S0 = first.addcmul_(dec[:, 0], d_inc[:, 0]).view(b, h, p, N) if ctx.has_S0 else None
        d_inc = d_inc.view(n, p, N)
        work = pool.take(n, p, N)
        d_decay = torch.mul(d_inc, starts, out=work).sum(-1).sum(-1)   # (n,)
        pool.give(work)

        # The increments Vᵀ diag(reach) K.
        reach = to_end * wc
        Z = torch.bmm(V, d_inc, out=pool.take(n, TR, N))            # (n, T·R, N)
        work = pool.take(n, TR, N)
        d_reach = _row_dots(Z, K, geo, work)
        pool.give(work)
        dK.view(n, R, T, N).addcmul_(Z.view(n, R, T, N), reach.view(n, 1, T, 1))
        dV.baddbmm_(_scale_rows(K, reach, geo, Z), d_inc.transpose(1, 2))
        pool.give(Z, chained)
        del d_inc

        # The decays: c = cumsum(la) gives W, e, reach and decay.
        D_ = E * W
        D_.diagonal(dim1=-2, dim2=-1).zero_()
        d_gam = E.diagonal(dim1=-2, dim2=-1).clone()
        d_w = (E.mul_(Lmat)).sum(1) + d_reach * to_end
        d_reach.mul_(reach)
        d_c = D_.sum(2) - D_.sum(1) + d_e * e - d_reach
        d_c[:, -1] += d_reach.sum(-1) + d_decay * decay
        d_la = d_c.flip(-1).cumsum(-1).flip(-1)

        def seq_small(t):                                            # (n, T) -> (b, L, h)
            return t.reshape(b, h, geo.Lp)[:, :, :geo.length].transpose(1, 2)

        # Keys and queries: the rotation, the bias, the groups.
        d_th = turn.unrotate_grad_(geo.six(dK), geo.six(K), pool)
        d_th.add_(turn.unrotate_grad_(geo.six(dQ), geo.six(Q), pool))
        d_theta = geo.seq(d_th.view(b, h, nc, T, -1))
        d_B, d_Bb = _keys_grads(geo, dK)
        d_C, d_Cb = _keys_grads(geo, dQ)
        pool.give(K, Q, dK, dQ)

        # Values: V = x ⊙ mimo_x.
        d_mx = None
        if mimo_x is None:
            d_x = _fresh(geo.seq(dV.view(b, h, nc, T, p)))
        else:
            dV6, work = geo.six(dV), geo.six(pool.take(n, TR, p))
            d_x = geo.seq(torch.mul(dV6, geo.per_head(mimo_x, cd), out=work).sum(3))
            d_mx = _sum_positions(torch.mul(dV6, geo.rows(xh), out=work))
            pool.give(work, V)
        pool.give(dV, xh)
        return (d_x.to(x.dtype), seq_small(d_la), seq_small(d_w), seq_small(d_gam), d_theta.to(theta.dtype),
                d_B.to(B.dtype), d_C.to(C.dtype), d_Bb.to(B_bias.dtype), d_Cb.to(C_bias.dtype),
                None if d_D is None else d_D.to(D.dtype), None if d_z is None else d_z.to(z.dtype),
                None if d_mx is None else d_mx.to(mimo_x.dtype),
                None if d_mz is None else d_mz.to(mimo_z.dtype),
                None if d_mo is None else d_mo.to(mimo_o.dtype), d_S0, None, None, None)


def _values(geo: _Geometry, xh: torch.Tensor, mimo_x, pool: _Pool) -> torch.Tensor:
    """V = x ⊙ mimo_x per rank, (n, T·R, p), from x head-major (b, h, Lp, p) (x itself for SISO)."""
    if mimo_x is None:
        return xh.view(geo.n, geo.T, geo.p)
    V = pool.take(geo.b, geo.h, geo.nc, geo.R, geo.T, geo.p)
    return torch.mul(geo.rows(xh), geo.per_head(mimo_x, pool.dtype), out=V).view(geo.n, geo.TR, geo.p)


def _finish(geo: _Geometry, pool: _Pool, Y, V, D, z, mimo_x, mimo_z, mimo_o, cd) -> torch.Tensor:
    """Skip, gate and output projection of Y (n, T·R, p) in the output's layout: (b, L, h, p), or per rank
    (b, L, R, h, p) for MIMO without mimo_o."""
    y, own = geo.six(Y), False                                      # own: y is a buffer of ours
    if D is not None:
        y = torch.addcmul(y, geo.six(V), D.to(cd).view(1, geo.h, 1, 1, 1, 1),
                          out=geo.six(pool.take(*Y.shape)))
        own = True
    if z is not None:
        zh = geo.rows(geo.head_major(z, cd, pool))
        zr = zh
        if mimo_z is not None:
            zr = torch.mul(zh, geo.per_head(mimo_z, cd), out=geo.six(pool.take(*Y.shape)))
            pool.give(zh)
        gate = F.silu(zr, inplace=True)
        if own:
            y.mul_(gate)
            pool.give(zr)
        else:
            y, own = torch.mul(y, gate, out=gate), True
    if mimo_o is not None:
        out = geo.seq((y.mul_(geo.per_head(mimo_o, cd)) if own else y * geo.per_head(mimo_o, cd)).sum(3))
    elif mimo_x is not None:
        out = geo.per_rank_seq(y)
    else:
        out = geo.seq(y.squeeze(3))
    out = _fresh(out)
    if own:
        pool.give(y)
    return out


def _finish_backward(geo: _Geometry, pool: _Pool, d_out, Y, V, D, z, mimo_x, mimo_z, mimo_o, cd):
    """The gradients of Y (n, T·R, p), D, z, mimo_z, mimo_o from that of the output."""
    b, h, nc, T, R, p, n = geo.b, geo.h, geo.nc, geo.T, geo.R, geo.p, geo.n
    six = (b, h, nc, R, T, p)
    own = mimo_x is not None and mimo_o is None                      # d: a buffer of ours, per rank
    if own:                                                          # d_out (b, L, R, h, p)
        d = pool.take(*six)
        padded = F.pad(d_out.to(cd), (0, 0, 0, 0, 0, 0, 0, geo.pad)) if geo.pad else d_out.to(cd)
        d.permute(0, 2, 4, 3, 1, 5).copy_(padded.view(b, nc, T, R, h, p))
    else:
        d = geo.rows(geo.head_major(d_out, cd, pool))                # (b, h, nc, 1, T, p)
    # dY, the gradient of the gated y, in a buffer of ours (or d itself, without a gate or mimo_o).
    dY = d if mimo_o is None else torch.mul(d, geo.per_head(mimo_o, cd), out=pool.take(*six))
    own = own or mimo_o is not None                                  # dY: a buffer of ours
    d_z = d_mz = d_mo = None
    if z is not None or mimo_o is not None:
        y = geo.six(Y)
        if D is not None:
            y = torch.addcmul(y, geo.six(V), D.to(cd).view(1, h, 1, 1, 1, 1), out=pool.take(*six))
        work = pool.take(*six)
        if z is not None:
            zh = geo.rows(geo.head_major(z, cd, pool))
            zr = zh if mimo_z is None else torch.mul(zh, geo.per_head(mimo_z, cd), out=pool.take(*six))
            d_zr = torch.ops.aten.silu_backward.grad_input(torch.mul(dY, y, out=work), zr, grad_input=work)
            if mimo_z is None:
                d_z = _fresh(geo.seq(d_zr.squeeze(3)))
            else:
                other = pool.take(*six)
                d_z = geo.seq(torch.mul(d_zr, geo.per_head(mimo_z, cd), out=other).sum(3))
                d_mz = _sum_positions(torch.mul(d_zr, zh, out=other))
                pool.give(other)
            gate = F.silu(zr, inplace=True)                          # zr: z or our buffer
            if mimo_o is not None:
                d_mo = _sum_positions(torch.mul(y, gate, out=work).mul_(d))
            if own:
                dY.mul_(gate)
            else:
                dY, work = torch.mul(d.expand(six), gate, out=work), None
            pool.give(zh) if zr is zh else pool.give(zh, zr)
        else:
            d_mo = _sum_positions(torch.mul(y, d, out=work))
        if work is not None:
            pool.give(work)
        if D is not None:
            pool.give(y)
    if d.data_ptr() != dY.data_ptr():
        pool.give(d)
    dY = dY.expand(six).reshape(n, geo.TR, p)
    d_D = None
    if D is not None:
        work = pool.take(*six)
        d_D = torch.mul(geo.six(dY), geo.six(V), out=work).sum(-1).sum(4).sum(3).sum(2).sum(0)
        pool.give(work)
    return dY, d_D, d_z, d_mz, d_mo


def _apply(x, dt, A, B, C, trap, angles, B_bias, C_bias, D, z, mimo_x, mimo_z, mimo_o, state, seq_idx,
           pairwise, chunk_size, dtype):
    """The small per-position steps by autograd around :class:`Mamba3Fused`: returns out and the final
    :class:`Mamba3State`."""
    la, theta, gamma, w, S0 = per_position(dt, A, trap, angles, state, seq_idx, mimo_x, dtype)
    out, final = Mamba3Fused.apply(x, la, w, gamma, theta, B, C, B_bias, C_bias, D, z, mimo_x, mimo_z,
                                   mimo_o, S0, seq_idx, chunk_size, pairwise)
    th_last = theta[:, -1].unsqueeze(1)                              # (b, 1, h, m)
    k_last = rotate(heads_of(B[:, -1].to(dtype), x.shape[2]) + B_bias.to(dtype).transpose(0, 1), th_last,
                    pairwise)
    return out.to(x.dtype), Mamba3State(theta[:, -1], final, k_last, x[:, -1].to(dtype))


def mamba3_fused(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    trap: torch.Tensor,
    angles: torch.Tensor,
    B_bias: torch.Tensor,
    C_bias: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    mimo_x: torch.Tensor | None = None,
    mimo_z: torch.Tensor | None = None,
    mimo_o: torch.Tensor | None = None,
    initial_state: Mamba3State | None = None,
    seq_idx: torch.Tensor | None = None,
    rotate_pairwise: bool | None = None,
    return_final_state: bool = False,
    chunk_size: int = 64,
) -> torch.Tensor | tuple[torch.Tensor, Mamba3State]:
    """Fused Mamba-3 (:class:`Mamba3Fused`, a hand-written backward); arguments and results as
    :func:`~mambakit.ops.mamba3.ref.mamba3_ref`, plus ``chunk_size`` (positions per chunk, >= 1; L need not
    be a multiple of it). Not twice differentiable."""
    _, pairwise, dtype, state, empty = prologue(x, dt, A, B, C, trap, angles, B_bias, C_bias, D, z, mimo_x,
                                                mimo_z, mimo_o, initial_state, seq_idx, rotate_pairwise,
                                                chunk_size)
    if empty is not None:
        return (empty, state) if return_final_state else empty
    if z is None:
        mimo_z = None                                                # unused without a gate
    out, final = _apply(x, dt, A, B, C, trap, angles, B_bias, C_bias, D, z, mimo_x, mimo_z, mimo_o, state,
                           seq_idx, pairwise, chunk_size, dtype)
    return (out, final) if return_final_state else out
