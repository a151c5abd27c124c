"""The server's counters and gauges, and their Prometheus text form (``GET /metrics``)."""

from __future__ import annotations

import threading
import time
from collections import deque

_WINDOW_S = 10.0


class Metrics:
    """Counters bumped by the HTTP side and the engine thread alike (under one lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}  # (endpoint, status) -> count
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.prefix_hit_tokens = 0
        self.finished: dict[str, int] = {}  # finish reason -> count
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of recent decode steps

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1

    def generated(self, count: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.generated_tokens += count
            self._recent.append((now, count))
            while self._recent and self._recent[0][0] < now - _WINDOW_S:
                self._recent.popleft()

    def admitted(self, prompt_tokens: int, cached_tokens: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.prefix_hit_tokens += cached_tokens

    def finish(self, reason: str) -> None:
        with self._lock:
            self.finished[reason] = self.finished.get(reason, 0) + 1

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            return sum(n for t, n in self._recent if t >= now - _WINDOW_S) / _WINDOW_S

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        """The Prometheus text exposition: the counters here plus ``gauges`` (name -> (help, value))."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP mambakit_{name} {help_}")
            lines.append(f"# TYPE mambakit_{name} {kind}")
            for labels, value in samples:
                lines.append(f"mambakit_{name}{labels} {value:g}" if isinstance(value, float)
                             else f"mambakit_{name}{labels} {value}")

        with self._lock:
            requests = sorted(self.requests.items())
            finished = sorted(self.finished.items())
            counters = [("prompt_tokens_total", "Prompt tokens of admitted requests.", self.prompt_tokens),
                        ("generation_tokens_total", "Tokens generated.", self.generated_tokens),
                        ("prefix_cache_hit_tokens_total", "Prompt tokens whose prefill the prefix cache "
                                                          "saved.", self.prefix_hit_tokens)]
        metric("requests_total", "counter", "HTTP requests by endpoint and status.",
               [(f'{{endpoint="{e}",status="{s}"}}', n) for (e, s), n in requests])
        metric("generations_finished_total", "counter", "Generations finished, by reason.",
               [(f'{{reason="{r}"}}', n) for r, n in finished])
        for name, help_, value in counters:
            metric(name, "counter", help_, [("", value)])
        metric("generation_tokens_per_second", "gauge", f"Tokens generated per second over the last "
               f"{_WINDOW_S:g} s.", [("", float(self.tokens_per_second()))])
        for name, (help_, value) in gauges.items():
            kind = "counter" if name.endswith("_total") else "gauge"
            metric(name, kind, help_, [("", value)])
        return "\n".join(lines) + "\n"
