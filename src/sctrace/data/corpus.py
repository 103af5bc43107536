"""The fitted facts of one training run (genes, medians, times, library sizes) and the tokenized training corpus.

Everything here is computed from training cells only: held-out cells are removed before HVG selection,
gene medians, pairing and the library-size / length statistics used at generation.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctrace._errors import SctraceInputError
from sctrace.data.io import TimeCourse, check_holdout
from sctrace.data.pairing import pair_cells
from sctrace.data.preprocess import log_normalize, select_hvgs
from sctrace.data.tokenize import (
    N_SPECIAL,
    load_tokenized,
    nonzero_gene_medians,
    rank_value_tokenize,
    save_tokenized,
)

TASKS = ("interpolate", "extrapolate", "none")
N_QUANTILES = 201  # resolution of the stored library-size distribution per time point


def split_times(time_values: np.ndarray, task: str, holdout: float | None) -> tuple[np.ndarray, float | None]:
    """Return the training time values for a task, and the held-out time.

    ``interpolate`` removes one time point strictly between the first and the last; ``extrapolate`` removes
    the held-out time and every later one (so the model never sees the future); ``none`` trains on all.
    """
    time_values = np.sort(np.asarray(time_values, dtype=np.float64))
    if task not in TASKS:
        raise SctraceInputError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}.")
    if task == "none":
        return time_values, None
    if holdout is None:
        raise SctraceInputError(f"task '{task}' needs a held-out time; pass holdout (CLI: --holdout VALUE).")
    if task == "interpolate":
        if not time_values[0] < holdout < time_values[-1]:
            raise SctraceInputError(
                f"interpolation needs a held-out time strictly between the first ({time_values[0]:g}) and the last "
                f"({time_values[-1]:g}) time point, got {holdout:g}; use task 'extrapolate' to hold out the last."
            )
        train = time_values[~np.isclose(time_values, holdout)]
    else:
        train = time_values[time_values < holdout - 1e-9]
    if len(train) < 2:
        raise SctraceInputError(
            f"holding out {holdout:g} leaves {len(train)} training time point(s); at least 2 are needed "
            "(a source time point and one target)."
        )
    return train, holdout


@dataclass
class CorpusSpec:
    """The one object that holds the vocabulary, the HVGs, the time values and the generation statistics."""

    genes: list[str]
    gene_medians: list[float]
    time_values: list[float]
    task: str
    holdout: float | None
    max_len: int
    count_kind: str
    time_key: str
    stratify: list[str] = field(default_factory=list)
    library_quantiles: list[list[float]] = field(default_factory=list)  # (n_times, N_QUANTILES) over the HVGs
    mean_lengths: list[float] = field(default_factory=list)  # mean token-sequence length per training time

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def vocab_size(self) -> int:
        return len(self.genes) + N_SPECIAL

    @property
    def source_time(self) -> float:
        return self.time_values[0]

    def neighbours(self, time: float) -> tuple[int, int, float]:
        """Indices of the observed times around ``time`` and the interpolation weight of the later one.

        Past the last observed time (or before the first) both indices are the nearest end point.
        """
        values = np.asarray(self.time_values)
        if time <= values[0]:
            return 0, 0, 0.0
        if time >= values[-1]:
            last = len(values) - 1
            return last, last, 0.0
        later = int(np.searchsorted(values, time, side="right"))
        earlier = later - 1
        weight = (time - values[earlier]) / (values[later] - values[earlier])
        return earlier, later, float(weight)

    def sample_library_sizes(self, time: float, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw library sizes (total HVG counts) for cells generated at ``time``.

        Each cell draws from the observed distribution of the earlier neighbouring time point with
        probability 1 - w and of the later one with probability w (w = linear position in time); past the
        observed range the nearest end point is used. Only training cells' library sizes are stored.
        """
        earlier, later, weight = self.neighbours(time)
        quantiles = np.asarray(self.library_quantiles)
        which = np.where(rng.random(n) < weight, later, earlier)
        levels = rng.random(n) * (N_QUANTILES - 1)
        low = np.floor(levels).astype(int)
        frac = levels - low
        high = np.minimum(low + 1, N_QUANTILES - 1)
        return (1 - frac) * quantiles[which, low] + frac * quantiles[which, high]

    def default_length(self, time: float) -> int:
        """Mean observed sequence length, interpolated linearly between the neighbouring observed times."""
        earlier, later, weight = self.neighbours(time)
        mean = (1 - weight) * self.mean_lengths[earlier] + weight * self.mean_lengths[later]
        return int(min(self.max_len, max(1, round(mean))))

    def to_json(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> CorpusSpec:
        try:
            fields = json.loads(Path(path).read_text())
            return cls(**fields)
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise SctraceInputError(f"corpus description {path} is missing or corrupt ({err}); re-run `sctrace fit`.") from err


@dataclass
class Corpus:
    """Tokenized training cells, their pairs and counts, plus the spec that produced them.

    ``tokens``: (n_train_cells, max_len) int32 gene token ids (no [CLS]); ``lengths``: (n_train_cells,);
    ``cell_times``: (n_train_cells,) float64; ``pairs``: (n_pairs, n_times) row indices into the arrays
    above, column k at ``spec.time_values[k]``; ``counts``: (n_train_cells, n_genes) CSR over the HVGs
    (raw counts, or log-normalised values for ``count_kind='lognorm'``); ``obs_names`` of the training cells.
    """

    spec: CorpusSpec
    tokens: np.ndarray
    lengths: np.ndarray
    cell_times: np.ndarray
    pairs: np.ndarray
    counts: sp.csr_matrix | None
    obs_names: np.ndarray

    def save(self, directory: str | os.PathLike) -> None:
        """Write the corpus so that prediction needs no access to the training data (arrays memory-mappable)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.spec.to_json(directory / "corpus.json")
        save_tokenized(directory, self.tokens, self.lengths)
        np.save(directory / "cell_times.npy", self.cell_times)
        np.save(directory / "pairs.npy", self.pairs)
        np.save(directory / "obs_names.npy", self.obs_names.astype(str))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Corpus:
        directory = Path(directory)
        spec = CorpusSpec.from_json(directory / "corpus.json")
        try:
            tokens, lengths = load_tokenized(directory)
            cell_times = np.load(directory / "cell_times.npy")
            pairs = np.load(directory / "pairs.npy")
            obs_names = np.load(directory / "obs_names.npy")
        except (OSError, ValueError) as err:
            raise SctraceInputError(f"tokenized corpus in {directory} is missing or corrupt ({err}); re-run `sctrace fit`.") from err
        return cls(spec, tokens, lengths, cell_times, pairs, None, obs_names)


def prepare_corpus(
    timecourse: TimeCourse,
    *,
    task: str = "interpolate",
    holdout: float | None = None,
    n_top_genes: int = 2000,
    max_len: int = 256,
    pairing: str = "random",
    seed: int = 0,
    gene_medians: pd.Series | None = None,
    pairs_per_source: int | None = None,
) -> Corpus:
    """Split, select genes, tokenize and pair the training cells of a time course.

    Parameters
    ----------
    gene_medians
        Optional user table of non-zero medians indexed by gene name (e.g. Geneformer's); genes absent from
        it fall back to the medians computed on the training cells.
    pairs_per_source
        How many pairings to draw per source cell; default enough that every target cell is used at least
        once (``ceil(largest time point / source cells)``).
    """
    if holdout is not None:
        holdout = check_holdout(timecourse, holdout)
    train_times, holdout = split_times(timecourse.time_values, task, holdout)
    train_rows = np.flatnonzero(np.isin(timecourse.times, train_times))
    matrix = timecourse.expression()
    train_matrix = matrix[train_rows]
    train_matrix = sp.csr_matrix(train_matrix) if sp.issparse(train_matrix) else np.asarray(train_matrix)

    lognorm = log_normalize(train_matrix, timecourse.count_kind)
    genes = np.asarray(timecourse.gene_names()).astype(str)
    hvg_idx = select_hvgs(lognorm, genes, n_top_genes)
    if len(hvg_idx) == 0:
        raise SctraceInputError("no gene is expressed in the training cells; check that X (or the layer) holds expression.")
    counts = sp.csr_matrix(train_matrix[:, hvg_idx])
    # Rank-value encoding needs non-negative "normalised counts"; log-normalised inputs are mapped back by expm1.
    rank_input = counts if timecourse.count_kind == "counts" else counts.expm1()

    medians = nonzero_gene_medians(rank_input)
    if gene_medians is not None:
        user = pd.Series(gene_medians).reindex(genes[hvg_idx])
        found = user.notna().to_numpy()
        medians = np.where(found, user.to_numpy(dtype=np.float64), medians)
    tokens, lengths = rank_value_tokenize(rank_input, medians, max_len)

    cell_times = timecourse.times[train_rows]
    strata = None
    if pairing == "stratified":
        if not timecourse.stratify_keys:
            raise SctraceInputError("stratified pairing needs at least one obs column; pass stratify (CLI: --stratify COL).")
        strata = timecourse.adata.obs.iloc[train_rows][list(timecourse.stratify_keys)].reset_index(drop=True)
    n_source = int(np.isclose(cell_times, train_times[0]).sum())
    largest = max(int(np.isclose(cell_times, t).sum()) for t in train_times)
    repeats = pairs_per_source or max(1, math.ceil(largest / max(n_source, 1)))
    # Repeating the source cells inside ONE pairing call keeps the rule "every target cell is used before any
    # is reused" across the repeats (independent calls would each restart it).
    source_rows = np.flatnonzero(np.isclose(cell_times, train_times[0]))
    rows = np.concatenate([np.arange(len(cell_times)), np.tile(source_rows, repeats - 1)])
    pairs = rows[
        pair_cells(
            cell_times[rows],
            train_times,
            strata=None if strata is None else strata.iloc[rows].reset_index(drop=True),
            mode=pairing,
            seed=seed,
        )
    ]

    totals = np.asarray(counts.sum(axis=1)).ravel()
    qs = np.linspace(0, 1, N_QUANTILES)
    library_quantiles = [np.quantile(totals[np.isclose(cell_times, t)], qs).tolist() for t in train_times]
    mean_lengths = [float(lengths[np.isclose(cell_times, t)].mean()) for t in train_times]

    spec = CorpusSpec(
        genes=genes[hvg_idx].tolist(),
        gene_medians=[float(m) for m in medians],
        time_values=[float(t) for t in train_times],
        task=task,
        holdout=None if holdout is None else float(holdout),
        max_len=int(max_len),
        count_kind=timecourse.count_kind,
        time_key=timecourse.time_key,
        stratify=list(timecourse.stratify_keys),
        library_quantiles=library_quantiles,
        mean_lengths=mean_lengths,
    )
    obs_names = np.asarray(timecourse.adata.obs_names[train_rows]).astype(str)
    return Corpus(spec, tokens, lengths, cell_times, pairs, counts, obs_names)


def tokenize_with_spec(spec: CorpusSpec, matrix, gene_names, count_kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize new cells with a fitted spec (its genes and medians); genes are matched by name.

    Raises a clear error when genes of the spec are missing from ``gene_names``.
    """
    counts = subset_genes(spec, matrix, gene_names)
    kind = count_kind or spec.count_kind
    rank_input = counts if kind == "counts" else counts.expm1()
    return rank_value_tokenize(rank_input, np.asarray(spec.gene_medians), spec.max_len)


def subset_genes(spec: CorpusSpec, matrix, gene_names) -> sp.csr_matrix:
    """Columns of ``matrix`` in the spec's gene order, or an error saying how many genes are missing."""
    index = pd.Index(np.asarray(gene_names).astype(str))
    positions = index.get_indexer(spec.genes)
    missing = int((positions < 0).sum())
    if missing:
        examples = ", ".join(np.asarray(spec.genes)[positions < 0][:5])
        raise SctraceInputError(
            f"{missing} of the model's {spec.n_genes} genes are missing from the data (e.g. {examples}); "
            "pass data with the same gene names as the training data (or set gene_key to the matching var column)."
        )
    return sp.csr_matrix(matrix[:, positions])
