"""metrics.jsonl (one JSON object per line) and the loss-curve PNG drawn from it.

Train records: ``{"kind": "train", "step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s",
"elapsed_s"}``.
Validation records: ``{"kind": "val", "step", "val_loss", "val_nats_per_byte"}`` (losses in nats per token;
per byte where the text behind the tokens is known).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..figures.canvas import new_figure, save_png


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records of a metrics.jsonl (a torn last line from a killed run is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def truncate_metrics(path: str | os.PathLike, last_step: int) -> None:
    """Keep only the records of steps <= ``last_step`` (on resume, drop what a killed run logged after its
    last checkpoint, so the file reads as one uninterrupted run)."""
    kept = [r for r in read_metrics(path) if int(r.get("step", 0)) <= last_step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


class MetricsWriter:
    """Appends records to metrics.jsonl, flushing each line."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def plot_loss_curve(metrics_path: str | os.PathLike, png_path: str | os.PathLike, title: str = "") -> None:
    """Draw train loss (raw and smoothed) and validation loss against step into a PNG (matplotlib Agg)."""
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("kind") == "val"]
    fig = new_figure(7, 4.2, layout="tight")
    ax = fig.subplots()
    if train:
        steps, losses = zip(*train, strict=True)
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="train (per step)")
        half = max(1, len(losses) // 50)  # a centred moving average: a trend that does not lag behind
        smoothed = [sum(losses[max(0, i - half):i + half + 1]) / len(losses[max(0, i - half):i + half + 1])
                    for i in range(len(losses))]
        ax.plot(steps, smoothed, color="tab:blue", linewidth=1.6, label="train (smoothed)")
    if val:
        steps, losses = zip(*val, strict=True)
        ax.plot(steps, losses, "o-", color="tab:orange", linewidth=1.6, markersize=4, label="validation")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title or "mambakit training")
    ax.grid(alpha=0.3)
    ax.legend()
    save_png(fig, png_path)
