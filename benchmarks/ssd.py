"""Benchmark of the chunked SSD (Mamba-2) on CPU.

Prints, in one run, markdown tables of:
  1. forward and forward+backward time and peak memory of ``mambakit.ops.ssd`` (chunked form) and of
     transformers' Mamba-2 torch path (``mamba2_chunk_scan``, what ``Mamba2Mixer`` runs without CUDA kernels),
     at the same shapes and chunk sizes, in float32 (and ours in bfloat16);
  2. the matmul floor: the chunked algorithm's matmul FLOPs divided by the measured matmul throughput, at
     the chunk length each implementation runs (on CPU ours runs chunks longer than 64 as chunks of 64,
     with the same result: the table says "256 (runs 64)");
  3. training tokens/s of a small Mamba-2 stack vs a Mamba-1 stack of the same width and depth (embedding,
     residual (RMSNorm, mixer) layers, tied head; AdamW steps), if the Mamba-1 block is importable.

Peak memory is the growth of the process's peak resident set during one call (Linux /proc), in MiB,
measured after all timings (the measurement changes how glibc allocates).

    python benchmarks/ssd.py            # Mamba-2 130M-like layer: 24 heads x 64, N = 128, L = 2048
    python benchmarks/ssd.py --quick    # small shapes, a few seconds
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from mambakit.layers.mamba2 import Mamba2Block
from mambakit.ops.ssd import chunked as ssd_chunked
from mambakit.ops.ssd import ssd
from mambakit.ops.ssd.common import matmul_dtype

# ------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------

def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_freed_memory_to_the_os() -> None:
    """Make glibc serve large blocks with mmap and hand freed memory back, so that RSS follows live memory.

    Without it, memory freed by an earlier call stays resident and hides the next call's peak.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, 64 * 1024)
    libc.malloc_trim(0)


def _reset_peak() -> bool:
    _release_freed_memory_to_the_os()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                     # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


_CLOCK = time.perf_counter


def measure_time(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds over ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = _CLOCK()
        fn()
        times.append(_CLOCK() - start)
    return statistics.median(times)


def measure_peak(fn: Callable[[], object]) -> float | None:
    """Peak RSS growth of one call, in MiB (None where /proc is missing).

    Changes how glibc allocates for the rest of the process (every large block is mmapped, so that freed
    memory leaves the resident set), which slows allocation: take every timing before the first call.
    """
    gc.collect()
    if not _reset_peak():
        return None
    base = _status_kib("VmRSS")
    fn()
    hwm = _status_kib("VmHWM")
    return None if base is None or hwm is None else (hwm - base) / 1024


def matmul_throughput(dtype: torch.dtype, size: int, repeats: int) -> float:
    """Measured FLOP/s of a (size x size) @ (size x size) matmul."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    seconds = measure_time(lambda: a @ b, repeats)
    return 2 * size ** 3 / seconds


def ssd_matmul_flops(batch: int, length: int, heads: int, headdim: int, groups: int, state: int,
                     chunk: int) -> int:
    """FLOPs of the chunked form's four forward matmuls: C Bᵀ per group, (L ∘ C Bᵀ) Δx, chunk states, C·H."""
    chunk = min(chunk, length)
    padded = -(-length // chunk) * chunk
    cb = 2 * batch * padded * chunk * state * groups
    inside = 2 * batch * padded * chunk * headdim * heads
    states = 2 * batch * padded * state * headdim * heads
    from_states = 2 * batch * padded * state * headdim * heads
    return cb + inside + states + from_states


# ------------------------------------------------------------------------------------------
# 1-2. The operation
# ------------------------------------------------------------------------------------------

def ssd_inputs(batch, length, heads, headdim, groups, state, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, heads, headdim, generator=gen).to(dtype)
    dt = (torch.randn(batch, length, heads, generator=gen) - 3).to(dtype)
    A = -torch.exp(torch.rand(heads, generator=gen) * 2.7)       # A in [-16, -1] as at initialisation
    B = torch.randn(batch, length, groups, state, generator=gen).to(dtype)
    C = torch.randn(batch, length, groups, state, generator=gen).to(dtype)
    D = torch.randn(heads, generator=gen)
    dt_bias = torch.randn(heads, generator=gen) * 0.1
    return x, dt, A, B, C, D, dt_bias


def op_runner(fn, inputs, chunk: int, backward: bool):
    x, dt, A, B, C, D, dt_bias = inputs
    if not backward:
        def run():
            with torch.no_grad():
                return fn(x, dt, A, B, C, chunk, D=D, dt_bias=dt_bias, dt_softplus=True)
        return run
    leaves = [t.detach().clone().requires_grad_() for t in (x, dt, B, C)]

    def run():
        for leaf in leaves:
            leaf.grad = None
        y = fn(leaves[0], leaves[1], A, leaves[2], leaves[3], chunk, D=D, dt_bias=dt_bias, dt_softplus=True)
        y.float().square().mean().backward()
    return run


_TRANSFORMERS_DEFAULT_CHUNK = 256          # Mamba2Config.chunk_size


def transformers_chunk_scan():
    """transformers' torch implementation of ``mamba_chunk_scan_combined``, or None if unavailable."""
    try:
        logging.getLogger("transformers").setLevel(logging.ERROR)
        from transformers.models.mamba2 import modeling_mamba2
    except Exception:                                            # noqa: BLE001 - optional peer
        return None
    return modeling_mamba2.mamba2_chunk_scan


def bench_op(args) -> None:
    b, L, h, p, g, n = args.batch, args.length, args.heads, args.headdim, args.groups, args.state
    print(f"\n## SSD operation: batch {b}, L {L}, heads {h} x headdim {p}, groups {g}, N {n}, "
          f"{torch.get_num_threads()} threads\n")
    fp32_rate = matmul_throughput(torch.float32, args.matmul_size, args.repeats)
    # Without native bf16 matmuls (AVX-512 BF16 / AMX) the op computes bf16 inputs with float32 matmuls,
    # and a bf16 matmul would take minutes: measure what the op uses.
    bf16_native = matmul_dtype(torch.empty(0, dtype=torch.bfloat16)) == torch.bfloat16
    bf16_rate = (matmul_throughput(torch.bfloat16, args.matmul_size, args.repeats) if bf16_native
                 else fp32_rate)
    print(f"matmul throughput ({args.matmul_size}^3): fp32 {fp32_rate / 1e9:.0f} GFLOP/s, "
          + (f"bf16 {bf16_rate / 1e9:.0f} GFLOP/s\n" if bf16_native
             else "bf16: no native bf16 matmuls on this CPU, bf16 inputs use float32 matmuls\n"))
    theirs = None if args.skip_transformers else transformers_chunk_scan()
    print("| implementation | dtype | chunk | fwd ms | fwd+bwd ms | peak MiB fwd | peak MiB fwd+bwd "
          "| fwd+bwd speed-up vs transformers | fwd / floor | fwd+bwd / floor |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def fmt_mem(v):
        return "n/a" if v is None else f"{v:.0f}"

    rows = []                                   # (impl, dtype, chunk, fwd runner, fwd+bwd runner, rate)
    for chunk in args.chunk_sizes:
        if theirs is not None:
            inputs = ssd_inputs(b, L, h, p, g, n, torch.float32)
            rows.append(("transformers torch path", "fp32", chunk, op_runner(theirs, inputs, chunk, False),
                         op_runner(theirs, inputs, chunk, True), fp32_rate))
        for dtype, name, rate in ((torch.float32, "fp32", fp32_rate), (torch.bfloat16, "bf16", bf16_rate)):
            if name in args.dtypes:
                inputs = ssd_inputs(b, L, h, p, g, n, dtype)
                rows.append(("mambakit chunked", name, chunk, op_runner(ssd, inputs, chunk, False),
                             op_runner(ssd, inputs, chunk, True), rate))
    times = [(measure_time(fwd, args.repeats), measure_time(fwd_bwd, args.repeats))
             for *_, fwd, fwd_bwd, _ in rows]
    peaks = [(measure_peak(fwd), measure_peak(fwd_bwd)) for *_, fwd, fwd_bwd, _ in rows]
    reference = {chunk: t[1] for (impl, _, chunk, *_), t in zip(rows, times, strict=True)
                 if impl.startswith("transformers")}
    for (impl, name, chunk, _, _, rate), (f_t, fb_t), (f_m, fb_m) in zip(rows, times, peaks, strict=True):
        runs = chunk if impl.startswith("transformers") else min(chunk, ssd_chunked._LONGEST_CHUNK)
        flops = ssd_matmul_flops(b, L, h, p, g, n, runs)
        floor_f, floor_fb = flops / rate, 3 * flops / rate
        speedup = f"{reference[chunk] / fb_t:.2f}x" if chunk in reference else "n/a"
        chunk_text = str(chunk) if runs == chunk else f"{chunk} (runs {runs})"
        print(f"| {impl} | {name} | {chunk_text} | {f_t * 1e3:.1f} | {fb_t * 1e3:.1f} | {fmt_mem(f_m)} | "
              f"{fmt_mem(fb_m)} | {speedup} | {f_t / floor_f:.1f}x | {fb_t / floor_fb:.1f}x |")
    floor_chunks = {*args.chunk_sizes, *(min(c, ssd_chunked._LONGEST_CHUNK) for c in args.chunk_sizes)}
    floors = ", ".join(f"{ssd_matmul_flops(b, L, h, p, g, n, chunk) / 1e9:.2f} GFLOP at chunk {chunk}"
                       for chunk in sorted(floor_chunks, reverse=True))
    print(f"\nmatmul floor, forward: {floors} (backward counted as 2x forward)")
    # Each implementation at its own chunk size: transformers at its config default (256), ours at the
    # fastest chunk size measured above.
    theirs_default = reference.get(_TRANSFORMERS_DEFAULT_CHUNK)
    ours_fp32 = {chunk: t[1] for (impl, name, chunk, *_), t in zip(rows, times, strict=True)
                 if impl.startswith("mambakit") and name == "fp32"}
    if theirs_default is not None and ours_fp32:
        best = min(ours_fp32, key=ours_fp32.get)
        print(f"\nEach at its own chunk size (fp32 fwd+bwd): transformers at its default chunk "
              f"{_TRANSFORMERS_DEFAULT_CHUNK}: {theirs_default * 1e3:.1f} ms; mambakit at its fastest "
              f"measured chunk {best}: {ours_fp32[best] * 1e3:.1f} ms; "
              f"speed-up {theirs_default / ours_fp32[best]:.2f}x")


# ------------------------------------------------------------------------------------------
# 3. Training throughput of small stacks
# ------------------------------------------------------------------------------------------

class TinyStack(nn.Module):
    """Embedding, ``depth`` residual (RMSNorm, mixer) layers, final RMSNorm, tied head: the LM's shape."""

    def __init__(self, make_mixer: Callable[[int], nn.Module], d_model: int, depth: int, vocab: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, d_model)
        self.norms = nn.ModuleList(nn.RMSNorm(d_model, eps=1e-5) for _ in range(depth))
        self.mixers = nn.ModuleList(make_mixer(i) for i in range(depth))
        self.norm_f = nn.RMSNorm(d_model, eps=1e-5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.embedding(tokens)
        for norm, mixer in zip(self.norms, self.mixers, strict=True):
            hidden = hidden + mixer(norm(hidden))
        return self.norm_f(hidden) @ self.embedding.weight.T


def bench_training(args) -> None:
    try:
        from mambakit.layers.mamba import MambaBlock
    except Exception as exc:                                     # noqa: BLE001 - built by another issue
        print(f"\n(training comparison skipped: Mamba-1 block unavailable: {exc})")
        return
    d, depth, vocab, batch, L = args.train_d_model, args.train_depth, 256, args.train_batch, args.train_length
    print(f"\n## Training tokens/s: d_model {d}, depth {depth}, batch {batch} x L {L}, vocab {vocab}\n")
    makers = {
        "Mamba-2 (headdim 64, N 64, chunk 64)":
            lambda i: Mamba2Block(d, d_state=64, headdim=64, chunk_size=64, layer_idx=i),
        "Mamba-1 (N 16, fused scan)": lambda i: MambaBlock(d, d_state=16, layer_idx=i),
    }
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (batch, L + 1), generator=gen)
    print("| model | parameters | step ms | tokens/s |")
    print("|---|---|---|---|")
    results = {}
    for name, make in makers.items():
        torch.manual_seed(0)
        model = TinyStack(make, d, depth, vocab)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            logits = model(tokens[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
            loss.backward()
            opt.step()

        seconds = measure_time(step, args.repeats)
        results[name] = batch * L / seconds
        params = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {params / 1e6:.2f} M | {seconds * 1e3:.0f} | {results[name]:.0f} |")
    m2, m1 = results.values()
    print(f"\nMamba-2 / Mamba-1 training tokens/s: {m2 / m1:.2f}x")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (smoke test)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clock", choices=["wall", "process"], default="wall",
                        help="wall time, or this process's CPU time: with --threads 1 it is little "
                             "affected by other work on a shared machine")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--headdim", type=int, default=64)
    parser.add_argument("--groups", type=int, default=1)
    parser.add_argument("--state", type=int, default=128)
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[256, 64])
    parser.add_argument("--longest-chunk", type=int, default=None,
                        help="chunk length above which ours runs shorter chunks (default: the library's, "
                             f"{ssd_chunked._LONGEST_CHUNK}); to compare chunk lengths on a given machine")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--train-d-model", type=int, default=256)
    parser.add_argument("--train-depth", type=int, default=4)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--train-length", type=int, default=512)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 2)
        args.length, args.heads, args.state, args.matmul_size = 256, 4, 32, 512
        args.chunk_sizes = [64]
        args.train_d_model, args.train_depth, args.train_batch, args.train_length = 64, 2, 2, 128
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.longest_chunk is not None:
        ssd_chunked._LONGEST_CHUNK = args.longest_chunk
    global _CLOCK
    _CLOCK = time.process_time if args.clock == "process" else time.perf_counter
    print(f"clock: {args.clock} time")
    if not args.skip_training:          # first: the memory pass of bench_op slows allocation afterwards
        bench_training(args)
    bench_op(args)


if __name__ == "__main__":
    main()
