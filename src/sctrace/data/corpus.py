"""The fitted facts of one training run (genes, medians, times, library sizes) and the tokenized training corpus.

Everything here is computed from training cells only: held-out cells are removed before HVG selection,
gene medians, pairing and the library-size / length statistics used at generation.

The corpus is built from blocks of cells (:class:`~sctrace.data.io.MatrixRows`), so the expression matrix
may stay on disk (a backed AnnData). Given a directory, :func:`prepare_corpus` also writes its outputs there
block by block and returns a corpus that reads tokens and counts back row by row (:class:`NpyFile`,
:class:`DiskCSR`): memory then stays flat however many cells there are.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctrace._errors import SctraceInputError, option, option_name
from sctrace.data.corpus_files import DiskCSR, NpyFile, _ArrayCollector, _NpyWriter  # noqa: F401 (NpyFile: its old import path)
from sctrace.data.corpus_types import N_QUANTILES, Corpus, CorpusSpec, token_dtype
from sctrace.data.gene_medians import nonzero_gene_medians
from sctrace.data.io import check_holdout
from sctrace.data.preprocess import chosen_gene_columns, select_hvgs_streamed
from sctrace.data.timecourse import MatrixRows, TimeCourse
from sctrace.data.tokenize import N_SPECIAL, rank_value_tokenize
from sctrace.data.training_pairs import _pairing_coordinates, pair_training_and_validation

TASKS = ("interpolate", "extrapolate", "none")
# "auto", the default everywhere a task is taken, is resolved into one of TASKS by resolve_task.
TASK_CHOICES = ("auto", *TASKS)
CHUNK_CELLS = 8_192  # cells read at a time while preparing a corpus


def resolve_task(time_values: np.ndarray, task: str, holdout: float | None) -> tuple[str, float | None]:
    """The task and held-out time a request means, decided here for the API and every command.

    ``auto``: no held-out time trains on every time (``none``: the model is for predicting unmeasured times);
    holding out the last observed time is ``extrapolate`` (nothing after it is left to interpolate from); any
    other held-out time is ``interpolate``. ``extrapolate`` without a held-out time holds out the last one.
    An explicit task is otherwise kept as given (``split_times`` checks it against the held-out time).
    """
    if task not in TASK_CHOICES:
        raise SctraceInputError(f"unknown task '{task}'; choose one of {', '.join(TASK_CHOICES)}.")
    if task == "extrapolate" and holdout is None:
        return task, float(np.max(time_values))
    if task != "auto":
        return task, holdout
    if holdout is None:
        return "none", None
    return ("extrapolate" if np.isclose(holdout, np.max(time_values)) else "interpolate"), holdout


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
        raise SctraceInputError(f"task '{task}' needs a held-out time; pass {option('holdout', 'VALUE')}.")
    if task == "interpolate":
        if not time_values[0] < holdout < time_values[-1]:
            raise SctraceInputError(
                f"interpolation needs a held-out time strictly between the first ({time_values[0]:g}) and the last "
                f"({time_values[-1]:g}) time point, got {holdout:g}; use {option('task', 'extrapolate')} to hold out the last."
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


def prepare_corpus(
    timecourse: TimeCourse,
    *,
    task: str = "auto",
    holdout: float | None = None,
    n_top_genes: int = 2000,
    genes: str | list[str] = "hvg",
    max_len: int = 256,
    pairing: str = "random",
    seed: int = 0,
    gene_medians: pd.Series | None = None,
    pairs_per_source: int | None = None,
    min_rows: int = 0,
    directory: str | os.PathLike | None = None,
    chunk_size: int = CHUNK_CELLS,
    exclude_times: Sequence[float] = (),
    val_fraction: float | None = None,
) -> Corpus:
    """Split, select genes, tokenize and pair the training cells of a time course.

    The expression matrix is read ``chunk_size`` cells at a time (in memory or backed): one pass for the
    HVGs (:func:`~sctrace.data.preprocess.select_hvgs_streamed`, scanpy's 'seurat' choice), two or three for
    the gene medians (:func:`~sctrace.data.tokenize.nonzero_gene_medians`, exact), one to tokenize and
    collect the counts over the HVGs.

    Parameters
    ----------
    genes
        Which genes are modelled: ``"auto"`` (every expressed gene up to a few thousand, else ``"hvg"``),
        ``"hvg"`` (the ``n_top_genes`` most variable), ``"all"`` (every gene expressed in a training cell) or a
        list of names (:func:`sctrace.data.preprocess.chosen_gene_columns`).
    gene_medians
        Optional user table of non-zero medians indexed by gene name (e.g. Geneformer's); genes absent from
        it fall back to the medians computed on the training cells.
    pairs_per_source
        How many pairings to draw per source cell; default enough that every target cell is used at least
        once (``ceil(largest time point / source cells)``) and that there are at least ``min_rows`` rows.
    min_rows
        At least this many rows, each source cell with several partner sets (config ``min_rows``; 0: one set).
    val_fraction
        This fraction of every training time's cells is held aside for validation, paired only among itself in
        the last rows (``spec.validation_rows``; config ``val_fraction``). None: no cells held aside, and
        validation rows are chosen by source cell when training.
    exclude_times
        Observed times left out of training as well as the held-out one (the extrapolation calibration's inner
        model trains without the last training time).
    directory
        Where to write the corpus (:meth:`Corpus.save`'s files plus the counts as ``counts_*.npy``), block by
        block; the corpus returned then reads tokens and counts from there (:meth:`Corpus.load`), so no
        array over cells x genes is ever held whole. ``None`` keeps everything in memory.
    chunk_size
        Cells read at a time.
    """
    if int(n_top_genes) != n_top_genes or n_top_genes < 1:
        raise SctraceInputError(f"{option_name('n_top_genes')} must be a positive integer, got {n_top_genes}.")
    if int(min_rows) != min_rows or min_rows < 0:
        raise SctraceInputError(f"{option_name('min_rows')} must be 0 or a positive integer, got {min_rows}.")
    if holdout is not None:
        holdout = check_holdout(timecourse, holdout)
    task, holdout = resolve_task(timecourse.time_values, task, holdout)
    train_times, holdout = split_times(timecourse.time_values, task, holdout)
    if len(exclude_times):
        train_times = train_times[~np.isclose(train_times[:, None], np.asarray(exclude_times, float)[None, :]).any(1)]
    train_rows = np.flatnonzero(np.isin(timecourse.times, train_times))
    matrix = timecourse.expression()
    gene_names = np.asarray(timecourse.gene_names()).astype(str)

    hvg_idx = chosen_gene_columns(
        gene_names, genes,
        lambda n: select_hvgs_streamed(MatrixRows(matrix, train_rows), n, timecourse.count_kind, chunk_size), n_top_genes)
    if len(hvg_idx) == 0:
        raise SctraceInputError("no gene is expressed in the training cells; check that X (or the layer) holds expression.")
    # Rank-value encoding needs non-negative "normalised counts"; log-normalised inputs are mapped back by expm1.
    is_lognorm = timecourse.count_kind == "lognorm"
    medians = nonzero_gene_medians(MatrixRows(matrix, train_rows, hvg_idx, np.expm1 if is_lognorm else None))
    if gene_medians is not None:
        user = pd.Series(gene_medians).reindex(gene_names[hvg_idx])
        found = user.notna().to_numpy()
        medians = np.where(found, user.to_numpy(dtype=np.float64), medians)

    if directory is not None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
    tokens, lengths, counts, totals = _tokenize_and_collect(
        MatrixRows(matrix, train_rows, hvg_idx), medians, max_len, is_lognorm, directory, chunk_size
    )
    obs_names = _collect_names(timecourse.adata.obs_names, train_rows, directory, chunk_size)
    cell_times = timecourse.times[train_rows]
    _check_time_points(cell_times, totals, train_times, len(hvg_idx))
    coordinates = None
    if pairing == "ot":
        coordinates = _pairing_coordinates(MatrixRows(matrix, train_rows, hvg_idx), timecourse.count_kind, seed, chunk_size)
    pairs, validation_rows = pair_training_and_validation(
        timecourse, train_rows, cell_times, train_times, pairing, seed, pairs_per_source, coordinates, min_rows,
        val_fraction,
    )

    qs = np.linspace(0, 1, N_QUANTILES)
    library_quantiles = [np.quantile(totals[np.isclose(cell_times, t)], qs).tolist() for t in train_times]
    all_lengths = np.asarray(lengths)
    mean_lengths = [float(all_lengths[np.isclose(cell_times, t)].mean()) for t in train_times]

    spec = CorpusSpec(
        genes=gene_names[hvg_idx].tolist(),
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
        validation_rows=validation_rows,
    )
    if directory is None:
        assert isinstance(obs_names, np.ndarray)  # collected in memory without a directory
        return Corpus(spec, tokens, lengths, cell_times, pairs, counts, obs_names)
    spec.to_json(directory / "corpus.json")
    np.save(directory / "cell_times.npy", cell_times)
    np.save(directory / "pairs.npy", pairs)
    return Corpus.load(directory)


# Fewer training cells than this at one time point: every pair reuses them, and so do generated library sizes.
MIN_CELLS_PER_TIME = 3


def _check_time_points(cell_times: np.ndarray, totals: np.ndarray, train_times: np.ndarray, n_genes: int) -> None:
    """Refuse a training time point whose cells are all empty; warn about one with very few cells.

    Either would train without a word and generate cells that stand for nothing (e.g. mostly all-zero cells).
    """
    for t in train_times:
        at = np.isclose(cell_times, t)
        n_cells = int(at.sum())
        if n_cells and not np.any(totals[at] > 0):
            raise SctraceInputError(
                f"all {n_cells} cells at time {t:g} have no expression over the {n_genes} selected genes; check the "
                "matrix at that time, or remove those cells."
            )
        if n_cells < MIN_CELLS_PER_TIME:
            warnings.warn(
                f"time {t:g} has only {n_cells} training cell(s) (fewer than {MIN_CELLS_PER_TIME}); every pair and every "
                "library size drawn near it reuses them, so predictions there stand on almost nothing.",
                UserWarning, stacklevel=4,
            )


def _tokenize_and_collect(
    counts: MatrixRows, medians: np.ndarray, max_len: int, is_lognorm: bool, directory: Path | None, chunk_size: int
) -> tuple:
    """Tokenize the training cells block by block and collect tokens, lengths and counts over the HVGs.

    Returns ``tokens`` (n_cells, max_len), ``lengths`` (n_cells,) int32, ``counts`` (n_cells, n_genes) float32
    CSR, in memory (``directory=None``) or as files in ``directory`` read back by rows; and the library sizes
    ``(n_cells,)`` (total counts over the HVGs), always in memory.
    """
    n_cells, n_genes = counts.shape
    columns = {
        "tokens": (token_dtype(n_genes + N_SPECIAL), (max_len,)),
        "lengths": (np.int32, ()),
        "counts_data": (np.float32, ()),
        "counts_indices": (np.int32 if n_genes <= np.iinfo(np.int32).max else np.int64, ()),
        "counts_indptr": (np.int64, ()),
    }
    sinks: dict[str, _ArrayCollector | _NpyWriter]
    if directory is None:
        sinks = {name: _ArrayCollector(dtype, shape) for name, (dtype, shape) in columns.items()}
    else:
        sinks = {name: _NpyWriter(directory / f"{name}.npy", dtype, shape) for name, (dtype, shape) in columns.items()}
    sinks["counts_indptr"].append(np.zeros(1, dtype=np.int64))
    totals, n_stored = [], 0
    for start in range(0, n_cells, chunk_size):
        block = counts[start : start + chunk_size]
        rank_input = block.expm1() if is_lognorm else block
        tokens, lengths = rank_value_tokenize(rank_input, medians, max_len)
        sinks["tokens"].append(tokens)
        sinks["lengths"].append(lengths)
        sinks["counts_data"].append(block.data)
        sinks["counts_indices"].append(block.indices)
        sinks["counts_indptr"].append(block.indptr[1:].astype(np.int64) + n_stored)
        n_stored += int(block.indptr[-1])
        totals.append(np.asarray(block.sum(axis=1)).ravel())
    arrays = {name: sink.finish() for name, sink in sinks.items()}
    if directory is None:
        stored = (arrays["counts_data"], arrays["counts_indices"], arrays["counts_indptr"])
        csr = sp.csr_matrix(stored, shape=(n_cells, n_genes))
    else:
        csr = DiskCSR(directory, n_genes)
    return arrays["tokens"], arrays["lengths"], csr, np.concatenate(totals) if totals else np.zeros(0)


def _collect_names(names: pd.Index, rows: np.ndarray, directory: Path | None, chunk_size: int) -> np.ndarray | NpyFile:
    """``(len(rows),)`` fixed-width unicode names of the chosen rows; written to ``obs_names.npy`` with a directory."""
    width = max(1, int(names[rows].str.len().max())) if rows.size else 1
    dtype = np.dtype(f"<U{width}")
    sink = _ArrayCollector(dtype) if directory is None else _NpyWriter(directory / "obs_names.npy", dtype)
    for start in range(0, rows.size, chunk_size):
        sink.append(np.asarray(names[rows[start : start + chunk_size]]).astype(dtype))
    return sink.finish()


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
