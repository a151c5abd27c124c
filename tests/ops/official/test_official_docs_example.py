"""The example of docs/official_ops.md runs as written."""

import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parents[3] / "docs" / "official_ops.md"


def test_docs_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], str(DOC), "exec"), {})  # noqa: S102 - our own documentation
