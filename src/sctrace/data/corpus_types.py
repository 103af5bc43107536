"""The Corpus and CorpusSpec dataclasses (a run's tokenized cells and fitted facts) and how they are saved and loaded."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from sctrace._errors import SctraceInputError
from sctrace.data.corpus_files import _COUNTS_FILES, DiskCSR, NpyFile
from sctrace.data.tokenize import N_SPECIAL, save_tokenized

N_QUANTILES = 201  # resolution of the stored library-size distribution per time point


# What Corpus.save writes: all that prediction needs. The counts stay where training read them.
_SAVED_FILES = ("corpus.json", "tokens.npy", "lengths.npy", "cell_times.npy", "pairs.npy", "obs_names.npy")


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
    # The last this many rows of pairs.npy pair only cells held aside for validation, at every training time, so
    # validation scores cells no training row holds; None (corpora before it): validation rows are chosen by
    # source cell (sctrace.data.datamodule), and their later cells are training rows' partners too.
    validation_rows: int | None = None

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


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` (replacing it), or copy where links are impossible."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
