"""What every plot shares: dense rows, saving a PNG, a colour per label, scatter by label, the cells' types."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _palette(labels: np.ndarray) -> dict[str, tuple]:
    """A colour per distinct label (sorted), from tab10 up to 10 labels and tab20 beyond."""
    names = sorted(set(map(str, labels)))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _scatter_by_label(ax, xy: np.ndarray, labels: np.ndarray, palette: dict[str, tuple], size: float = 4) -> None:
    labels = np.asarray(labels).astype(str)
    for name, colour in palette.items():
        chosen = labels == name
        if chosen.any():
            ax.scatter(xy[chosen, 0], xy[chosen, 1], s=size, color=colour, label=name)


def cell_type_labels(obs) -> np.ndarray | None:
    """``obs['cell_type']`` as strings when it exists with more than one category, else None."""
    if "cell_type" not in obs.columns or obs["cell_type"].nunique() < 2:
        return None
    return obs["cell_type"].astype(str).to_numpy()
