"""The space both flow peers (OT-CFM, MIOFlow) work in, and the way back to genes.

Both fit a PCA of the log-normalised training cells and divide the coordinates by one scalar, the standard
deviation along PC1, so that Euclidean OT costs keep the PCA geometry; both predict by moving real cells of the
nearest observed time at or before the target and mapping them back to genes, clipped at 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sctrace._errors import SctraceInputError
from sctrace.harness.baselines import _check_training_cells, _draw_cells
from sctrace.harness.metrics import PCAProjection, fit_pca


@dataclass
class PCASpace:
    """The scaled PCA space a flow peer was fitted in, and its training cells there.

    Attributes
    ----------
    pca
        The PCA of the training cells.
    scale
        Standard deviation along PC1; scaled coordinates are ``pca.transform(x) / scale``.
    time_values
        (n_times,) sorted observed training times.
    coordinates
        Scaled PCA coordinates (float32) of the training cells of each observed time, in ``time_values`` order.
    """

    pca: PCAProjection
    scale: float
    time_values: np.ndarray
    coordinates: list[np.ndarray]

    def rescale_time(self, time: float) -> float:
        """Real time to the flows' time axis, on which the training times span [0, 1]."""
        return float((time - self.time_values[0]) / (self.time_values[-1] - self.time_values[0]))

    @property
    def rescaled_times(self) -> np.ndarray:
        """(n_times,) the observed training times on the flows' time axis, 0 to 1."""
        return (self.time_values - self.time_values[0]) / (self.time_values[-1] - self.time_values[0])

    def start_cells(self, target_time: float, n_cells: int | None, seed: int, method: str) -> tuple[int, np.ndarray]:
        """The index of the nearest observed time at or before ``target_time`` and a seeded draw of its cells
        (without replacement when it has enough, else with; all of them when ``n_cells`` is None)."""
        earlier = np.flatnonzero(self.time_values <= target_time + 1e-9)
        if earlier.size == 0:
            raise SctraceInputError(
                f"target time {target_time:g} is before the first observed time ({self.time_values[0]:g}); {method} "
                "starts from an earlier time point, so pick a later target."
            )
        start = int(earlier[-1])
        cells = self.coordinates[start]
        return start, cells[_draw_cells(len(cells), n_cells, np.random.default_rng(seed))]

    def to_genes(self, coordinates: np.ndarray) -> np.ndarray:
        """(n, n_pcs) scaled coordinates to (n, n_genes) float32 log-normalised cells, clipped at 0
        (log-normalised expression is non-negative)."""
        expression = self.pca.inverse_transform(np.asarray(coordinates, dtype=np.float64) * self.scale)
        return np.clip(expression, 0.0, None).astype(np.float32)


def scaled_pca(expr, times: np.ndarray, n_pcs: int, method: str) -> PCASpace:
    """Check the training cells and embed them.

    Parameters
    ----------
    expr, times
        (n, n_genes) log-normalised training cells and their (n,) real times.
    n_pcs
        PCA components (capped by the PCA itself).
    method
        The peer's name, for the error message.
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
    return PCASpace(pca, scale, time_values, coordinates)
