"""Training throughput: tokens/s of forward + backward + AdamW step, mambakit against transformers'
``MambaForCausalLM`` on the same configuration and batch, in one run.

    .venv/bin/python benchmarks/train_throughput.py                      # the demo's model and batch
    .venv/bin/python benchmarks/train_throughput.py --d-model 768 --n-layer 24 --vocab-size 50280 \
        --batch-size 4 --seq-len 512 --device cuda

    .venv/bin/python benchmarks/train_throughput.py --d-model 256 --n-layer 4 --batch-size 8 --seq-len 256 \
        --threads 2 --breakdown --skip-hf --scan-backends auto     # where a step's time goes

On the CPU, glibc's malloc is set to keep freed memory for the next step, as ``mambakit train`` does
(:mod:`mambakit.training.memory`); ``--malloc-defaults`` leaves it as it is, for comparison.

Both models are built from one ``MambaConfig`` (randomly initialised: speed does not depend on the weights)
and trained on the same random tokens. Prints a table and the ratio (higher = mambakit faster).

``--breakdown`` also profiles a few mambakit steps (the first of ``--scan-backends``) with torch.profiler and
prints the time per step in matmuls (aten::mm / addmm / bmm, forward and backward), the fused selective scan
and causal conv (their autograd Functions' ``mambakit::`` labels), copies (copy_ / clone / contiguous / cat),
the optimiser step and the rest, each op's self time going to the innermost of those it runs in (a copy
inside a matmul's reshape counts as a copy). It also prints the matmul floor: the step's matmul FLOPs
(2·M·N·K per forward matmul, three times that for forward + backward, counted from the configuration) over
the fp32 rate of one large matmul measured in the same run, and the step's fraction of it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from machine import describe

from mambakit.layers import MambaBlock
from mambakit.models import MambaConfig, MambaLMHeadModel
from mambakit.models.formats import hf as hf_format
from mambakit.training.memory import keep_freed_memory


def hf_model(config: MambaConfig, device: torch.device) -> torch.nn.Module:
    from transformers import MambaConfig as HFMambaConfig
    from transformers import MambaForCausalLM

    skip = ("architectures", "model_type", "dtype")
    fields = {k: v for k, v in hf_format.config_to_hf(config).items() if k not in skip}
    return MambaForCausalLM(HFMambaConfig(**fields)).to(device)


OPTIMISER_LABEL = "mambakit::benchmark_optimiser"


def train_step(model: torch.nn.Module, batch: torch.Tensor, hf: bool):
    """A function running one AdamW training step of ``model`` on ``batch`` (batch, L + 1) next-token ids."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)   # as build_adamw
    inputs, targets = batch[:, :-1], batch[:, 1:]

    def step():
        out = model(inputs)
        logits = out.logits if hf else out
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        with torch.profiler.record_function(OPTIMISER_LABEL):
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step


def tokens_per_second(model: torch.nn.Module, batch: torch.Tensor, steps: int, warmup: int,
                      hf: bool) -> float:
    """``warmup`` untimed steps, then tokens per second over ``steps`` timed steps."""
    step = train_step(model, batch, hf)
    inputs = batch[:, :-1]

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


# ---------------------------------------------------------------------------------------------- breakdown
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::mv",
              "aten::addmv", "aten::dot"}
COPY_OPS = {"aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy", "aten::cat"}
CATEGORIES = ("matmuls", "selective scan", "causal conv", "copies", "optimiser", "other ops")


def _label_category(name: str) -> str | None:
    from mambakit.ops.conv1d import cpu as conv_cpu
    from mambakit.ops.selective_scan import cpu as scan_cpu

    if name == OPTIMISER_LABEL:
        return "optimiser"
    if name in (scan_cpu.PROFILE_FORWARD, scan_cpu.PROFILE_BACKWARD):
        return "selective scan"
    if name in (conv_cpu.PROFILE_FORWARD, conv_cpu.PROFILE_BACKWARD):
        return "causal conv"
    if name in MATMUL_OPS:
        return "matmuls"
    if name in COPY_OPS:
        return "copies"
    return None


def attribute(events) -> tuple[dict[str, float], dict[str, float]]:
    """(category -> self CPU µs, op name -> self µs of the ops left in "other ops") over profiler events:
    each event's self time goes to the innermost categorised event it runs in (itself included), except
    that everything inside the optimiser counts as the optimiser."""
    totals: dict[str, float] = defaultdict(float)
    other: dict[str, float] = defaultdict(float)

    def walk(event, category):
        own = _label_category(event.name)
        if category != "optimiser" and own is not None:
            category = own
        cat = category or "other ops"
        totals[cat] += event.self_cpu_time_total
        if cat == "other ops":
            other[event.name] += event.self_cpu_time_total
        for child in event.cpu_children:
            walk(child, category)

    for event in events:
        if event.cpu_parent is None:
            walk(event, None)
    return totals, other


def matmul_rate(size: int, repeats: int = 5) -> float:
    """FLOP/s of a (size × size) @ (size × size) float32 matmul, median of ``repeats`` after one warm-up."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


def step_matmul_flops(config: MambaConfig, batch: int, length: int) -> int:
    """FLOPs of one training step's matmuls: per layer in_proj, x_proj, dt_proj and out_proj, plus the
    tied LM head; 2·M·N·K each forward, three times that with the backward's two matmuls per forward one."""
    model = MambaLMHeadModel(config, device="meta")
    rows = batch * length
    flops = 2 * rows * config.d_model * model.lm_head.weight.shape[0]
    for block in model.modules():
        if isinstance(block, MambaBlock):
            di, dm, r, n = block.d_inner, block.d_model, block.dt_rank, block.d_state
            flops += 2 * rows * (dm * 2 * di + di * (r + 2 * n) + r * di + di * dm)
    return 3 * flops


def breakdown(model: torch.nn.Module, config: MambaConfig, batch: torch.Tensor, steps: int, warmup: int,
              matmul_size: int) -> None:
    """Profile ``steps`` training steps of ``model`` and print where a step's time goes, against the floor."""
    step = train_step(model, batch, hf=False)
    for _ in range(warmup):
        step()
    plain = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        plain.append(time.perf_counter() - start)
    # (with_flops=True agrees with step_matmul_flops but made the profiled step about 1.8x slower: measured)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        profiled = (time.perf_counter() - start) / steps
    events = prof.events()
    totals, other = attribute(events)
    rate = matmul_rate(matmul_size)
    length = batch.shape[1] - 1
    flops = step_matmul_flops(config, batch.shape[0], length)
    floor = flops / rate
    median = statistics.median(plain)
    print(f"\nbreakdown of a mambakit training step ({steps} profiled steps; the step without the profiler: "
          f"median {median * 1e3:.1f} ms of {steps}, with it {profiled * 1e3:.1f} ms)")
    print("| part | ms per step | share of the profiled step |")
    print("|---|---|---|")
    attributed = 0.0
    for cat in CATEGORIES:
        ms = totals.get(cat, 0.0) / 1e3 / steps
        attributed += ms
        print(f"| {cat} | {ms:.1f} | {ms / (profiled * 1e3):.0%} |")
    rest = profiled * 1e3 - attributed
    print(f"| outside any op (Python, autograd engine) | {rest:.1f} | {rest / (profiled * 1e3):.0%} |")
    top = sorted(other.items(), key=lambda kv: -kv[1])[:6]
    print("largest of the other ops: " + ", ".join(f"{k} {v / 1e3 / steps:.1f} ms" for k, v in top))
    print(f"matmul floor: {flops / 1e9:.2f} GFLOP per step at "
          f"{rate / 1e9:.0f} GFLOP/s ({matmul_size}^3 fp32 matmul) = {floor * 1e3:.1f} ms; "
          f"the step is {floor / median:.2f} of the floor (matmuls alone: "
          f"{totals.get('matmuls', 0.0) / 1e6 / steps * 1e3:.1f} ms)")


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
    p.add_argument("--breakdown", action="store_true",
                   help="also profile mambakit's step (the first scan backend) and print where the time goes")
    p.add_argument("--matmul-size", type=int, default=2048, help="size of the matmul timed for the floor")
    p.add_argument("--malloc-defaults", action="store_true",
                   help="leave glibc's malloc thresholds as they are (by default they are set as `mambakit "
                        "train` sets them on the CPU: mambakit.training.memory)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    kept = not args.malloc_defaults and device.type == "cpu" and keep_freed_memory()
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
        if args.breakdown and len(results) == 1:
            breakdown(model, config, batch, args.steps, 1, args.matmul_size)
    print(f"config: d_model={args.d_model} n_layer={args.n_layer} d_state={args.d_state} "
          f"vocab={args.vocab_size}, batch {args.batch_size} x {args.seq_len}, device {device}, "
          f"{torch.get_num_threads()} threads, freed memory "
          f"{'kept' if kept else 'returned (malloc defaults)'}; {describe()}")
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
