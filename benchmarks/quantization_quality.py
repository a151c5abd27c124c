"""What bf16 and int8 weights cost a trained model: logits, held-out loss and greedy agreement against fp32.

    .venv/bin/python benchmarks/quantization_quality.py --checkpoint runs/demo

On the validation plays of the embedded Shakespeare (never seen in training): the largest and the mean
|Δlogit| against the fp32 model over ``--windows`` windows, the validation loss (nats per byte) and its
perplexity, and how many of ``--tokens`` greedy tokens from a fixed prompt equal fp32's (positions until the
first difference, and in total).
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from mambakit.cli.loading import load_model
from mambakit.data import ByteTokenizer, eval_batches, load_token_splits


@torch.no_grad()
def evaluate(model, windows, vocab: int):
    """(logits of every window, mean nats per token)."""
    logits, nll, count = [], 0.0, 0
    for inputs, targets in windows:
        out = model(inputs)[..., :vocab].float()
        logits.append(out)
        nll += float(F.cross_entropy(out.reshape(-1, vocab), targets.reshape(-1), reduction="sum"))
        count += targets.numel()
    return logits, nll / count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a run or checkpoint directory of a byte model")
    p.add_argument("--windows", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--prompt", default="ROMEO:")
    args = p.parse_args()
    splits = load_token_splits(None, ByteTokenizer())
    windows = list(eval_batches(splits.val, args.seq_len, 8, args.windows))
    results = {}
    for weights in ("fp32", "bf16", "int8"):
        model, _ = load_model(args.checkpoint, "cpu", weights)
        vocab = model.config.vocab_size
        logits, nll = evaluate(model, windows, vocab)
        prompt = torch.tensor([list(args.prompt.encode())])
        text = model.generate(prompt, args.tokens, temperature=0)[0, prompt.shape[1]:]
        results[weights] = (logits, nll, text)
    ref_logits, _, ref_text = results["fp32"]
    print(f"{args.windows} validation windows of {args.seq_len} bytes; {args.tokens} greedy tokens after "
          f"{args.prompt!r}")
    print("| weights | max abs Δlogit | mean abs Δlogit | val nats/byte | perplexity | greedy: same until | "
          "same in total |")
    print("|---|---|---|---|---|---|---|")
    for weights, (logits, nll, text) in results.items():
        diffs = torch.cat([(a - b).abs().flatten() for a, b in zip(logits, ref_logits, strict=True)])
        same = (text == ref_text)
        first = int(same.logical_not().nonzero()[0]) if not bool(same.all()) else len(same)
        per_byte = nll / splits.bytes_per_token
        print(f"| {weights} | {float(diffs.max()):.4f} | {float(diffs.mean()):.5f} | {per_byte:.4f} "
              f"| {math.exp(nll):.3f} | {first} | {int(same.sum())} / {len(same)} |")


if __name__ == "__main__":
    main()
