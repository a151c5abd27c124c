"""The experiments' reports: markdown tables and PNG plots of a result record."""

from __future__ import annotations

import math

from mambakit.figures.canvas import new_figure, png_bytes

from .settings import MIXER_LABELS


# ------------------------------------------------------------------------------------------------- reports
def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def selective_copying_table(record: dict) -> str:
    """The markdown results table of a selective-copying record."""
    s = record["settings"]
    lines = [
        f"Selective copying: L = {s['seq_len']}, {s['num_tokens']} tokens to copy,"
        f" vocabulary {s['vocab_size']}; {s['n_layer']} layers, d_model = {s['d_model']},"
        f" d_state = {s['d_state']}; batch {s['batch_size']},"
        f" lr {s['lr']}, seed {s['seed']}; accuracy on {s['eval_samples']} held-out sequences.",
        "",
        "| model | parameters | steps | train time (s) | accuracy (%) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in record["rows"]:
        lines.append(
            f"| {MIXER_LABELS.get(r['mixer'], r['mixer'])} | {r['parameters']:,} | {r['steps']} |"
            f" {r['train_seconds']} | {_pct(r['accuracy'])} |"
        )
    return "\n".join(lines) + "\n"


def induction_heads_table(record: dict) -> str:
    """The markdown results table (accuracy % by evaluation length) of an induction-heads record."""
    s = record["settings"]
    lengths = [int(L) for L in s["eval_lengths"]]
    header = "| model | steps | " + " | ".join(_length_label(L) for L in lengths) + " |"
    lines = [
        f"Induction heads: trained at L = {s['train_len']}, vocabulary {s['vocab_size']};"
        f" {s['n_layer']} layers,"
        f" d_model = {s['d_model']}, d_state = {s['d_state']}; batch {s['batch_size']}, lr {s['lr']}"
        f" ({s.get('lr_schedule', 'cosine')}), seed"
        f" {s['seed']}; accuracy (%) on {s['eval_samples']} sequences per length; — = not evaluated (one"
        " full pass would not fit); · = not evaluated, at chance at shorter lengths.",
        "",
        header,
        "|---|---:|" + "---:|" * len(lengths),
    ]
    if s.get("curriculum_lengths"):
        lines[0] += (
            f" Length curriculum first: L = {', '.join(map(str, s['curriculum_lengths']))}, each until"
            f" {100 * s['curriculum_accuracy']:g}% held-out accuracy or {s['curriculum_steps']} steps"
            f" (batch {s.get('curriculum_batch_size') or s['batch_size']},"
            f" lr {s.get('curriculum_lr') or s['lr']} decaying); steps are written curriculum + main phase."
        )
    for r in record["rows"]:
        accs = [r["accuracy_by_length"].get(str(L)) for L in lengths]
        at_chance = set(r.get("skipped_at_chance", []))
        phases = r.get("curriculum_steps") or []
        steps = " + ".join(map(str, [sum(phases), r["steps"]])) if phases else str(r["steps"])
        lines.append(
            f"| {MIXER_LABELS.get(r['mixer'], r['mixer'])} | {steps} | "
            + " | ".join("·" if L in at_chance else _pct(a) for L, a in zip(lengths, accs, strict=True))
            + " |"
        )
    return "\n".join(lines) + "\n"


def _length_label(L: int) -> str:
    p = int(math.log2(L))
    return f"2^{p}" if 2**p == L else str(L)


def _smoothed(values: list[float], window: int = 20) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def selective_copying_plot(record: dict) -> bytes:
    """PNG: accuracy per model (bars) and training loss curves."""
    fig = new_figure(9, 3.4)
    bars, curves = fig.subplots(1, 2)
    labels = [MIXER_LABELS.get(r["mixer"], r["mixer"]) for r in record["rows"]]
    values = [100 * r["accuracy"] for r in record["rows"]]
    bars.bar(range(len(values)), values, color=["C0", "C1", "C2", "C3"][: len(values)])
    bars.set_xticks(range(len(values)), labels, fontsize=8)
    bars.set_ylim(0, 112)  # room for the value labels above full bars
    bars.set_yticks(range(0, 101, 20))
    bars.set_ylabel("accuracy (%)")
    for i, v in enumerate(values):
        bars.text(i, v + 1, f"{v:.1f}", ha="center", fontsize=8)
    bars.set_title(f"Selective copying, L = {record['settings']['seq_len']}")
    for r, label in zip(record["rows"], labels, strict=True):
        curves.plot(_smoothed(r["losses"]), label=label)
    curves.set_xlabel("step")
    curves.set_ylabel("training loss (smoothed)")
    curves.set_yscale("log")
    curves.legend(fontsize=8)
    return png_bytes(fig)


def induction_heads_plot(record: dict) -> bytes:
    """PNG: accuracy against evaluation length (log x-axis), one line per model, training length marked."""
    fig = new_figure(6.5, 3.6)
    ax = fig.subplots()
    for r in record["rows"]:
        points = [(int(L), 100 * a) for L, a in r["accuracy_by_length"].items() if a is not None]
        ax.plot(*zip(*points, strict=True), marker="o", label=MIXER_LABELS.get(r["mixer"], r["mixer"]))
    ax.axvline(
        record["settings"]["train_len"], color="gray", linestyle="--", linewidth=1, label="train length"
    )
    ax.set_xscale("log", base=2)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("test sequence length")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Induction heads: extrapolation")
    ax.legend(fontsize=8, loc="center right")  # the top is where a model that extrapolates runs
    return png_bytes(fig)


def _accuracy_table(record: dict, caption: str, key: str, columns: list[int], label: str) -> str:
    """A markdown table: model, parameters, steps, train time, then accuracy (%) per column of ``key``."""
    heads = " | ".join(label.format(c) for c in columns)
    lines = [
        caption,
        "",
        f"| model | parameters | steps | train time (s) | {heads} |",
        "|---|---:|---:|---:|" + "---:|" * len(columns),
    ]
    for r in record["rows"]:
        accs = [r[key].get(str(c)) for c in columns]
        lines.append(f"| {MIXER_LABELS.get(r['mixer'], r['mixer'])} | {r['parameters']:,} | {r['steps']} |"
                     f" {r['train_seconds']} | " + " | ".join(_pct(a) for a in accs) + " |")
    return "\n".join(lines) + "\n"


def mqar_table(record: dict) -> str:
    """The markdown results table (accuracy % by number of key-value pairs) of an MQAR record."""
    s = record["settings"]
    pairs = [int(n) for n in s["num_pairs"]]
    caption = (
        f"MQAR: L = {s['seq_len']}, vocabulary {s['vocab_size']}; every model trained on the mix of"
        f" {', '.join(map(str, pairs))} key-value pairs (batch {s['batch_size']}, an equal share each),"
        f" every key queried; {s['n_layer']} layers, d_model = {s['d_model']}, d_state = {s['d_state']};"
        f" lr {s['lr']} ({s['lr_schedule']}), seed {s['seed']}; accuracy (%) over the queries of"
        f" {s['eval_samples']} held-out sequences per pair count."
    )
    return _accuracy_table(record, caption, "accuracy_by_pairs", pairs, "{} pairs")


def state_tracking_table(record: dict) -> str:
    """The markdown results table (last-position accuracy % by evaluation length) of a state-tracking
    record."""
    s = record["settings"]
    task = "parity" if s["modulus"] == 2 else f"sums in Z_{s['modulus']}"
    caption = (
        f"State tracking ({task}): trained at L = {s['train_len']} with every running sum asked;"
        f" {s['n_layer']} layers, d_model = {s['d_model']}, d_state = {s['d_state']}, Δ initialised in"
        f" [{s['dt_min']}, {s['dt_max']}]; batch {s['batch_size']}, lr {s['lr']} ({s['lr_schedule']}),"
        f" seed {s['seed']}; accuracy (%) of the last position (the sum of the whole sequence) on"
        f" {s['eval_samples']} sequences per length; chance {100 / s['modulus']:.0f}%."
    )
    lengths = [int(L) for L in s["eval_lengths"]]
    return _accuracy_table(record, caption, "accuracy_by_length", lengths, "L = {}")


def _lines_plot(record: dict, key: str, xlabel: str, title: str, log2: bool, chance: float | None,
                mark: float | None = None) -> bytes:
    fig = new_figure(6.5, 3.6)
    ax = fig.subplots()
    for r in record["rows"]:
        points = [(int(x), 100 * a) for x, a in r[key].items() if a is not None]
        ax.plot(*zip(*points, strict=True), marker="o", label=MIXER_LABELS.get(r["mixer"], r["mixer"]))
    if mark is not None:
        ax.axvline(mark, color="gray", linestyle="--", linewidth=1, label="train length")
    if chance is not None:
        ax.axhline(100 * chance, color="gray", linestyle=":", linewidth=1, label="chance")
    if log2:
        ax.set_xscale("log", base=2)
    ax.set_ylim(-2, 102)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower left")
    return png_bytes(fig)


def mqar_plot(record: dict) -> bytes:
    """PNG: accuracy against the number of key-value pairs, one line per model."""
    s = record["settings"]
    return _lines_plot(record, "accuracy_by_pairs", "key-value pairs", f"MQAR, L = {s['seq_len']},"
                       f" d_model = {s['d_model']}, d_state = {s['d_state']}", True, None)


def state_tracking_plot(record: dict) -> bytes:
    """PNG: last-position accuracy against evaluation length, training length and chance marked."""
    s = record["settings"]
    task = "parity" if s["modulus"] == 2 else f"Z_{s['modulus']}"
    return _lines_plot(record, "accuracy_by_length", "test sequence length", f"State tracking ({task})",
                       True, 1 / s["modulus"], mark=s["train_len"])
