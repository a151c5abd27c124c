"""Shared set-up for the server tests: a tiny random checkpoint (byte tokenizer)."""

import pytest
from serve_helpers import tiny_model


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("serve") / "tiny-mamba"
    tiny_model().save_pretrained(directory)
    return directory
