"""Print the foundations' measured figures: agreement of the three SSM modes, and HiPPO reconstruction errors.

Run ``python -m mambakit.ssm.report`` (about half a minute on one CPU core).
"""

from __future__ import annotations

import torch

from .hippo import KINDS, reconstruction_error
from .modes import mode_agreement


def main() -> None:
    print("Relative L2 gaps between modes: L = 16384, |A_bar| = 1 - 10^U(-4,-2), 2 channels x 4 states, "
          "max over seeds 0-2 ('truth' = float64 convolution)")
    for precision in (torch.float32, torch.float64):
        runs = [mode_agreement(precision, seed=s) for s in range(3)]
        for key in runs[0]:
            print(f"  {str(precision):14s} {key:24s} {max(r[key] for r in runs):.2e}")
    sizes = (4, 8, 16, 32, 64)
    print("\nHiPPO online reconstruction: relative L2 error of the test signal "
          "(float64, 2000 samples, bilinear)")
    print("  kind  " + "".join(f"N={n:<9d}" for n in sizes))
    for kind in KINDS:
        print(f"  {kind:5s} " + "".join(f"{reconstruction_error(kind, n):<11.2e}" for n in sizes))


if __name__ == "__main__":
    main()
