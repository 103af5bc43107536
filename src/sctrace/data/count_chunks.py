"""Count matrices read as clean CSR blocks of cells, checked and normalised by cell totals (for tokenizing and the medians)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

from sctrace._errors import SctraceInputError


def _normalise(chunk: sp.csr_array, target_sum: float) -> np.ndarray:
    """``(nnz,)`` float64 ``count / cell_total * target_sum`` of a clean CSR chunk."""
    values = chunk.data / np.repeat(_row_sums(chunk), np.diff(chunk.indptr))
    values *= target_sum
    return values


def _check_matrix(counts) -> None:
    shape = getattr(counts, "shape", None)
    if shape is None or len(shape) != 2 or shape[1] < 1:
        raise SctraceInputError(
            "counts must be a 2-D (n_cells, n_genes) matrix with at least one gene (scipy sparse, "
            f"numpy array or backed AnnData X), got {type(counts).__name__} with shape {shape}."
        )


def _check_chunk_size(chunk_size: int) -> None:
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise SctraceInputError(f"chunk_size must be a positive integer, got {chunk_size}.")


def _row_sliceable(counts):
    """Return ``counts`` in a form whose ``[start:stop]`` row slice is cheap (COO, DIA... -> CSR once)."""
    if sp.issparse(counts) and counts.format not in ("csr", "csc"):
        return sp.csr_array(counts)
    return counts


def _iter_csr_chunks(counts, chunk_size: int) -> Iterator[tuple[int, sp.csr_array]]:
    """Yield ``(first_cell, chunk)`` with clean CSR chunks (see :func:`_clean_counts`)."""
    for start in range(0, counts.shape[0], chunk_size):
        stop = min(start + chunk_size, counts.shape[0])
        if sp.issparse(counts) and counts.format == "csr":
            block = _csr_row_view(counts, start, stop)
        else:
            block = counts[start:stop]
            block = sp.csr_array(block if sp.issparse(block) else np.asarray(block))
        yield start, _clean_counts(block)


def _csr_row_view(matrix, start: int, stop: int) -> sp.csr_array:
    """Rows ``[start, stop)`` of a CSR matrix built from slices of its arrays.

    About 4x faster than scipy's row slicing, which walks every entry; scipy still copies the slices.
    """
    first, last = matrix.indptr[start], matrix.indptr[stop]
    # Row pointers in the indices' dtype, or scipy would upcast (copy) the indices to match.
    indptr = (matrix.indptr[start : stop + 1] - first).astype(matrix.indices.dtype)
    return sp.csr_array(
        (matrix.data[first:last], matrix.indices[first:last], indptr), shape=(stop - start, matrix.shape[1])
    )


def _clean_counts(matrix: sp.csr_array | sp.csc_array) -> sp.csr_array | sp.csc_array:
    """Check that a compressed sparse matrix holds finite non-negative counts; drop duplicates and zeros.

    Duplicate entries would become repeated tokens and stored zeros fake expressed genes. The input is
    copied before being modified because it may share its arrays with the caller's matrix.
    """
    if matrix.nnz and not (matrix.data.min() > 0 and matrix.data.max() < np.inf):  # min is NaN if any is
        if not (np.all(np.isfinite(matrix.data)) and np.all(matrix.data >= 0)):
            raise SctraceInputError(
                "counts contain negative, NaN or infinite values; pass raw non-negative counts."
            )
        matrix = matrix.copy()
        matrix.eliminate_zeros()
    if not matrix.has_canonical_format:
        matrix = matrix.copy()
        matrix.sum_duplicates()
    return matrix


def _row_sums(chunk: sp.csr_array) -> np.ndarray:
    """``(n_cells,)`` float64 totals of a CSR chunk."""
    sums = np.zeros(chunk.shape[0], dtype=np.float64)
    expressing = np.diff(chunk.indptr) > 0
    if np.any(expressing):
        # reduceat sums from each start to the next one, so empty rows must not be among the starts.
        sums[expressing] = np.add.reduceat(
            chunk.data.astype(np.float64, copy=False), chunk.indptr[:-1][expressing]
        )
    return sums
