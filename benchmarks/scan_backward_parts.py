"""Where the lane scan backward's time goes: the kernel timed with each of its passes left out, side by side.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/scan_backward_parts.py
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/scan_backward_parts.py --shape 1,1536,1024,16

Each variant is the source of :mod:`mambakit.ops.selective_scan.cpu_lanes_bwd` with one or more of its loops
made empty (found by their comments), compiled here and swapped in for the real kernel; its gradients are
wrong, only its time means something. What a part costs is the full kernel's median minus the variant's,
all variants interleaved in one process. The parts overlap (a pass left out also frees cache and registers
for the rest), so the savings do not add up to the whole. Only the backward call is timed: the forward
runs before the timer starts.
"""

from __future__ import annotations

import statistics
import time
import types
from pathlib import Path

import torch
from machine import describe
from scan_backward import parse_scan_args

from mambakit.ops.selective_scan import cpu_lanes_bwd
from mambakit.ops.selective_scan.cpu import selective_scan_cpu
from mambakit.training.memory import keep_freed_memory

# Each part: the loop headers (by their comments) made empty to leave it out.
_LOOPS = {
    "stage": "            for w in range(width):   # stage the chunk",
    "transpose in": "            for w in range(width):   # the rows into step-major tiles",
    "recompute": "            for t in range(T):   # recompute the chunk",
    "walk back": "            for t in range(T - 1, -1, -1):   # walking back",
    "gradients": "            for t in range(T):   # what the gradients give",
    "transpose out": "            for w in range(width):   # back to channel rows",
    "epilogue": "            for w in range(width):   # du, d(delta)",
}
_N_PASSES = ("recompute", "walk back", "gradients")
VARIANTS = {
    **{f"without {name}": (name,) for name in _LOOPS},
    "without the three passes over N": _N_PASSES,
    "without the passes over N, staging and epilogue": (*_N_PASSES, "stage", "epilogue"),
    "without every loop (what is left: calls, allocations, sums)": tuple(_LOOPS),
}


def variant_kernel(parts: tuple[str, ...]):
    """The lane backward kernel compiled with the loops of ``parts`` emptied."""
    source = Path(cpu_lanes_bwd.__file__).read_text()
    source = source.replace("from ..cpu.", "from mambakit.ops.cpu.")
    source = source.replace("from .cpu_lanes import", "from mambakit.ops.selective_scan.cpu_lanes import")
    source = source.replace("cache=True", "cache=False")
    for part in parts:
        header = _LOOPS[part]
        if header not in source:
            raise SystemExit(f"scan_backward_parts: the loop {part!r} is no longer in "
                             f"{cpu_lanes_bwd.__file__}; update _LOOPS to the kernel's source")
        first, rest = header.split("range(", 1)
        source = source.replace(header, first + "range(0 * " + rest, 1)
    module = types.ModuleType("scan_backward_variant")
    exec(compile(source, f"<variant {parts}>", "exec"), module.__dict__)
    return module.scan_backward_lanes_kernel


def main() -> None:
    args, base = parse_scan_args(__doc__.splitlines()[0], repeats=15)
    keep_freed_memory()   # as in training: fresh gradients would otherwise fault their pages in every call
    b, d, L, N = args.shape
    gen = torch.Generator().manual_seed(1)
    dout = torch.randn(b, d, L, generator=gen)
    full = cpu_lanes_bwd.scan_backward_lanes_kernel
    kernels = {"full kernel": full, **{name: variant_kernel(parts) for name, parts in VARIANTS.items()}}

    def backward_time(kernel) -> float:
        cpu_lanes_bwd.scan_backward_lanes_kernel = kernel
        leaves = [t.clone().requires_grad_(True) for t in base]
        out = selective_scan_cpu(*leaves, True, forward_kernel="lanes")
        start = time.perf_counter()
        out.backward(dout)
        return time.perf_counter() - start

    def forward_time() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            selective_scan_cpu(*base, True, forward_kernel="lanes")
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in kernels}
    forward: list[float] = []
    try:
        for kernel in kernels.values():
            backward_time(kernel)   # compile, warm up
        forward_time()
        for _ in range(args.repeats):
            forward.append(forward_time())
            for name, kernel in kernels.items():
                times[name].append(backward_time(kernel))
    finally:
        cpu_lanes_bwd.scan_backward_lanes_kernel = full
    med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
    fwd = statistics.median(forward) * 1e3
    print(f"{describe()}; shape (batch, dim, L, N) = {(b, d, L, N)}, {torch.get_num_threads()} threads, "
          f"{args.repeats} interleaved repeats (medians)")
    print(f"lane forward {fwd:.2f} ms; full backward {med['full kernel']:.2f} ms "
          f"({med['full kernel'] / fwd:.2f}x the forward)")
    print("| variant | backward ms | saved ms | share of the full backward |")
    print("|---|---|---|---|")
    for name, m in med.items():
        saved = med["full kernel"] - m
        print(f"| {name} | {m:.2f} | {saved:.2f} | {saved / med['full kernel']:.0%} |")


if __name__ == "__main__":
    main()
