"""keep_freed_memory: after it, freeing and reallocating a few MB touches no new pages (glibc)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from mambakit.training.memory import ENV_SETTINGS, keep_freed_memory, uses_glibc

glibc = pytest.mark.skipif(not uses_glibc(), reason="glibc's malloc only")

# Minor page faults of allocating, touching and freeing four 8 MB blocks together, ten times, before and
# after the call. By default glibc's thresholds adapt (the first freed block raises the mmap threshold to
# 8 MB, the trim threshold to twice that), so the blocks come from the heap; but what is freed at its top
# beyond that goes back to the kernel, and the next round faults it in again, as a training step's
# activations do.
_SCRIPT = """
import resource, sys
import numpy as np
from mambakit.training.memory import keep_freed_memory

def faults():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        blocks = [np.ones(2 << 20, np.float32) for _ in range(4)]
        del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

faults()   # numpy's own first-use pages
before = faults()
applied = keep_freed_memory()
faults()   # the heap grows once
print(applied, before, faults())
"""


def _run(env: dict[str, str]) -> tuple[bool, int, int]:
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ENV_SETTINGS}


@glibc
def test_freed_blocks_are_reused_without_new_pages():
    applied, before, after = _run(_clean_env())
    assert applied
    assert before > 10 * 1000   # measured: about one 8 MB block (2048 pages of 4 KiB) per round
    assert after < before / 20


@glibc
def test_a_users_malloc_settings_are_left_alone():
    env = _clean_env() | {"MALLOC_MMAP_THRESHOLD_": "131072"}
    applied, before, after = _run(env)
    assert not applied
    assert after > before / 2


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert keep_freed_memory() is False
