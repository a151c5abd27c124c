"""The one way mambakit draws: a matplotlib ``Figure`` on its own Agg canvas (no pyplot, so no global backend
switch and nothing left open), saved as PNG atomically."""

from __future__ import annotations

import io
import os
from pathlib import Path

from ..atomic import atomic_path
from ..errors import ConfigError


def new_figure(width: float, height: float, layout: str = "constrained"):
    """A ``matplotlib.figure.Figure`` of ``width`` × ``height`` inches at 110 dpi with an Agg canvas.

    Raises:
        ConfigError: matplotlib is not installed (it comes with the ``train`` extra).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # matplotlib is in the "train" extra
        raise ConfigError("plots: matplotlib is needed (pip install 'mambakit[train]')") from exc
    fig = Figure(figsize=(width, height), dpi=110, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def png_bytes(fig) -> bytes:
    """``fig`` as PNG bytes (for writers that bundle several files)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
