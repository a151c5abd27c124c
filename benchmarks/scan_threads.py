"""Where the fused CPU scan's time goes, and how it scales from one thread to two.

Prints, for one shape, the median time of: the whole ``selective_scan(backend="cpu")`` forward; its fused
core (layout + kernel, no softplus / D / gate); the bare numba kernel over all channels on one thread and cut
into two halves on two Python threads; and torch's softplus on the same (b, d, L) tensor.

    python benchmarks/scan_threads.py                       # (1, 1536, 2048, 16)
    python benchmarks/scan_threads.py --shape 4,1536,1024,16 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F

from mambakit.ops import selective_scan
from mambakit.ops.scan_common import kernel_layout
from mambakit.ops.scan_cpu import CHUNK, _fused_core, _scan_forward_kernel


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (and numba compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="1,1536,2048,16", help="batch,dim,L,N")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    b, d, L, N = (int(v) for v in args.shape.split(","))
    g = torch.Generator().manual_seed(0)
    u, z = torch.randn(b, d, L, generator=g), torch.randn(b, d, L, generator=g)
    delta = torch.randn(b, d, L, generator=g) * 0.5 - 4
    A = -torch.arange(1, N + 1.0).repeat(d, 1)
    B, C = torch.randn(b, N, L, generator=g), torch.randn(b, N, L, generator=g)
    D, bias = torch.ones(d), torch.zeros(d)
    dt = F.softplus(delta)

    Bk, b_index = kernel_layout(B, d)
    Ck, c_index = kernel_layout(C, d)
    y, last = torch.empty(b, d, L), torch.empty(b, d, N)
    states = torch.empty(b, d, -(-L // CHUNK), N)
    arrays = [t.numpy() for t in (u, dt, A, Bk, Ck)]
    outs = [t.numpy() for t in (y, states, last)]
    pairs = b * d

    def kernel(first: int, end: int) -> None:
        _scan_forward_kernel(*arrays, *b_index, *c_index, CHUNK, first, end, np.float32(0), *outs)

    def kernel_two_threads() -> None:
        other = threading.Thread(target=kernel, args=(pairs // 2, pairs))
        other.start()
        kernel(0, pairs // 2)
        other.join()

    print(f"# shape (b, d, L, N) = ({b}, {d}, {L}, {N}); median of {args.repeats}; torch {torch.__version__}")
    print("| what | 1 thread ms | 2 threads ms | scaling |")
    print("|---|---|---|---|")
    rows = {
        "selective_scan(backend='cpu') forward": lambda: selective_scan(u, delta, A, B, C, D, z, bias, True,
                                                                        backend="cpu"),
        "fused core (layout + kernel)": lambda: _fused_core(u, dt, A, B, C),
        "torch softplus(delta + bias)": lambda: F.softplus(delta + bias[:, None]),
    }
    with torch.no_grad():
        for name, fn in rows.items():
            torch.set_num_threads(1)
            one = median_ms(fn, args.repeats)
            torch.set_num_threads(2)
            two = median_ms(fn, args.repeats)
            print(f"| {name} | {one:.1f} | {two:.1f} | {one / two:.2f}x |")
        one = median_ms(lambda: kernel(0, pairs), args.repeats)
        two = median_ms(kernel_two_threads, args.repeats)
        name = "bare kernel, channels split over Python threads"
        print(f"| {name} | {one:.1f} | {two:.1f} | {one / two:.2f}x |")


if __name__ == "__main__":
    main()
