"""The fused CPU scan's backward against its forward, for both forward/backward kernel pairs, side by side.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/scan_backward.py
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/scan_backward.py --shape 8,512,256,16 --repeats 9

``lanes``: the channel-vectorised float32 kernels (cpu_lanes forward, cpu_lanes_bwd backward), what
``forward_kernel="auto"`` runs for Mamba's input-dependent B and C; ``channels``: the per-channel kernels.
Backward time = median(forward + backward) - median(forward), interleaved repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine import describe

from mambakit.ops.selective_scan.cpu import selective_scan_cpu


def parse_scan_args(description: str, repeats: int) -> tuple[argparse.Namespace, list[torch.Tensor]]:
    """The command line (--shape, --repeats, --threads, threads applied) and the scan's random inputs for the
    shape: u, delta, A, B, C, D, z, delta_bias."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--shape", default="8,512,256,16", help="batch,dim,L,N (default: the LM benchmark's)")
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    b, d, L, N = (int(v) for v in args.shape.split(","))
    args.shape = (b, d, L, N)
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(b, d, L, generator=gen), torch.randn(b, d, L, generator=gen) * 0.5,
            -torch.rand(d, N, generator=gen) - 0.5, torch.randn(b, N, L, generator=gen),
            torch.randn(b, N, L, generator=gen), torch.randn(d, generator=gen),
            torch.randn(b, d, L, generator=gen), torch.randn(d, generator=gen) * 0.3]
    return args, base


def main() -> None:
    args, base = parse_scan_args(__doc__.splitlines()[0], repeats=7)
    b, d, L, N = args.shape
    leaves = [t.clone().requires_grad_(True) for t in base]

    def run(kind: str, backward: bool) -> None:
        if backward:
            selective_scan_cpu(*leaves, True, forward_kernel=kind).sum().backward()
        else:
            with torch.no_grad():
                selective_scan_cpu(*base, True, forward_kernel=kind)

    times: dict[tuple[str, bool], list[float]] = {}
    kinds = ("lanes", "channels")
    for k in kinds:
        for g in (False, True):
            run(k, g)   # compile, warm up
    for _ in range(args.repeats):
        for k in kinds:
            for g in (False, True):
                start = time.perf_counter()
                run(k, g)
                times.setdefault((k, g), []).append(time.perf_counter() - start)
    med = {key: statistics.median(v) * 1e3 for key, v in times.items()}
    print(f"{describe()}; shape (batch, dim, L, N) = {(b, d, L, N)}, {torch.get_num_threads()} threads, "
          f"{args.repeats} interleaved repeats (medians)")
    print("| kernels | forward ms | backward ms | backward / forward |")
    print("|---|---|---|---|")
    bwd = {}
    for k in kinds:
        f = med[(k, False)]
        bwd[k] = med[(k, True)] - f
        print(f"| {k} | {f:.1f} | {bwd[k]:.1f} | {bwd[k] / f:.2f} |")
    print(f"backward lanes / channels: {bwd['lanes'] / bwd['channels']:.2f}")


if __name__ == "__main__":
    main()
