"""Run one of the Mamba paper's synthetic experiments and write its results table and plot.

    python experiments/run.py selective_copying                  # CPU preset (~30 min on 2 cores)
    python experiments/run.py induction_heads --preset smoke     # under a minute
    python experiments/run.py selective_copying --set seq_len=512 --set 'mixers=["mamba","s4d"]'

Results go to experiments/results/<name>-<preset>/ (results.md, results.json, <name>.png) unless --out says
otherwise. Presets and fields: experiments/settings.py.
"""

from __future__ import annotations

import argparse
import ast
import shlex
import sys
from pathlib import Path

import torch

from mambakit.errors import MambakitError

# Run as a script: the repo root, which holds the experiments package, goes on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from experiments.runner import run_experiment  # noqa: E402
from experiments.settings import PRESETS  # noqa: E402


def parse_override(text: str) -> tuple[str, object]:
    """``field=value`` with value a Python literal (number, string, list, None); bare words stay strings."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set: expected field=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", choices=sorted(PRESETS))
    parser.add_argument("--preset", default="cpu", help="smoke, cpu or paper (default cpu)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=parse_override,
        default=[],
        metavar="FIELD=VALUE",
        help="override one setting (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=None, help="shorthand for --set seed=N")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--out", default=None, help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    overrides = dict(args.overrides)
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = args.out or f"experiments/results/{args.name}-{args.preset}"
    command = "python experiments/run.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    try:
        path = run_experiment(
            args.name,
            out,
            preset=args.preset,
            overrides=overrides,
            progress=not args.no_progress,
            command=command,
        )
    except MambakitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
