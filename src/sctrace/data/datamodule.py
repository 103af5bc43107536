"""Batches of paired sentences (source + one cell per training time) with the targets' counts."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sctrace.data.arrays import dense
from sctrace.data.corpus_types import Corpus
from sctrace.data.sentences import gather_sentences


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

    Only the batch's cells are read from ``corpus.tokens`` and ``corpus.counts``, so a corpus on disk
    (:class:`~sctrace.data.corpus.NpyFile`, :class:`~sctrace.data.corpus.DiskCSR`) is never loaded whole.
    Returns ``sentences`` (batch, n_times, width) int64 with [CLS] first and the batch's padding trimmed,
    ``counts`` (batch, n_times, n_genes) float32 and ``library_size`` (batch, n_times) float32.
    """

    def __init__(self, corpus: Corpus):
        self.corpus = corpus
        self.times = torch.tensor(corpus.spec.time_values, dtype=torch.float32)

    def __call__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        cells = self.corpus.pairs[np.asarray(rows)]  # (batch, n_times)
        flat = cells.ravel()
        sentences = gather_sentences(self.corpus.tokens, self.corpus.lengths, flat)
        assert self.corpus.counts is not None, "training batches need the corpus's counts"
        counts = self.corpus.counts[flat]
        batch, n_times = cells.shape
        counts = torch.from_numpy(dense(counts, np.float32)).view(batch, n_times, -1)
        return {
            "sentences": sentences.view(batch, n_times, -1),
            "counts": counts,
            "library_size": counts.sum(-1),
            "times": self.times,
        }


def row_widths(corpus: Corpus, rows: np.ndarray) -> np.ndarray:
    """(len(rows),) longest sentence among each pair row's cells: the padded width the row forces on its batch."""
    return corpus.lengths[corpus.pairs[rows]].max(axis=1)


def padding_fraction(corpus: Corpus, batches: list[np.ndarray]) -> float:
    """Share of the gene positions in collated batches that are padding ([CLS] aside).

    batches: pair-row indices of each batch; :class:`PairCollator` pads every sentence of a batch to the
    batch's longest one.
    """
    real = padded = 0
    for rows in batches:
        lengths = corpus.lengths[corpus.pairs[rows]]
        real += int(lengths.sum())
        padded += lengths.size * max(1, int(lengths.max()))
    return 1.0 - real / padded if padded else 0.0


class LengthGroupedSampler(Sampler[int]):
    """Random order in which each run of ``batch_size`` indices has similar widths, to cut padding.

    Per epoch: shuffle, cut into chunks of ``batch_size * chunk_batches`` indices, sort each chunk by width,
    cut it into batches and shuffle the batches (a short last batch stays last, so the DataLoader's batches
    line up with these). Contents and order of batches stay random, but widths within a batch are
    neighbours. Under DDP Lightning wraps the sampler and rank r takes every world-size-th index, so the
    groups must be ``batch_size * world_size`` long for every rank's batches to stay grouped.

    Parameters
    ----------
    widths
        (n,) width of each dataset index (:func:`row_widths`).
    batch_size
        Size of a group: the DataLoader's batch size times the number of processes sharing the data.
    seed
        Seed of the order; :meth:`set_epoch` (Lightning calls it) gives each epoch its own.
    chunk_batches
        Batches per sorted chunk: larger groups tighter, smaller keeps more randomness.
    """

    def __init__(self, widths: np.ndarray, batch_size: int, seed: int = 0, chunk_batches: int = 64):
        self.widths, self.batch_size, self.seed, self.chunk_batches = np.asarray(widths), batch_size, seed, chunk_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.widths)

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self.widths))
        chunk = self.batch_size * self.chunk_batches
        batches = []
        for start in range(0, len(order), chunk):
            rows = order[start : start + chunk]
            rows = rows[np.argsort(self.widths[rows], kind="stable")]
            batches.extend(rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size))
        short = [batches.pop()] if batches and len(batches[-1]) < self.batch_size else []
        batches = [batches[i] for i in rng.permutation(len(batches))] + short
        return iter(np.concatenate(batches).tolist() if batches else [])


class TraceDataModule(L.LightningDataModule):
    """Splits pair rows into training and validation.

    A corpus with cells held aside (``spec.validation_rows``, :func:`sctrace.data.corpus.prepare_corpus`'s
    ``val_fraction``) gives its last rows to validation, and no training row holds their cells at any time.
    Otherwise (corpora built without) rows are split by source cell: no source cell in both, but the later cells
    of validation rows are partners in training rows too, so validation then partly scores cells trained on.

    With ``group_by_length`` training batches hold rows of similar sentence widths
    (:class:`LengthGroupedSampler`), which cuts the padding the batches carry.
    """

    def __init__(
        self, corpus: Corpus, batch_size: int = 32, val_fraction: float = 0.1, seed: int = 0, group_by_length: bool = False
    ):
        super().__init__()
        self.corpus, self.batch_size, self.group_by_length = corpus, batch_size, group_by_length
        held = corpus.spec.validation_rows
        if held is not None:
            is_val = np.arange(len(corpus.pairs)) >= len(corpus.pairs) - held
        else:
            sources = np.unique(corpus.pairs[:, 0])
            rng = np.random.default_rng(seed)
            n_val = int(round(val_fraction * len(sources))) if len(sources) > 1 else 0
            val_sources = rng.choice(sources, size=n_val, replace=False)
            is_val = np.isin(corpus.pairs[:, 0], val_sources)
        self.train_rows, self.val_rows = np.flatnonzero(~is_val), np.flatnonzero(is_val)
        self.collate = PairCollator(corpus)
        self.seed = seed
        self._shuffle: torch.Generator | None = None
        self._restored_shuffle: torch.Tensor | None = None

    def state_dict(self) -> dict:
        """The shuffle generator's state, saved in checkpoints: a resumed fit draws the epochs' orders it would have."""
        return {} if self._shuffle is None else {"shuffle_generator": self._shuffle.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored_shuffle = state_dict.get("shuffle_generator")

    def train_dataloader(self) -> DataLoader:
        if self.group_by_length:
            world_size = self.trainer.world_size if self.trainer is not None else 1
            sampler = LengthGroupedSampler(row_widths(self.corpus, self.train_rows), self.batch_size * world_size, self.seed)
            return DataLoader(PairRows(self.train_rows), batch_size=self.batch_size, sampler=sampler, collate_fn=self.collate)
        generator = torch.Generator().manual_seed(self.seed)
        if self._restored_shuffle is not None:
            generator.set_state(self._restored_shuffle)
        self._shuffle = generator
        return DataLoader(
            PairRows(self.train_rows), batch_size=self.batch_size, shuffle=True, collate_fn=self.collate, generator=generator
        )

    def val_dataloader(self) -> DataLoader | list:
        if len(self.val_rows) == 0:
            return []
        return DataLoader(PairRows(self.val_rows), batch_size=self.batch_size, shuffle=False, collate_fn=self.collate)
