"""The example of docs/official_ops.md runs as written."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "official_ops.md"


def test_official_ops_page_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], DOC.name, "exec"), {})  # noqa: S102 - our own docs
