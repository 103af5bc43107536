"""Per-cell fidelity: values decoded for given cells against those cells' real values, cell by cell.

The distribution metrics compare populations, so a decoder that returns one profile per time point can score
well on them; these pair each decoded cell with the real cell whose sentence it was decoded from (issue 24).
"""

from __future__ import annotations

import numpy as np

from sctrace._errors import SctraceInputError
from sctrace.data.pca import dense_rows


def _median_r(a: np.ndarray, b: np.ndarray) -> float:
    """Median over columns of the Pearson r between a[:, j] and b[:, j], over columns where both vary."""
    a, b = a - a.mean(0), b - b.mean(0)
    scale = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    ok = scale > 1e-12
    return float(np.median((a * b).sum(0)[ok] / scale[ok])) if ok.any() else float("nan")


def per_cell_fidelity(decoded, real) -> dict[str, float]:
    """How well values decoded for given cells match those same cells.

    Parameters
    ----------
    decoded
        (n_cells, n_genes) log-normalised values decoded for each cell (e.g. the count decoder's expected
        values from the cell's real sentence), dense or sparse.
    real
        (n_cells, n_genes) the same cells' real log-normalised values, rows in the same order.

    Returns
    -------
    ``spread_ratio``: the mean over genes of the across-cell standard deviation, decoded over real (a decoder
    that returns one profile gives 0); ``per_gene_r``: the median over genes of the across-cell Pearson r;
    ``per_cell_r``: the median over cells of the across-gene Pearson r of each cell's deviation from the mean
    cell (so the shared profile does not count).
    """
    decoded, real = dense_rows(decoded), dense_rows(real)
    if decoded.shape != real.shape:
        raise SctraceInputError(f"decoded has shape {decoded.shape} but real has {real.shape}: pass the same cells "
                                "and genes in the same order.")
    if decoded.shape[0] < 2:
        raise SctraceInputError("per-cell fidelity needs at least 2 cells.")
    spread_real = real.std(0).mean()
    return {
        "spread_ratio": float(decoded.std(0).mean() / spread_real) if spread_real > 0 else float("nan"),
        "per_gene_r": _median_r(decoded, real),
        "per_cell_r": _median_r((decoded - decoded.mean(0)).T, (real - real.mean(0)).T),
    }
