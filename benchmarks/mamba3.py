"""Benchmark of Mamba-3 (SISO and MIMO) against mambakit's Mamba-2 on CPU.

Prints markdown tables of:
  1. one block's forward and forward+backward time (medians) and peak memory: Mamba-2, Mamba-3 SISO and
     Mamba-3 MIMO (rank 4) at the same d_model, d_state and headdim;
  2. language-model training tokens/s (embedding, residual (RMSNorm, mixer) layers, tied head, AdamW steps)
     of the three at equal width and depth;
  3. the ratios of time per token to Mamba-2's.

Chunk lengths: Mamba-2 and Mamba-3 SISO 64, MIMO 16 (the official recommendation, 64 / rank). Peak memory
is the growth of the process's peak resident set during one call (see benchmarks/ssd.py), measured after
all timings.

    python benchmarks/mamba3.py            # d_model 256, d_state 64, L 1024; LM d_model 256 x 2 layers
    python benchmarks/mamba3.py --quick    # small shapes, a few seconds
"""

from __future__ import annotations

import argparse

import torch
from ssd import measure_peak, measure_time
from torch import nn

from mambakit import MambaConfig, MambaLMHeadModel
from mambakit.layers.mamba2 import Mamba2Block
from mambakit.layers.mamba3 import Mamba3Block

KINDS = ("Mamba-2", "Mamba-3 SISO", "Mamba-3 MIMO (R=4)")


def make_block(kind: str, d_model: int, d_state: int, headdim: int) -> nn.Module:
    if kind == "Mamba-2":
        return Mamba2Block(d_model, d_state=d_state, headdim=headdim, chunk_size=64)
    if kind == "Mamba-3 SISO":
        return Mamba3Block(d_model, d_state=d_state, headdim=headdim, chunk_size=64)
    return Mamba3Block(d_model, d_state=d_state, headdim=headdim, is_mimo=True, mimo_rank=4, chunk_size=16)


def lm_config(kind: str, d_model: int, depth: int, vocab: int, d_state: int, headdim: int) -> MambaConfig:
    mixer, cfg = {"Mamba-2": ("mamba2", {"chunk_size": 64}),
                  "Mamba-3 SISO": ("mamba3", {"chunk_size": 64}),
                  "Mamba-3 MIMO (R=4)": ("mamba3", {"chunk_size": 16, "is_mimo": True, "mimo_rank": 4})}[kind]
    return MambaConfig(d_model=d_model, n_layer=depth, vocab_size=vocab, d_state=d_state, mixer=mixer,
                       mixer_cfg={"headdim": headdim, **cfg})


def bench_blocks(args) -> dict[str, tuple[float, float]]:
    print(f"\n## One block: d_model {args.d_model}, d_state {args.d_state}, headdim {args.headdim}, "
          f"batch {args.batch} x L {args.length}, float32\n")
    u = torch.randn(args.batch, args.length, args.d_model)
    runs, out = {}, {}
    for kind in KINDS:
        torch.manual_seed(0)
        block = make_block(kind, args.d_model, args.d_state, args.headdim)

        def forward(block=block):
            with torch.no_grad():
                block(u)

        def forward_backward(block=block):
            block(u.requires_grad_()).square().mean().backward()

        runs[kind] = (forward, forward_backward)
        out[kind] = (measure_time(forward, args.repeats), measure_time(forward_backward, args.repeats))
    print("| block | parameters | forward ms | fwd+bwd ms | fwd peak MiB | fwd+bwd peak MiB |")
    print("|---|---|---|---|---|---|")
    for kind in KINDS:
        forward, forward_backward = runs[kind]
        peaks = [measure_peak(fn) for fn in (forward, forward_backward)]
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
    print("| model | parameters | step ms | tokens/s |")
    print("|---|---|---|---|")
    results = {}
    for kind in KINDS:
        model = MambaLMHeadModel(lm_config(kind, d, depth, vocab, args.d_state, args.headdim),
                                 generator=torch.Generator().manual_seed(0))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            logits = model(tokens[:, :-1])
            targets = tokens[:, 1:].reshape(-1)
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets)
            loss.backward()
            opt.step()

        seconds = measure_time(step, args.repeats)
        results[kind] = batch * L / seconds
        params = sum(p.numel() for p in model.parameters())
        print(f"| {kind} | {params / 1e6:.2f} M | {seconds * 1e3:.0f} | {results[kind]:.0f} |")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (smoke test)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=5)
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
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
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
