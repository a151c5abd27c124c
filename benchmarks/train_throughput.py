"""Training throughput: tokens/s of forward + backward + AdamW step, mambakit against transformers'
``MambaForCausalLM`` on the same configuration and batch, in one run.

    .venv/bin/python benchmarks/train_throughput.py                      # the demo's model and batch
    .venv/bin/python benchmarks/train_throughput.py --d-model 768 --n-layer 24 --vocab-size 50280 \
        --batch-size 4 --seq-len 512 --device cuda

Both models are built from one ``MambaConfig`` (randomly initialised: speed does not depend on the weights)
and trained on the same random tokens. Prints a table and the ratio (higher = mambakit faster).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from mambakit.layers import MambaBlock
from mambakit.models import MambaConfig, MambaLMHeadModel
from mambakit.models.formats import hf as hf_format


def hf_model(config: MambaConfig, device: torch.device) -> torch.nn.Module:
    from transformers import MambaConfig as HFMambaConfig
    from transformers import MambaForCausalLM

    skip = ("architectures", "model_type", "dtype")
    fields = {k: v for k, v in hf_format.config_to_hf(config).items() if k not in skip}
    return MambaForCausalLM(HFMambaConfig(**fields)).to(device)


def tokens_per_second(model: torch.nn.Module, batch: torch.Tensor, steps: int, warmup: int,
                      hf: bool) -> float:
    """``warmup`` untimed steps, then tokens per second over ``steps`` timed steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    inputs, targets = batch[:, :-1], batch[:, 1:]

    def step():
        out = model(inputs)
        logits = out.logits if hf else out
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if batch.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if batch.device.type == "cuda":
        torch.cuda.synchronize()
    return inputs.numel() * steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=3)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--vocab-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--scan-backends", default="auto,ref",
                   help="comma-separated selective-scan backends to time mambakit with (default: auto,ref)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = MambaConfig(d_model=args.d_model, n_layer=args.n_layer, d_state=args.d_state,
                         vocab_size=args.vocab_size)
    torch.manual_seed(0)
    batch = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len + 1), device=device)
    results = {}
    for backend in args.scan_backends.split(","):
        model = MambaLMHeadModel(config).to(device)
        for block in model.modules():
            if isinstance(block, MambaBlock):
                block.scan_backend = backend
        results[backend] = tokens_per_second(model, batch, args.steps, args.warmup, hf=False)
    print(f"config: d_model={args.d_model} n_layer={args.n_layer} d_state={args.d_state} "
          f"vocab={args.vocab_size}, batch {args.batch_size} x {args.seq_len}, device {device}, "
          f"{torch.get_num_threads()} threads")
    print("| implementation | train tokens/s |")
    print("|---|---|")
    for backend, rate in results.items():
        print(f"| mambakit, scan backend {backend!r} | {rate:,.0f} |")
    ours = next(iter(results.values()))
    if "ref" in results and len(results) > 1:
        print(f"ratio mambakit {next(iter(results))!r} / 'ref' scan: {ours / results['ref']:.2f}x")
    if not args.skip_hf:
        theirs = tokens_per_second(hf_model(config, device), batch, args.steps, args.warmup, hf=True)
        print(f"| transformers MambaForCausalLM | {theirs:,.0f} |")
        print(f"ratio mambakit {next(iter(results))!r} / transformers: {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
