"""Each gene's median over the cells that express it (exact, by histogram passes over blocks of cells), for the tokenizer."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from sctrace._errors import SctraceInputError
from sctrace.data.count_chunks import _check_chunk_size, _check_matrix, _iter_csr_chunks, _normalise, _row_sliceable

# Entries of the per-gene histograms of the median passes (int64): 32 MiB whatever the number of cells.
_MAX_HISTOGRAM_ENTRIES = 1 << 22
# Every finite float64's bit pattern (as int64) lies below that of +inf, so median windows never overflow.
_INF_BITS = int(np.array(np.inf).view(np.int64))


def nonzero_gene_medians(
    counts, target_sum: float = 1e4, chunk_size: int = 4_096, max_kept_values: int = 1 << 20
) -> np.ndarray:
    """Per-gene median of the normalised expression over the cells that express the gene.

    This is Geneformer's corpus normalisation factor: for each gene, the median over cells with a
    non-zero count of ``count / cell_total * target_sum`` (float64, the same value ``np.median`` gives).

    The matrix is streamed in chunks of cells, so memory stays bounded whatever the number of cells and
    backed matrices work. A first pass builds a per-gene histogram over narrow logarithmic bins, which
    gives each gene a window of values holding its middle value(s). While the windows of all genes hold
    more than ``max_kept_values`` values, another pass splits every window into finer bins and keeps the
    part holding the middle value(s). A last pass keeps only the values inside the windows (about 1% of
    them after the first pass on 10x-like data) and selects the exact order statistics among them.

    Parameters
    ----------
    counts
        ``(n_cells, n_genes)`` raw counts: scipy sparse (any format), a dense array, or a backed
        matrix that returns rows for ``counts[start:stop]`` (anndata backed ``X``, h5py dataset).
    target_sum
        Total each cell is scaled to before taking medians.
    chunk_size
        Cells read at a time.
    max_kept_values
        Most values held at once for the final selection (about 30 bytes each while they are grouped
        by gene); beyond it, more cells cost extra passes over the data instead of memory.

    Returns
    -------
    np.ndarray
        ``(n_genes,)`` float64 medians. Genes expressed in no cell get ``1.0``: any other value would
        be arbitrary, and such a gene can never be ranked anyway because rank-value tokenization only
        looks at a cell's non-zero genes (a corpus where it is non-zero would give it a real median).
        Cells with a total of zero express no gene and so do not contribute.
    """
    _check_matrix(counts)
    if not (np.isfinite(target_sum) and target_sum > 0):
        raise SctraceInputError(f"target_sum must be a positive finite number, got {target_sum}.")
    _check_chunk_size(chunk_size)
    if int(max_kept_values) != max_kept_values or max_kept_values < 1:
        raise SctraceInputError(f"max_kept_values must be a positive integer, got {max_kept_values}.")
    counts = _row_sliceable(counts)
    n_genes = counts.shape[1]
    bins = _MedianBins(n_genes, target_sum)

    histogram = np.zeros((n_genes, bins.n_bins), dtype=np.int64)
    for _, chunk in _iter_csr_chunks(counts, chunk_size):
        gene_bins = bins.bin(_normalise(chunk, target_sum))
        histogram.reshape(-1)[:] += np.bincount(chunk.indices * bins.n_bins + gene_bins, minlength=histogram.size)
    n_expressed = histogram.sum(axis=1)
    medians = np.ones(n_genes, dtype=np.float64)
    if not n_expressed.any():
        return medians
    # np.median's order statistics (0-based): the middle one, or the two middle ones for an even count.
    ranks = np.stack([(n_expressed - 1) // 2, n_expressed // 2], axis=1)
    windows = _MedianWindows.from_bins(histogram, bins, ranks)
    while windows.n_inside.sum() > max_kept_values:
        windows.narrow(_window_histogram(counts, chunk_size, target_sum, windows))
    windows.select(*_values_in_windows(counts, chunk_size, target_sum, windows))
    lower, upper = windows.found[:, 0], np.where(ranks[:, 0] == ranks[:, 1], windows.found[:, 0], windows.found[:, 1])
    expressed = n_expressed > 0
    medians[expressed] = (lower[expressed] + upper[expressed]) / 2
    return medians


class _MedianBins:
    """Monotone logarithmic bins of normalised expression for the first median histogram.

    A positive float64's bit pattern shifted right keeps its exponent and top mantissa bits, so it is
    a monotone bin code without a logarithm. Normalised values never exceed ``target_sum`` (a count
    is at most its cell's total); the bins cover the 32 binades below it, and anything smaller falls
    into the first bin, which only costs speed (a wider window), never exactness.
    """

    n_binades = 32

    def __init__(self, n_genes: int, target_sum: float) -> None:
        room = _MAX_HISTOGRAM_ENTRIES // (self.n_binades * n_genes)
        self.mantissa_bits = int(np.clip(room.bit_length() - 1, 0, 5))
        self.n_bins = self.n_binades << self.mantissa_bits
        self.shift = 52 - self.mantissa_bits
        top_code = int(np.array(target_sum, dtype=np.float64).view(np.int64)) >> self.shift
        self.first_code = top_code - self.n_bins + 1

    def bin(self, values: np.ndarray) -> np.ndarray:
        """``(n,)`` int64 bins of ``(n,)`` positive float64 normalised values."""
        codes = values.view(np.int64) >> self.shift
        codes -= self.first_code
        return np.clip(codes, 0, self.n_bins - 1, out=codes)


class _MedianWindows:
    """Per gene and order statistic, a half-open range ``[low, high)`` of float64 bit patterns that holds it.

    Arrays are ``(n_genes, 2)``: column 0 for the lower middle value, column 1 for the upper one. Positive
    float64 values order like their bit patterns read as int64, so a range of patterns is a range of values
    and can be split into equal parts without a logarithm. ``below`` counts the gene's values under the
    window and ``n_inside`` those inside it; a window that needs no more work (its value is ``found``, the
    gene has no values, or an odd count makes the upper statistic the lower one) has ``n_inside = 0``.
    """

    # Each narrowing divides a window by this much: one pass is plenty on any real corpus.
    max_parts = 4_096

    def __init__(self, low: np.ndarray, high: np.ndarray, below: np.ndarray, n_inside: np.ndarray, ranks: np.ndarray):
        self.low, self.high, self.below, self.n_inside, self.ranks = low, high, below, n_inside, ranks
        self.found = np.full(low.shape, np.nan)
        room = int(np.clip(_MAX_HISTOGRAM_ENTRIES // low.size, 2, self.max_parts))
        self.n_parts = 1 << (room.bit_length() - 1)

    @classmethod
    def from_bins(cls, histogram: np.ndarray, bins: _MedianBins, ranks: np.ndarray) -> _MedianWindows:
        """Windows over the bins of the first pass's ``(n_genes, n_bins)`` histogram that hold the ranks."""
        bin_of_rank, below, n_inside = _bins_holding(histogram, ranks)
        # Bin 0 also holds everything smaller and the last bin everything larger (see _MedianBins).
        low = np.where(bin_of_rank == 0, 0, (bins.first_code + bin_of_rank) << bins.shift)
        high = np.where(bin_of_rank == bins.n_bins - 1, _INF_BITS, (bins.first_code + bin_of_rank + 1) << bins.shift)
        n_inside[ranks[:, 0] == ranks[:, 1], 1] = 0
        return cls(low, high, below, n_inside, ranks)

    def part_width(self) -> np.ndarray:
        """``(n_genes, 2)`` int64 bit-pattern width of the parts a window is split into (at least 1)."""
        return np.maximum(1, -(-(self.high - self.low) // self.n_parts))

    def narrow(self, histogram: np.ndarray) -> None:
        """Keep the part of each open window that holds its rank, given the ``(n_genes, 2, n_parts)`` histogram.

        A part one bit pattern wide holds a single value, so the order statistic in it is found.
        """
        width = self.part_width()
        part, below, n_inside = _bins_holding(histogram.reshape(-1, self.n_parts), (self.ranks - self.below).reshape(-1, 1))
        part, below, n_inside = (a.reshape(self.low.shape) for a in (part, below, n_inside))
        open_ = self.n_inside > 0
        self.below = np.where(open_, self.below + below, self.below)
        self.high = np.where(open_, np.minimum(self.high, self.low + (part + 1) * width), self.high)
        self.low = np.where(open_, self.low + part * width, self.low)
        self.n_inside = np.where(open_, n_inside, 0)
        found = open_ & (width == 1)
        self.found[found] = self.low[found].view(np.float64)
        self.n_inside[found] = 0

    def select(self, values: np.ndarray, bounds: np.ndarray) -> None:
        """Find the order statistics of the open windows among their values, grouped by window (see _values_in_windows)."""
        for window in np.flatnonzero(self.n_inside):
            segment = values[bounds[window] : bounds[window + 1]]
            rank = self.ranks.flat[window] - self.below.flat[window]
            self.found.flat[window] = np.partition(segment, rank)[rank]


def _bins_holding(histogram: np.ndarray, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin of each row's ``(n_rows, n_bins)`` histogram that holds each of its ``(n_rows, k)`` ranks.

    Returns, each ``(n_rows, k)`` int64: the bin, the number of values in the bins before it and in it.
    A rank beyond a row's values (a gene with none) gets the last bin, which then holds none of it.
    """
    cumulative = np.cumsum(histogram, axis=1)
    rows = np.arange(histogram.shape[0])[:, None]
    bin_of_rank = np.minimum(np.sum(cumulative[:, None, :] <= ranks[:, :, None], axis=2), histogram.shape[1] - 1)
    below = np.where(bin_of_rank > 0, cumulative[rows, np.maximum(bin_of_rank - 1, 0)], 0)
    return bin_of_rank, below, np.where(ranks >= 0, histogram[rows, bin_of_rank], 0)


def _window_histogram(counts, chunk_size: int, target_sum: float, windows: _MedianWindows) -> np.ndarray:
    """``(n_genes, 2, n_parts)`` int64 count of the values in each part of each window."""
    n_parts = windows.n_parts
    width = windows.part_width().ravel()
    low = windows.low.ravel()
    histogram = np.zeros(windows.low.size * n_parts, dtype=np.int64)
    for window, bits in _bits_in_windows(counts, chunk_size, target_sum, windows):
        # Few values of a chunk are inside the windows, so counting the distinct keys beats a full-size bincount.
        keys, n_values = np.unique(window * n_parts + (bits - low[window]) // width[window], return_counts=True)
        histogram[keys] += n_values
    return histogram.reshape(*windows.low.shape, n_parts)


def _values_in_windows(
    counts, chunk_size: int, target_sum: float, windows: _MedianWindows
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised values inside each open window, grouped by window (flat index into ``(n_genes, 2)``).

    Returns the ``(n_kept,)`` float64 values and ``(2 * n_genes + 1,)`` bounds: window ``w``'s values are
    ``values[bounds[w]:bounds[w + 1]]``.
    """
    n_windows = windows.low.size
    window_type = np.min_scalar_type(n_windows)
    window_chunks, kept_bits = [], []
    for window, bits in _bits_in_windows(counts, chunk_size, target_sum, windows):
        window_chunks.append(window.astype(window_type))
        kept_bits.append(bits)
    kept_windows = np.concatenate(window_chunks)
    # A stable sort of 8- or 16-bit integers is a radix sort in numpy, so grouping is cheap.
    by_window = np.argsort(kept_windows, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(np.bincount(kept_windows, minlength=n_windows))))
    return np.concatenate(kept_bits)[by_window].view(np.float64), bounds


def _bits_in_windows(
    counts, chunk_size: int, target_sum: float, windows: _MedianWindows
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per chunk, the open windows (flat index) and float64 bit patterns (int64) of the values inside them.

    A value inside both windows of its gene is yielded once for each.
    """
    # One test against the span of a gene's open windows drops most values before the exact tests.
    is_open = windows.n_inside > 0
    span_low = np.where(is_open, windows.low, _INF_BITS).min(axis=1)
    span_high = np.where(is_open, windows.high, 0).max(axis=1)
    for _, chunk in _iter_csr_chunks(counts, chunk_size):
        bits = _normalise(chunk, target_sum).view(np.int64)
        candidate = (bits >= span_low[chunk.indices]) & (bits < span_high[chunk.indices])
        genes, bits = chunk.indices[candidate].astype(np.int64), bits[candidate]
        for statistic in (0, 1):
            low, high = windows.low[genes, statistic], windows.high[genes, statistic]
            inside = (bits >= low) & (bits < high) & (windows.n_inside[genes, statistic] > 0)
            yield 2 * genes[inside] + statistic, bits[inside]
