"""Where the fused CPU scan's time goes, and how it scales from one thread to two.

Prints, for one shape, the median (and min) time on one and on two threads of the following, taking turns
in every repeat so that a busy machine slows them alike:

- the whole ``selective_scan(backend="cpu")`` forward, and forward+backward (bias, softplus, D·u and the
  SiLU(z) gate all inside the numba kernels);
- the same forward on the per-channel kernel (``selective_scan_cpu(..., forward_kernel="channels")``)
  instead of the channel-vectorised one (``selective_scan.cpu_lanes``), which float32 with input-dependent
  B and C uses;
- the same scan with the kernels running only the recurrence and torch doing the prologue (bias, softplus)
  and the epilogue (D·u, gate) around them (``selective_scan.common.run_real_scan``, how the ``chunked`` and
  ``triton`` backends work): what fusing those passes saves;
- the recurrence alone through the autograd Function (no options);
- the bare per-channel forward kernel, recurrence only, over all channels on one thread and cut into two
  halves on two Python threads (no torch, no thread pool), and the same for the channel-vectorised kernel;
- torch's softplus on the same (b, d, L) tensor, for scale.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/scan_threads.py          # (1, 1536, 2048, 16)
    python benchmarks/scan_threads.py --shape 4,1536,1024,16 --repeats 7
    python benchmarks/scan_threads.py --forward-only --repeats 9     # only the forward rows
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
from mambakit.ops.selective_scan import cpu_lanes
from mambakit.ops.selective_scan.common import kernel_layout, run_real_scan
from mambakit.ops.selective_scan.cpu import CHUNK, FusedScan, scan_forward_kernel, selective_scan_cpu


def interleaved_ms(fns: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """name -> (median, min) milliseconds of each function, the functions taking turns in every repeat so
    that a busy machine slows them alike."""
    for fn in fns.values():
        fn()  # warm-up (and numba compilation)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t) * 1e3, min(t) * 1e3) for name, t in times.items()}


def recurrence_only(u, dt, A, B, C):
    """The fused kernels with no bias, softplus, D or gate: (y, last) = the bare recurrence."""
    dim = u.shape[1]
    Bk, b_index = kernel_layout(B, dim)
    Ck, c_index = kernel_layout(C, dim)
    return FusedScan.apply(u, dt, A, Bk, Ck, None, None, None, False, b_index, c_index)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="1,1536,2048,16", help="batch,dim,L,N")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--forward-only", action="store_true", help="skip the forward+backward rows")
    args = p.parse_args()
    b, d, L, N = (int(v) for v in args.shape.split(","))
    g = torch.Generator().manual_seed(0)
    u, z = torch.randn(b, d, L, generator=g), torch.randn(b, d, L, generator=g)
    delta = torch.randn(b, d, L, generator=g) * 0.5 - 4
    A = -torch.arange(1, N + 1.0).repeat(d, 1)
    B, C = torch.randn(b, N, L, generator=g), torch.randn(b, N, L, generator=g)
    D, bias = torch.ones(d), torch.zeros(d)
    dt = F.softplus(delta)
    inputs = (u, delta, A, B, C, D, z, bias)
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    grad_out = torch.randn(b, d, L, generator=g)

    Bk, b_index = kernel_layout(B, d)
    Ck, c_index = kernel_layout(C, d)
    y, last = torch.empty(b, d, L), torch.empty(b, d, N)
    states = torch.empty(b, d, -(-L // CHUNK), N)
    arrays = [t.numpy() for t in (u, dt, A, Bk, Ck)]
    # D, z, delta_bias, the initial state and sequence starts absent (zero-size arrays); no softplus
    absent = [np.empty(0, np.float32), np.empty((0, 0, 0), np.float32), np.empty(0, np.float32),
              np.empty((0, 0, 0), np.float32), np.empty((0, 0), np.uint8), False]
    outs = [t.numpy() for t in (y, states, last)]
    pairs = b * d

    def kernel(first: int, end: int) -> None:
        scan_forward_kernel(*arrays, *absent, *b_index, *c_index, CHUNK, first, end, np.float32(0), *outs)

    blocks = cpu_lanes.lane_blocks(b, d, b_index[2], c_index[2], cpu_lanes.LANES)

    def lane_kernel(first: int, end: int) -> None:
        cpu_lanes.scan_forward_lanes_kernel(*arrays, *absent, b_index[0], b_index[2], c_index[0],
                                                  c_index[2], CHUNK, blocks, first, end, np.float32(0),
                                                  *outs)

    def on_two_threads(fn, count: int) -> None:
        other = threading.Thread(target=fn, args=(count // 2, count))
        other.start()
        fn(0, count // 2)
        other.join()

    def fused(*args):
        return selective_scan(*args, True, backend="cpu")

    def torch_around_kernel(*args):
        return run_real_scan(recurrence_only, "cpu", *args, True, False, device_type="cpu")

    def with_backward(fn):
        def run():
            for t in leaves:
                t.grad = None
            fn(*leaves).backward(grad_out)
        return run

    print(f"# shape (b, d, L, N) = ({b}, {d}, {L}, {N}); median (min) of {args.repeats}, rows interleaved; "
          f"torch {torch.__version__}")
    print("| what | 1 thread ms | 2 threads ms | scaling (medians) |")
    print("|---|---|---|---|")
    rows = {
        "selective_scan(backend='cpu') forward, all fused": lambda: fused(*inputs),
        "the same on the per-channel kernel (forward_kernel='channels')":
            lambda: selective_scan_cpu(*inputs, True, forward_kernel="channels"),
        "forward, torch prologue/epilogue around the kernel": lambda: torch_around_kernel(*inputs),
        "forward, recurrence only (no bias/softplus/D/gate)": lambda: recurrence_only(u, dt, A, B, C),
        "torch softplus(delta + bias)": lambda: F.softplus(delta + bias[:, None]),
        "selective_scan(backend='cpu') forward+backward, all fused": with_backward(fused),
        "forward+backward, torch prologue/epilogue around the kernels": with_backward(torch_around_kernel),
    }
    if args.forward_only:
        rows = {k: v for k, v in rows.items() if "backward" not in k}
    bare = {"bare per-channel forward kernel, recurrence only, split over Python threads": (kernel, pairs),
            "bare channel-vectorised forward kernel, the same": (lane_kernel, len(blocks))}
    results = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with torch.no_grad():
            forward = interleaved_ms({k: v for k, v in rows.items() if "backward" not in k}, args.repeats)
            forward.update(interleaved_ms({
                name: (lambda fn=fn, count=count: fn(0, count)) if threads == 1
                else (lambda fn=fn, count=count: on_two_threads(fn, count))
                for name, (fn, count) in bare.items()}, args.repeats))
        backward = interleaved_ms({k: v for k, v in rows.items() if "backward" in k}, args.repeats)
        results[threads] = {**forward, **backward}
    for name in [*rows, *bare]:
        (one, one_min), (two, two_min) = results[1][name], results[2][name]
        print(f"| {name} | {one:.1f} ({one_min:.1f}) | {two:.1f} ({two_min:.1f}) | {one / two:.2f}x |")

if __name__ == "__main__":
    main()
