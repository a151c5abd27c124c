"""The tuned chunked SSD (:func:`ssd_chunked`): an autograd function whose backward is written by hand as
batched matmuls. Its readable counterparts: :mod:`.minimal` (the same block decomposition in plain torch)
and :mod:`.ref` (the recurrence it is tested against).

Notation for one chunk of Q steps, one head (of group g, whose B and C it shares), positions t, s in the
chunk and the log-decay a_t = Δ_t·A:

    c_t = a_0 + ... + a_t                    decay from the chunk's start (c for "cumulative")
    e_t = exp(c_t)                            reach of the start state H to step t
    w_s = exp(c_{Q-1} - c_s)                  reach of step s to the chunk's end
    L[t, s] = exp(c_t - c_s) for s <= t       the chunk's decay mask, 0 above the diagonal
    y_t = Σ_s L[t, s] (C_t·B_s) Δ_s x_s + e_t C_t H        inside the chunk + from the start state
    H' = exp(c_{Q-1}) H + Σ_s w_s Δ_s x_s B_sᵀ             the next chunk's start state

Chunk length: the result does not depend on it (up to rounding), only the cost does. The state matmuls
cost the same at any length and the inside product grows with it, so on CPU chunks longer than
_LONGEST_CHUNK (64) steps run as chunks of 64, Mamba-2's default of 256 included (other devices run the
length asked for: not measured there).

Forward: per chunk, C Bᵀ once per group, (L ∘ C Bᵀ)(Δx) per head, the chunk's state increment and the
output from the start state per group as (N, heads-in-group · p) matmuls, and a short recurrence over the
chunks. Where every chunk's decays stay within e^±60 of their middle m = (c_0 + c_{Q-1}) / 2 (float32,
so a chunk may decay by up to e^120; e^±600 float64), L[t, s] = u_t v_s with u = exp(c - m), v = exp(m - c)
is a product of normal floats, and the inside product becomes u ∘ ((C Bᵀ)(v ∘ Δx)), one matmul per group
with no per-head (Q, Q) tensor at all; otherwise (stronger decays, or half-precision matmuls) the per-head
masked form runs.

Backward runs the same matmuls transposed. It recomputes everything from the inputs, the chunk start states
(batch, chunks, heads, p, N) and the SSD output y before the skip and gate, which are saved: y gives the
gate's gradient and, through Σ_p dy_t·y_t, the part of the gradient of c_t that comes from the row t of
every decay (L's rows and e_t), so only the columns' part (L's columns, w_s) is computed. The masked
heads' exp'd decay masks L (batch, chunks, heads', Q, Q) are saved too (recomputing them cost more than the
rest of their backward), and both passes work through the masked form in cache-sized slabs of chunks.

Layouts: the "sequence layout" (batch, chunks, Q, heads, p) of x is kept for the per-group matmuls (for
one group, heads·p is a contiguous row); only the per-head (Q, Q) @ (Q, p) matmuls use a head-major copy
(batch, chunks, heads, Q, p), written in the same pass that multiplies by Δ. Large temporaries are
written in place or into reused buffers: on CPU a fresh multi-MiB tensor costs its page faults. The
recurrences over chunks run in place, one in-cache update per chunk, in a buffer one chunk's state longer
than the states, where each result lands on the slot of the term it no longer needs. Packed
sequences (seq_idx) multiply the decays by 0/1 masks of "same sequence"; the derivation is unchanged because
every decay enters only through its masked value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..._checks import check_int, compute_dtype
from .common import NO_LIMIT, check_dt_limit, check_ssd_args, matmul_dtype, step_sizes


def _mm(a: torch.Tensor, b: torch.Tensor, mm_dtype: torch.dtype, out_dtype: torch.dtype) -> torch.Tensor:
    """a @ b in ``mm_dtype`` (bf16 where the hardware has fast bf16 matmuls), returned in ``out_dtype``."""
    if a.dtype != mm_dtype:
        a = a.to(mm_dtype)
    if b.dtype != mm_dtype:
        b = b.to(mm_dtype)
    return (a @ b).to(out_dtype)


class _Geometry:
    """Sizes, padding and the layout conversions shared by the forward and the backward."""

    def __init__(self, x: torch.Tensor, B: torch.Tensor, chunk_size: int) -> None:
        self.b, self.length, self.h, self.p = x.shape
        self.g, self.n = B.shape[2], B.shape[3]
        self.r = self.h // self.g                                   # heads per group
        self.Q = min(chunk_size, self.length)
        self.nc = -(-self.length // self.Q)
        self.pad = self.nc * self.Q - self.length                   # padded steps: Δ = 0, x = 0, B = C = 0

    def chunks(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(b, L, ...) -> (b, nc, Q, ...) in ``dtype``, zero-padded at the end."""
        t = t.to(dtype)
        if self.pad:
            t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, self.pad))
        return t.reshape(self.b, self.nc, self.Q, *t.shape[2:])

    def grouped(self, t: torch.Tensor) -> torch.Tensor:
        """(b, nc, Q, h, p) -> (b, nc, g, Q, r·p) view: the right operand of the per-group matmuls."""
        return t.view(self.b, self.nc, self.Q, self.g, self.r * self.p).transpose(2, 3)

    def ungrouped(self, t: torch.Tensor) -> torch.Tensor:
        """(b, nc, g, Q, r·p) -> (b, nc, Q, g, r, p) view, to combine with per-head (b, nc, Q, g, r, 1)."""
        return t.unflatten(-1, (self.r, self.p)).transpose(2, 3)

    def per_head(self, t: torch.Tensor) -> torch.Tensor:
        """(b, nc, Q, h) -> (b, nc, Q, g, r, 1) view."""
        return t.view(self.b, self.nc, self.Q, self.g, self.r, 1)

    def seq_layout(self, t: torch.Tensor) -> torch.Tensor:
        """(b, nc, Q, h, p) -> (b, nc, Q, g, r, p) view."""
        return t.view(self.b, self.nc, self.Q, self.g, self.r, self.p)

    def chunked_seq_idx(self, seq_idx: torch.Tensor) -> torch.Tensor:
        """(b, L) -> (b, nc, Q); padded steps continue the last sequence."""
        padded = torch.cat([seq_idx, seq_idx[:, -1:].expand(self.b, self.pad)], dim=1)
        return padded.view(self.b, self.nc, self.Q)

    def unchunk(self, t: torch.Tensor) -> torch.Tensor:
        """(b, nc, Q, ...) -> (b, L, ...), dropping the padding."""
        return t.reshape(self.b, self.nc * self.Q, *t.shape[3:])[:, :self.length]


def _decays(geo: _Geometry, delta_c: torch.Tensor, A: torch.Tensor, seq_c: torch.Tensor | None):
    """Per-chunk decays from Δ (b, nc, Q, h).

    Returns c (b, nc, Q, h), e (b, nc, Q, h), w (b, nc, Q, h), chunk_decay (b, nc, h) = exp(c_{Q-1}), each
    decay masked to 0 across a sequence boundary when ``seq_c`` (b, nc, Q) is given, and
    ``same`` (b, nc, 1, Q, Q) (or None): positions t, s of a chunk belong to the same sequence.
    """
    c = (delta_c * A).cumsum(2)
    last = c[:, :, -1]
    e = torch.exp(c)
    w = torch.exp(last[:, :, None] - c)
    chunk_decay = torch.exp(last)
    same = None
    if seq_c is not None:
        seq_end = seq_c[:, :, -1]
        seq_before = torch.cat([seq_c[:, :1, 0], seq_end[:, :-1]], dim=1)   # sequence of each start state
        e = e * (seq_c == seq_before[..., None]).to(e.dtype)[..., None]
        w = w * (seq_c == seq_end[..., None]).to(w.dtype)[..., None]
        chunk_decay = chunk_decay * (seq_end == seq_before).to(e.dtype)[..., None]
        same = (seq_c[..., :, None] == seq_c[..., None, :])[:, :, None]
    return c, e, w, chunk_decay, same


# exp is finite and normal on these ranges; an exponent outside (an exp that underflows or overflows, or a
# masked entry) takes a slow path in vectorised exp, so exponents are clamped into them first.
_EXP_RANGE = {torch.float32: (-87.0, 88.0), torch.float64: (-708.0, 709.0)}


def _decay_exp_into(c_heads: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """exp(c_t - c_s) for all t, s of each item (a chunk and head), written into ``out`` (n, h', Q, Q) [t, s]
    from c_heads (n, h', Q). Not masked: the caller multiplies by a masked C Bᵀ. Exponents are clamped (a
    decay below exp(-87) in float32 becomes exp(-87); entries above the diagonal stay finite)."""
    torch.sub(c_heads[..., :, None], c_heads[..., None, :], out=out)
    return out.clamp_(*_EXP_RANGE[c_heads.dtype]).exp_()


# The masked form works through the chunks in slabs of about this many bytes of (Q, Q) masks, so that each
# product is used (by the next matmul) while it is still in cache, and its buffer is reused (on CPU a fresh
# multi-MiB tensor costs its page faults).
_SLAB_BYTES = 4 << 20


def _slabs(count: int, item_bytes: int) -> list[slice]:
    """Consecutive slices covering range(count), each about _SLAB_BYTES of items of ``item_bytes``."""
    step = max(1, _SLAB_BYTES // item_bytes)
    return [slice(i, min(i + step, count)) for i in range(0, count, step)]


# Largest |c_t - m| (m the chunk's middle decay, see _split_heads) for which a head's decay mask is used in
# factored form: its factors then lie in [e^-60, e^60] (float32), leaving e^±27 of range for the products.
_FACTOR_LIMIT = {torch.float32: 60.0, torch.float64: 600.0}


def _split_heads(c: torch.Tensor, mm_dtype: torch.dtype):
    """Which heads take the factored form: L[t, s] = exp(c_t - c_s) = u_t v_s with u = exp(c - m) and
    v = exp(m - c), (b, nc, Q, h) each, m = (c_0 + c_{Q-1}) / 2 the middle of each chunk's (and head's)
    decays, where every factor of the head is a normal float (|c_t - m| <= _FACTOR_LIMIT in every chunk, so
    a chunk may decay by up to e^120 in float32). The reference m is a constant to autograd: u_t v_s does
    not depend on it.

    Factored, (L ∘ C Bᵀ)(Δx) = u ∘ ((C Bᵀ)(v ∘ Δx)): one matmul per group with no per-head (Q, Q) mask.
    Heads with stronger decays take the masked form (all heads do when fewer than half qualify), and so do
    all heads with half-precision matmuls (the rows' and columns' parts of c's gradient cancel, amplifying
    their rounding).

    Returns (u, v, masked): u is 0 on the masked heads; u and v are None when no head is factored; masked
    is None (no head), "all", or a LongTensor of head indices.
    """
    h = c.shape[-1]
    offset = c - (c[:, :, :1] + c[:, :, -1:]) / 2
    if mm_dtype != c.dtype:
        return None, None, "all"
    limit = _FACTOR_LIMIT[c.dtype]
    factored = offset.abs().amax((0, 1, 2)) <= limit                  # (h,)
    count = int(factored.sum())
    # The factored product runs over all heads, so it pays only when most heads take it.
    if 2 * count < h:
        return None, None, "all"
    offset = offset.clamp(-limit, limit)                                # finite factors on masked heads too
    u, v = torch.exp(offset), torch.exp(-offset)
    if count == h:
        return u, v, None
    u.mul_(factored.to(u.dtype))
    return u, v, (~factored).nonzero().squeeze(1)


def _pick(t: torch.Tensor, heads, dim: int) -> torch.Tensor:
    """``t`` restricted to ``heads`` ("all" or a LongTensor) along ``dim``."""
    return t if isinstance(heads, str) else t.index_select(dim, heads)


def _times_group(per_head: torch.Tensor, per_group: torch.Tensor, heads, r: int,
                 out: torch.Tensor) -> torch.Tensor:
    """per_head (n, h', Q, Q) ∘ the (n, g, Q, Q) matrix of each head's group, written into ``out``."""
    if isinstance(heads, str):
        n, g = per_group.shape[:2]
        shape = (n, g, r, *per_head.shape[-2:])
        torch.mul(per_head.view(shape), per_group[:, :, None], out=out.view(shape))
        return out
    return torch.mul(per_head, per_group[:, heads // r], out=out)


def _sum_groups(per_head: torch.Tensor, heads, r: int, out: torch.Tensor) -> torch.Tensor:
    """per_head (n, h', Q, Q) summed over the heads of each group, written into ``out`` (n, g, Q, Q)."""
    if isinstance(heads, str):
        n, g = out.shape[:2]
        return torch.sum(per_head.view(n, g, r, *per_head.shape[-2:]), 2, out=out)
    return out.zero_().index_add_(1, heads // r, per_head)


def _mm_into(a: torch.Tensor, b: torch.Tensor, mm_dtype: torch.dtype, out: torch.Tensor) -> torch.Tensor:
    """a @ b for (..., m, k) and (..., k, n) operands with the same batch dimensions, written into the
    contiguous (..., m, n) ``out``."""
    if a.dtype == mm_dtype and b.dtype == mm_dtype and out.dtype == mm_dtype:
        torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]),
                  out=out.view(-1, *out.shape[-2:]))
        return out
    return out.copy_(_mm(a, b, mm_dtype, out.dtype))


def _reuse(dead: torch.Tensor | None, shape: tuple[int, ...], like: torch.Tensor,
           offset: int = 0) -> torch.Tensor:
    """A contiguous tensor of ``shape`` (dtype and device of ``like``) in the storage of the contiguous tensor
    ``dead``, no longer used, from element ``offset`` on, or a new one where it does not fit (on CPU a fresh
    multi-MiB tensor costs its page faults)."""
    numel = 1
    for size in shape:
        numel *= size
    if dead is None or dead.dtype != like.dtype or not dead.is_contiguous() or offset + numel > dead.numel():
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    return dead.view(-1)[offset:offset + numel].view(shape)


def _add_heads(target: torch.Tensor, heads, dim: int, values: torch.Tensor, alpha: float = 1.0) -> None:
    """target[heads along dim] += alpha · values, in place."""
    if isinstance(heads, str):
        target.add_(values, alpha=alpha)
    else:
        target.index_add_(dim, heads, values, alpha=alpha)


def _chunk_mask(Q: int, same: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """(Q, Q) or (b, nc, 1, Q, Q) boolean [t, s]: s <= t, in the same sequence when seq_idx is given."""
    causal = torch.ones(Q, Q, dtype=torch.bool, device=device).tril()
    return causal if same is None else causal & same


def _head_major(x_c: torch.Tensor, scale: torch.Tensor, buffer: torch.Tensor | None = None) -> torch.Tensor:
    """x_c (b, nc, Q, h, p) times scale (b, nc, Q, h), written head-major (b, nc, h, Q, p) in one pass (into
    the start of ``buffer``'s storage if given)."""
    b, nc, Q, h, p = x_c.shape
    out = (torch.empty(b, nc, h, Q, p, dtype=x_c.dtype, device=x_c.device) if buffer is None
           else buffer.view(-1)[:x_c.numel()].view(b, nc, h, Q, p))
    return torch.mul(x_c.transpose(2, 3), scale.transpose(2, 3)[..., None], out=out)


class ChunkedSSD(torch.autograd.Function):
    """y, final_state = chunked SSD of (x, Δ, A, B, C) with optional D skip, silu(z) gate, initial state.

    Inputs are x (b, L, h, p), delta (b, L, h) (the step sizes after bias, softplus and clamp), A (h,),
    B, C (b, L, g, N), D (h,) or (h, p) or None, z (b, L, h, p) or None, initial_states (b, h, p, N) or None,
    seq_idx (b, L) or None, chunk_size, mm_dtype, for_backward (keep the masked form's decay masks for the
    backward; without them it recomputes them). Returns y (b, L, h, p) in x's dtype and the final state
    (b, h, p, N) in delta's dtype (the compute dtype).
    """

    @staticmethod
    def forward(ctx, x, delta, A, B, C, D, z, initial_states, seq_idx, chunk_size, mm_dtype, for_backward):
        cd = delta.dtype
        geo = _Geometry(x, B, chunk_size)
        b, nc, Q, h, p, g, n, r = geo.b, geo.nc, geo.Q, geo.h, geo.p, geo.g, geo.n, geo.r
        x_c = geo.chunks(x, cd)                                     # (b, nc, Q, h, p)
        delta_c = geo.chunks(delta, cd)                             # (b, nc, Q, h)
        Bc = geo.chunks(B, cd).transpose(2, 3)                      # (b, nc, g, Q, N) view
        Cc = geo.chunks(C, cd).transpose(2, 3).contiguous()         # (b, nc, g, Q, N)
        Bc_T = Bc.transpose(-1, -2).contiguous()                    # (b, nc, g, N, Q)
        seq_c = None if seq_idx is None else geo.chunked_seq_idx(seq_idx)
        c, e, w, chunk_decay, same = _decays(geo, delta_c, A.to(cd), seq_c)

        # (1) Each chunk's state increment, transposed: Bᵀ (w Δ x) per group, (b, nc, g, N, r·p). The buffer
        # of w Δ x (b, nc, Q, h, p) serves v Δ x in (2), then y in (4). The increments go one chunk's slot
        # (g·N·r·p numbers) into a buffer of b·nc + 1 slots, for the recurrence in (3).
        work = x_c * (delta_c * w)[..., None]
        slot = g * n * r * p
        chained = torch.empty((b * nc + 1) * slot, dtype=cd, device=x.device)
        _mm_into(Bc_T, geo.grouped(work), mm_dtype, chained[slot:].view(b, nc, g, n, r * p))

        # (2) Inside each chunk: (L ∘ C Bᵀ) (Δx), per group in factored form u ∘ ((C Bᵀ)(v ∘ Δx)) for the
        # heads whose decays allow, per head with the (Q, Q) mask for the others (added to y in (4)).
        CB = _mm(Cc, Bc_T, mm_dtype, cd).masked_fill_(~_chunk_mask(Q, same, x.device), 0)   # (b, nc, g, Q, Q)
        u, v, masked = _split_heads(c, mm_dtype)
        # Without padding, the output's own tensor (not a view: callers may modify it in place) holds the
        # inside product first.
        out = torch.empty(b, geo.length, h, p, dtype=cd, device=x.device)
        inside = y_masked = None
        if u is not None:
            x_v = torch.mul(x_c, (delta_c * v)[..., None], out=work)
            inside = (_mm_into(CB, geo.grouped(x_v), mm_dtype, out.view(b, nc, g, Q, r * p)) if geo.pad == 0
                      else _mm(CB, geo.grouped(x_v), mm_dtype, cd))   # (b, nc, g, Q, r·p), before u
        decay_mask = None
        if masked is not None:
            # Per masked head h' with M = L ∘ C Bᵀ, slab by slab. The exp'd decay mask L is kept for the
            # backward: recomputing it there cost more than the rest of the masked heads' backward.
            c_heads = _pick(c, masked, 3).transpose(2, 3).reshape(b * nc, -1, Q)    # (b·nc, h', Q)
            hm = c_heads.shape[1]
            slabs = _slabs(b * nc, hm * Q * Q * CB.element_size())
            # Without a backward to come, L lives in one slab's buffer.
            decay_mask = torch.empty(b * nc if for_backward else slabs[0].stop, hm, Q, Q, dtype=cd,
                                     device=x.device)
            x_heads = _head_major(_pick(x_c, masked, 3), _pick(delta_c, masked, 3)).view(b * nc, hm, Q, p)
            y_masked = torch.empty(b * nc, hm, Q, p, dtype=cd, device=x.device)
            CB_items = CB.view(b * nc, g, Q, Q)
            buffer = None
            for sl in slabs:
                L_slab = _decay_exp_into(c_heads[sl], decay_mask[sl] if for_backward
                                         else decay_mask[:sl.stop - sl.start])
                if buffer is None:
                    buffer = torch.empty_like(L_slab)
                M = _times_group(L_slab, CB_items[sl], masked, r, buffer[:L_slab.shape[0]])
                _mm_into(M, x_heads[sl], mm_dtype, y_masked[sl])
            y_masked = y_masked.view(b, nc, hm, Q, p).transpose(2, 3)   # (b, nc, Q, h', p)
            del x_heads, buffer
            if not for_backward:
                decay_mask = None

        # (3) The recurrence over chunks, H_{k+1} = exp(c_{Q-1}) H_k + increment_k, in place: slot i·nc + k
        # holds increment k - 1 of batch row i and becomes H_k, the state chunk k starts with, so the first
        # b·nc slots are ``starts`` (b, nc, g, N, r·p). Row i's last increment, in the slot of row i + 1's
        # first state, is set aside first.
        starts = chained[:b * nc * slot].view(b, nc, g, n, r * p)
        starts6 = starts.view(b, nc, g, n, r, p)
        last_increment = chained.view(-1, slot)[nc::nc].view(b, g, n, r, p).clone()
        if initial_states is None:
            starts6[:, 0].zero_()
        else:
            starts6[:, 0].copy_(initial_states.reshape(b, g, r, p, n).permute(0, 1, 4, 2, 3))
        decay = chunk_decay.view(b, nc, g, 1, r, 1)
        for k in range(1, nc):
            starts6[:, k].addcmul_(decay[:, k - 1], starts6[:, k - 1])
        state = last_increment.addcmul_(decay[:, nc - 1], starts6[:, nc - 1])     # H_nc, (b, g, N, r, p)
        del chained

        # (4) Output from each chunk's start state, decayed to t, plus the inside part: y (b, nc, Q, h, p).
        y = _mm_into(Cc, starts, mm_dtype, _reuse(work, (b, nc, g, Q, r * p), work))
        del work
        y6 = geo.ungrouped(y)                                       # (b, nc, Q, g, r, p) view
        y6.mul_(geo.per_head(e))
        if inside is not None:
            y6.addcmul_(geo.ungrouped(inside), geo.per_head(u))
        y = y6.reshape(b, nc, Q, h, p)                              # a view when g == 1
        if y_masked is not None:
            _add_heads(y, masked, 3, y_masked)
        del y_masked, inside
        y_seq = geo.unchunk(y)                                      # (b, L, h, p) view

        # y itself is saved for the backward; the output is written over the inside product.
        if D is not None:
            Dc = D.to(cd)
            torch.addcmul(y_seq, x.to(cd), Dc[:, None] if Dc.dim() == 1 else Dc, out=out)
        if z is not None:
            torch.mul(out if D is not None else y_seq, F.silu(z.to(cd)), out=out)
        elif D is None:
            out.copy_(y_seq)
        final = state.permute(0, 1, 3, 4, 2).reshape(b, h, p, n)
        ctx.save_for_backward(x, delta, A, B, C, D, z, seq_idx, y, starts, decay_mask)
        ctx.chunk_size, ctx.mm_dtype = chunk_size, mm_dtype
        ctx.initial_dtype = None if initial_states is None else initial_states.dtype
        return out.to(x.dtype), final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_final):
        x, delta, A, B, C, D, z, seq_idx, y, starts, decay_mask = ctx.saved_tensors
        mm_dtype, cd = ctx.mm_dtype, delta.dtype
        geo = _Geometry(x, B, ctx.chunk_size)
        b, nc, Q, h, p, g, n, r = geo.b, geo.nc, geo.Q, geo.h, geo.p, geo.g, geo.n, geo.r
        xf = x.to(cd)
        dy = d_out.to(cd)
        y_seq = geo.unchunk(y)

        # Gate and skip: out = (y + D x) · silu(z).
        d_z = d_D = None
        if z is not None:
            zf = z.to(cd)
            y_skip = y_seq if D is None else torch.addcmul(y_seq, xf, D.to(cd)[:, None] if D.dim() == 1
                                                           else D.to(cd))
            d_z = torch.ops.aten.silu_backward(dy * y_skip, zf)
            dy = dy * F.silu(zf)
        # One (b, nc, Q, h, p) buffer serves the short-lived products below in turn (fresh large tensors
        # cost page faults on CPU).
        scratch = torch.empty(b, nc, Q, h, p, dtype=cd, device=x.device)
        if D is not None and ctx.needs_input_grad[5]:
            d_D = torch.mul(dy, xf, out=_reuse(scratch, dy.shape, scratch)).sum((0, 1))
            d_D = d_D.sum(-1) if D.dim() == 1 else d_D

        x_c = geo.chunks(xf, cd)
        delta_c = geo.chunks(delta, cd)
        dy_c = geo.chunks(dy, cd)                                   # (b, nc, Q, h, p)
        Bc = geo.chunks(B, cd).transpose(2, 3).contiguous()         # (b, nc, g, Q, N)
        Cc = geo.chunks(C, cd).transpose(2, 3)                      # (b, nc, g, Q, N) view
        Bc_T = Bc.transpose(-1, -2).contiguous()                    # (b, nc, g, N, Q)
        Cc_T = Cc.transpose(-1, -2).contiguous()
        seq_c = None if seq_idx is None else geo.chunked_seq_idx(seq_idx)
        c, e, w, chunk_decay, same = _decays(geo, delta_c, A.to(cd), seq_c)

        # Gradient of c_t from every decay's row t (L's rows and e_t): Σ_p dy_t · y_t.
        d_c = torch.mul(dy_c, y, out=scratch).sum(-1)               # (b, nc, Q, h)

        # (4) Output from the start states: y_t += e_t C_t H.
        dy_e = torch.mul(geo.seq_layout(dy_c), geo.per_head(e), out=geo.seq_layout(scratch))  # (.., g, r, p)
        dy_e_grouped = dy_e.transpose(2, 3).flatten(-2)             # (b, nc, g, Q, r·p)
        d_C = _mm(dy_e_grouped, starts.transpose(-1, -2), mm_dtype, cd)   # (b, nc, g, Q, N)
        # The gradient of each start state from its chunk's output, (b, nc, g, N, r·p), as slots i·nc + k of
        # a buffer of b·nc + 1 chunk slots (g·N·r·p numbers), for the recurrence below.
        slot = g * n * r * p
        chained = torch.empty((b * nc + 1) * slot, dtype=cd, device=x.device)
        _mm_into(Cc_T, dy_e_grouped, mm_dtype, chained[:b * nc * slot].view(b, nc, g, n, r * p))
        del dy_e, dy_e_grouped

        # (3) The recurrence, backwards: G_k = (that part) + exp(c_{Q-1}) G_{k+1}, G_nc = d_final, in place.
        # Chunk k's increment gets G_{k+1}: ``d_increments`` are the slots from 1 on, so that G_{k+1} is
        # written over the part of chunk k + 1. Row i's first part, in the slot of row i - 1's G_nc, is set
        # aside first.
        first_part = chained.view(-1, slot)[:b * nc:nc].view(b, g, n, r, p).clone()
        d_increments = chained[slot:].view(b, nc, g, n, r * p)
        d_increments6, starts6 = d_increments.view(b, nc, g, n, r, p), starts.view(b, nc, g, n, r, p)
        if d_final is None:
            d_increments6[:, nc - 1].zero_()
        else:
            d_increments6[:, nc - 1].copy_(d_final.reshape(b, g, r, p, n).permute(0, 1, 4, 2, 3))
        decay = chunk_decay.view(b, nc, g, 1, r, 1)
        for k in range(nc - 1, 0, -1):
            d_increments6[:, k - 1].addcmul_(decay[:, k], d_increments6[:, k])
        G = first_part.addcmul_(decay[:, 0], d_increments6[:, 0])                 # G_0, (b, g, N, r, p)
        d_initial = G.permute(0, 1, 3, 4, 2).reshape(b, h, p, n)
        del chained
        # Each chunk's decay gets Σ G_{k+1} ∘ H_k, over blocks of chunks whose product fits in ``scratch``.
        block = max(1, scratch.numel() // (b * slot))
        d_decay = torch.cat([
            torch.mul(d_increments6[:, k:k + block], starts6[:, k:k + block],
                      out=_reuse(scratch, (b, min(block, nc - k), g, n, r, p), scratch)).sum(-1).sum(3)
            for k in range(0, nc, block)], dim=1)                           # (b, nc, g, r)
        d_c[:, :, -1] += d_decay.view(b, nc, h) * chunk_decay

        # (1) State increments: Bᵀ (w Δ x).  P = B G per group, in the sequence layout.
        P = geo.ungrouped(_mm(Bc, d_increments, mm_dtype, cd))    # (b, nc, Q, g, r, p) view
        x6 = geo.seq_layout(x_c)
        q = torch.mul(P, x6, out=geo.seq_layout(scratch)).sum(-1).view(b, nc, Q, h)   # Σ_p P x
        qdw = q * w * delta_c                                       # gradient of w_s times w_s
        d_c -= qdw
        d_c[:, :, -1] += qdw.sum(2)
        x_to_end = torch.mul(x_c, (delta_c * w)[..., None], out=scratch)
        d_B = _mm(geo.grouped(x_to_end), d_increments.transpose(-1, -2), mm_dtype, cd)   # (b, nc, g, Q, N)

        # (2) Inside the chunks, factored per group or masked per head as in the forward. Rows of L are
        # covered by Σ_p dy·y above; columns are here. U collects the gradient of Δx from all its uses.
        U = P.mul_(geo.per_head(w)).reshape(b, nc, Q, h, p)         # from the state increments (P's storage
        U6 = geo.seq_layout(U)                                      # when g == 1)
        del P
        u, v, masked = _split_heads(c, mm_dtype)
        mask = _chunk_mask(Q, same, x.device)
        CB = _mm(Cc, Bc_T, mm_dtype, cd).masked_fill_(~mask, 0)     # (b, nc, g, Q, Q): [t, s] = C_t·B_s
        d_CB = None                                                 # gradient of C Bᵀ, [t, s]
        if u is not None:
            x_v = torch.mul(x_c, (delta_c * v)[..., None], out=scratch)     # v ∘ Δx, (b, nc, Q, h, p)
            # u ∘ dy (0 on masked heads) and the gradient of v ∘ Δx in the storage of d_increments, used.
            items = b * nc * Q * h * p
            dy_u = torch.mul(geo.seq_layout(dy_c), geo.per_head(u),
                             out=geo.seq_layout(_reuse(d_increments, (b, nc, Q, h, p), x_v)))
            dy_u_grouped = dy_u.transpose(2, 3).flatten(-2)             # (b, nc, g, Q, r·p)
            d_CB = _mm(dy_u_grouped, geo.grouped(x_v).transpose(-1, -2), mm_dtype, cd)
            d_x_v = geo.ungrouped(_mm_into(CB.transpose(-1, -2), dy_u_grouped, mm_dtype,
                                           _reuse(d_increments, (b, nc, g, Q, r * p), x_v, items)))
            d_c -= torch.mul(d_x_v, geo.seq_layout(x_v), out=dy_u).sum(-1).view(b, nc, Q, h)   # -Σ_p dXv ∘ Xv
            U6.addcmul_(d_x_v, geo.per_head(v))
            del x_v, dy_u, dy_u_grouped, d_x_v
        if masked is not None:
            # Per masked head h', with M = L ∘ C Bᵀ ([t, s]) and the decay mask L saved by the forward,
            # slab by slab as in the forward. Both (Q, Q) matmuls take contiguous operands: Mᵀ dy is
            # computed transposed, as dyᵀ M.
            if decay_mask is None:                                      # a forward that did not keep it
                c_heads = _pick(c, masked, 3).transpose(2, 3).reshape(b * nc, -1, Q)
                decay_mask = _decay_exp_into(c_heads, c_heads.new_empty(*c_heads.shape, Q))
            hm = decay_mask.shape[1]
            dy_m = _pick(dy_c, masked, 3)                               # (b, nc, Q, h', p)
            dy_heads_T = dy_m.permute(0, 1, 3, 4, 2).reshape(b * nc, hm, p, Q)
            dy_heads = dy_m.transpose(2, 3).reshape(b * nc, hm, Q, p)
            x_m = _pick(x_c, masked, 3)
            x_delta_T = scratch.view(-1)[:x_m.numel()].view(b, nc, hm, p, Q)   # Δ_s x_s
            torch.mul(x_m.permute(0, 1, 3, 4, 2), _pick(delta_c, masked, 3).transpose(2, 3)[..., None, :],
                      out=x_delta_T)
            x_delta_T = x_delta_T.view(b * nc, hm, p, Q)
            d_x_delta_T = torch.empty(b * nc, hm, p, Q, dtype=cd, device=x.device)   # (Mᵀ dy)ᵀ
            d_CB_masked = torch.empty(b * nc, g, Q, Q, dtype=cd, device=x.device)   # Σ_heads dM ∘ L
            CB_items = CB.view(b * nc, g, Q, Q)
            # Columns' part of c's gradient: -Σ_t dM[t, s] M[t, s], with dM[t, s] = dy_t · Δ_s x_s. It equals
            # -Δ_s x_s · (Mᵀ dy)_s, a (Q, p) product instead of a (Q, Q) one; with half-precision matmuls
            # the (Q, Q) form is kept, whose float32 M keeps the rounding of the rows' and columns' parts
            # (which cancel) apart.
            d_c_cols = None if mm_dtype == cd else torch.empty(b * nc, hm, Q, dtype=cd, device=x.device)
            buffer = None
            for sl in _slabs(b * nc, hm * Q * Q * CB.element_size()):
                L_slab = decay_mask[sl]
                if buffer is None:
                    buffer = torch.empty_like(L_slab)
                M = _times_group(L_slab, CB_items[sl], masked, r, buffer[:L_slab.shape[0]])
                _mm_into(dy_heads_T[sl], M, mm_dtype, d_x_delta_T[sl])
                if d_c_cols is None:                                    # dM written over M
                    d_M = _mm_into(dy_heads[sl], x_delta_T[sl], mm_dtype, M)
                else:
                    d_M = _mm(dy_heads[sl], x_delta_T[sl], mm_dtype, cd)
                    torch.sum(M.mul_(d_M), -2, out=d_c_cols[sl])
                _sum_groups(d_M.mul_(L_slab), masked, r, d_CB_masked[sl])
            if d_c_cols is None:
                d_c_cols = torch.mul(d_x_delta_T, x_delta_T, out=x_delta_T).sum(-2)
            _add_heads(d_c, masked, 3, d_c_cols.view(b, nc, hm, Q).transpose(2, 3), alpha=-1)
            d_CB_masked = d_CB_masked.view(b, nc, g, Q, Q)
            d_CB = d_CB_masked if d_CB is None else d_CB.add_(d_CB_masked)
            _add_heads(U, masked, 3, d_x_delta_T.view(b, nc, hm, p, Q).permute(0, 1, 4, 2, 3))
            del dy_heads, dy_heads_T, x_delta_T, d_CB_masked, d_x_delta_T, buffer, M, d_M
        if d_CB is not None:
            d_CB.masked_fill_(~mask, 0)
            d_B += _mm(d_CB.transpose(-1, -2), Cc, mm_dtype, cd)
            d_C += _mm(d_CB, Bc, mm_dtype, cd)
        del CB, d_CB
        d_delta = torch.mul(U6, x6, out=geo.seq_layout(scratch)).sum(-1).view(b, nc, Q, h)
        d_x_c = U6.mul_(geo.per_head(delta_c))

        # c = cumsum(Δ A) within the chunk.
        d_a = d_c.flip(2).cumsum(2).flip(2)
        d_delta += d_a * A.to(cd)
        d_A = (d_a * delta_c).sum((0, 1, 2))

        d_x = geo.unchunk(d_x_c.view(b, nc, Q, h, p))
        if D is not None:
            d_x.addcmul_(dy, D.to(cd)[:, None] if D.dim() == 1 else D.to(cd))
        d_B = geo.unchunk(d_B.transpose(2, 3))
        d_C = geo.unchunk(d_C.transpose(2, 3))
        d_delta = geo.unchunk(d_delta)
        return (d_x.to(x.dtype), d_delta, d_A.to(A.dtype), d_B.to(B.dtype), d_C.to(C.dtype),
                None if d_D is None else d_D.to(D.dtype), None if d_z is None else d_z.to(z.dtype),
                None if ctx.initial_dtype is None else d_initial.to(ctx.initial_dtype),
                None, None, None, None)


# On CPU, longer chunks run as chunks of this length. The chunk length changes only how the work is split
# (the chunked form is exact for any length; no result, state or seq_idx boundary depends on it), and 64 cost
# least on CPU at Mamba-2's shapes (the state matmuls cost the same at any length, the inside product grows
# with it; below 64 the matmuls get too small).
_LONGEST_CHUNK = 64


def _apply_chunked(
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    initial_states: torch.Tensor | None,
    seq_idx: torch.Tensor | None,
    mm_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD on checked arguments; Δ (b, L, h) already biased, softplussed and clamped (in the
    compute dtype, float32 or float64), so that autograd carries dt's gradient through those steps.

    Returns y (b, L, h, p) in x's dtype and the final state (b, h, p, N) in Δ's dtype. L >= 1. On CPU,
    chunks run at most _LONGEST_CHUNK long.
    """
    if x.device.type == "cpu":
        chunk_size = min(chunk_size, _LONGEST_CHUNK)
    # Only a forward that autograd will differentiate keeps the masked form's decay masks.
    for_backward = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, delta, A, B, C, D, z, initial_states))
    return ChunkedSSD.apply(x, delta, A, B, C, D, z, initial_states, seq_idx, chunk_size, mm_dtype,
                            for_backward)


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = NO_LIMIT,
    return_final_states: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD: the quadratic form inside chunks of ``chunk_size`` steps, the recurrence between chunks.

    Same arguments and results as :func:`~mambakit.ops.ssd.ref.ssd_ref` (x (batch, L, heads, headdim), dt
    (batch, L, heads), A (heads,), B and C (batch, L, groups, N); y like x, final states (batch, heads,
    headdim, N)), plus ``chunk_size`` (>= 1; L need not be a multiple). The result does not depend on the
    chunk size (up to rounding); on CPU, chunks longer than 64 steps run as chunks of 64, which costs least
    there (``_LONGEST_CHUNK``).
    Per chunk and head: the output inside the chunk (a (Q, Q) masked matmul), the chunk's contribution to
    the state at its end, a recurrence carrying states from chunk to chunk, and each chunk's output from the
    state it starts with. Heads of one group share their C Bᵀ and their B/C matmuls.

    The work is done by :class:`ChunkedSSD`, whose backward is written by hand (batched matmuls,
    recomputing from the inputs, the chunk start states and the output before the gate); Δ's bias, softplus
    and clamp stay outside it, so autograd differentiates them exactly as it would here.
    """
    dims = check_ssd_args(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx)
    check_dt_limit(dt_limit)
    check_int("chunk_size", chunk_size)
    dtype = compute_dtype(x)
    mm_dtype = matmul_dtype(x)
    b, length, h, p, n = dims.batch, dims.length, dims.heads, dims.headdim, dims.state
    delta = step_sizes(dt, dt_bias, dt_softplus, dt_limit, dtype)  # (b, L, h)
    if length == 0:
        final = (initial_states.to(dtype) if initial_states is not None
                 else x.new_zeros(b, h, p, n, dtype=dtype))
        out = x.new_zeros(x.shape)
        return (out, final) if return_final_states else out

    out, final = _apply_chunked(x, delta, A, B, C, chunk_size, D, z, initial_states, seq_idx, mm_dtype)
    return (out, final) if return_final_states else out
