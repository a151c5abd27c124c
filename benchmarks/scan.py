"""Selective-scan speed and memory: mambakit's backends against peers and the machine's own limits.

For each shape (batch, dim, L, N) it times the forward pass and the forward+backward pass (median of
``--repeats``), records the peak extra resident memory of one forward+backward, and prints one markdown table
with the ratios. Peers, called through the official op-level signature on the same inputs:

- ``ref``: ``mambakit.ops.selective_scan_ref`` under autograd (a loop over L);
- ``transformers``: ``transformers``' CPU slow path (``mamba_selective_scan``, the recurrent loop that
  materialises exp(Δ·A) as a (batch, dim, L, N) tensor);
- ``mambapy``: the same function with ``use_mambapy=True``, i.e. mambapy's parallel scan (``pscan``),
  when ``mambapy`` is installed (``pip install --no-deps mambapy``).

The machine floor is measured in the same run: max(bytes that must move / memory bandwidth,
batch·L·dim·N exponentials / torch's exp throughput), both on the threads given.

Examples:
    python benchmarks/scan.py --quick
    python benchmarks/scan.py --threads 2 --repeats 5
    python benchmarks/scan.py --shapes 1,768,1024,16 --impls cpu,chunked,ref
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import torch
from machine import describe

from mambakit.ops import selective_scan_ref
from mambakit.ops.cpu.kernel_math import exp_float32
from mambakit.ops.selective_scan.chunked import selective_scan_chunked
from mambakit.ops.selective_scan.cpu import selective_scan_cpu

DEFAULT_SHAPES = ["1,1536,2048,16", "4,1536,1024,16", "1,768,8192,16", "1,768,1024,16"]
QUICK_SHAPES = ["1,256,512,16"]
SLOW = {"ref", "transformers"}  # loops over L in Python: their backward is only timed on small shapes


def _peers() -> dict[str, Callable]:
    impls: dict[str, Callable] = {"cpu": selective_scan_cpu, "chunked": selective_scan_chunked,
                                  "ref": selective_scan_ref}
    try:
        from transformers.models.mamba import modeling_mamba
    except ImportError:
        return impls
    scan = modeling_mamba.mamba_selective_scan

    def transformers_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    impls["transformers"] = transformers_scan
    if modeling_mamba.is_mambapy_available():
        def mambapy_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
            return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, use_mambapy=True)

        impls["mambapy"] = mambapy_scan
    return impls


def make_inputs(batch: int, dim: int, L: int, N: int, seed: int = 0) -> dict:
    """Mamba-like float32 inputs: A = -(1..N) per channel (S4D-real init), Δ in [1e-3, 0.1] after softplus."""
    gen = torch.Generator().manual_seed(seed)
    dt_init = torch.exp(torch.rand(dim, generator=gen) * (np.log(0.1) - np.log(1e-3)) + np.log(1e-3))
    return dict(
        u=torch.randn(batch, dim, L, generator=gen),
        delta=torch.randn(batch, dim, L, generator=gen) * 0.1,
        A=-torch.arange(1, N + 1, dtype=torch.float32).repeat(dim, 1),
        B=torch.randn(batch, N, L, generator=gen),
        C=torch.randn(batch, N, L, generator=gen),
        D=torch.ones(dim),
        z=torch.randn(batch, dim, L, generator=gen),
        delta_bias=dt_init + torch.log(-torch.expm1(-dt_init)),  # softplus inverse
    )


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_probe(name: str, shape: tuple[int, int, int, int]) -> float:
    """Peak extra resident memory (MiB) of one forward+backward, sampled every 0.2 ms in this process.

    Meant for a fresh subprocess per measurement, whose heap holds no freed memory that could hide growth.
    """
    impl = _peers()[name]
    measure(impl, make_inputs(1, 4, 8, 2), 1, backward=True)  # compile and load everything on a tiny shape
    leaves = {k: v.requires_grad_(True) for k, v in make_inputs(*shape).items()}
    grad_out = torch.randn(leaves["u"].shape)
    gc.collect()
    before = _rss_bytes()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    impl(**leaves, delta_softplus=True).backward(grad_out)
    done.set()
    sampler.join()
    return (max(peak[0], _rss_bytes()) - before) / 2**20


def _probe_in_subprocess(name: str, shape: tuple[int, int, int, int], threads: int) -> str:
    if not sys.platform.startswith("linux"):
        return "–"
    command = [sys.executable, __file__, "--threads", str(threads), "--memory-probe", name,
               ",".join(map(str, shape))]
    # A fixed mmap threshold makes glibc hand every large freed block back at once, so the resident size
    # follows the live tensors (its default raises the threshold as blocks are freed and keeps them cached).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    ok = done.returncode == 0 and done.stdout.split()
    return f"{float(done.stdout.split()[-1]):.0f}" if ok else "failed"


def _time(fn: Callable[[], object], repeats: int, warm_up: bool = True) -> float:
    """Median seconds over ``repeats`` runs, after one warm-up run."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(impl: Callable, inputs: dict, repeats: int, backward: bool, warm_up: bool = True) -> dict:
    """Median forward time, and (if ``backward``) median forward+backward time, in seconds."""
    def forward():
        with torch.no_grad():
            return impl(**inputs, delta_softplus=True)

    result = {"fwd": _time(forward, repeats, warm_up)}
    if backward:
        leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        grad_out = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(1))

        def forward_backward():
            out = impl(**leaves, delta_softplus=True)
            out.backward(grad_out)
            for v in leaves.values():
                v.grad = None

        result["fwd_bwd"] = _time(forward_backward, repeats, warm_up)
    return result


def machine_limits(seconds: float = 0.5) -> dict:
    """Memory bandwidth (torch triad) and exp throughputs (torch, and mambakit's float32 exp) on this run's
    threads; element counts chosen so the exp inputs stay in cache and the triad's do not."""
    n = 1 << 25
    b, c = torch.rand(n), torch.rand(n)
    a = torch.empty(n)
    triad = _time(lambda: torch.add(b, c, alpha=2.0, out=a), 5)
    bandwidth = 3 * 4 * n / triad
    x = -torch.rand(1 << 20) * 20   # 4 MB: in cache, and big enough to amortise a parallel launch
    y = torch.empty_like(x)
    reps = max(1, int(seconds / max(_time(lambda: torch.exp(x, out=y), 3), 1e-6)))
    torch_exp = x.numel() * reps / _time(lambda: [torch.exp(x, out=y) for _ in range(reps)], 3)
    xn, yn = x.numpy(), y.numpy()
    ours_exp = xn.size * reps / _time(lambda: [exp_float32(xn, yn) for _ in range(reps)], 3)
    return {"bandwidth": bandwidth, "torch_exp": torch_exp, "ours_exp_1thread": ours_exp}


def floor_seconds(batch: int, dim: int, L: int, N: int, limits: dict) -> tuple[float, float]:
    """(memory floor, exp floor) of one forward pass, in seconds."""
    moved = 4 * (4 * batch * dim * L + 2 * batch * N * L)  # read u, delta, z, B, C; write out (float32)
    return moved / limits["bandwidth"], batch * dim * L * N / limits["torch_exp"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=None, metavar="B,D,L,N",
                        help=f"shapes (batch,dim,L,N); default: {' '.join(DEFAULT_SHAPES)}")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs per measurement (median; default 5)")
    parser.add_argument("--slow-repeats", type=int, default=1,
                        help="timed runs for the Python-loop peers ref and transformers (default 1)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads, also used by the 'cpu' backend "
                             f"(default {torch.get_num_threads()})")
    parser.add_argument("--impls", default=None,
                        help="comma-separated subset of cpu,chunked,ref,transformers,mambapy "
                             "(default: all found)")
    parser.add_argument("--slow-backward-max", type=int, default=None,
                        help="time the backward of ref/transformers only when batch*dim*L is at most this "
                             "(their backward grows faster than linearly in L; default 786432, 0 if --quick)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory probes (one subprocess per implementation and shape)")
    parser.add_argument("--memory-probe", nargs=2, metavar=("IMPL", "B,D,L,N"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: shapes {QUICK_SHAPES}, 2 repeats")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.memory_probe:
        name, text = args.memory_probe
        print(memory_probe(name, tuple(int(v) for v in text.split(","))))
        return 0
    slow_backward_max = args.slow_backward_max
    if slow_backward_max is None:
        slow_backward_max = 0 if args.quick else 768 * 1024
    shapes = args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    repeats = 2 if args.quick else args.repeats
    impls = _peers()
    if args.impls:
        wanted = args.impls.split(",")
        unknown = [w for w in wanted if w not in impls]
        if unknown:
            parser.error(f"--impls: unknown or unavailable {unknown}; available: {sorted(impls)}")
        impls = {k: impls[k] for k in wanted}

    limits = machine_limits(0.1 if args.quick else 0.5)
    print(f"# selective scan benchmark: {describe()}, {args.threads} threads, torch {torch.__version__}, "
          f"python {sys.version.split()[0]}")
    print(f"# memory bandwidth {limits['bandwidth'] / 1e9:.1f} GB/s; exp throughput: torch "
          f"{limits['torch_exp'] / 1e9:.2f} G/s ({args.threads} threads), mambakit float32 exp "
          f"{limits['ours_exp_1thread'] / 1e9:.2f} G/s (1 thread)")
    print(f"# command: python benchmarks/scan.py {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    print("| shape (b, d, L, N) | impl | fwd ms | fwd+bwd ms | peak MiB fwd+bwd | fwd × vs ref | fwd × vs "
          "transformers | fwd × vs mambapy | fwd / floor | fwd+bwd × vs ref |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for text in shapes:
        batch, dim, L, N = (int(v) for v in text.split(","))
        inputs = make_inputs(batch, dim, L, N)
        mem_floor, exp_floor = floor_seconds(batch, dim, L, N, limits)
        floor = max(mem_floor, exp_floor)
        results = {}
        for name, impl in impls.items():
            slow = name in SLOW
            backward = not slow or batch * dim * L <= slow_backward_max
            results[name] = measure(impl, inputs, args.slow_repeats if slow else repeats, backward,
                                    warm_up=not slow)
            if backward and not args.no_memory:
                results[name]["peak"] = _probe_in_subprocess(name, (batch, dim, L, N), args.threads)

        def ratio(name: str, peer: str, key: str = "fwd", results=results) -> str:
            mine, theirs = results[name], results.get(peer, {})
            if peer == name or key not in mine or key not in theirs:
                return "–"
            return f"{theirs[key] / mine[key]:.1f}"

        for name, r in results.items():
            fwd_bwd = f"{r['fwd_bwd'] * 1e3:.1f}" if "fwd_bwd" in r else "skipped"
            peak = r.get("peak", "–")
            print(f"| {batch}, {dim}, {L}, {N} | {name} | {r['fwd'] * 1e3:.1f} | {fwd_bwd} | {peak} | "
                  f"{ratio(name, 'ref')} | {ratio(name, 'transformers')} | {ratio(name, 'mambapy')} | "
                  f"{r['fwd'] / floor:.2f} | {ratio(name, 'ref', 'fwd_bwd')} |")
        print(f"| {batch}, {dim}, {L}, {N} | *floor* | {floor * 1e3:.1f} (memory {mem_floor * 1e3:.1f}, "
              f"exp {exp_floor * 1e3:.1f}) | | | | | | | |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
