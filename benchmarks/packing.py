"""Packed against padded training on mixed-length documents: useful (loss-bearing) tokens per second.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/packing.py              # demo-sized model
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/packing.py --rounds 9 --seq-len 512

The documents are the speeches of the embedded Shakespeare (its blank-line separated blocks; byte tokens),
whose lengths range from a few bytes to thousands. Three ways to train on them, one batch shape, timed in
turn round after round (the machine is noisy: medians of the rounds):

- ``padded``: one document per row, cut at seq_len, padded to seq_len; padding carries no loss;
- ``packed``: rows cut from the stream of documents, each row's documents kept apart by ``seq_idx`` (the
  state restarts and no loss crosses a boundary): every position but a document's last is useful;
- ``stream``: the same rows without ``seq_idx`` (documents run into each other): what packing costs.

A step is forward + backward + AdamW. Prints ms per step and useful tokens per second, and their ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from mambakit.data import IGNORE_INDEX, ByteTokenizer, PackedWindows, encode_documents, shakespeare_split
from mambakit.models import MambaConfig, MambaLMHeadModel


def padded_batch(tokens: np.ndarray, starts: np.ndarray, rng: np.random.Generator, batch: int,
                 seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` random documents, one per row, cut to seq_len + 1, padded (targets IGNORE_INDEX)."""
    ends = np.append(starts[1:], len(tokens))
    inputs = torch.zeros(batch, seq_len, dtype=torch.long)
    targets = torch.full((batch, seq_len), IGNORE_INDEX, dtype=torch.long)
    for row, doc in enumerate(rng.integers(0, len(starts), size=batch)):
        end = min(ends[doc], starts[doc] + seq_len + 1)
        piece = torch.from_numpy(tokens[starts[doc]:end].astype(np.int64))
        n = len(piece) - 1
        if n > 0:
            inputs[row, :n], targets[row, :n] = piece[:-1], piece[1:]
    return inputs, targets


def train_step(model, opt, inputs, targets, seq_idx=None) -> None:
    logits = model(inputs) if seq_idx is None else model(inputs, seq_idx=seq_idx)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--mixer", choices=["mamba", "mamba2"], default="mamba")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=3, help="timed steps per method per round")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tokens, starts = encode_documents(shakespeare_split()[0], ByteTokenizer())
    lengths = np.diff(np.append(starts, len(tokens)))
    mixer_cfg = {"headdim": 32, "chunk_size": 64} if args.mixer == "mamba2" else {}
    config = MambaConfig(d_model=args.d_model, n_layer=args.n_layer, vocab_size=256, mixer=args.mixer,
                         mixer_cfg=mixer_cfg)
    model = MambaLMHeadModel(config, generator=torch.Generator().manual_seed(0)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    windows = PackedWindows(tokens, starts, args.seq_len, args.batch_size, 1, 1, seed=0)
    rng = np.random.default_rng(0)

    def run(method: str, step: int) -> int:
        """One training step; returns its useful (loss-bearing) tokens."""
        if method == "padded":
            inputs, targets = padded_batch(tokens, starts, rng, args.batch_size, args.seq_len)
            train_step(model, opt, inputs, targets)
        else:
            inputs, targets, seq_idx = windows.batch(step, 0, 0)
            train_step(model, opt, inputs, targets, seq_idx if method == "packed" else None)
        return int((targets != IGNORE_INDEX).sum())

    methods = ("padded", "packed", "stream")
    for m in methods:  # warm-up: numba compilation, allocator
        run(m, 0)
    times = {m: [] for m in methods}
    useful = {m: [] for m in methods}
    for r in range(args.rounds):
        for m in methods:
            start = time.perf_counter()
            count = sum(run(m, r * args.steps + s) for s in range(args.steps))
            times[m].append((time.perf_counter() - start) / args.steps)
            useful[m].append(count / args.steps)

    print(f"documents: {len(lengths)}, length median {int(np.median(lengths))}, p90 "
          f"{int(np.percentile(lengths, 90))}, max {int(lengths.max())} bytes; batch {args.batch_size} x "
          f"{args.seq_len}, {args.mixer} d_model {args.d_model} x {args.n_layer} layers, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds x {args.steps} steps (medians)")
    print(f"{'method':<8} {'ms/step':>9} {'useful tokens/step':>19} {'useful tokens/s':>16}")
    rate = {}
    for m in methods:
        ms = statistics.median(times[m]) * 1e3
        tok = statistics.median(useful[m])
        rate[m] = statistics.median(u / t for u, t in zip(useful[m], times[m], strict=True))
        print(f"{m:<8} {ms:>9.1f} {tok:>19.0f} {rate[m]:>16.0f}")
    print(f"packed / padded useful tokens/s: {rate['packed'] / rate['padded']:.2f}x; "
          f"packed / stream step time: "
          f"{statistics.median(times['packed']) / statistics.median(times['stream']):.3f}")


if __name__ == "__main__":
    main()
