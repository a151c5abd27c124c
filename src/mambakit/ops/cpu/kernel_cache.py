"""numba's on-disk cache of the package's kernels, kept in step with their sources.

numba keys a cached kernel on the file that defines it alone, so a kernel that calls one from another file
(the fused decode stack calls ``linear.cpu.linear_rows``) stays cached with the callee's old code after that
file changes: after an edit or a ``git pull`` of an in-tree checkout, the old code runs, silently. So before
the first kernel loads, the stamps (size, modification time) of every source file of ``ops`` are hashed
together; where the hash differs from the one stored beside the cache, every cached kernel of ``ops`` is
dropped and numba compiles afresh. A pip upgrade rewrites every file, which numba already notices; a cache
outside the tree (``NUMBA_CACHE_DIR``) is not managed here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

OPS_ROOT = Path(__file__).resolve().parent.parent
STAMP_NAME = "kernel-sources.sha256"
CACHE_SUFFIXES = (".nbi", ".nbc")


def sources_hash(root: Path) -> str:
    """A hash of the path, size and modification time of every ``.py`` file under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def drop_stale_kernels(root: Path = OPS_ROOT) -> int:
    """Delete numba's cached kernels under ``root`` when its sources changed since the last call (the hash
    is kept in ``root/__pycache__``); returns how many files were deleted. Never raises for the file
    system: a tree it cannot write is left as it is (numba then caches elsewhere)."""
    try:
        current = sources_hash(root)
        stamp = root / "__pycache__" / STAMP_NAME
        if stamp.is_file() and stamp.read_text().strip() == current:
            return 0
        removed = 0
        for cache_dir in root.rglob("__pycache__"):
            for path in cache_dir.iterdir():
                if path.suffix in CACHE_SUFFIXES:
                    path.unlink(missing_ok=True)
                    removed += 1
        stamp.parent.mkdir(exist_ok=True)
        temporary = stamp.with_name(f"{STAMP_NAME}.{os.getpid()}")
        temporary.write_text(current + "\n")
        os.replace(temporary, stamp)
        return removed
    except OSError:
        return 0
