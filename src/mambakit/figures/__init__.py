"""The docs' figures (docs/foundations.md and docs/ssd.md explain each one), drawn on one Agg canvas
(:mod:`.canvas`): :func:`write_figures` writes them all (``mambakit plot``)."""

from __future__ import annotations

import os
from pathlib import Path

from .foundations import plot_hippo_reconstruction, plot_legs_eigenvalues, plot_modes_agree, plot_s4d_kernels
from .ssd import write_ssd_figure


def write_figures(out_dir: str | os.PathLike, quick: bool = False) -> list[Path]:
    """Write every figure of the docs into ``out_dir`` (created if needed); return their paths.

    The four foundation figures and the SSD (Mamba-2) duality figure. ``quick`` uses tiny sizes (for tests);
    the figures in docs/ are made with the defaults.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        return [
            plot_hippo_reconstruction(out / "hippo_legs_reconstruction.png", sizes=(4, 8), length=200),
            plot_s4d_kernels(out / "s4d_kernels.png", N=8, length=64),
            plot_legs_eigenvalues(out / "legs_eigenvalues.png", N=8),
            plot_modes_agree(out / "modes_agree.png", length=128, N=4),
            write_ssd_figure(out / "ssd_duality.png", length=10, chunk=3),
        ]
    return [
        plot_hippo_reconstruction(out / "hippo_legs_reconstruction.png"),
        plot_s4d_kernels(out / "s4d_kernels.png"),
        plot_legs_eigenvalues(out / "legs_eigenvalues.png"),
        plot_modes_agree(out / "modes_agree.png"),
        write_ssd_figure(out / "ssd_duality.png"),
    ]
