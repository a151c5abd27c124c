"""What machine a benchmark ran on, for the first line of its output: results move with the CPU model
(the 2-core machines are not all alike), so a table is only compared with tables from the same one."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def last_cache() -> str | None:
    """The size of cpu0's last-level cache as sysfs gives it (e.g. '480 MiB'), or None."""
    caches = sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"))
    for index in reversed(caches):
        try:
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if size.endswith("K") and size[:-1].isdigit():
            kib = int(size[:-1])
            return f"{kib // 1024} MiB" if kib >= 1024 else f"{kib} KiB"
        return size
    return None


def describe() -> str:
    """'<CPU model>, <n> CPUs, last-level cache <size>'."""
    cache = last_cache()
    return f"{cpu_model()}, {os.cpu_count()} CPUs" + (f", last-level cache {cache}" if cache else "")
