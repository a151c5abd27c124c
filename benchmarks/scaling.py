"""Linear vs quadratic, measured: prefill time against sequence length, decode time per token against
position, and inference-cache memory against length, for four language models of equal width and depth:
pure Mamba, pure Mamba-2, pure attention, and a hybrid with one attention layer in eight (the rest Mamba-2).

    .venv/bin/python benchmarks/scaling.py                       # 2^9 .. 2^16 tokens, stops a model early
    .venv/bin/python benchmarks/scaling.py --max-log2 13 --out docs/figures/scaling.png

A model stops growing its length once one prefill takes longer than --max-seconds (or runs out of memory).
Slopes are least-squares fits of log2(time) against log2(length) over the lengths >= 2^10 (~1: linear, ~2:
quadratic). Memory is the inference cache after the prefill (SSM and conv states; keys and values).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from mambakit.figures.canvas import new_figure, save_png
from mambakit.models import MambaConfig, MambaLMHeadModel


def configs(d_model: int, n_layer: int, vocab: int) -> dict[str, MambaConfig]:
    """The four models: the same width, depth and vocabulary."""
    base = dict(d_model=d_model, n_layer=n_layer, vocab_size=vocab)
    m2 = dict(mixer="mamba2", d_state=64, mixer_cfg={"headdim": 32, "chunk_size": 256})
    attn = {"n_heads": max(1, d_model // 32)}
    hybrid_types = ["attention" if i % 8 == 7 else "mamba2" for i in range(n_layer)]
    return {
        "mamba": MambaConfig(**base, mixer="mamba"),
        "mamba2": MambaConfig(**base, **m2),
        "attention": MambaConfig(**base, mixer="attention", mixer_cfg=attn),
        "hybrid 1:8": MambaConfig(**base, **m2, layer_types=hybrid_types, layer_cfg={"attention": attn}),
    }


def cache_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache for t in layer.values()
               if isinstance(t, torch.Tensor))


@torch.no_grad()
def measure(model: MambaLMHeadModel, lengths: list[int], max_seconds: float, decode_steps: int) -> dict:
    rows = []
    for L in lengths:
        ids = torch.randint(0, model.config.vocab_size, (1, L))
        try:
            best = math.inf
            for _ in range(2):
                start = time.perf_counter()
                model(ids, num_last_tokens=1)
                best = min(best, time.perf_counter() - start)
            cache = model.allocate_inference_cache(1)
            model(ids, state=cache, num_last_tokens=1)
            token = ids[:, -1]
            steps = []
            for _ in range(decode_steps):
                start = time.perf_counter()
                model.step(token, cache)
                steps.append(time.perf_counter() - start)
        except (RuntimeError, MemoryError) as e:  # out of memory
            print(f"  L={L}: stopped ({type(e).__name__})")
            break
        rows.append({"length": L, "prefill_s": best, "decode_ms": 1e3 * statistics.median(steps),
                     "cache_mib": cache_bytes(cache) / 2**20})
        print(f"  L={L:6d}  prefill {best:8.3f} s  decode {rows[-1]['decode_ms']:7.2f} ms/token  "
              f"cache {rows[-1]['cache_mib']:8.2f} MiB", flush=True)
        if best > max_seconds:
            break
    return {"rows": rows, "slope": slope(rows)}


def slope(rows: list[dict]) -> float | None:
    """Least-squares slope of log2(prefill time) on log2(length), lengths >= 2^10."""
    pts = [(math.log2(r["length"]), math.log2(r["prefill_s"])) for r in rows if r["length"] >= 2**10]
    if len(pts) < 2:
        return None
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def plot(results: dict, path: str) -> None:
    fig = new_figure(13, 4)
    axes = fig.subplots(1, 3)
    for name, res in results.items():
        L = [r["length"] for r in res["rows"]]
        s = f" (slope {res['slope']:.2f})" if res["slope"] is not None else ""
        axes[0].loglog(L, [r["prefill_s"] for r in res["rows"]], "o-", base=2, label=name + s)
        axes[1].semilogx(L, [r["decode_ms"] for r in res["rows"]], "o-", base=2, label=name)
        axes[2].loglog(L, [r["cache_mib"] for r in res["rows"]], "o-", base=2, label=name)
    titles = ("prefill time (s) vs length", "decode time per token (ms) vs position",
              "inference cache (MiB) vs length")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel("tokens")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    save_png(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=8)
    p.add_argument("--vocab-size", type=int, default=256)
    p.add_argument("--min-log2", type=int, default=9)
    p.add_argument("--max-log2", type=int, default=16)
    p.add_argument("--max-seconds", type=float, default=20.0, help="stop a model after a prefill this long")
    p.add_argument("--decode-steps", type=int, default=8)
    p.add_argument("--out", default="docs/figures/scaling.png")
    p.add_argument("--json", default=None, help="also write the measurements here")
    args = p.parse_args()
    torch.manual_seed(0)
    lengths = [2**k for k in range(args.min_log2, args.max_log2 + 1)]
    results = {}
    for name, config in configs(args.d_model, args.n_layer, args.vocab_size).items():
        print(f"{name}: d_model={config.d_model} n_layer={config.n_layer}", flush=True)
        model = MambaLMHeadModel(config, generator=torch.Generator().manual_seed(0)).eval()
        results[name] = measure(model, lengths, args.max_seconds, args.decode_steps)
    plot(results, args.out)
    print("\n| model | slope | " + " | ".join(f"2^{int(math.log2(L))}" for L in lengths) + " |")
    print("|---|---|" + "---|" * len(lengths))
    for name, res in results.items():
        times = {r["length"]: f"{r['prefill_s']:.3f}" for r in res["rows"]}
        s = f"{res['slope']:.2f}" if res["slope"] is not None else "-"
        print(f"| {name} | {s} | " + " | ".join(times.get(L, "-") for L in lengths) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
