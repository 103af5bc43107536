"""One conversion that a dozen call sites need: an AnnData matrix block (sparse or dense) as a numpy array."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def dense(matrix, dtype: np.dtype | type | None = None) -> np.ndarray:
    """``matrix`` (scipy sparse, numpy, or array-like such as an h5py-backed block) as a dense ndarray of ``dtype``
    (its own dtype when None); a dense input of that dtype is returned without a copy."""
    array = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
    return array if dtype is None else array.astype(dtype, copy=False)
