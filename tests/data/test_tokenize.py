"""Rank-value tokenizer and gene medians against slow, obviously-correct references."""

import anndata
import numpy as np
import pytest
import scipy.sparse as sp

from sctrace._errors import SctraceInputError
from sctrace.data.tokenize import (
    CLS_ID,
    MASK_ID,
    N_SPECIAL,
    PAD_ID,
    SPECIAL_TOKENS,
    load_tokenized,
    nonzero_gene_medians,
    rank_value_tokenize,
    save_tokenized,
    token_ids_to_genes,
)


def ratio_value(count: float, total: float, median: float) -> float:
    return count / median


def geneformer_value(count: float, total: float, median: float) -> float:
    return count / total * 1e4 / median


def reference_tokenize(dense: np.ndarray, gene_medians: np.ndarray, max_len: int, value=ratio_value):
    """One cell at a time: sort the expressed genes by (-value, gene index) and keep the first max_len."""
    tokens = np.full((dense.shape[0], max_len), PAD_ID, dtype=np.int32)
    lengths = np.zeros(dense.shape[0], dtype=np.int32)
    for cell, row in enumerate(dense):
        total = float(row.sum())
        expressed = [gene for gene in range(row.size) if row[gene] != 0]
        ranked = sorted(
            expressed, key=lambda gene: (-value(float(row[gene]), total, float(gene_medians[gene])), gene)
        )[:max_len]
        tokens[cell, : len(ranked)] = [gene + N_SPECIAL for gene in ranked]
        lengths[cell] = len(ranked)
    return tokens, lengths


def reference_medians(dense: np.ndarray, target_sum: float = 1e4) -> np.ndarray:
    totals = dense.sum(axis=1, dtype=np.float64)
    medians = np.ones(dense.shape[1])
    for gene in range(dense.shape[1]):
        expressed = dense[:, gene] != 0
        if expressed.any():
            medians[gene] = np.median(dense[expressed, gene] / totals[expressed] * target_sum)
    return medians


def integer_counts(seed: int, n_cells: int = 103, n_genes: int = 40, density: float = 0.3) -> np.ndarray:
    """Small integer counts (so equal values are common) with a few all-zero cells and an unexpressed gene."""
    rng = np.random.default_rng(seed)
    dense = rng.integers(1, 6, size=(n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < density)
    dense[rng.choice(n_cells, size=3, replace=False)] = 0
    dense[:, n_genes // 2] = 0
    return dense.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("density", [0.05, 0.3, 0.9])
@pytest.mark.parametrize(("max_len", "chunk_size"), [(5, 7), (20, 10), (64, 1024)])
def test_tokens_match_reference_with_ties(seed, density, max_len, chunk_size):
    dense = integer_counts(seed, density=density)
    rng = np.random.default_rng(seed + 100)
    # Medians from a small set, so equal ratios from different genes (and different counts: 1/0.5 == 3/1.5) occur.
    gene_medians = rng.choice([0.5, 1.0, 1.5, 3.0], size=dense.shape[1])

    tokens, lengths = rank_value_tokenize(sp.csr_array(dense), gene_medians, max_len, chunk_size=chunk_size)

    expected_tokens, expected_lengths = reference_tokenize(dense, gene_medians, max_len)
    np.testing.assert_array_equal(tokens, expected_tokens)
    np.testing.assert_array_equal(lengths, expected_lengths)
    assert (lengths == 0).sum() >= 3  # the all-zero cells
    assert (lengths < max_len).any()  # some cells express fewer genes than max_len


def test_order_is_geneformers_normalised_order():
    """Dropping the per-cell factor target_sum / total does not change Geneformer's order."""
    dense = integer_counts(3, density=0.5)
    gene_medians = np.random.default_rng(3).uniform(0.2, 5.0, size=dense.shape[1])
    tokens, lengths = rank_value_tokenize(dense, gene_medians, 25, chunk_size=16)
    expected_tokens, expected_lengths = reference_tokenize(dense, gene_medians, 25, value=geneformer_value)
    np.testing.assert_array_equal(tokens, expected_tokens)
    np.testing.assert_array_equal(lengths, expected_lengths)


def test_ratios_equal_in_float32_are_ordered_by_float64():
    """The fast float32 sort key merges these ratios; the exact float64 order must still win."""
    n_genes = 12
    gene_medians = 1.0 + np.array([5, 0, 3, 3, 1, 0, 4, 2, 5, 1, 2, 4]) * 2.0**-40
    dense = np.ones((4, n_genes), dtype=np.float32)
    dense[1, ::3] = 2.0  # a second, higher group of near-ties in one cell
    dense[2, 5:] = 0.0
    tokens, lengths = rank_value_tokenize(dense, gene_medians, max_len=7, chunk_size=3)
    expected_tokens, expected_lengths = reference_tokenize(dense, gene_medians, 7)
    np.testing.assert_array_equal(tokens, expected_tokens)
    np.testing.assert_array_equal(lengths, expected_lengths)
    # Smallest median first; equal medians (genes 1 and 5) by gene index.
    assert list(tokens[0, :4] - N_SPECIAL) == [1, 5, 4, 9]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tokens_match_reference_with_ties_up_to_rounding(seed):
    """Medians like real ones (k * 1e4 / total) make ratios that are equal but for the last bit."""
    rng = np.random.default_rng(seed + 200)
    dense = (rng.integers(1, 10, size=(60, 40)) * (rng.random((60, 40)) < 0.7)).astype(np.float32)
    # e.g. 3 / (3e4 / 4567) and 1 / (1e4 / 4567) differ in the last bit, as do four other such pairs.
    gene_medians = rng.integers(1, 10, size=40) * 1e4 / 4567.0
    tokens, lengths = rank_value_tokenize(dense, gene_medians, 18, chunk_size=10)
    expected_tokens, expected_lengths = reference_tokenize(dense, gene_medians, 18)
    np.testing.assert_array_equal(tokens, expected_tokens)
    np.testing.assert_array_equal(lengths, expected_lengths)


def test_output_layout():
    dense = integer_counts(4, density=0.2)
    tokens, lengths = rank_value_tokenize(dense, np.ones(dense.shape[1]), max_len=9)
    assert tokens.dtype == np.int32 and lengths.dtype == np.int32
    assert tokens.shape == (dense.shape[0], 9)
    np.testing.assert_array_equal(lengths, np.minimum((dense != 0).sum(axis=1), 9))
    is_pad = np.arange(9)[None, :] >= lengths[:, None]
    np.testing.assert_array_equal(tokens == PAD_ID, is_pad)
    real = tokens[~is_pad]
    assert real.min() >= N_SPECIAL and real.max() < dense.shape[1] + N_SPECIAL  # no [CLS] or [MASK]
    for row, length in zip(tokens, lengths, strict=True):
        assert len(set(row[:length])) == length


def test_input_formats_agree(tmp_path):
    dense = integer_counts(5)
    gene_medians = np.random.default_rng(5).choice([0.5, 1.0, 2.0], size=dense.shape[1])
    expected = reference_tokenize(dense, gene_medians, 11)
    anndata.AnnData(X=sp.csr_matrix(dense)).write_h5ad(tmp_path / "sparse.h5ad")
    anndata.AnnData(X=dense).write_h5ad(tmp_path / "dense.h5ad")
    backed_sparse = anndata.read_h5ad(tmp_path / "sparse.h5ad", backed="r")
    backed_dense = anndata.read_h5ad(tmp_path / "dense.h5ad", backed="r")
    formats = [
        dense,
        dense.astype(np.int64),
        sp.csr_matrix(dense),
        sp.csc_array(dense),
        sp.coo_array(dense),
        backed_sparse.X,
        backed_dense.X,
    ]
    for counts in formats:
        tokens, lengths = rank_value_tokenize(counts, gene_medians, 11, chunk_size=9)
        np.testing.assert_array_equal(tokens, expected[0], err_msg=type(counts).__name__)
        np.testing.assert_array_equal(lengths, expected[1], err_msg=type(counts).__name__)
        np.testing.assert_allclose(nonzero_gene_medians(counts, chunk_size=9), reference_medians(dense), rtol=1e-12)
    backed_sparse.file.close()
    backed_dense.file.close()


def messy_csr(dense: np.ndarray) -> sp.csr_array:
    """The same counts as CSR with every entry split into two duplicates, unsorted, plus a stored zero per cell."""
    data, indices, indptr = [], [], [0]
    for row in dense:
        genes = list(np.flatnonzero(row)[::-1])
        data += [row[gene] - 0.5 for gene in genes] + [0.0] + [0.5] * len(genes)
        indices += genes + [0] + genes
        indptr.append(len(data))
    return sp.csr_array(
        (np.array(data, np.float32), np.array(indices, np.int32), np.array(indptr, np.int32)), shape=dense.shape
    )


def test_stored_zeros_and_duplicates_are_cleaned_without_touching_the_input():
    dense = integer_counts(6)
    counts = messy_csr(dense)
    before = [array.copy() for array in (counts.data, counts.indices, counts.indptr)]
    gene_medians = np.random.default_rng(6).choice([0.5, 1.0, 2.0], size=dense.shape[1])

    tokens, lengths = rank_value_tokenize(counts, gene_medians, 15, chunk_size=8)
    medians = nonzero_gene_medians(counts, chunk_size=8)

    expected_tokens, expected_lengths = reference_tokenize(dense, gene_medians, 15)
    np.testing.assert_array_equal(tokens, expected_tokens)
    np.testing.assert_array_equal(lengths, expected_lengths)
    np.testing.assert_array_equal(medians, reference_medians(dense))
    for after, original in zip((counts.data, counts.indices, counts.indptr), before, strict=True):
        np.testing.assert_array_equal(after, original)


def test_many_genes_and_cells_fit_the_sort_key():
    """2**17 genes leave 15 bits for cells in the int64 key, so 40,000 cells must be split into chunks."""
    rng = np.random.default_rng(7)
    n_cells, n_genes = 40_000, 1 << 17
    counts = sp.csr_array(
        sp.random_array((n_cells, n_genes), density=3e-5, rng=rng, data_sampler=lambda size: rng.integers(1, 4, size))
    )
    gene_medians = rng.choice([1.0, 2.0], size=n_genes)
    tokens, lengths = rank_value_tokenize(counts, gene_medians, 4, chunk_size=1 << 20)
    for cell in range(n_cells):
        genes = counts.indices[counts.indptr[cell] : counts.indptr[cell + 1]]
        cell_counts = counts.data[counts.indptr[cell] : counts.indptr[cell + 1]]
        ranked = sorted(zip(genes, cell_counts, strict=True), key=lambda gc: (-gc[1] / gene_medians[gc[0]], gc[0]))
        expected = [gene + N_SPECIAL for gene, _ in ranked[:4]]
        assert list(tokens[cell, : lengths[cell]]) == expected


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("chunk_size", [7, 4096])
def test_medians_match_numpy_median(seed, chunk_size):
    dense = integer_counts(seed, density=0.4)
    dense[5, 3] = 2.0**20  # one huge count: its cell's other values fall below the histogram's range
    medians = nonzero_gene_medians(sp.csr_array(dense), chunk_size=chunk_size)
    assert medians.dtype == np.float64
    np.testing.assert_array_equal(medians, reference_medians(dense))
    assert medians[dense.shape[1] // 2] == 1.0  # never expressed


def test_medians_of_continuous_values_and_other_target_sum():
    rng = np.random.default_rng(8)
    dense = rng.gamma(0.5, 3.0, size=(257, 30)) * (rng.random((257, 30)) < 0.6)
    dense[:, 0] = 0.0
    dense[:4, 0] = [1.0, 2.0, 3.0, 4.0]  # even count: mean of the two middle values
    medians = nonzero_gene_medians(dense, target_sum=123.0, chunk_size=50)
    np.testing.assert_allclose(medians, reference_medians(dense, target_sum=123.0), rtol=1e-12)


def test_no_cells():
    tokens, lengths = rank_value_tokenize(sp.csr_array((0, 4)), np.ones(4), 3)
    assert tokens.shape == (0, 3) and lengths.shape == (0,)
    np.testing.assert_array_equal(nonzero_gene_medians(np.zeros((0, 4))), np.ones(4))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: rank_value_tokenize(np.ones((3, 4)), np.ones(5), 2), "gene_medians has shape"),
        (lambda: rank_value_tokenize(np.ones((3, 4)), np.array([1.0, 0.0, 1.0, 1.0]), 2), "finite and > 0"),
        (lambda: rank_value_tokenize(np.ones((3, 4)), np.array([1.0, np.nan, 1.0, 1.0]), 2), "finite and > 0"),
        (lambda: rank_value_tokenize(np.ones((3, 4)), np.ones(4), 0), "max_len must be a positive integer"),
        (lambda: rank_value_tokenize(np.ones((3, 4)), np.ones(4), 2, chunk_size=0), "chunk_size must be"),
        (lambda: rank_value_tokenize(np.ones(4), np.ones(4), 2), "must be a 2-D"),
        (lambda: rank_value_tokenize(-np.ones((3, 4)), np.ones(4), 2), "negative, NaN or infinite"),
        (lambda: nonzero_gene_medians(np.full((3, 4), np.nan)), "negative, NaN or infinite"),
        (lambda: nonzero_gene_medians(np.ones((3, 4)), target_sum=0.0), "target_sum must be"),
        (lambda: nonzero_gene_medians(np.ones((3, 0))), "at least one gene"),
        (lambda: token_ids_to_genes([[3, 7]], ["a", "b"]), "beyond the 2 genes"),
        (lambda: save_tokenized("/tmp/unused", np.zeros((2, 3)), np.zeros(3)), "tokens must be"),
    ],
)
def test_bad_input_is_explained(call, message):
    with pytest.raises(SctraceInputError, match=message):
        call()


def test_load_from_wrong_directory_is_explained(tmp_path):
    with pytest.raises(SctraceInputError, match="no tokens.npy or lengths.npy"):
        load_tokenized(tmp_path)


def test_save_load_roundtrip_with_mmap(tmp_path):
    dense = integer_counts(9)
    tokens, lengths = rank_value_tokenize(dense, np.ones(dense.shape[1]), 12)
    save_tokenized(tmp_path / "tokens", tokens, lengths)
    mapped_tokens, mapped_lengths = load_tokenized(tmp_path / "tokens")
    assert isinstance(mapped_tokens, np.memmap) and isinstance(mapped_lengths, np.memmap)
    assert not mapped_tokens.flags.writeable
    np.testing.assert_array_equal(mapped_tokens, tokens)
    np.testing.assert_array_equal(mapped_lengths, lengths)
    in_memory_tokens, _ = load_tokenized(tmp_path / "tokens", mmap=False)
    assert not isinstance(in_memory_tokens, np.memmap)
    np.testing.assert_array_equal(in_memory_tokens, tokens)


def test_vocabulary_and_decoding():
    assert (PAD_ID, MASK_ID, CLS_ID, N_SPECIAL) == (0, 1, 2, 3)
    assert (SPECIAL_TOKENS[PAD_ID], SPECIAL_TOKENS[MASK_ID], SPECIAL_TOKENS[CLS_ID]) == ("[PAD]", "[MASK]", "[CLS]")
    genes = ["CD3E", "GZMB", "IL7R"]
    decoded = token_ids_to_genes([[CLS_ID, 4, 3, MASK_ID, 5, PAD_ID], [PAD_ID] * 6], genes)
    assert decoded == [["GZMB", "CD3E", "IL7R"], []]
    assert token_ids_to_genes(np.array([5, 3]), genes) == [["IL7R", "CD3E"]]
