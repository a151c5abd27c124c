"""Inference at real model shapes: batch-1 greedy decode and 1024-token prefill, mambakit (fp32, bf16 and
int8 weights) against transformers, beside the bandwidth floor, in one run.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/inference.py                     # 130m shape
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/inference.py --shapes 130m,370m,mamba2-130m

Random weights of each shape (speed does not depend on their values). Decode: the median time of one
``model.step`` (logits over the whole vocabulary included) after a short prompt, over ``--steps`` steps,
repeated ``--rounds`` times with the implementations interleaved; tokens/s = 1 / median. Prefill: one
forward over a ``--prompt-len`` prompt that fills the cache (mambakit: the backbone, then the logits of the
last position, as generation does; transformers: its forward with ``use_cache=True``, the same
``logits_to_keep=1``). "layer by layer" is mambakit's step without the fused whole-stack kernel
(``models.stack_decode``), the path that every other kind of model takes. Floor: the bytes of weights one
decode step must read (the LM head included; the embedding row is negligible) divided by the memory
bandwidth measured here (a large float32 copy).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine import describe

from mambakit.models import MambaConfig, MambaLMHeadModel
from mambakit.models.formats import hf as hf_format
from mambakit.models.quantize import quantize_weights

SHAPES = {
    "130m": dict(d_model=768, n_layer=24, vocab_size=50280),
    "370m": dict(d_model=1024, n_layer=48, vocab_size=50280),
    "mamba2-130m": dict(d_model=768, n_layer=24, vocab_size=50280, mixer="mamba2",
                        mixer_cfg={"headdim": 64, "chunk_size": 256}),
}


def bandwidth_gb_s(megabytes: int = 512, repeats: int = 5) -> float:
    """Median GB/s of a large float32 copy (bytes read + bytes written)."""
    src = torch.ones(megabytes * 2**18)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * 4 / statistics.median(times) / 1e9


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes a decode step reads: every parameter and weight buffer but the embedding (one row is read)."""
    tensors = {id(t): t for n, t in [*model.named_parameters(), *model.named_buffers()]
               if "embedding" not in n}
    head = getattr(getattr(model, "lm_head", None), "weight", None)
    if head is not None:
        tensors[id(head)] = head   # a head tied to the embedding is still read in full at every step
    return sum(t.numel() * t.element_size() for t in tensors.values())


@torch.no_grad()
def decode_step_s(model, vocab: int, steps: int, hf: bool = False) -> float:
    """Median seconds per greedy decode step after an 8-token prompt."""
    prompt = torch.randint(0, vocab, (1, 8), generator=torch.Generator().manual_seed(0))
    if hf:
        out = model(prompt, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        position = prompt.shape[1]
    else:
        cache = model.allocate_inference_cache(1)
        token = model(prompt, state=cache, num_last_tokens=1)[:, -1].argmax(-1)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        if hf:
            out = model(token, past_key_values=cache, use_cache=True,
                        cache_position=torch.tensor([position]))
            cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            position += 1
        else:
            token = model.step(token, cache)[:, :vocab].argmax(-1)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def prefill_s(model, vocab: int, length: int, hf: bool = False) -> float:
    prompt = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    if hf:
        model(prompt, use_cache=True, logits_to_keep=1)
    else:
        model(prompt, state=model.allocate_inference_cache(1), num_last_tokens=1)
    return time.perf_counter() - start


def hf_model(config: MambaConfig) -> torch.nn.Module:
    skip = ("architectures", "model_type", "dtype")
    fields = {k: v for k, v in hf_format.config_to_hf(config).items() if k not in skip}
    if config.mixer == "mamba2":
        from transformers import Mamba2Config, Mamba2ForCausalLM

        return Mamba2ForCausalLM(Mamba2Config(**fields)).eval()
    from transformers import MambaConfig as HFMambaConfig
    from transformers import MambaForCausalLM

    return MambaForCausalLM(HFMambaConfig(**fields)).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="130m")
    p.add_argument("--steps", type=int, default=12, help="decode steps timed per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompt-len", type=int, default=1024)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-hf", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bandwidth = bandwidth_gb_s()
    print(f"{describe()}; {torch.get_num_threads()} threads; memory bandwidth (copy) {bandwidth:.1f} GB/s; "
          f"decode: median of {args.rounds} rounds x {args.steps} steps; prefill: {args.prompt_len} tokens, "
          f"median of the rounds")
    for shape in args.shapes.split(","):
        config = MambaConfig(**SHAPES[shape])
        vocab = config.vocab_size
        models = {}
        for weights in ("fp32", "bf16", "int8"):
            model = MambaLMHeadModel(config, generator=torch.Generator().manual_seed(0)).eval()
            models[f"mambakit {weights}"] = quantize_weights(model, weights)
        layerwise = MambaLMHeadModel(config, generator=torch.Generator().manual_seed(0)).eval()
        layerwise.backbone.fused_stack_decode = False   # the step before the fused stack, side by side
        models["mambakit fp32, layer by layer"] = layerwise
        if not args.skip_hf:
            torch.manual_seed(0)
            models["transformers fp32"] = hf_model(config)
        decode = {name: [] for name in models}
        prefill = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, model in models.items():
                hf = name.startswith("transformers")
                decode[name].append(decode_step_s(model, vocab, args.steps, hf))
                prefill[name].append(prefill_s(model, vocab, args.prompt_len, hf))
        print(f"\n{shape}: {SHAPES[shape]}")
        print("| implementation | weight MB/token | floor tokens/s | decode tokens/s | of floor | "
              "prefill tokens/s |")
        print("|---|---|---|---|---|---|")
        base = None
        for name, model in models.items():
            mb = weight_bytes(model) / 1e6
            floor = bandwidth * 1e3 / mb
            rate = 1 / statistics.median(decode[name])
            pre = args.prompt_len / statistics.median(prefill[name])
            base = base or rate
            print(f"| {name} | {mb:,.0f} | {floor:,.1f} | {rate:,.1f} | {rate / floor:.2f} | {pre:,.0f} |")
        if not args.skip_hf:
            ours = 1 / statistics.median(decode["mambakit fp32"])
            theirs = 1 / statistics.median(decode["transformers fp32"])
            print(f"decode mambakit fp32 / transformers: {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
