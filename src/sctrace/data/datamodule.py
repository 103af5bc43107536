"""Batches of paired sentences (source + one cell per training time) with the targets' counts."""

from __future__ import annotations

import lightning as L
import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader, Dataset

from sctrace.data.corpus import Corpus
from sctrace.data.tokenize import CLS_ID


class PairRows(Dataset):
    """Indexes rows of the pair table; the collate function does the gathering in one vectorised step."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> int:
        return int(self.rows[i])


class PairCollator:
    """Gathers a batch of pair rows into tensors.

    Returns ``sentences`` (batch, n_times, width) int64 with [CLS] first and the batch's padding trimmed,
    ``counts`` (batch, n_times, n_genes) float32 and ``library_size`` (batch, n_times) float32.
    """

    def __init__(self, corpus: Corpus):
        self.corpus = corpus
        self.times = torch.tensor(corpus.spec.time_values, dtype=torch.float32)

    def __call__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        cells = self.corpus.pairs[np.asarray(rows)]  # (batch, n_times)
        flat = cells.ravel()
        width = max(1, int(self.corpus.lengths[flat].max()))
        tokens = np.asarray(self.corpus.tokens[flat, :width], dtype=np.int64)
        tokens = np.concatenate([np.full((len(flat), 1), CLS_ID, dtype=np.int64), tokens], axis=1)
        counts = self.corpus.counts[flat]
        counts = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
        batch, n_times = cells.shape
        counts = torch.from_numpy(counts.astype(np.float32)).view(batch, n_times, -1)
        return {
            "sentences": torch.from_numpy(tokens).view(batch, n_times, -1),
            "counts": counts,
            "library_size": counts.sum(-1),
            "times": self.times,
        }


class TraceDataModule(L.LightningDataModule):
    """Splits pair rows by source cell into training and validation (no source cell in both)."""

    def __init__(self, corpus: Corpus, batch_size: int = 32, val_fraction: float = 0.1, seed: int = 0):
        super().__init__()
        self.corpus, self.batch_size = corpus, batch_size
        sources = np.unique(corpus.pairs[:, 0])
        rng = np.random.default_rng(seed)
        n_val = int(round(val_fraction * len(sources))) if len(sources) > 1 else 0
        val_sources = rng.choice(sources, size=n_val, replace=False)
        is_val = np.isin(corpus.pairs[:, 0], val_sources)
        self.train_rows, self.val_rows = np.flatnonzero(~is_val), np.flatnonzero(is_val)
        self.collate = PairCollator(corpus)
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            PairRows(self.train_rows), batch_size=self.batch_size, shuffle=True, collate_fn=self.collate, generator=generator
        )

    def val_dataloader(self) -> DataLoader | list:
        if len(self.val_rows) == 0:
            return []
        return DataLoader(PairRows(self.val_rows), batch_size=self.batch_size, shuffle=False, collate_fn=self.collate)
