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

from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike

from sctrace._errors import SctraceInputError
from sctrace.data.count_chunks import _check_chunk_size, _check_matrix, _iter_csr_chunks, _row_sliceable
from sctrace.data.gene_medians import nonzero_gene_medians

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


def save_tokenized(directory, tokens: ArrayLike, lengths: ArrayLike) -> None:
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
    mmap_mode: Literal["r"] | None = "r" if mmap else None
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
