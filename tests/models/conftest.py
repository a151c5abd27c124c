"""The models' tests use tiny tensors, for which extra intra-op threads only add synchronisation cost (and,
on a busy machine, heavy contention): run each of them single-threaded, then restore the setting."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
