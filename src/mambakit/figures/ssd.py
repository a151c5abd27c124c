"""A picture of state-space duality: the SSD recurrence as one masked matrix, and how chunking cuts it.

For a short random input and one head it draws
  (a) the 1-semiseparable decay mask L = exp(segment_sum(Δ·A)),
  (b) C Bᵀ, the "attention scores" of the dual form,
  (c) M = L ∘ C Bᵀ, so that y = M (Δ·x) (+ D x): the whole recurrence as one lower-triangular matrix,
  (d) M rebuilt from the chunked form's pieces: diagonal blocks from each chunk's own (Q, Q) mask,
      off-diagonal blocks from low-rank factors C_t · (decay) · B_s passed through the chunk states.
The titles report how far (d) is from (c), and (c) applied to the input from the step-by-step recurrence.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..ops.ssd import segment_sum, ssd_quadratic, ssd_ref
from .canvas import new_figure, save_png


def _chunked_matrix(a: torch.Tensor, CB: torch.Tensor, chunk: int) -> torch.Tensor:
    """The (T, T) SSD matrix assembled block by block as the chunked algorithm factors it (one head)."""
    T = a.shape[0]
    M = torch.zeros(T, T, dtype=a.dtype)
    starts = list(range(0, T, chunk))
    cums = [a[s:s + chunk].cumsum(0) for s in starts]                # log-decay from each chunk's start
    for i, si in enumerate(starts):
        li = cums[i]
        for j, sj in enumerate(starts[: i + 1]):
            lj = cums[j]
            block = CB[si:si + len(li), sj:sj + len(lj)]
            if i == j:                                              # inside the chunk: its own decay mask
                log_mask = (li[:, None] - li[None, :]).masked_fill(
                    ~torch.ones(len(li), len(li), dtype=torch.bool).tril(), float("-inf"))
                M[si:si + len(li), sj:sj + len(lj)] = torch.exp(log_mask) * block
            else:                                           # s -> end of chunk j -> chunks between -> t
                to_end = torch.exp(lj[-1] - lj)                     # (Q,)
                between = sum((cums[k][-1] for k in range(j + 1, i)), torch.zeros((), dtype=a.dtype))
                from_start = torch.exp(li)                          # (Q,)
                M[si:si + len(li), sj:sj + len(lj)] = (from_start[:, None] * torch.exp(between)
                                                       * to_end[None, :] * block)
    return M


def write_ssd_figure(out_path: str | os.PathLike, length: int = 24, chunk: int = 6, state: int = 4,
                     seed: int = 0) -> Path:
    """Draw the SSD duality figure (four panels) into a PNG at ``out_path``; returns the path.

    Args:
        out_path: PNG file to write (atomically: temporary file in the same folder, then renamed).
        length: sequence length T of the random example.  chunk: chunk size drawn in panel (d).
        state: N.  seed: seed of the random example.
    """
    fig = new_figure(17, 4.6, layout="tight")
    from matplotlib.patches import Rectangle  # matplotlib is importable: new_figure checked

    gen = torch.Generator().manual_seed(seed)
    T = length
    x = torch.randn(1, T, 1, 1, generator=gen, dtype=torch.float64)
    dt = torch.nn.functional.softplus(torch.randn(1, T, 1, generator=gen, dtype=torch.float64) - 1.0)
    A = torch.tensor([-0.2], dtype=torch.float64)                    # slow decay: long reach is visible
    B = torch.randn(1, T, 1, state, generator=gen, dtype=torch.float64)
    C = torch.randn(1, T, 1, state, generator=gen, dtype=torch.float64)

    a = dt[0, :, 0] * A[0]                                           # (T,) log-decays Δ_t·A
    L = torch.exp(segment_sum(a))
    CB = C[0, :, 0] @ B[0, :, 0].T
    M = L * CB
    M_chunked = _chunked_matrix(a, CB, chunk)
    y_matrix = ssd_quadratic(x, dt, A, B, C)
    y_recurrence = ssd_ref(x, dt, A, B, C)
    chunk_gap = (M_chunked - M).abs().max().item()
    dual_gap = (y_matrix - y_recurrence).abs().max().item()

    upper = torch.ones(T, T, dtype=torch.bool).triu(1)
    lim = M.abs().max().item()
    axes = fig.subplots(1, 4)
    panels = [
        (L.masked_fill(upper, float("nan")), "(a) decay mask L = exp(segsum(Δ·A))", "viridis", 0, 1),
        (CB, "(b) C Bᵀ", "RdBu_r", -CB.abs().max().item(), CB.abs().max().item()),
        (M.masked_fill(upper, float("nan")),
         f"(c) M = L ∘ C Bᵀ  (y = M·Δx)\nmax|y_M − y_recurrence| = {dual_gap:.1e}",
         "RdBu_r", -lim, lim),
        (M_chunked.masked_fill(upper, float("nan")),
         f"(d) chunked, Q = {chunk}: diagonal blocks + low-rank off-diagonal\n"
         f"max|M_chunked − M| = {chunk_gap:.1e}",
         "RdBu_r", -lim, lim),
    ]
    for ax, (matrix, title, cmap, vmin, vmax) in zip(axes, panels, strict=True):
        image = ax.imshow(matrix.numpy(), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("source position s")
        ax.set_ylabel("output position t")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    for start in range(0, T, chunk):                                 # outline the blocks of panel (d)
        for other in range(0, start + 1, chunk):
            diagonal = other == start
            axes[3].add_patch(Rectangle((other - 0.5, start - 0.5), min(chunk, T - other),
                                        min(chunk, T - start),
                                        fill=False, linewidth=1.6 if diagonal else 0.8,
                                        edgecolor="black" if diagonal else "dimgray",
                                        linestyle="-" if diagonal else "--"))
    fig.suptitle(f"State-space duality: one SSD head, T = {T}, N = {state}. "
                 "The recurrence h_t = e^(Δ_t A) h_(t-1) + Δ_t B_t x_t, y_t = C_tᵀ h_t "
                 "is the lower-triangular matrix (c).", fontsize=10)
    return save_png(fig, out_path)
