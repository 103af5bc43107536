"""The space both flow peers (OT-CFM, MIOFlow) work in, and the way back to genes.

Both fit a PCA of the log-normalised training cells and divide the coordinates by one scalar, the standard
deviation along PC1, so that Euclidean OT costs keep the PCA geometry; both predict by moving real cells of the
nearest observed time at or before the target and mapping them back to genes, clipped at 0.
"""

from __future__ import annotations

import math

import numpy as np

from sctrace._errors import SctraceInputError
from sctrace.baselines import _check_training_cells, _draw_cells
from sctrace.metrics import PCAProjection, fit_pca


def scaled_pca(
    expr, times: np.ndarray, n_pcs: int, method: str
) -> tuple[PCAProjection, float, np.ndarray, list[np.ndarray]]:
    """Check the training cells and embed them.

    Parameters
    ----------
    expr, times
        (n, n_genes) log-normalised training cells and their (n,) real times.
    n_pcs
        PCA components (capped by the PCA itself).
    method
        The peer's name, for the error message.

    Returns
    -------
    pca, scale, time_values, coordinates
        The projection, PC1's standard deviation, the sorted observed times and, per time, the (n_t, n_pcs)
        float32 scaled coordinates of its cells.
    """
    expr, times = _check_training_cells(expr, times)
    time_values = np.unique(times)
    if time_values.size < 2:
        raise SctraceInputError(
            f"{method} needs at least two observed time points but the training cells have {time_values.size}; "
            "pass cells from more time points."
        )
    pca = fit_pca(expr, n_pcs)
    scale = float(math.sqrt(max(pca.explained_variance[0], 1e-12)))
    coordinates = [(pca.transform(expr[times == t]) / scale).astype(np.float32) for t in time_values]
    return pca, scale, time_values, coordinates


def start_cells(
    time_values: np.ndarray, coordinates: list[np.ndarray], target_time: float, n_cells: int | None, seed: int,
    method: str,
) -> tuple[int, np.ndarray]:
    """The index of the nearest observed time at or before ``target_time`` and a seeded draw of its cells
    (without replacement when it has enough, else with; all of them when ``n_cells`` is None)."""
    earlier = np.flatnonzero(time_values <= target_time + 1e-9)
    if earlier.size == 0:
        raise SctraceInputError(
            f"target time {target_time:g} is before the first observed time ({time_values[0]:g}); {method} "
            "starts from an earlier time point, so pick a later target."
        )
    start = int(earlier[-1])
    cells = coordinates[start]
    return start, cells[_draw_cells(len(cells), n_cells, np.random.default_rng(seed))]


def to_genes(pca: PCAProjection, scale: float, coordinates: np.ndarray) -> np.ndarray:
    """(n, n_pcs) scaled coordinates to (n, n_genes) float32 log-normalised cells, clipped at 0 (log-normalised
    expression is non-negative)."""
    expression = pca.inverse_transform(np.asarray(coordinates, dtype=np.float64) * scale)
    return np.clip(expression, 0.0, None).astype(np.float32)
