"""The examples of docs pages run as written: each page's ```python blocks, in order, in one namespace."""

import re
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = {"state.md": 7, "hybrids.md": 1}   # page: how many examples it has at least


@pytest.mark.parametrize("page", sorted(PAGES))
def test_page_examples_run(page):
    path = DOCS / page
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    assert len(blocks) >= PAGES[page]
    namespace: dict = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"{page}[block {i}]", "exec"), namespace)  # noqa: S102 - our own docs
    finally:
        torch.set_num_threads(threads)
