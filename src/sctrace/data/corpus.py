"""The fitted facts of one training run (genes, medians, times, library sizes) and the tokenized training corpus.

Everything here is computed from training cells only: held-out cells are removed before HVG selection,
gene medians, pairing and the library-size / length statistics used at generation.

The corpus is built from blocks of cells (:class:`~sctrace.data.io.MatrixRows`), so the expression matrix
may stay on disk (a backed AnnData). Given a directory, :func:`prepare_corpus` also writes its outputs there
block by block and returns a corpus that reads tokens and counts back row by row (:class:`NpyFile`,
:class:`DiskCSR`): memory then stays flat however many cells there are.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctrace._errors import SctraceInputError, option, option_name
from sctrace.data.io import MatrixRows, TimeCourse, check_holdout
from sctrace.data.pairing import pair_cells
from sctrace.data.preprocess import (
    chosen_gene_columns,
    log_normalize,
    select_hvgs_streamed,
)
from sctrace.data.tokenize import (
    N_SPECIAL,
    nonzero_gene_medians,
    rank_value_tokenize,
    save_tokenized,
)

TASKS = ("interpolate", "extrapolate", "none")
# "auto", the default everywhere a task is taken, is resolved into one of TASKS by resolve_task.
TASK_CHOICES = ("auto", *TASKS)
N_QUANTILES = 201  # resolution of the stored library-size distribution per time point
CHUNK_CELLS = 8_192  # cells read at a time while preparing a corpus
# What Corpus.save writes: all that prediction needs. The counts stay where training read them.
_SAVED_FILES = ("corpus.json", "tokens.npy", "lengths.npy", "cell_times.npy", "pairs.npy", "obs_names.npy")
_COUNTS_FILES = ("counts_data.npy", "counts_indices.npy", "counts_indptr.npy")


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


class NpyFile:
    """A ``.npy`` array on disk whose rows are read when indexed, with positioned reads (``os.pread``).

    ``a[i]``, ``a[start:stop]``, ``a[rows]`` (integer or boolean array) and ``a[rows, columns]`` read only
    those rows; ``np.asarray(a)`` reads everything. Only C-ordered arrays without Python objects.

    Not a memory map on purpose: the pages of a mapped file that a process touches count towards its
    resident set, and with the kernel's fault-around and large page-cache folios each random row maps much
    more than itself (8,000 random 1 kB rows of a 1 GB map made 780 MB resident on our 2-core test VM), so
    the memory of a training run would grow with the corpus. Reads go through the page cache only.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(handle)
            self._offset = handle.tell()
        if fortran_order or dtype.hasobject or len(shape) == 0:
            raise ValueError(f"{self.path} holds a Fortran-ordered, object or 0-d array; it cannot be read by rows")
        self.shape, self.dtype = tuple(shape), dtype
        self._row_bytes = dtype.itemsize * math.prod(shape[1:])
        self._open()

    def _open(self) -> None:
        # Open now, not at the first read: the open file stays readable even if its name is removed meanwhile.
        self._descriptor = os.open(self.path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._descriptor)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(rows, slice):
            start, stop, step = rows.indices(len(self))
            out = self._read(start, max(start, stop)) if step == 1 else self._read_rows(np.arange(start, stop, step))
            leading = (slice(None),)
        elif isinstance(rows, (int, np.integer)):
            row = self._check_rows(np.asarray(rows))
            out, leading = self._read(int(row), int(row) + 1)[0], ()
        else:
            rows = np.asarray(rows)
            if rows.dtype == bool:
                if rows.shape != (len(self),):
                    raise IndexError(f"boolean index of shape {rows.shape} for {len(self)} rows")
                rows = np.flatnonzero(rows)
            rows = self._check_rows(rows)
            out = self._read_rows(rows.ravel()).reshape(rows.shape + self.shape[1:])
            leading = (slice(None),) * rows.ndim
        return out[leading + rest] if rest else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        everything = self._read(0, len(self))
        return everything if dtype is None else everything.astype(dtype)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_descriptor": None}  # a file descriptor means nothing in another process

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def _check_rows(self, rows: np.ndarray) -> np.ndarray:
        """Integer rows with negative ones counted from the end, or an IndexError."""
        if rows.dtype.kind not in "iu":
            raise IndexError(f"rows must be integers, got dtype {rows.dtype}")
        rows = np.where(rows < 0, rows + len(self), rows)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows of {self.path}")
        return rows

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` in one read."""
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        self._read_into(out.reshape(-1).view(np.uint8), start)
        return out

    def _read_rows(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), ...)`` rows in the given order, one read per row."""
        out = np.empty((rows.size, *self.shape[1:]), dtype=self.dtype)
        row_bytes = out.reshape(-1).view(np.uint8).reshape(rows.size, self._row_bytes)
        for i, row in enumerate(rows.tolist()):
            self._read_into(row_bytes[i], row)
        return out

    def _read_into(self, buffer: np.ndarray, first_row: int) -> None:
        """Fill the uint8 ``buffer`` from the bytes of the rows starting at ``first_row``."""
        offset, view, done = self._offset + first_row * self._row_bytes, memoryview(buffer), 0
        while done < len(view):  # a read may return less than asked for
            n_read = os.preadv(self._descriptor, [view[done:]], offset + done)
            if n_read == 0:
                raise SctraceInputError(f"{self.path} is shorter than its header says; re-run `sctrace fit`.")
            done += n_read


class DiskCSR:
    """A CSR matrix stored as ``counts_data``, ``counts_indices`` and ``counts_indptr`` ``.npy`` files in a directory.

    ``m[rows]`` reads only those rows (an integer array) and returns them as a scipy CSR matrix, so a batch
    of training cells costs a few reads and memory for the batch alone (see :class:`NpyFile`).
    """

    def __init__(self, directory: str | os.PathLike, n_columns: int):
        directory = Path(directory)
        self.data, self.indices, self.indptr = (NpyFile(directory / name) for name in _COUNTS_FILES)
        self.shape = (len(self.indptr) - 1, n_columns)

    def __getitem__(self, rows) -> sp.csr_matrix:
        rows = np.asarray(rows, dtype=np.int64).ravel()
        starts, stops = self.indptr[rows].tolist(), self.indptr[rows + 1].tolist()
        data = [self.data[start:stop] for start, stop in zip(starts, stops)]
        indices = [self.indices[start:stop] for start, stop in zip(starts, stops)]
        indptr = np.concatenate(([0], np.cumsum(np.subtract(stops, starts), dtype=np.int64)))
        return sp.csr_matrix(
            (np.concatenate(data or [self.data[0:0]]), np.concatenate(indices or [self.indices[0:0]]), indptr),
            shape=(rows.size, self.shape[1]),
        )


class _NpyWriter:
    """Writes a ``.npy`` file block of rows by block of rows; the header, with the final shape, comes last.

    Plain writes, not a writable memory map: written pages of a map stay in the writing process's resident
    set until it is unmapped, so the peak memory would grow with the corpus.
    """

    header_bytes = 128  # room for any 1-d or 2-d header; .npy headers are padded to a multiple of 64 bytes

    def __init__(self, path: Path, dtype, row_shape: tuple[int, ...] = ()):
        self.path, self.dtype, self.row_shape, self.n_rows = path, np.dtype(dtype), tuple(row_shape), 0
        self.handle = open(path, "wb")
        self.handle.write(bytes(self.header_bytes))

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {block.shape[1:]} for {self.path}, which holds rows of shape {self.row_shape}")
        self.handle.write(block.data)
        self.n_rows += len(block)

    def finish(self) -> NpyFile:
        shape = (self.n_rows, *self.row_shape)
        text = repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}).encode("latin1")
        room = self.header_bytes - len(np.lib.format.magic(1, 0)) - 2
        if len(text) >= room:
            raise ValueError(f"the .npy header of {self.path} needs more than {self.header_bytes} bytes: {text!r}")
        self.handle.seek(0)
        self.handle.write(np.lib.format.magic(1, 0) + room.to_bytes(2, "little") + text.ljust(room - 1) + b"\n")
        self.handle.close()
        return NpyFile(self.path)


class _ArrayCollector:
    """The in-memory counterpart of :class:`_NpyWriter`: keeps the blocks and joins them at the end."""

    def __init__(self, dtype, row_shape: tuple[int, ...] = ()):
        self.dtype, self.blocks = np.dtype(dtype), [np.empty((0, *row_shape), dtype=dtype)]

    def append(self, block: np.ndarray) -> None:
        self.blocks.append(np.asarray(block, dtype=self.dtype))

    def finish(self) -> np.ndarray:
        return np.concatenate(self.blocks)


def token_dtype(vocab_size: int) -> np.dtype:
    """int16 token ids where the vocabulary allows (half the memory and disk of int32), else int32."""
    return np.dtype(np.int16 if vocab_size <= np.iinfo(np.int16).max + 1 else np.int32)


@dataclass
class Corpus:
    """Tokenized training cells, their pairs and counts, plus the spec that produced them.

    ``tokens``: (n_train_cells, max_len) gene token ids (no [CLS]; int16 where the vocabulary allows, see
    :func:`token_dtype`); ``lengths``: (n_train_cells,); ``cell_times``: (n_train_cells,) float64; ``pairs``:
    (n_pairs, n_times) row indices into the arrays above, column k at ``spec.time_values[k]``; ``counts``:
    (n_train_cells, n_genes) float32 CSR over the HVGs (raw counts, or log-normalised values for
    ``count_kind='lognorm'``); ``obs_names`` of the training cells. A corpus read from a directory holds
    ``tokens`` as a :class:`NpyFile` and ``counts`` as a :class:`DiskCSR` (or ``None`` when not saved),
    both read row by row; both index like arrays.
    """

    spec: CorpusSpec
    tokens: np.ndarray | NpyFile
    lengths: np.ndarray
    cell_times: np.ndarray
    pairs: np.ndarray
    counts: sp.csr_matrix | DiskCSR | None
    obs_names: np.ndarray

    def save(self, directory: str | os.PathLike) -> None:
        """Write the corpus so that prediction needs no access to the training data (counts are not written).

        A corpus already on disk is linked into ``directory`` (hard links, or copies across file systems):
        its files are never modified once written.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        source = self.tokens.path.parent if isinstance(self.tokens, NpyFile) else None
        if source is not None and all((source / name).is_file() for name in _SAVED_FILES):
            if source.resolve() != directory.resolve():
                for name in _SAVED_FILES:
                    _link_or_copy(source / name, directory / name)
            return
        self.spec.to_json(directory / "corpus.json")
        save_tokenized(directory, self.tokens, self.lengths)
        np.save(directory / "cell_times.npy", self.cell_times)
        np.save(directory / "pairs.npy", self.pairs)
        np.save(directory / "obs_names.npy", self.obs_names.astype(str))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Corpus:
        """Read a saved corpus: tokens (and counts, where present) stay on disk and are read by rows."""
        directory = Path(directory)
        spec = CorpusSpec.from_json(directory / "corpus.json")
        try:
            tokens = NpyFile(directory / "tokens.npy")
            lengths = np.load(directory / "lengths.npy", mmap_mode="r")
            cell_times = np.load(directory / "cell_times.npy")
            pairs = np.load(directory / "pairs.npy")
            obs_names = np.load(directory / "obs_names.npy", mmap_mode="r")
            has_counts = all((directory / name).is_file() for name in _COUNTS_FILES)
            counts = DiskCSR(directory, spec.n_genes) if has_counts else None
        except (OSError, ValueError) as err:
            raise SctraceInputError(f"tokenized corpus in {directory} is missing or corrupt ({err}); re-run `sctrace fit`.") from err
        n_times, n_cells = len(spec.time_values), len(lengths)
        sizes = {"time points in pairs.npy": (pairs.shape[1] if pairs.ndim == 2 else -1, n_times),
                 "library quantile rows": (len(spec.library_quantiles), n_times),
                 "mean lengths": (len(spec.mean_lengths), n_times), "gene medians": (len(spec.gene_medians), spec.n_genes),
                 "token rows": (len(tokens), n_cells), "cell times": (len(cell_times), n_cells),
                 "cell names": (len(obs_names), n_cells)}
        wrong = [f"{what} {got} against {want}" for what, (got, want) in sizes.items() if got != want]
        if wrong or (pairs.size and (pairs.min() < 0 or pairs.max() >= n_cells)):
            raise SctraceInputError(
                f"tokenized corpus in {directory} is inconsistent ({', '.join(wrong) or 'pairs point past the cells'}); "
                "it is corrupt or mixed from two runs, re-run `sctrace fit`."
            )
        return cls(spec, tokens, lengths, cell_times, pairs, counts, obs_names)


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
    directory: str | os.PathLike | None = None,
    chunk_size: int = CHUNK_CELLS,
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
        once (``ceil(largest time point / source cells)``).
    directory
        Where to write the corpus (:meth:`Corpus.save`'s files plus the counts as ``counts_*.npy``), block by
        block; the corpus returned then reads tokens and counts from there (:meth:`Corpus.load`), so no
        array over cells x genes is ever held whole. ``None`` keeps everything in memory.
    chunk_size
        Cells read at a time.
    """
    if int(n_top_genes) != n_top_genes or n_top_genes < 1:
        raise SctraceInputError(f"{option_name('n_top_genes')} must be a positive integer, got {n_top_genes}.")
    if holdout is not None:
        holdout = check_holdout(timecourse, holdout)
    task, holdout = resolve_task(timecourse.time_values, task, holdout)
    train_times, holdout = split_times(timecourse.time_values, task, holdout)
    train_rows = np.flatnonzero(np.isin(timecourse.times, train_times))
    matrix = timecourse.expression()
    gene_choice = genes
    genes = np.asarray(timecourse.gene_names()).astype(str)

    hvg_idx = chosen_gene_columns(
        genes, gene_choice,
        lambda n: select_hvgs_streamed(MatrixRows(matrix, train_rows), n, timecourse.count_kind, chunk_size), n_top_genes)
    if len(hvg_idx) == 0:
        raise SctraceInputError("no gene is expressed in the training cells; check that X (or the layer) holds expression.")
    # Rank-value encoding needs non-negative "normalised counts"; log-normalised inputs are mapped back by expm1.
    is_lognorm = timecourse.count_kind == "lognorm"
    medians = nonzero_gene_medians(MatrixRows(matrix, train_rows, hvg_idx, np.expm1 if is_lognorm else None))
    if gene_medians is not None:
        user = pd.Series(gene_medians).reindex(genes[hvg_idx])
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
    pairs = _pair_training_cells(
        timecourse, train_rows, cell_times, train_times, pairing, seed, pairs_per_source, coordinates
    )

    qs = np.linspace(0, 1, N_QUANTILES)
    library_quantiles = [np.quantile(totals[np.isclose(cell_times, t)], qs).tolist() for t in train_times]
    all_lengths = np.asarray(lengths)
    mean_lengths = [float(all_lengths[np.isclose(cell_times, t)].mean()) for t in train_times]

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
    if directory is None:
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


def _collect_names(names: pd.Index, rows: np.ndarray, directory: Path | None, chunk_size: int) -> np.ndarray:
    """``(len(rows),)`` fixed-width unicode names of the chosen rows; written to ``obs_names.npy`` with a directory."""
    width = max(1, int(names[rows].str.len().max())) if rows.size else 1
    dtype = np.dtype(f"<U{width}")
    sink = _ArrayCollector(dtype) if directory is None else _NpyWriter(directory / "obs_names.npy", dtype)
    for start in range(0, rows.size, chunk_size):
        sink.append(np.asarray(names[rows[start : start + chunk_size]]).astype(dtype))
    return sink.finish()


def _pair_training_cells(
    timecourse: TimeCourse,
    train_rows: np.ndarray,
    cell_times: np.ndarray,
    train_times: np.ndarray,
    pairing: str,
    seed: int,
    pairs_per_source: int | None,
    coordinates: np.ndarray | None = None,
) -> np.ndarray:
    """``(n_pairs, n_times)`` rows (into the training cells) of each source cell and its partners."""
    strata = None
    if pairing == "stratified":
        if not timecourse.stratify_keys:
            raise SctraceInputError(f"stratified pairing needs at least one obs column; pass {option('stratify', 'COL')}.")
        strata = timecourse.adata.obs.iloc[train_rows][list(timecourse.stratify_keys)].reset_index(drop=True)
    n_source = int(np.isclose(cell_times, train_times[0]).sum())
    largest = max(int(np.isclose(cell_times, t).sum()) for t in train_times)
    repeats = pairs_per_source or max(1, math.ceil(largest / max(n_source, 1)))
    # Repeating the source cells inside ONE pairing call keeps the rule "every target cell is used before any
    # is reused" across the repeats (independent calls would each restart it).
    source_rows = np.flatnonzero(np.isclose(cell_times, train_times[0]))
    rows = np.concatenate([np.arange(len(cell_times)), np.tile(source_rows, repeats - 1)])
    return rows[
        pair_cells(
            cell_times[rows],
            train_times,
            strata=None if strata is None else strata.iloc[rows].reset_index(drop=True),
            mode=pairing,
            coordinates=None if coordinates is None else coordinates[rows],
            seed=seed,
        )
    ]


OT_PCS = 30
OT_FIT_CELLS = 20_000


def _pairing_coordinates(view: MatrixRows, count_kind: str, seed: int, chunk_size: int) -> np.ndarray:
    """``(n_cells, <= OT_PCS)`` float32 PCA coordinates of log-normalised training cells, for OT pairing.

    The PCA is fitted on at most ``OT_FIT_CELLS`` seeded cells and every cell is projected block by block, so
    memory stays bounded by the block and the coordinates (120 bytes a cell).
    """
    from sctrace.data.pca import fit_pca

    n_cells = view.shape[0]
    fit_rows = np.sort(np.random.default_rng(seed).choice(n_cells, size=min(n_cells, OT_FIT_CELLS), replace=False))
    blocks = []
    for start in range(0, n_cells, chunk_size):
        chosen = fit_rows[(fit_rows >= start) & (fit_rows < start + chunk_size)] - start
        if chosen.size:
            blocks.append(sp.csr_matrix(log_normalize(view[start : start + chunk_size], count_kind))[chosen])
    pca = fit_pca(sp.vstack(blocks).tocsr(), OT_PCS)
    coordinates = np.empty((n_cells, pca.components.shape[0]), dtype=np.float32)
    for start in range(0, n_cells, chunk_size):
        coordinates[start : start + chunk_size] = pca.transform(log_normalize(view[start : start + chunk_size], count_kind))
    return coordinates


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` (replacing it), or copy where links are impossible."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


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
