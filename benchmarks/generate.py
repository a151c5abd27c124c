"""Batch-1 decoding: tokens/s of mambakit and of transformers' ``generate`` (with its cache), and
mambakit's per-token time at positions 1k, 8k and 64k, which must stay flat (the recurrent state has a
fixed size, whatever the position).

    .venv/bin/python benchmarks/generate.py
    .venv/bin/python benchmarks/generate.py --d-model 768 --n-layer 24 --vocab-size 50280 --device cuda

Decode speed excludes the prompt: it is n / (time for 1 + n tokens - time for 1 token), greedy, for both,
the best of three measurements.
Per-position time: the prompt of P tokens is run through the backbone in one parallel pass to fill the
cache, then ``--position-tokens`` single steps are timed (median).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mambakit.models import MambaConfig, MambaLMHeadModel
from mambakit.models.formats import hf


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def decode_tokens_per_second(generate, prompt: torch.Tensor, new_tokens: int, repeats: int = 3) -> float:
    """Best of ``repeats`` measurements (other processes only ever slow a measurement down)."""
    def timed(n: int) -> float:
        _sync(prompt.device)
        start = time.perf_counter()
        generate(prompt, n)
        _sync(prompt.device)
        return time.perf_counter() - start

    timed(2)  # warm-up
    rates = []
    for _ in range(repeats):
        one = timed(1)
        many = timed(1 + new_tokens)
        rates.append(new_tokens / max(many - one, 1e-9))
    return max(rates)


@torch.no_grad()
def per_token_ms_at(model: MambaLMHeadModel, position: int, steps: int, device: torch.device) -> float:
    cache = model.allocate_inference_cache(1, device=device)
    prompt = torch.randint(0, model.config.vocab_size, (1, position), device=device)
    model.backbone(prompt, state=cache)  # prefill without the (position x vocab) logits
    token = prompt[:, -1]
    model.step(token, cache)
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        logits = model.step(token, cache)
        token = logits[:, : model.config.vocab_size].argmax(-1)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000  # the median: robust to other processes on a shared machine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--vocab-size", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--positions", default="1024,8192,65536")
    p.add_argument("--position-tokens", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-hf", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = MambaConfig(d_model=args.d_model, n_layer=args.n_layer, d_state=args.d_state,
                         vocab_size=args.vocab_size)
    ours = MambaLMHeadModel(config).to(device).eval()
    prompt = torch.randint(0, args.vocab_size, (1, args.prompt_len), device=device)
    print(f"config: d_model={args.d_model} n_layer={args.n_layer} d_state={args.d_state} "
          f"vocab={args.vocab_size}, prompt {args.prompt_len}, device {device}, "
          f"{torch.get_num_threads()} threads")
    print("| implementation | decode tokens/s (batch 1) |")
    print("|---|---|")
    our_rate = decode_tokens_per_second(lambda x, n: ours.generate(x, n, top_k=1), prompt, args.new_tokens)
    print(f"| mambakit | {our_rate:,.1f} |")
    if not args.skip_hf:
        from transformers import MambaConfig as HFMambaConfig
        from transformers import MambaForCausalLM

        skip = ("architectures", "model_type", "dtype")
        fields = {k: v for k, v in hf.config_to_hf(config).items() if k not in skip}
        theirs = MambaForCausalLM(HFMambaConfig(**fields)).to(device).eval()
        their_rate = decode_tokens_per_second(
            lambda x, n: theirs.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                         use_cache=True),
            prompt, args.new_tokens)
        print(f"| transformers MambaForCausalLM.generate | {their_rate:,.1f} |")
        print(f"ratio mambakit / transformers: {our_rate / their_rate:.2f}x")
    print()
    print("| position | mambakit ms/token |")
    print("|---|---|")
    for position in (int(x) for x in args.positions.split(",") if x):
        ms = per_token_ms_at(ours, position, args.position_tokens, device)
        print(f"| {position:,} | {ms:.2f} |")


if __name__ == "__main__":
    main()
