"""Distribution distances between generated and real cells (MMD, EMD, E-distance, correlations), with their input checks."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from sctrace._errors import SctraceInputError
from sctrace.data.arrays import dense
from sctrace.data.pca import BLOCK_ELEMENTS, as_expression, dense_rows, fit_pca, mean_expression

# RBF kernel parameters gamma in exp(-gamma * ||x - y||^2), as used by the TRACE paper, CPA, CellOT and CellFlow.
MMD_GAMMAS: tuple[float, ...] = (2.0, 1.0, 0.5, 0.1, 0.01, 0.005)


def _as_expression_pair(pred, real, real_name: str = "real"):
    """Check both sets and that they share the same gene columns."""
    pred = as_expression(pred, "pred")
    real = as_expression(real, real_name)
    if pred.shape[1] != real.shape[1]:
        raise SctraceInputError(
            f"pred has shape {pred.shape} but {real_name} has shape {real.shape}: they must have the same genes "
            "(columns) in the same order; subset both to the same gene list."
        )
    return pred, real


def _pearson(a: np.ndarray, b: np.ndarray, what: str) -> float:
    """Pearson r of two vectors; NaN with a warning when either is constant (r is undefined there)."""
    a = a - a.mean()
    b = b - b.mean()
    norm = np.sqrt((a @ a) * (b @ b))
    if not norm > 0:
        warnings.warn(f"{what} is undefined because one vector has zero variance; returning NaN.", RuntimeWarning,
                      stacklevel=3)
        return float("nan")
    return float(np.clip((a @ b) / norm, -1.0, 1.0))


def _subsample_rows(n_rows: int, max_cells: int | None, seed: int) -> np.ndarray | None:
    """Sorted row indices of a seeded subsample of size ``max_cells``, or None when every row is kept."""
    if max_cells is None or n_rows <= max_cells:
        return None
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=max_cells, replace=False))


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n_a, n_b) squared Euclidean distances by ||a||^2 + ||b||^2 - 2 a.b, clipped at 0 against round-off."""
    distances = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.clip(distances, 0.0, None, out=distances)


def mmd_rbf(pred, real, gammas: Sequence[float] = MMD_GAMMAS, max_cells: int | None = 2000, seed: int = 0) -> float:
    """Squared maximum mean discrepancy with an RBF kernel, averaged over kernel widths.

    ``MMD^2 = mean K(x, x') + mean K(y, y') - 2 mean K(x, y)`` with ``K(x, y) = exp(-gamma ||x - y||^2)``; the
    biased (V-statistic) estimate, which includes the i = j terms and so is never negative. The default gammas
    are (2, 1, 0.5, 0.1, 0.01, 0.005), those of the TRACE paper, CPA, CellOT and CellFlow. The three pairwise
    squared-distance matrices are computed once and reused for every gamma.

    Note that on a few thousand log-normalised genes typical squared distances between cells are in the
    hundreds, so the wide-gamma kernels (gamma >= 0.1) are nearly the identity and contribute a near-constant
    ``1/n_pred + 1/n_real``; only the small gammas discriminate. This matches the published protocol.

    Parameters
    ----------
    pred
        (n_pred, n_genes) generated cells, dense or sparse.
    real
        (n_real, n_genes) real cells, dense or sparse.
    gammas
        Kernel parameters to average over.
    max_cells
        Each set larger than this is subsampled to ``max_cells`` rows (without replacement) first, to bound the
        O(n^2) cost; None uses every cell. Each set gets its own generator seeded with ``seed``, so the value
        is symmetric in its arguments.
    seed
        Seed of the subsampling.

    Returns
    -------
    float
        MMD^2 averaged over ``gammas``; 0 for identical sets.
    """
    pred, real = _as_expression_pair(pred, real)
    if len(gammas) == 0:
        raise SctraceInputError("gammas is empty; pass at least one RBF kernel parameter.")
    x = dense_rows(pred, _subsample_rows(pred.shape[0], max_cells, seed))
    y = dense_rows(real, _subsample_rows(real.shape[0], max_cells, seed))
    within_x = _squared_distances(x, x)
    within_y = _squared_distances(y, y)
    # A point's distance to itself is exactly 0; the norm trick can leave round-off on the diagonal.
    np.fill_diagonal(within_x, 0.0)
    np.fill_diagonal(within_y, 0.0)
    between = _squared_distances(x, y)
    values = [
        np.exp(-gamma * within_x).mean() + np.exp(-gamma * within_y).mean() - 2.0 * np.exp(-gamma * between).mean()
        for gamma in gammas
    ]
    return float(max(np.mean(values), 0.0))


def _sorted_gene_block(matrix, genes: slice) -> np.ndarray:
    """(n_cells, block) float64 values of a block of genes, each column sorted."""
    return np.sort(dense(matrix[:, genes], np.float64), axis=0)


def emd_per_gene(pred, real) -> np.ndarray:
    """1-D Wasserstein-1 distance between the predicted and real values of each gene.

    Equal to ``scipy.stats.wasserstein_distance(pred[:, g], real[:, g])`` for every gene g, computed for all
    genes at once through the quantile functions: ``W1 = integral_0^1 |F^-1(u) - G^-1(u)| du``, whose integrand
    is piecewise constant between the breakpoints ``i / n_pred`` and ``j / n_real``, the same for every gene.
    Genes are processed in blocks so sparse input is densified a block at a time.

    Parameters
    ----------
    pred
        (n_pred, n_genes) generated cells, dense or sparse.
    real
        (n_real, n_genes) real cells, dense or sparse.

    Returns
    -------
    np.ndarray
        (n_genes,) float64 distances.
    """
    pred, real = _as_expression_pair(pred, real)
    n_pred, n_real = pred.shape[0], real.shape[0]
    # Breakpoints on the integer grid u * n_pred * n_real, so they merge exactly without float ties.
    breakpoints = np.union1d(np.arange(n_pred + 1) * n_real, np.arange(n_real + 1) * n_pred)
    widths = np.diff(breakpoints) / (n_pred * n_real)
    pred_rank = breakpoints[:-1] // n_real  # which sorted pred value is the quantile on each piece
    real_rank = breakpoints[:-1] // n_pred
    if sp.issparse(pred):
        pred = pred.tocsc()
    if sp.issparse(real):
        real = real.tocsc()
    n_genes = pred.shape[1]
    step = max(1, BLOCK_ELEMENTS // (len(widths) + n_pred + n_real))
    distances = np.empty(n_genes)
    for start in range(0, n_genes, step):
        genes = slice(start, min(start + step, n_genes))
        pred_sorted = _sorted_gene_block(pred, genes)
        real_sorted = _sorted_gene_block(real, genes)
        distances[genes] = widths @ np.abs(pred_sorted[pred_rank] - real_sorted[real_rank])
    return distances


def emd(pred, real) -> float:
    """Mean over genes of the per-gene 1-D Wasserstein distance (see :func:`emd_per_gene`).

    Parameters
    ----------
    pred
        (n_pred, n_genes) generated cells, dense or sparse.
    real
        (n_real, n_genes) real cells, dense or sparse.
    """
    return float(emd_per_gene(pred, real).mean())


def e_distance(pred, real, n_pcs: int = 50, pca_fit=None) -> float:
    """scPerturb's E-distance in the PCA space of the real cells.

    ``E = 2 mean ||x - y||^2 - mean ||x - x'||^2 - mean ||y - y'||^2`` over all pairs (i = j included) with
    squared Euclidean distances, x the projected predicted cells and y the projected real cells. With squared
    distances this expression equals ``2 ||mean(x) - mean(y)||^2`` exactly, which is how it is computed here
    (in O(n) instead of O(n^2)); hence it measures only the shift of the mean in PCA space, not differences
    in spread or shape (MMD and EMD see those).

    Parameters
    ----------
    pred
        (n_pred, n_genes) generated cells, dense or sparse.
    real
        (n_real, n_genes) real cells, dense or sparse.
    n_pcs
        Number of principal components of ``real`` to use when ``pca_fit`` is None.
    pca_fit
        An already fitted projection with a ``transform`` method mapping (n, n_genes) to (n, n_pcs), such as
        :class:`PCAProjection` or a fitted ``sklearn.decomposition.PCA``; it must be affine (it is applied to
        the mean cells). None fits a PCA on ``real``.

    Returns
    -------
    float
        Non-negative E-distance; 0 for identical sets.
    """
    pred, real = _as_expression_pair(pred, real)
    if pca_fit is None:
        if real.shape[0] < 2:
            raise SctraceInputError(
                "e_distance needs at least 2 real cells to fit a PCA; pass more real cells or a fitted pca_fit."
            )
        pca_fit = fit_pca(real, n_pcs)
    # An affine projection maps the mean cell to the mean of the projected cells.
    projected = np.asarray(pca_fit.transform(np.stack([mean_expression(pred), mean_expression(real)])),
                           dtype=np.float64)
    shift = projected[0] - projected[1]
    return float(2.0 * shift @ shift)


def pearson_mean(pred, real) -> float:
    """Pearson r between the mean expression vectors of the predicted and the real cells.

    This is r, not r^2 (the authors' code labels r^2 as "PearsonR").

    Parameters
    ----------
    pred
        (n_pred, n_genes) generated cells, dense or sparse.
    real
        (n_real, n_genes) real cells, dense or sparse.

    Returns
    -------
    float
        r in [-1, 1]; NaN with a warning when either mean vector is constant.
    """
    pred, real = _as_expression_pair(pred, real)
    return _pearson(mean_expression(pred), mean_expression(real), "pearson_mean")


def r2_mean(pred, real) -> float:
    """Coefficient of determination of the real mean expression by the predicted one.

    ``R^2 = 1 - sum_g (m_real - m_pred)^2 / sum_g (m_real - mean_g m_real)^2`` with the real means as the truth
    (as ``sklearn.metrics.r2_score(m_real, m_pred)``). Unlike r^2 it is not symmetric, and it is negative when
    the prediction is worse than predicting every gene's mean by the average over genes.

    Parameters
    ----------
    pred
        (n_pred, n_genes) generated cells, dense or sparse.
    real
        (n_real, n_genes) real cells, dense or sparse.

    Returns
    -------
    float
        R^2 in (-inf, 1]; NaN with a warning when the real mean vector is constant.
    """
    pred, real = _as_expression_pair(pred, real)
    pred_mean, real_mean = mean_expression(pred), mean_expression(real)
    total = ((real_mean - real_mean.mean()) ** 2).sum()
    if not total > 0:
        warnings.warn("r2_mean is undefined because the real mean vector is constant; returning NaN.",
                      RuntimeWarning, stacklevel=2)
        return float("nan")
    return float(1.0 - ((real_mean - pred_mean) ** 2).sum() / total)


def pearson_delta(pred, real, reference) -> float:
    """Pearson r between the predicted and the real change of mean expression from a reference.

    ``r(mean(pred) - mean(reference), mean(real) - mean(reference))`` with ``reference`` the cells of the
    previous observed time point. Plain Pearson r of mean vectors is dominated by the large spread of baseline
    expression across genes, so it exceeds 0.9 even for a method that copies the previous time point; on the
    change it is about 0 for such a copy (and undefined, NaN, for an exact copy of ``reference``).

    Parameters
    ----------
    pred
        (n_pred, n_genes) generated cells, dense or sparse.
    real
        (n_real, n_genes) real cells, dense or sparse.
    reference
        (n_reference, n_genes) cells of the previous observed time point, dense or sparse.

    Returns
    -------
    float
        r in [-1, 1]; NaN with a warning when either change vector is constant.
    """
    pred, real = _as_expression_pair(pred, real)
    _, reference = _as_expression_pair(pred, reference, real_name="reference")
    reference_mean = mean_expression(reference)
    return _pearson(mean_expression(pred) - reference_mean, mean_expression(real) - reference_mean,
                    "pearson_delta")


def gene_correlation(pred, real, n_genes: int = 100) -> float:
    """Pearson r between the gene-gene correlation matrices of generated and real cells.

    Why: per-gene EMD, the mean-expression scores and E-distance (twice the squared distance of the means) are
    all blind to whether genes co-vary within a cell; cells drawn gene by gene from the right marginals score
    perfectly on them. This is near 1 when the generated cells' genes co-vary like the real cells' (two halves of
    one real population), near 0 when they are drawn independently, whatever the marginals.

    Over the ``n_genes`` genes that vary most across the real cells (not symmetric in ``pred`` and ``real``), the
    upper triangles of the two correlation matrices (i < j) are correlated; a gene that is constant in ``pred``
    correlates 0 with every other gene there.

    Parameters
    ----------
    pred
        (n_pred, n_genes_all) generated cells, dense or sparse; at least two cells.
    real
        (n_real, n_genes_all) real cells, dense or sparse; at least two cells.
    n_genes
        How many of the real cells' most variable genes to compare (all when fewer vary).

    Returns
    -------
    float
        r in [-1, 1]; NaN with a warning when fewer than three real genes vary.
    """
    pred, real = _as_expression_pair(pred, real)
    if pred.shape[0] < 2 or real.shape[0] < 2:
        raise SctraceInputError(f"gene_correlation needs at least two cells in each set, got {pred.shape[0]} and {real.shape[0]}.")
    real_dense = dense_rows(real)
    variance = real_dense.var(axis=0)
    chosen = np.argsort(-variance, kind="stable")[: min(n_genes, int((variance > 0).sum()))]
    if chosen.size < 3:
        warnings.warn("gene_correlation: fewer than three genes vary across the real cells; returning NaN.", RuntimeWarning,
                      stacklevel=2)
        return float("nan")
    pred_dense = dense_rows(pred[:, chosen])
    upper = np.triu_indices(chosen.size, k=1)
    return _pearson(_correlation_matrix(pred_dense)[upper], _correlation_matrix(real_dense[:, chosen])[upper],
                    "gene_correlation")


def _correlation_matrix(cells: np.ndarray) -> np.ndarray:
    """Gene-gene Pearson correlations of (n_cells, n_genes) values; 0 for pairs with a constant gene."""
    centred = cells - cells.mean(axis=0)
    norm = np.sqrt((centred**2).sum(axis=0))
    safe = np.where(norm > 0, norm, 1.0)
    unit = centred / safe
    return np.where(np.outer(norm > 0, norm > 0), unit.T @ unit, 0.0)
