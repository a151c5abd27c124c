"""Training progress: a tqdm bar on a terminal (step, loss, tokens/s, ETA), plain lines otherwise."""

from __future__ import annotations

import shutil
import sys
import time


def _format_duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """``mode``: "bar" (tqdm), "lines" (a line every ``every`` steps), "none", "auto" (bar on a terminal)."""

    def __init__(self, mode: str, total: int, initial: int, enabled: bool = True, log=print,
                 every: int = 25) -> None:
        self.enabled = enabled
        self.log = log
        self.every = every
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode if enabled else "none"
        self._bar = None
        self._start = time.perf_counter()
        self._initial = initial
        self._last_line_step = initial
        if self.mode == "bar":
            from tqdm import tqdm

            # A terminal that reports no size (some pseudo-terminals) would make tqdm hide the bar.
            known_size = shutil.get_terminal_size((0, 0)).lines > 0
            size = {} if known_size else {"ncols": 100, "nrows": 24}
            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=known_size,
                             file=sys.stderr, desc="train", smoothing=0.1, **size)

    def update(self, step: int, total: int, loss: float, tokens_per_s: float) -> None:
        if self._bar is not None:
            if self._bar.total != total:
                self._bar.total = total
            self._bar.set_postfix_str(f"loss {loss:.4f}, {tokens_per_s / 1000:.1f}k tok/s", refresh=False)
            self._bar.update(step - self._bar.n)
        elif self.mode == "lines" and (step - self._last_line_step >= self.every or step == total):
            spent = time.perf_counter() - self._start
            rate = (step - self._initial) / max(spent, 1e-9)
            eta = (total - step) / max(rate, 1e-9)
            self.log(f"step {step}/{total} | loss {loss:.4f} | {tokens_per_s / 1000:.1f}k tok/s | "
                     f"eta {_format_duration(eta)}")
            self._last_line_step = step

    def note(self, message: str) -> None:
        """A line that does not break the bar."""
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        elif self.mode == "lines":
            self.log(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
