"""Token sentences as the network reads them: gene token rows with [CLS] prepended, trimmed to the batch.

In the data layer because the training batches (:mod:`sctrace.data.datamodule`) are built from them; the network
(:mod:`sctrace.model.module`) and the estimator's prediction read the same sentences.
"""

from __future__ import annotations

import numpy as np
import torch

from sctrace.data.corpus_files import NpyFile
from sctrace.data.tokenize import CLS_ID, N_SPECIAL

__all__ = ["add_cls", "gather_sentences", "sentence_ranks"]


def add_cls(tokens: torch.Tensor) -> torch.Tensor:
    """Prepend [CLS]: (batch, length) -> (batch, length + 1)."""
    cls = torch.full((tokens.shape[0], 1), CLS_ID, dtype=tokens.dtype, device=tokens.device)
    return torch.cat([cls, tokens], dim=1)


def gather_sentences(tokens: np.ndarray | NpyFile, lengths: np.ndarray, rows: np.ndarray | slice) -> torch.Tensor:
    """[CLS]-prefixed int64 sentences of ``rows``, trimmed to the longest of them (less padding to attend over).

    tokens: (n_cells, max_len) gene token ids (may be a memory map or an :class:`NpyFile`); lengths: (n_cells,).
    Returns (len(rows), width + 1) int64.
    """
    row_lengths = lengths[rows]
    width = max(1, int(row_lengths.max())) if len(row_lengths) else 1
    return add_cls(torch.as_tensor(np.asarray(tokens[rows, :width], dtype=np.int64)))


def sentence_ranks(tokens: torch.Tensor, n_genes: int) -> torch.Tensor:
    """(batch, n_genes) each gene's rank in its [CLS]-prefixed sentence (1 for the gene after [CLS]), 0 if absent."""
    is_gene = tokens >= N_SPECIAL
    position = torch.arange(tokens.shape[1], device=tokens.device, dtype=torch.float32).expand_as(tokens)
    ranks = torch.zeros(tokens.shape[0], n_genes + N_SPECIAL, device=tokens.device)
    ranks.scatter_(1, torch.where(is_gene, tokens, torch.zeros_like(tokens)), torch.where(is_gene, position, 0.0))
    return ranks[:, N_SPECIAL:]
