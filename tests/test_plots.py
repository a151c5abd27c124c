"""The docs' figures are written (tiny sizes) as real PNG files, atomically, into a fresh folder."""

import pytest

from mambakit.plots import write_figures

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_write_figures(tmp_path):
    out = tmp_path / "figures" / "nested"
    paths = write_figures(out, quick=True)
    names = sorted(p.name for p in paths)
    assert names == ["hippo_legs_reconstruction.png", "legs_eigenvalues.png", "modes_agree.png",
                     "s4d_kernels.png", "ssd_duality.png"]
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    # Only the PNGs remain: no temporary files left behind.
    assert sorted(p.name for p in out.iterdir()) == names
