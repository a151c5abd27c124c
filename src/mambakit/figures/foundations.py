"""The foundation figures of docs/foundations.md:

* ``hippo_legs_reconstruction.png`` a signal and its online LegS reconstruction for several N
* ``s4d_kernels.png``               convolution kernels of S4D-Lin and S4D-Inv
* ``legs_eigenvalues.png``          eigenvalues of the LegS matrix, its normal part, and of Ā for several Δ
* ``modes_agree.png``               recurrence, FFT convolution and parallel scan outputs and their gaps
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..layers.s4d import s4d_eigenvalues
from ..ssm.discretize import discretize_diag
from ..ssm.hippo import hippo_basis, hippo_matrices, hippo_online, legs_nplr, smooth_signal
from ..ssm.kernels import kernel_vandermonde
from ..ssm.modes import diag_ssm_convolution, diag_ssm_recurrent, diag_ssm_scan
from .canvas import new_figure, save_png


def plot_hippo_reconstruction(path: Path, sizes=(4, 8, 16, 64), length: int = 2000) -> Path:
    """The smooth test signal on [0, 1] and its LegS reconstruction from the final state, for each N."""
    x = torch.linspace(0.0, 1.0, length, dtype=torch.float64)
    f = smooth_signal(x)
    fig = new_figure(8, 4.5)
    ax = fig.add_subplot()
    ax.plot(x, f, color="black", lw=2.5, label="signal")
    for n in sizes:
        state = hippo_online("legs", f, n, dt=1.0 / (length - 1))[-1]
        approx = hippo_basis("legs", n, x) @ state
        err = float(torch.linalg.vector_norm(approx - f) / torch.linalg.vector_norm(f))
        ax.plot(x, approx, lw=1.2, label=f"N = {n} (rel. error {err:.1e})")
    ax.set_xlabel("time (the whole history [0, t] with t = 1)")
    ax.set_ylabel("value")
    ax.set_title("HiPPO-LegS: the history rebuilt from the state at t = 1")
    ax.legend(loc="lower left", fontsize=8)
    return save_png(fig, path)


def plot_s4d_kernels(path: Path, N: int = 64, length: int = 1024, dts=(0.003, 0.03)) -> Path:
    """Kernels K_l = 2 Re Σ C_n B̄_n Ā_n^l of S4D-Lin and S4D-Inv with B = C = 1 for two step sizes."""
    fig = new_figure(9, 5)
    axes = fig.subplots(2, 1, sharex=True)
    ones = torch.ones(N // 2, dtype=torch.complex128)
    for ax, init in zip(axes, ("lin", "inv"), strict=True):
        A = s4d_eigenvalues(init, N)
        for dt in dts:
            A_bar, B_bar = discretize_diag(A, ones, dt, "zoh")
            K = 2 * kernel_vandermonde(A_bar, B_bar, ones, length).real
            ax.plot(K, lw=1, label=f"Δ = {dt}")
        ax.set_title(f"S4D-{init.capitalize()} kernel (N = {N}, B = C = 1)")
        ax.set_ylabel("K_l")
        ax.legend(fontsize=8)
    axes[-1].set_xlabel("lag l")
    return save_png(fig, path)


def plot_legs_eigenvalues(path: Path, N: int = 32, dts=(0.01, 0.1, 1.0)) -> Path:
    """Eigenvalues of A_LegS, of its normal part (NPLR), and of their discretisations for several Δ.

    A_LegS is lower triangular, so its eigenvalues are its diagonal −1, ..., −N; Ā's are their images under
    the discretisation map (bilinear (1 + Δλ/2)/(1 − Δλ/2), zoh exp(Δλ)). Asking ``eigvals`` of the dense Ā
    instead would scatter them: A_LegS is far from normal, so rounding errors of 1e-16 move its eigenvalues
    visibly.
    """
    A, _ = hippo_matrices("legs", N)
    eig_A = torch.diagonal(A).to(torch.complex128)
    Lambda, _, _, _ = legs_nplr(N)
    fig = new_figure(13, 4.8)
    left, right = fig.subplots(1, 2)
    left.scatter(eig_A.real, eig_A.imag, s=14, label="A (LegS): −1, −2, ..., −N")
    left.scatter(Lambda.real, Lambda.imag, s=14, marker="x", label="A + PPᵀ (normal part): −½ + iω")
    left.axvline(0, color="gray", lw=0.8)
    left.set_yscale("symlog", linthresh=1.0)
    left.set_xlabel("Re")
    left.set_ylabel("Im (symmetric log scale)")
    left.set_title(f"Continuous LegS, N = {N}: all in the left half-plane")
    left.legend(fontsize=8)
    theta = torch.linspace(0, 2 * math.pi, 400)
    right.plot(torch.cos(theta), torch.sin(theta), color="gray", lw=0.8, label="unit circle")
    for dt in dts:
        bilinear = (1 + dt * eig_A / 2) / (1 - dt * eig_A / 2)
        right.scatter(bilinear.real, bilinear.imag, s=12, label=f"Ā of A, bilinear, Δ = {dt}")
        normal = (1 + dt * Lambda / 2) / (1 - dt * Lambda / 2)
        right.scatter(normal.real, normal.imag, s=14, marker="x",
                      label=f"Ā of normal part, bilinear, Δ = {dt}")
    zoh = torch.exp(dts[-1] * eig_A)
    right.scatter(zoh.real, zoh.imag, s=12, marker="+", label=f"Ā of A, zoh, Δ = {dts[-1]}")
    right.set_aspect("equal")
    right.set_xlabel("Re")
    right.set_title("Discretised: every eigenvalue inside the unit circle")
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save_png(fig, path)


def plot_modes_agree(path: Path, length: int = 4096, N: int = 8) -> Path:
    """One channel's output by recurrence, FFT convolution and parallel scan (float32), and their gaps."""
    gen = torch.Generator().manual_seed(0)
    radius = 1 - 10 ** (-1 - 2 * torch.rand(1, N, generator=gen, dtype=torch.float64))
    phase = 0.2 * torch.rand(1, N, generator=gen, dtype=torch.float64)
    A_bar = torch.polar(radius, phase).to(torch.complex64)
    B_bar = (1 - radius).to(torch.complex64)
    C = torch.randn(1, N, generator=gen, dtype=torch.complex64)
    u = torch.randn(1, 1, length, generator=gen)
    y_rec, _ = diag_ssm_recurrent(A_bar, B_bar, C, u)
    y_conv = diag_ssm_convolution(A_bar, B_bar, C, u)
    y_scan, _ = diag_ssm_scan(A_bar, B_bar, C, u)
    fig = new_figure(10, 6)
    top, bottom = fig.subplots(2, 1)
    t = torch.arange(length)
    window = slice(max(0, length - 300), length)
    top.plot(t[window], y_rec[0, 0, window], lw=4, alpha=0.4, label="recurrence")
    top.plot(t[window], y_conv[0, 0, window], lw=1.5, ls="--", label="FFT convolution")
    top.plot(t[window], y_scan[0, 0, window], lw=1, ls=":", color="black", label="parallel scan")
    top.set_ylabel("y")
    top.set_title(f"Three ways to run one SSM (float32, L = {length}, |Ā| up to 0.999): the last 300 steps")
    top.legend(fontsize=8)
    block = max(1, length // 128)
    blocks = torch.arange(0, length - length % block, block)
    for a, b, name in ((y_conv, y_rec, "conv − recurrence"), (y_scan, y_rec, "scan − recurrence"),
                       (y_scan, y_conv, "scan − conv")):
        gap = (a - b)[0, 0, : len(blocks) * block].abs().reshape(-1, block).amax(-1)
        bottom.semilogy(blocks, gap.clamp_min(1e-12), lw=1, drawstyle="steps-post", label=name)
    scale = float(y_rec.abs().max())
    bottom.axhline(1e-5 * scale, color="gray", ls="--", lw=0.8, label="1e-5 × max |y|")
    bottom.set_xlabel("time step")
    bottom.set_ylabel(f"max |difference| per {block} steps")
    bottom.legend(fontsize=8, loc="center", ncols=4)
    return save_png(fig, path)
