"""The floors every model is reported beside: copy the previous time point, mix the real cells of the two
neighbouring time points, or interpolate linearly between them.

All take the log-normalised training cells and the real time of each, and return log-normalised cells for a
target time, so they are scored by exactly the same metrics as the model's output.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sctrace._errors import SctraceInputError
from sctrace.data.arrays import dense
from sctrace.data.timecourse import capped_rows
from sctrace.harness.metrics import fit_pca

__all__ = ["INTERPOLATION_ONLY", "baseline_names", "identity_baseline", "linear_baseline", "mixture_baseline"]

# Floors defined only between two observed time points: benchmarks skip them when extrapolating.
INTERPOLATION_ONLY = ("mixture", "linear")

# Each side of the optimal-transport coupling is subsampled to this many cells: the exact solver is
# O(n^3) in time and the plan O(n^2) in memory.
_MAX_OT_CELLS = 2000
# POT's default (1e5) stops the network simplex before optimality on 2000 x 2000 problems.
_OT_MAX_ITERATIONS = 10**7


def baseline_names() -> tuple[str, ...]:
    """Names of the floors, in the order they are reported."""
    return ("identity", "mixture", "linear")


def _check_training_cells(expr, times) -> tuple[object, np.ndarray]:
    """Validate (n, g) expression and its (n,) times; return CSR or ndarray and float64 times."""
    if not sp.issparse(expr):
        expr = np.asarray(expr)
    if expr.ndim != 2 or expr.shape[0] == 0:
        raise SctraceInputError(
            f"expr must be a non-empty 2-D (cells, genes) matrix but has shape {expr.shape}; pass training cells."
        )
    if sp.issparse(expr):
        expr = sp.csr_matrix(expr)
    times = np.asarray(times, dtype=np.float64).ravel()
    if times.shape[0] != expr.shape[0]:
        raise SctraceInputError(
            f"times has {times.shape[0]} values but expr has {expr.shape[0]} cells; pass one time per cell."
        )
    if not np.isfinite(times).all():
        raise SctraceInputError("times contains NaN or inf; give every training cell a real time value.")
    return expr, times


def _check_n_cells(n_cells: int) -> int:
    if n_cells < 1:
        raise SctraceInputError(f"n_cells must be at least 1 but is {n_cells}; ask for one or more cells.")
    return n_cells


def _draw_cells(n_available: int, n_cells: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n_cells`` draws: all in order when None, without replacement when enough, else with."""
    if n_cells is None:
        return np.arange(n_available)
    return rng.choice(n_available, size=_check_n_cells(n_cells), replace=n_cells > n_available)


def identity_baseline(expr, times: np.ndarray, target_time: float, n_cells: int | None = None,
                      seed: int = 0) -> np.ndarray:
    """Predict a time point by the cells of the nearest earlier observed time point.

    Parameters
    ----------
    expr
        (n, n_genes) log-normalised training cells, dense or sparse.
    times
        (n,) real time of each training cell.
    target_time
        Time to predict; some training time must be strictly earlier.
    n_cells
        Number of cells to return: drawn without replacement (with replacement when more than that time point
        has), seeded; None returns every cell of that time point in their input order.
    seed
        Seed of the draw.

    Returns
    -------
    np.ndarray
        (n_out, n_genes) float32 cells.
    """
    expr, times = _check_training_cells(expr, times)
    earlier = np.unique(times[times < target_time])
    if earlier.size == 0:
        raise SctraceInputError(
            f"target time {target_time} is not after any observed time (first is {times.min()}); the identity "
            "baseline copies an earlier time point, so pick a later target."
        )
    rows = np.flatnonzero(times == earlier[-1])
    chosen = rows[_draw_cells(rows.size, n_cells, np.random.default_rng(seed))]
    return dense(expr[chosen], np.float32)


def _bracketing_times(times: np.ndarray, target_time: float, name: str = "linear") -> tuple[float, float]:
    """Observed times t0 < t1, neighbours in time, with t0 <= target <= t1."""
    observed = np.unique(times)
    if observed.size < 2 or not observed[0] <= target_time <= observed[-1]:
        raise SctraceInputError(
            f"target time {target_time} is outside the observed times [{observed[0]}, {observed[-1]}]; the {name} "
            "baseline is only defined for interpolation between two observed time points."
        )
    # At an observed time, start the interval there (a = 0); only the last time closes an interval (a = 1).
    left = min(int(np.searchsorted(observed, target_time, side="right")) - 1, observed.size - 2)
    return float(observed[left]), float(observed[left + 1])


def mixture_baseline(expr, times: np.ndarray, target_time: float, n_cells: int | None = None,
                     seed: int = 0) -> np.ndarray:
    """Predict a time point by real cells of its two neighbouring observed times, mixed by distance.

    With neighbouring observed times ``t0 <= target <= t1`` and ``a = (target - t0) / (t1 - t0)``, each output
    cell is a real cell of t1 with probability ``a`` and of t0 otherwise (drawn as ``identity`` draws). Why a
    floor: like ``identity`` it keeps every cell's gene-level sparsity, and like ``linear`` its mean moves
    towards the next time point, so a model must learn more than either to beat it on both EMD and
    Pearson-delta (on Shalek LPS it beats every peer on EMD; BENCHMARKS.md).

    Parameters
    ----------
    expr
        (n, n_genes) log-normalised training cells, dense or sparse.
    times
        (n,) real time of each training cell.
    target_time
        Time to predict, within the observed range (interpolation only).
    n_cells
        Number of cells to return; None returns as many as the nearer time point has.
    seed
        Seed of the draws.

    Returns
    -------
    np.ndarray
        (n_out, n_genes) float32 cells, those of t0 first.
    """
    expr, times = _check_training_cells(expr, times)
    start_time, end_time = _bracketing_times(times, target_time, "mixture")
    fraction = (target_time - start_time) / (end_time - start_time)
    start_rows, end_rows = np.flatnonzero(times == start_time), np.flatnonzero(times == end_time)
    if n_cells is None:
        n_cells = (start_rows if fraction <= 0.5 else end_rows).size
    rng = np.random.default_rng(seed)
    n_end = int(rng.binomial(_check_n_cells(n_cells), fraction))
    parts = [rows[_draw_cells(rows.size, k, rng)] for rows, k in ((start_rows, n_cells - n_end), (end_rows, n_end)) if k]
    return dense(expr[np.concatenate(parts)], np.float32)


def linear_baseline(expr, times: np.ndarray, target_time: float, n_cells: int | None = None, n_pcs: int = 50,
                    seed: int = 0) -> np.ndarray:
    """Predict a time point by moving cells of the neighbouring time points along optimal-transport pairs.

    With neighbouring observed times ``t0 <= target <= t1`` and ``a = (target - t0) / (t1 - t0)``:

    1. fit a PCA on the training cells of all times;
    2. subsample each of t0 and t1 to at most 2000 cells (seeded) and couple them by exact optimal transport
       (``ot.emd``, uniform weights, squared Euclidean cost in PCA space);
    3. draw ``n_cells`` pairs (i, j) with probability proportional to the plan, without replacement when the
       plan has enough non-zero entries and with replacement otherwise;
    4. return ``inverse_pca((1 - a) z0_i + a z1_j)`` clipped at 0.

    When ``n_cells`` is None as many pairs are drawn as there are (subsampled) t0 cells; with equally many
    cells at both times the plan is a permutation and every pair is then taken once, so the mean of the
    output is exactly the average of the two means (up to PCA truncation).

    Parameters
    ----------
    expr
        (n, n_genes) log-normalised training cells, dense or sparse.
    times
        (n,) real time of each training cell.
    target_time
        Time to predict, within the observed range (interpolation only).
    n_cells
        Number of cells to return; None as described above.
    n_pcs
        PCA components (capped at ``min(n_genes, n - 1)``).
    seed
        Seed of the subsampling and of the pair draw.

    Returns
    -------
    np.ndarray
        (n_out, n_genes) float32 cells.
    """
    import ot  # imported here because POT loads its array backends (seconds) on import

    expr, times = _check_training_cells(expr, times)
    start_time, end_time = _bracketing_times(times, target_time)
    fraction = (target_time - start_time) / (end_time - start_time)
    pca = fit_pca(expr, n_pcs)
    rng = np.random.default_rng(seed)
    ends = []
    for time in (start_time, end_time):
        rows = np.flatnonzero(times == time)
        rows = capped_rows(rows, _MAX_OT_CELLS, rng)
        ends.append(pca.transform(expr[rows]))
    start_coords, end_coords = ends
    plan = ot.emd(np.full(len(start_coords), 1.0 / len(start_coords)), np.full(len(end_coords), 1.0 / len(end_coords)),
                  ot.dist(start_coords, end_coords), numItermax=_OT_MAX_ITERATIONS)
    pair_start, pair_end = np.nonzero(plan > 0)
    weights = plan[pair_start, pair_end] / plan[pair_start, pair_end].sum()
    n_draws = len(start_coords) if n_cells is None else _check_n_cells(n_cells)
    drawn = rng.choice(weights.size, size=n_draws, replace=n_draws > weights.size, p=weights)
    coords = (1.0 - fraction) * start_coords[pair_start[drawn]] + fraction * end_coords[pair_end[drawn]]
    return np.clip(pca.inverse_transform(coords), 0.0, None).astype(np.float32)
