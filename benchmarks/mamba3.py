"""Benchmark of Mamba-3 (SISO and MIMO) against mambakit's Mamba-2 on CPU.

Prints markdown tables of:
  1. one block's forward and forward+backward time (medians) and peak memory: Mamba-2, and Mamba-3 SISO and
     MIMO (rank 4) with each training backend ("chunked": autograd through the block decomposition,
     "fused": the hand-written backward), at the same d_model, d_state and headdim;
  2. language-model training tokens/s (embedding, residual (RMSNorm, mixer) layers, tied head, AdamW steps)
     of the same at equal width and depth;
  3. the ratios of time per token to Mamba-2's.

Every repeat times all the models in turn (interleaved, so that a shared machine's load falls on all
alike); the tables give medians. Chunk lengths: Mamba-2 and Mamba-3 SISO 64, MIMO 16 (the official
recommendation, 64 / rank). Peak memory is the growth of the process's peak resident set during one call
(see benchmarks/ssd.py), measured after all timings; the fused backend's buffers kept between calls are
released first, so that they count.

    python benchmarks/mamba3.py            # d_model 256, d_state 64, L 1024; LM d_model 256 x 2 layers
    python benchmarks/mamba3.py --quick    # small shapes, a few seconds
    python benchmarks/mamba3.py --clock process   # CPU time of this process (less sensitive to other jobs)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from ssd import measure_peak
from torch import nn

from mambakit import MambaConfig, MambaLMHeadModel
from mambakit.layers.mamba2 import Mamba2Block
from mambakit.layers.mamba3 import Mamba3Block
from mambakit.ops.mamba3.fused import release_buffers

# (name, mixer settings); the Mamba-3 ones differ only in the training backend.
KINDS = {"Mamba-2": {"chunk_size": 64},
         "Mamba-3 SISO, chunked": {"chunk_size": 64, "backend": "chunked"},
         "Mamba-3 SISO, fused": {"chunk_size": 64, "backend": "fused"},
         "Mamba-3 MIMO (R=4), chunked": {"chunk_size": 16, "is_mimo": True, "mimo_rank": 4,
                                         "backend": "chunked"},
         "Mamba-3 MIMO (R=4), fused": {"chunk_size": 16, "is_mimo": True, "mimo_rank": 4, "backend": "fused"}}
_CLOCK = time.perf_counter


def make_block(kind: str, d_model: int, d_state: int, headdim: int) -> nn.Module:
    block = Mamba2Block if kind == "Mamba-2" else Mamba3Block
    return block(d_model, d_state=d_state, headdim=headdim, **KINDS[kind])


def make_lm(kind: str, d_model: int, depth: int, vocab: int, d_state: int, headdim: int) -> MambaLMHeadModel:
    """The language model of ``kind``; the backend is no config option, so it is set on the built blocks."""
    options = dict(KINDS[kind])
    backend = options.pop("backend", None)
    config = MambaConfig(d_model=d_model, n_layer=depth, vocab_size=vocab, d_state=d_state,
                         mixer="mamba2" if kind == "Mamba-2" else "mamba3",
                         mixer_cfg={"headdim": headdim, **options})
    model = MambaLMHeadModel(config, generator=torch.Generator().manual_seed(0))
    for module in model.modules():
        if isinstance(module, Mamba3Block):
            module.backend = backend
    return model


def interleaved_medians(fns: dict[str, object], repeats: int) -> dict[str, float]:
    """Median seconds of each function over ``repeats`` rounds, each round calling all in turn (after one
    warm-up call each)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = _CLOCK()
            fn()
            times[name].append(_CLOCK() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_blocks(args) -> dict[str, tuple[float, float]]:
    print(f"\n## One block: d_model {args.d_model}, d_state {args.d_state}, headdim {args.headdim}, "
          f"batch {args.batch} x L {args.length}, float32\n")
    u = torch.randn(args.batch, args.length, args.d_model)
    runs = {}
    for kind in KINDS:
        torch.manual_seed(0)
        block = make_block(kind, args.d_model, args.d_state, args.headdim)

        def forward(block=block):
            with torch.no_grad():
                block(u)

        def forward_backward(block=block):
            block(u.requires_grad_()).square().mean().backward()

        runs[kind] = (forward, forward_backward)
    medians = interleaved_medians({(kind, i): fns[i] for kind, fns in runs.items() for i in (0, 1)},
                                  args.repeats)
    out = {kind: (medians[kind, 0], medians[kind, 1]) for kind in KINDS}
    print("| block | parameters | forward ms | fwd+bwd ms | fwd peak MiB | fwd+bwd peak MiB |")
    print("|---|---|---|---|---|---|")
    for kind in KINDS:
        forward, forward_backward = runs[kind]
        peaks = []
        for fn in (forward, forward_backward):
            release_buffers()
            peaks.append(measure_peak(fn))
        block = make_block(kind, args.d_model, args.d_state, args.headdim)
        params = sum(p.numel() for p in block.parameters())
        f, fb = out[kind]
        mem = " | ".join("n/a" if m is None else f"{m:.0f}" for m in peaks)
        print(f"| {kind} | {params / 1e3:.0f} k | {f * 1e3:.1f} | {fb * 1e3:.1f} | {mem} |")
    return out


def bench_training(args) -> dict[str, float]:
    d, depth, vocab, batch, L = args.lm_d_model, args.lm_depth, 256, args.lm_batch, args.lm_length
    print(f"\n## Training tokens/s: d_model {d}, depth {depth}, batch {batch} x L {L}, vocab {vocab}\n")
    tokens = torch.randint(0, vocab, (batch, L + 1), generator=torch.Generator().manual_seed(0))
    steps, params = {}, {}
    for kind in KINDS:
        model = make_lm(kind, d, depth, vocab, args.d_state, args.headdim)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            logits = model(tokens[:, :-1])
            targets = tokens[:, 1:].reshape(-1)
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets)
            loss.backward()
            opt.step()

        steps[kind] = step
        params[kind] = sum(p.numel() for p in model.parameters())
    seconds = interleaved_medians(steps, args.repeats)
    print("| model | parameters | step ms | tokens/s |")
    print("|---|---|---|---|")
    results = {}
    for kind in KINDS:
        results[kind] = batch * L / seconds[kind]
        print(f"| {kind} | {params[kind] / 1e6:.2f} M | {seconds[kind] * 1e3:.0f} | {results[kind]:.0f} |")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (smoke test)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                        help="wall-clock time or this process's CPU time")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--d-state", type=int, default=64)
    parser.add_argument("--headdim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--lm-d-model", type=int, default=256)
    parser.add_argument("--lm-depth", type=int, default=2)
    parser.add_argument("--lm-batch", type=int, default=4)
    parser.add_argument("--lm-length", type=int, default=256)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.d_model, args.length, args.lm_d_model, args.lm_length = 2, 64, 128, 64, 64
        args.d_state, args.headdim = 16, 16
    if args.threads:
        torch.set_num_threads(args.threads)
    global _CLOCK
    _CLOCK = time.process_time if args.clock == "process" else time.perf_counter
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock")
    blocks = bench_blocks(args)
    training = bench_training(args)
    print("\n## Time per token / Mamba-2's (medians; goal: SISO <= 1.5, MIMO <= 2.5)\n")
    print("| model | block forward | block fwd+bwd | LM training step |")
    print("|---|---|---|---|")
    base_f, base_fb = blocks["Mamba-2"]
    for kind in KINDS:
        f, fb = blocks[kind]
        lm = training["Mamba-2"] / training[kind]
        print(f"| {kind} | {f / base_f:.2f} | {fb / base_fb:.2f} | {lm:.2f} |")


if __name__ == "__main__":
    main()
