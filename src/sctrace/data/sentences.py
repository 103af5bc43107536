"""Token sentences as the network reads them: gene token rows with [CLS] prepended, trimmed to the batch.

In the data layer because the training batches (:mod:`sctrace.data.datamodule`) are built from them; the network
(:mod:`sctrace.model.module`) and the estimator's prediction read the same sentences.
"""

from __future__ import annotations

import numpy as np
import torch

from sctrace.data.tokenize import CLS_ID

__all__ = ["add_cls", "gather_sentences"]


def add_cls(tokens: torch.Tensor) -> torch.Tensor:
    """Prepend [CLS]: (batch, length) -> (batch, length + 1)."""
    cls = torch.full((tokens.shape[0], 1), CLS_ID, dtype=tokens.dtype, device=tokens.device)
    return torch.cat([cls, tokens], dim=1)


def gather_sentences(tokens: np.ndarray, lengths: np.ndarray, rows: np.ndarray | slice) -> torch.Tensor:
    """[CLS]-prefixed int64 sentences of ``rows``, trimmed to the longest of them (less padding to attend over).

    tokens: (n_cells, max_len) gene token ids (may be a memory map); lengths: (n_cells,).
    Returns (len(rows), width + 1) int64.
    """
    row_lengths = lengths[rows]
    width = max(1, int(row_lengths.max())) if len(row_lengths) else 1
    return add_cls(torch.as_tensor(np.asarray(tokens[rows, :width], dtype=np.int64)))
