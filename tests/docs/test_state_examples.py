"""The examples of docs/state.md run as written: its ```python blocks, in order, in one namespace."""

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "state.md"


def test_state_page_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 7   # packing, padded batches, chunked prefill, prefix, speculative, beams, storage
    namespace: dict = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"{DOC.name}[block {i}]", "exec"), namespace)  # noqa: S102 - our own docs
    finally:
        torch.set_num_threads(threads)
