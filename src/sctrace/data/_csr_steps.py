"""Building one CSR matrix from row blocks drawn step by step (the simulator's counts).

scipy has no incremental CSR builder; stacking per-step matrices with ``sp.vstack`` copies every piece again and
holds them all as matrices, so the pieces are kept as raw arrays and joined once.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp


def row_steps(n_cells: int, chunk_size: int, block_size: int) -> Iterator[tuple[int, int]]:
    """Row ranges [start, stop) of at most chunk_size rows that never straddle a block of block_size rows."""
    start = 0
    while start < n_cells:
        block_end = (start // block_size + 1) * block_size
        stop = min(start + chunk_size, block_end, n_cells)
        yield start, stop
        start = stop


def assemble_csr(
    data_parts: list[np.ndarray], index_parts: list[np.ndarray], row_nnz: np.ndarray, n_genes: int
) -> sp.csr_matrix:
    """Join per-step CSR pieces into one matrix; peak memory is about twice the final matrix."""
    indptr = np.zeros(row_nnz.size + 1, dtype=np.int64)
    np.cumsum(row_nnz, out=indptr[1:])
    index_dtype = np.int32 if indptr[-1] <= np.iinfo(np.int32).max else np.int64
    data = np.concatenate(data_parts)
    indices = np.concatenate(index_parts).astype(index_dtype, copy=False)
    return sp.csr_matrix((data, indices, indptr.astype(index_dtype)), shape=(row_nnz.size, n_genes))
