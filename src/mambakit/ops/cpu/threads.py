"""Running the fused CPU kernels on several threads.

The numba kernels are compiled serial and release the GIL (``nogil=True``); this module cuts the
(batch·dim) channel pairs into contiguous blocks and runs them on up to ``torch.get_num_threads()`` threads
(the calling one and a small pool of Python threads). A second OpenMP runtime (numba's ``parallel=True``)
next to torch's would spin against it on a few cores; plain threads do not.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

MIN_WORK_PER_THREAD = 1 << 18  # inner-loop updates below which waking another thread costs more than it saves
BLOCKS_PER_WORKER = 4

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_pid = 0   # a forked child inherits the pool object but not its threads: it builds its own
_pool_lock = threading.Lock()


def split_pairs(pairs: int, work: int) -> tuple[int, list[tuple[int, int]]]:
    """(workers, blocks): how many threads to use (``torch.get_num_threads()`` at most; one when ``work``,
    the count of inner-loop updates, is small) and contiguous ``(first, end)`` blocks of ``range(pairs)``.

    There are several blocks per worker, taken first come first served, so a thread the OS schedules late
    (a busy machine) just takes fewer blocks instead of holding everyone up.
    """
    import torch

    workers = max(1, min(torch.get_num_threads(), pairs, work // MIN_WORK_PER_THREAD))
    n_blocks = 1 if workers == 1 else min(pairs, workers * BLOCKS_PER_WORKER)
    per = -(-pairs // n_blocks)
    return workers, [(start, min(pairs, start + per)) for start in range(0, pairs, per)]


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_size, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_size < workers or _pool_pid != os.getpid():
            _pool_size = max(workers, os.cpu_count() or 1)
            _pool = ThreadPoolExecutor(max_workers=_pool_size, thread_name_prefix="mambakit-cpu")
            _pool_pid = os.getpid()
        return _pool


def run_blocks(kernel: Callable[[int, int, int], None], workers: int, blocks: list[tuple[int, int]]) -> None:
    """Run ``kernel(worker, first, end)`` for every block on ``workers`` threads (this one and the pool's).

    ``worker`` in ``range(workers)`` identifies the thread, so a kernel can accumulate into per-worker
    partial sums without locks.
    """
    if workers == 1:
        for block in blocks:
            kernel(0, *block)
        return
    next_block = itertools.count()   # next() on a count is atomic under the GIL

    def work(worker: int) -> None:
        for i in iter(lambda: next(next_block), None):
            if i >= len(blocks):
                return
            kernel(worker, *blocks[i])

    pool = _executor(workers - 1)
    futures = [pool.submit(work, worker) for worker in range(1, workers)]
    work(0)
    for future in futures:
        future.result()
