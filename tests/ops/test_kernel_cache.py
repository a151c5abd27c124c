"""numba's cached kernels are dropped when any source file of the tree changes (numba itself notices only
the defining file), kept otherwise, and the upkeep never fails an import."""

import os
from pathlib import Path

import pytest

from mambakit.ops.cpu import kernel_cache


def _tree(root: Path) -> None:
    (root / "pkg" / "__pycache__").mkdir(parents=True)
    (root / "caller.py").write_text("def caller(): pass\n")
    (root / "pkg" / "callee.py").write_text("def callee(): return 1\n")


def _cache_files(root: Path) -> list[Path]:
    files = [root / "pkg" / "__pycache__" / "caller.k-1.py311.nbi",
             root / "pkg" / "__pycache__" / "caller.k-1.py311.1.nbc"]
    for path in files:
        path.write_bytes(b"x")
    return files


def test_kernels_are_dropped_when_any_source_changes_and_kept_otherwise(tmp_path):
    _tree(tmp_path)
    pyc = tmp_path / "pkg" / "__pycache__" / "callee.cpython-311.pyc"
    pyc.write_bytes(b"x")
    files = _cache_files(tmp_path)
    assert kernel_cache.drop_stale_kernels(tmp_path) == 2   # no stamp yet: nothing is known to be current
    assert not any(p.exists() for p in files) and pyc.exists()
    files = _cache_files(tmp_path)
    assert kernel_cache.drop_stale_kernels(tmp_path) == 0   # nothing changed
    assert all(p.exists() for p in files)
    callee = tmp_path / "pkg" / "callee.py"
    callee.write_text("def callee(): return 2\n")   # same size: the modification time tells
    stat = callee.stat()
    os.utime(callee, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert kernel_cache.drop_stale_kernels(tmp_path) == 2
    assert not any(p.exists() for p in files) and pyc.exists()


def test_a_tree_it_cannot_write_is_left_alone(tmp_path, monkeypatch):
    _tree(tmp_path)
    files = _cache_files(tmp_path)

    def refuse(self, missing_ok=False):
        raise PermissionError(f"read-only: {self}")

    monkeypatch.setattr(Path, "unlink", refuse)
    assert kernel_cache.drop_stale_kernels(tmp_path) == 0
    assert all(p.exists() for p in files)


def test_the_package_stamp_matches_its_sources_after_import():
    # importing the kernels ran the upkeep, so the stored hash is the current one (unless read-only)
    root = kernel_cache.OPS_ROOT
    if not os.access(root, os.W_OK):
        pytest.skip(f"{root} is read-only: numba caches elsewhere and nothing is kept here")
    stamp = root / "__pycache__" / kernel_cache.STAMP_NAME
    assert stamp.read_text().strip() == kernel_cache.sources_hash(root)
