"""The docs' figures are written (tiny sizes) as real PNG files, atomically, into a fresh folder."""

import pytest
import torch

from mambakit.figures import write_figures
from mambakit.figures.ssd import _chunked_matrix, write_ssd_figure
from mambakit.ops.ssd import segment_sum

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


def test_duality_figure_is_written(tmp_path):
    out = write_ssd_figure(tmp_path / "figures" / "ssd.png", length=10, chunk=3)
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in out.parent.iterdir()] == ["ssd.png"]          # no temporary file left behind
    # The block assembly drawn in panel (d) is the quadratic form's matrix.
    a = -torch.rand(10, dtype=torch.float64)
    CB = torch.randn(10, 10, dtype=torch.float64)
    assert torch.allclose(_chunked_matrix(a, CB, 3), torch.exp(segment_sum(a)) * CB, atol=1e-14)
