"""The TimeCourse a run reads (cells, genes, times) and MatrixRows, its expression matrix read a block of cells at a time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import anndata
import numpy as np
import scipy.sparse


@dataclass(eq=False)
class TimeCourse:
    """A validated time-course AnnData and the facts read from it.

    Attributes
    ----------
    adata
        The input AnnData, not copied (a path is read once; an AnnData is used as given).
    time_key
        The ``adata.obs`` column holding each cell's time.
    times
        ``(n_cells,) float64`` real time of each cell, after mapping labels to numbers.
    layer
        The ``adata.layers`` key holding the expression matrix, or ``None`` for ``adata.X``.
    stratify_keys
        ``adata.obs`` columns to pair cells within (empty: no stratification).
    count_kind
        ``"counts"`` (raw integer counts) or ``"lognorm"`` (already log-normalised, e.g. BEELINE).
    gene_key
        The ``adata.var`` column holding gene identifiers, or ``None`` for ``adata.var_names``.
    """

    adata: anndata.AnnData
    time_key: str
    times: np.ndarray
    layer: str | None
    stratify_keys: tuple[str, ...]
    count_kind: str
    gene_key: str | None = None

    @property
    def time_values(self) -> np.ndarray:
        """``(n_time_points,) float64`` observed time values, sorted ascending."""
        return np.unique(self.times)

    def expression(self):
        """The chosen expression matrix (``X`` or the layer) as stored, ``(n_cells, n_genes)``.

        In memory this is a scipy sparse matrix or a numpy array; for a backed AnnData ``X`` is an on-disk
        dataset that supports row slicing.
        """
        return self.adata.X if self.layer is None else self.adata.layers[self.layer]

    def gene_names(self) -> np.ndarray:
        """``(n_genes,)`` gene identifiers as strings, from ``var_names`` or ``var[gene_key]``."""
        names = self.adata.var_names if self.gene_key is None else self.adata.var[self.gene_key]
        return np.asarray(names).astype(str)


class MatrixRows:
    """Chosen rows (and columns) of an expression matrix, read a block of rows at a time.

    ``view[start:stop]`` is a scipy CSR matrix of the rows ``rows[start:stop]`` restricted to ``columns``.
    It is read from the matrix in contiguous stretches of rows, so a backed matrix is never loaded whole
    and an in-memory one is never copied whole; with ``shape`` and ``dtype`` this is all the chunked
    functions of :mod:`sctrace.data.tokenize` and :mod:`sctrace.data.preprocess` need.

    Parameters
    ----------
    matrix
        ``(n_cells, n_genes)`` scipy sparse matrix, numpy array, or backed matrix whose ``matrix[a:b]``
        gives rows (anndata backed ``X``, h5py dataset).
    rows
        ``(n_rows,)`` increasing row indices.
    columns
        ``(n_columns,)`` column indices kept, in their order; ``None`` keeps every column.
    transform
        Applied to the stored values of every block read (e.g. ``np.expm1``); ``None`` leaves them.
    """

    # Rows skipped inside one read: a wider gap (e.g. a block of held-out cells) starts a new read.
    max_gap = 1_024

    def __init__(
        self,
        matrix,
        rows: np.ndarray,
        columns: np.ndarray | None = None,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        self.matrix, self.rows, self.columns, self.transform = matrix, np.asarray(rows, dtype=np.int64), columns, transform
        self.shape = (self.rows.size, matrix.shape[1] if columns is None else len(columns))
        self.dtype = np.dtype(matrix.dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice) -> scipy.sparse.csr_matrix:
        if not isinstance(key, slice) or key.indices(self.shape[0])[2] != 1:
            raise TypeError(f"MatrixRows takes a slice of consecutive rows, got {key!r}.")
        wanted = self.rows[key]
        if wanted.size == 0:
            return scipy.sparse.csr_matrix((0, self.shape[1]), dtype=self.dtype)
        blocks = []
        for stretch in np.split(wanted, np.flatnonzero(np.diff(wanted) > self.max_gap) + 1):
            block = self.matrix[stretch[0] : stretch[-1] + 1]
            block = scipy.sparse.csr_matrix(block if scipy.sparse.issparse(block) else np.asarray(block))
            if stretch.size < block.shape[0]:
                block = block[stretch - stretch[0]]
            blocks.append(block if self.columns is None else block[:, self.columns])
        block = blocks[0] if len(blocks) == 1 else scipy.sparse.vstack(blocks, format="csr")
        if self.transform is not None:
            block = scipy.sparse.csr_matrix((self.transform(block.data), block.indices, block.indptr), shape=block.shape)
        return block


def capped_rows(rows: np.ndarray, cap: int, seed: int | np.random.Generator) -> np.ndarray:
    """``rows`` itself, or a seeded sample of ``cap`` of them in their order: the cells a statistic is fitted on.

    ``seed`` may be a Generator that a loop over time points shares (it is drawn from, not re-seeded), and nothing
    is drawn when no cap applies.
    """
    if len(rows) <= cap:
        return rows
    return rows[np.sort(np.random.default_rng(seed).choice(len(rows), cap, replace=False))]
