"""``mambakit info``: a checkpoint's config, parameter count, memory, and the run's last validation loss."""

from __future__ import annotations

import json
from pathlib import Path

from .loading import load_model


def add_parser(sub) -> None:
    """Add the ``info`` subcommand to ``sub``."""
    p = sub.add_parser("info", help="print a checkpoint's config, parameter count and memory")
    p.add_argument("path", metavar="PATH", help="run, checkpoint, Hugging Face or state-spaces dir")
    p.set_defaults(func=_cmd_info)


def _bytes(n: float) -> str:
    """A byte count for people: 812 B, 97.9 KiB, 1.5 GiB."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"


def _cmd_info(args) -> int:
    from ..training.metrics import read_metrics

    model, directory = load_model(args.path, "cpu")
    config = model.config
    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    state = model.allocate_inference_cache(1)
    state_bytes = sum(t.numel() * t.element_size() for layer in state for t in layer.values())
    print(f"checkpoint: {directory}")
    print("config:")
    print("  " + json.dumps(config.to_dict(), indent=2).replace("\n", "\n  "))
    print(f"parameters: {n_params:,} ({n_params / 1e6:.2f}M)")
    print(f"weights in memory: {_bytes(param_bytes)} ({params[0].dtype})")
    print(f"recurrent state per sequence (generation cache): {_bytes(state_bytes)}, constant in length")
    print("training memory, AdamW (weights + grads + 2 moments), activations excluded: "
          f"{_bytes(4 * param_bytes)}")
    run_dir = Path(args.path)
    val = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "val"]
    if val:
        last = val[-1]
        per_byte = last.get("val_nats_per_byte")
        extra = f" ({per_byte:.4f} nats/byte)" if per_byte is not None else ""
        print(f"last validation loss: {last['val_loss']:.4f} nats/token{extra} at step {last['step']}")
    return 0
