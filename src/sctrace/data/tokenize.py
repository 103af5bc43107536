"""Geneformer rank-value tokenization of single-cell count matrices.

A cell becomes the list of its expressed genes, most "characteristic" first: each count is normalised
by the cell's total and by the gene's non-zero median over the corpus, so housekeeping genes that are
high everywhere sink and genes that are unusually high in this cell rise (Theodoris et al., 2023).

Vocabulary (one place for this fact): ``[PAD]=0, [MASK]=1, [CLS]=2``, then gene ``i`` (column ``i``
of the count matrix) has token id ``i + N_SPECIAL``. The tokenizer never writes ``[CLS]``; the model
prepends it.

Everything is vectorised over chunks of cells of a CSR matrix, so the 655k-cell T cell corpus is
tokenized in seconds without a per-cell Python loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from sctrace._errors import SctraceInputError

__all__ = [
    "CLS_ID",
    "MASK_ID",
    "N_SPECIAL",
    "PAD_ID",
    "SPECIAL_TOKENS",
    "load_tokenized",
    "nonzero_gene_medians",
    "rank_value_tokenize",
    "save_tokenized",
    "token_ids_to_genes",
]

PAD_ID = 0
MASK_ID = 1
CLS_ID = 2
N_SPECIAL = 3
SPECIAL_TOKENS = ("[PAD]", "[MASK]", "[CLS]")

# The tokenizer's packed int64 sort key is (cell, float32 value code, slot within the cell): the code
# takes 31 bits (positive float32 bit patterns), so cells-per-chunk are capped to leave cell and slot
# 32 bits between them.
_FLOAT32_CODE_BITS = 31
_FLOAT32_CODE_MAX = (1 << _FLOAT32_CODE_BITS) - 1
_MAX_CELL_SLOT_BITS = 63 - _FLOAT32_CODE_BITS
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
    kept_windows, kept_bits = [], []
    for window, bits in _bits_in_windows(counts, chunk_size, target_sum, windows):
        kept_windows.append(window.astype(window_type))
        kept_bits.append(bits)
    kept_windows = np.concatenate(kept_windows)
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


def _normalise(chunk: sp.csr_array, target_sum: float) -> np.ndarray:
    """``(nnz,)`` float64 ``count / cell_total * target_sum`` of a clean CSR chunk."""
    values = chunk.data / np.repeat(_row_sums(chunk), np.diff(chunk.indptr))
    values *= target_sum
    return values


def rank_value_tokenize(
    counts, gene_medians: np.ndarray, max_len: int, chunk_size: int = 1_024
) -> tuple[np.ndarray, np.ndarray]:
    """Turn each cell into its expressed genes ranked by median-normalised expression.

    Genes are ordered by descending ``count / gene_median`` over the cell's non-zero genes; ties
    (exactly equal float64 ratios) go to the lower gene index. This is Geneformer's
    ``count / cell_total * target_sum / gene_median`` with the cell factor ``target_sum / cell_total``
    dropped: it is the same positive number for every gene of a cell, so it cannot change the order,
    and leaving it out removes two roundings that could turn equal ratios into unequal floats.

    Parameters
    ----------
    counts
        ``(n_cells, n_genes)`` raw counts: scipy sparse (CSR is fastest; CSC is converted chunk by
        chunk, other formats once), a dense array, or a backed matrix that returns rows for
        ``counts[start:stop]`` (anndata backed ``X``, h5py dataset).
    gene_medians
        ``(n_genes,)`` positive finite medians, e.g. from :func:`nonzero_gene_medians` on the
        training corpus or a pretrained model's median table.
    max_len
        Number of top-ranked genes kept per cell (without ``[CLS]``).
    chunk_size
        Cells processed at a time; peak extra memory grows with it.

    Returns
    -------
    tokens
        ``(n_cells, max_len)`` int32 gene token ids (``gene_index + N_SPECIAL``), best first,
        padded with ``PAD_ID``.
    lengths
        ``(n_cells,)`` int32 number of non-pad tokens, ``min(n_expressed_genes, max_len)``; a cell with
        no counts has length 0.
    """
    _check_matrix(counts)
    n_cells, n_genes = counts.shape
    gene_medians = np.asarray(gene_medians, dtype=np.float64)
    if gene_medians.shape != (n_genes,):
        raise SctraceInputError(
            f"gene_medians has shape {gene_medians.shape} but counts has {n_genes} genes; "
            "pass one median per gene column, in the same order."
        )
    if not (np.all(np.isfinite(gene_medians)) and np.all(gene_medians > 0)):
        raise SctraceInputError(
            "gene_medians must be finite and > 0; compute them with nonzero_gene_medians, "
            "which gives 1.0 to genes never expressed."
        )
    if int(max_len) != max_len or max_len < 1:
        raise SctraceInputError(f"max_len must be a positive integer, got {max_len}.")
    _check_chunk_size(chunk_size)
    counts = _row_sliceable(counts)

    gene_bits = max(1, int(n_genes - 1).bit_length())
    chunk_size = min(chunk_size, 1 << max(0, _MAX_CELL_SLOT_BITS - gene_bits))
    tokens = np.full((n_cells, max_len), PAD_ID, dtype=np.int32)
    lengths = np.zeros(n_cells, dtype=np.int32)
    for start, chunk in _iter_csr_chunks(counts, chunk_size):
        stop = start + chunk.shape[0]
        _rank_chunk(chunk, gene_medians, gene_bits, tokens[start:stop], lengths[start:stop])
    return tokens, lengths


def save_tokenized(directory, tokens: np.ndarray, lengths: np.ndarray) -> None:
    """Write ``tokens.npy`` and ``lengths.npy`` into ``directory`` (created if needed) for mmap loading."""
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    if tokens.ndim != 2 or lengths.shape != (tokens.shape[0],):
        raise SctraceInputError(
            f"tokens must be (n_cells, max_len) and lengths (n_cells,), got {tokens.shape} and "
            f"{lengths.shape}; pass the two arrays returned by rank_value_tokenize."
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "tokens.npy", tokens)
    np.save(directory / "lengths.npy", lengths)


def load_tokenized(directory, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Read what :func:`save_tokenized` wrote; with ``mmap`` the arrays are read-only memory maps."""
    directory = Path(directory)
    missing = [name for name in ("tokens.npy", "lengths.npy") if not (directory / name).is_file()]
    if missing:
        raise SctraceInputError(
            f"{directory} has no {' or '.join(missing)}; point to a directory written by save_tokenized."
        )
    mmap_mode = "r" if mmap else None
    return (
        np.load(directory / "tokens.npy", mmap_mode=mmap_mode),
        np.load(directory / "lengths.npy", mmap_mode=mmap_mode),
    )


def token_ids_to_genes(tokens, gene_names) -> list[list[str]]:
    """Decode token ids to gene names per cell, skipping special tokens.

    Parameters
    ----------
    tokens
        ``(n_cells, length)`` integer token ids (or one ``(length,)`` sequence, treated as one cell).
    gene_names
        ``(n_genes,)`` names in the column order used for tokenizing (e.g. ``adata.var_names``).
    """
    tokens = np.atleast_2d(np.asarray(tokens))
    gene_names = np.asarray(gene_names, dtype=object)
    if tokens.size and tokens.max() >= len(gene_names) + N_SPECIAL:
        raise SctraceInputError(
            f"token id {int(tokens.max())} is beyond the {len(gene_names)} genes given; pass the "
            "gene names the tokens were made with."
        )
    return [list(gene_names[row[row >= N_SPECIAL] - N_SPECIAL]) for row in tokens]


def _rank_chunk(
    chunk: sp.csr_array, gene_medians: np.ndarray, gene_bits: int, tokens_out: np.ndarray, lengths_out: np.ndarray
) -> None:
    """Rank one clean CSR chunk of cells into ``tokens_out`` ``(n, max_len)`` and ``lengths_out`` ``(n,)``."""
    n_chunk_cells, max_len = tokens_out.shape
    cell_nnz = np.diff(chunk.indptr)
    lengths_out[:] = np.minimum(cell_nnz, max_len)
    if chunk.nnz == 0:
        return
    ratio = np.divide(chunk.data, gene_medians[chunk.indices], dtype=np.float64)
    cells = np.repeat(np.arange(n_chunk_cells, dtype=np.int64), cell_nnz)
    slots = np.arange(chunk.nnz, dtype=np.int64) - np.repeat(chunk.indptr[:-1].astype(np.int64), cell_nnz)
    order = _order_within_cells(ratio, cells, slots, gene_bits)
    # Entries only move inside their cell, so sorted position p is the slots[p]-th of cells[p]: its rank.
    kept = slots < max_len
    tokens_out[cells[kept], slots[kept]] = chunk.indices[order[kept]] + N_SPECIAL


def _order_within_cells(values: np.ndarray, cells: np.ndarray, slots: np.ndarray, slot_bits: int) -> np.ndarray:
    """Permutation that sorts each cell's entries by descending value, ties by ascending column.

    One ``np.sort`` of packed int64 keys ``(cell, float32 value code, slot in the cell)`` does almost
    all the work: sorting plain int64 is several times faster than an argsort or lexsort, and the
    slot points back to the entry. Rounding to float32 keeps the order but can merge distinct
    float64 values (ratios that are equal but for rounding are common), so runs that hold such
    values are re-sorted exactly.

    Parameters
    ----------
    values
        ``(nnz,)`` positive float64, in canonical CSR order (columns ascending within a cell).
    cells
        ``(nnz,)`` int64 cell of each entry, non-decreasing.
    slots
        ``(nnz,)`` int64 position of each entry within its cell, each below ``2**slot_bits``.
    slot_bits
        Bits reserved for the slot in the key.

    Returns
    -------
    np.ndarray
        ``(nnz,)`` int64 entry positions; cell blocks stay in place, so ``cells[p]`` is unchanged.
    """
    with np.errstate(over="ignore"):  # a ratio beyond float32's range becomes inf, still in order
        float32_bits = values.astype(np.float32).view(np.int32).astype(np.int64)
    keys = cells << (_FLOAT32_CODE_BITS + slot_bits)
    keys |= (_FLOAT32_CODE_MAX - float32_bits) << slot_bits  # positive float bits grow with the value
    keys |= slots
    keys.sort()
    order = np.arange(values.size, dtype=np.int64) - slots + (keys & ((1 << slot_bits) - 1))

    coarse = keys >> slot_bits
    tied = coarse[1:] == coarse[:-1]
    sorted_values = values[order]
    merged = tied & (sorted_values[1:] != sorted_values[:-1])
    if np.any(merged):
        # A run is a stretch of equal (cell, float32 code); a merged pair (p, p + 1) lies inside one.
        run_bounds = np.concatenate(([0], np.flatnonzero(~tied) + 1, [values.size]))
        runs = np.unique(np.searchsorted(run_bounds, np.flatnonzero(merged), side="right") - 1)
        members, member_run = _concatenated_ranges(run_bounds[runs], run_bounds[runs + 1])
        exact = np.lexsort((order[members], -sorted_values[members], member_run))
        order[members] = order[members][exact]
    return order


def _concatenated_ranges(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``concatenate([arange(a, b) for a, b in zip(starts, stops)])`` and which range each item came from."""
    sizes = stops - starts
    range_of_item = np.repeat(np.arange(sizes.size), sizes)
    offsets_in_range = np.arange(range_of_item.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return starts[range_of_item] + offsets_in_range, range_of_item


def _check_matrix(counts) -> None:
    shape = getattr(counts, "shape", None)
    if shape is None or len(shape) != 2 or shape[1] < 1:
        raise SctraceInputError(
            "counts must be a 2-D (n_cells, n_genes) matrix with at least one gene (scipy sparse, "
            f"numpy array or backed AnnData X), got {type(counts).__name__} with shape {shape}."
        )


def _check_chunk_size(chunk_size: int) -> None:
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise SctraceInputError(f"chunk_size must be a positive integer, got {chunk_size}.")


def _row_sliceable(counts):
    """Return ``counts`` in a form whose ``[start:stop]`` row slice is cheap (COO, DIA... -> CSR once)."""
    if sp.issparse(counts) and counts.format not in ("csr", "csc"):
        return sp.csr_array(counts)
    return counts


def _iter_csr_chunks(counts, chunk_size: int) -> Iterator[tuple[int, sp.csr_array]]:
    """Yield ``(first_cell, chunk)`` with clean CSR chunks (see :func:`_clean_counts`)."""
    for start in range(0, counts.shape[0], chunk_size):
        stop = min(start + chunk_size, counts.shape[0])
        if sp.issparse(counts) and counts.format == "csr":
            block = _csr_row_view(counts, start, stop)
        else:
            block = counts[start:stop]
            block = sp.csr_array(block if sp.issparse(block) else np.asarray(block))
        yield start, _clean_counts(block)


def _csr_row_view(matrix, start: int, stop: int) -> sp.csr_array:
    """Rows ``[start, stop)`` of a CSR matrix built from slices of its arrays.

    About 4x faster than scipy's row slicing, which walks every entry; scipy still copies the slices.
    """
    first, last = matrix.indptr[start], matrix.indptr[stop]
    # Row pointers in the indices' dtype, or scipy would upcast (copy) the indices to match.
    indptr = (matrix.indptr[start : stop + 1] - first).astype(matrix.indices.dtype)
    return sp.csr_array(
        (matrix.data[first:last], matrix.indices[first:last], indptr), shape=(stop - start, matrix.shape[1])
    )


def _clean_counts(matrix: sp.csr_array | sp.csc_array) -> sp.csr_array | sp.csc_array:
    """Check that a compressed sparse matrix holds finite non-negative counts; drop duplicates and zeros.

    Duplicate entries would become repeated tokens and stored zeros fake expressed genes. The input is
    copied before being modified because it may share its arrays with the caller's matrix.
    """
    if matrix.nnz and not (matrix.data.min() > 0 and matrix.data.max() < np.inf):  # min is NaN if any is
        if not (np.all(np.isfinite(matrix.data)) and np.all(matrix.data >= 0)):
            raise SctraceInputError(
                "counts contain negative, NaN or infinite values; pass raw non-negative counts."
            )
        matrix = matrix.copy()
        matrix.eliminate_zeros()
    if not matrix.has_canonical_format:
        matrix = matrix.copy()
        matrix.sum_duplicates()
    return matrix


def _row_sums(chunk: sp.csr_array) -> np.ndarray:
    """``(n_cells,)`` float64 totals of a CSR chunk."""
    sums = np.zeros(chunk.shape[0], dtype=np.float64)
    expressing = np.diff(chunk.indptr) > 0
    if np.any(expressing):
        # reduceat sums from each start to the next one, so empty rows must not be among the starts.
        sums[expressing] = np.add.reduceat(
            chunk.data.astype(np.float64, copy=False), chunk.indptr[:-1][expressing]
        )
    return sums
