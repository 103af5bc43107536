"""Plots written by the demo and the benchmark (matplotlib, PNG, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def pca_overlay(real, methods: dict[str, np.ndarray], path: str | Path, title: str = "", n_pcs: int = 2) -> Path:
    """One panel per method: its cells over the real cells, in the PCA of the real cells."""
    real = _dense(real).astype(np.float64)
    mean = real.mean(0)
    _, _, vt = np.linalg.svd(real - mean, full_matrices=False)
    axes_basis = vt[:n_pcs].T
    real_xy = (real - mean) @ axes_basis
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 4), squeeze=False)
    for ax, (name, cells) in zip(axes[0], methods.items()):
        xy = (_dense(cells).astype(np.float64) - mean) @ axes_basis
        ax.scatter(real_xy[:, 0], real_xy[:, 1], s=4, c="lightgray", label="real")
        ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.6, label=name)
        ax.set_title(name)
        ax.set_xlabel("PC1 (real)")
        ax.set_ylabel("PC2 (real)")
        ax.legend(loc="best", markerscale=3, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
