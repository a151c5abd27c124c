"""Shared test set-up: every test starts from the same global random state, so failures reproduce."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread: many tiny oneDNN calls (gradcheck of a convolution) otherwise spend
    most of their time waking threads when the cores are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
