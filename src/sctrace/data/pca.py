"""A PCA for expression matrices, and the checks and block helpers it shares with the metrics.

In the data layer because OT pairing (:mod:`sctrace.data.corpus`) needs it to place training cells, and the
harness's metrics, floors and peers use the same fit. Sparse input is never centred or densified whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from sctrace._errors import SctraceInputError
from sctrace.data.arrays import dense

__all__ = ["BLOCK_ELEMENTS", "PCAProjection", "as_expression", "dense_rows", "fit_pca", "mean_expression"]

# Upper bound on the float64 elements of one dense block (256 MiB), so chunked densification stays bounded.
BLOCK_ELEMENTS = 2**25


def as_expression(matrix, name: str):
    """Return ``matrix`` as a CSR matrix or a 2-D ndarray after checking that it is non-empty and finite."""
    if sp.issparse(matrix):
        matrix = sp.csr_matrix(matrix)
        values = matrix.data
    else:
        matrix = np.asarray(matrix)
        values = matrix
    if matrix.ndim != 2:
        raise SctraceInputError(
            f"{name} must be a 2-D (cells, genes) matrix but has {matrix.ndim} dimension(s); pass one row per cell."
        )
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise SctraceInputError(f"{name} is empty (shape {matrix.shape}); pass at least one cell and one gene.")
    if not np.issubdtype(values.dtype, np.number) or not np.isfinite(values).all():
        raise SctraceInputError(
            f"{name} contains non-finite or non-numeric values; pass log-normalised expression without NaN or inf."
        )
    return matrix


def dense_rows(matrix, rows: np.ndarray | None = None) -> np.ndarray:
    """Return the chosen rows (all when None) as a float64 ndarray."""
    block = matrix if rows is None else matrix[rows]
    return dense(block, np.float64)


def mean_expression(matrix) -> np.ndarray:
    """(n_genes,) float64 mean over cells, computed without densifying sparse input."""
    return np.asarray(matrix.mean(axis=0, dtype=np.float64)).ravel()


@dataclass(frozen=True)
class PCAProjection:
    """A fitted PCA: ``z = (x - mean) @ components.T``.

    Attributes
    ----------
    mean
        (n_genes,) float64 gene means of the cells it was fitted on.
    components
        (n_pcs, n_genes) float64 orthonormal principal axes, by decreasing variance.
    explained_variance
        (n_pcs,) float64 variance along each axis.
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray

    def transform(self, matrix) -> np.ndarray:
        """Project (n_cells, n_genes) dense or sparse expression to (n_cells, n_pcs) float64 coordinates."""
        if matrix.shape[-1] != self.mean.shape[0]:
            raise SctraceInputError(
                f"the PCA was fitted on {self.mean.shape[0]} genes but the cells have {matrix.shape[-1]}; "
                "use the same genes for fitting and projecting."
            )
        # Subtracting the projected mean instead of centring the cells keeps sparse input sparse.
        return np.asarray(matrix @ self.components.T, dtype=np.float64) - self.mean @ self.components.T

    def inverse_transform(self, coordinates: np.ndarray) -> np.ndarray:
        """Map (n_cells, n_pcs) coordinates back to (n_cells, n_genes) expression."""
        return coordinates @ self.components + self.mean


def fit_pca(matrix, n_pcs: int = 50) -> PCAProjection:
    """Fit a PCA by eigendecomposition of the gene covariance matrix.

    The covariance is accumulated from row blocks densified to float64 and multiplied with BLAS (cost
    O(n_cells n_genes^2), fine for a few thousand HVGs), so a large or sparse matrix is never centred or
    densified whole. ``n_pcs`` is capped at ``min(n_genes, n_cells - 1)`` (the rank of the centred data),
    with at least one component.

    Parameters
    ----------
    matrix
        (n_cells, n_genes) dense or sparse expression.
    n_pcs
        Number of components wanted.

    Returns
    -------
    PCAProjection
        Mean, (n_pcs, n_genes) components and their variances.
    """
    matrix = as_expression(matrix, "the matrix to fit a PCA on")
    n_cells, n_genes = matrix.shape
    if n_pcs < 1:
        raise SctraceInputError(f"n_pcs must be at least 1 but is {n_pcs}; ask for one or more components.")
    n_pcs = max(1, min(n_pcs, n_genes, n_cells - 1))
    gram = np.zeros((n_genes, n_genes))
    step = max(1, BLOCK_ELEMENTS // n_genes)
    for start in range(0, n_cells, step):
        block = dense_rows(matrix[start:start + step])
        gram += block.T @ block
    mean = mean_expression(matrix)
    covariance = (gram - n_cells * np.outer(mean, mean)) / max(n_cells - 1, 1)
    variances, axes = scipy.linalg.eigh(covariance, subset_by_index=(n_genes - n_pcs, n_genes - 1))
    order = np.argsort(variances)[::-1]
    return PCAProjection(mean=mean, components=np.ascontiguousarray(axes[:, order].T),
                         explained_variance=np.clip(variances[order], 0.0, None))
