"""The streaming corpus: data read a block of cells at a time, corpus written to disk and read back by rows.

Everything must equal the in-memory path (and scanpy / numpy references) exactly; only the memory differs.
"""

from __future__ import annotations

import os
import pickle

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from sctrace.data.corpus import Corpus, DiskCSR, NpyFile, _NpyWriter, prepare_corpus
from sctrace.data.datamodule import PairCollator
from sctrace.data.io import MatrixRows, read_timecourse
from sctrace.data.preprocess import log_normalize, select_hvgs, select_hvgs_streamed
from sctrace.data.tokenize import nonzero_gene_medians
from sctrace.estimator import CORPUS_DIR, TRACE


@pytest.fixture(scope="module")
def h5ad_path(small_timecourse, tmp_path_factory):
    """The small simulated time course as an .h5ad, cells shuffled so train and held-out cells interleave."""
    order = np.random.default_rng(0).permutation(small_timecourse.n_obs)
    path = tmp_path_factory.mktemp("streaming") / "small.h5ad"
    small_timecourse[order].copy().write_h5ad(path)
    return path


def _holdout(adata) -> float:
    return float(sorted(adata.obs["time"].unique())[2])


def _reference_medians(dense: np.ndarray) -> np.ndarray:
    """np.median of count / total * 1e4 over each gene's expressing cells (1.0 where none)."""
    totals = dense.sum(axis=1, dtype=np.float64)
    medians = np.ones(dense.shape[1])
    for gene in range(dense.shape[1]):
        expressing = dense[:, gene] > 0
        if expressing.any():
            medians[gene] = np.median(dense[expressing, gene] / totals[expressing] * 1e4)
    return medians


@pytest.mark.parametrize("n_top_genes", [60, 120, 250])
def test_streamed_hvgs_are_scanpys_seurat_choice(h5ad_path, n_top_genes):
    backed = read_timecourse(h5ad_path, "time", backed=True)
    train = np.flatnonzero(~np.isclose(backed.times, _holdout(backed.adata)))
    in_memory = ad.read_h5ad(h5ad_path).X[train]
    expected = select_hvgs(log_normalize(in_memory), backed.gene_names(), n_top_genes)
    streamed = select_hvgs_streamed(MatrixRows(backed.expression(), train), n_top_genes, chunk_size=37)
    assert len(expected) >= n_top_genes
    np.testing.assert_array_equal(streamed, expected)


def test_streamed_hvgs_of_lognormalised_dense_values():
    rng = np.random.default_rng(1)
    counts = rng.negative_binomial(2, rng.uniform(0.05, 0.9, size=80), size=(300, 80)).astype(np.float32)
    lognorm = np.asarray(log_normalize(sp.csr_matrix(counts)).toarray())  # dense, as BEELINE-style inputs are
    expected = select_hvgs(log_normalize(lognorm, "lognorm"), np.arange(80).astype(str), 25)
    np.testing.assert_array_equal(select_hvgs_streamed(lognorm, 25, "lognorm", chunk_size=41), expected)


@pytest.mark.parametrize("max_kept_values", [1, 7, 1 << 20])
def test_medians_are_exact_whatever_the_memory_budget(max_kept_values):
    """A small budget forces extra narrowing passes; the many equal values test windows one value wide."""
    rng = np.random.default_rng(2)
    dense = rng.negative_binomial(1, 0.4, size=(300, 30)) * (rng.random((300, 30)) < 0.6)
    dense[:100, :10] = np.minimum(dense[:100, :10], 1)  # equal values, and medians between two of them
    dense[:, 29] = 0  # never expressed
    medians = nonzero_gene_medians(sp.csr_array(dense), chunk_size=23, max_kept_values=max_kept_values)
    np.testing.assert_array_equal(medians, _reference_medians(dense))


def test_streamed_corpus_equals_the_in_memory_corpus(h5ad_path, tmp_path):
    holdout = _holdout(ad.read_h5ad(h5ad_path))
    settings = dict(task="interpolate", holdout=holdout, n_top_genes=100, max_len=40, seed=3)
    in_memory = prepare_corpus(read_timecourse(ad.read_h5ad(h5ad_path), "time"), **settings)
    backed = read_timecourse(h5ad_path, "time", backed=True)
    streamed = prepare_corpus(backed, directory=tmp_path / "corpus", chunk_size=53, **settings)

    assert isinstance(streamed.tokens, NpyFile) and isinstance(streamed.counts, DiskCSR)
    assert streamed.spec == in_memory.spec
    for name in ("tokens", "lengths", "cell_times", "pairs", "obs_names"):
        np.testing.assert_array_equal(np.asarray(getattr(streamed, name)), getattr(in_memory, name), err_msg=name)
    assert streamed.tokens.dtype == np.int16 and in_memory.tokens.dtype == np.int16
    rows = np.arange(len(streamed.cell_times))
    assert (streamed.counts[rows] != in_memory.counts).nnz == 0

    # The medians are numpy's medians over the training cells, on the HVG columns.
    train = ~np.isclose(backed.times, holdout)
    hvgs = backed.adata.var_names.get_indexer(streamed.spec.genes)
    dense = ad.read_h5ad(h5ad_path).X[train][:, hvgs].toarray()
    np.testing.assert_array_equal(streamed.spec.gene_medians, _reference_medians(dense))

    # Saving links the files that prediction needs; loading gives the same corpus without the counts.
    streamed.save(tmp_path / "saved")
    assert os.stat(tmp_path / "saved" / "tokens.npy").st_ino == os.stat(tmp_path / "corpus" / "tokens.npy").st_ino
    loaded = Corpus.load(tmp_path / "saved")
    assert loaded.counts is None and loaded.spec == in_memory.spec
    np.testing.assert_array_equal(np.asarray(loaded.tokens), in_memory.tokens)


def test_pair_collator_batches_from_disk_equal_the_in_memory_ones(small_timecourse, tmp_path):
    tc = read_timecourse(small_timecourse, "time")
    settings = dict(task="interpolate", holdout=_holdout(small_timecourse), n_top_genes=100, max_len=40)
    in_memory, on_disk = prepare_corpus(tc, **settings), prepare_corpus(tc, directory=tmp_path, chunk_size=64, **settings)
    rng = np.random.default_rng(4)
    for size in (1, 7, 32):
        rows = rng.choice(len(in_memory.pairs), size=size, replace=False).tolist()
        expected, got = PairCollator(in_memory)(rows), PairCollator(on_disk)(rows)
        assert expected.keys() == got.keys()
        for key in expected:
            assert got[key].dtype == expected[key].dtype
            np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy(), err_msg=key)


def test_matrix_rows_reads_chosen_rows_and_columns_of_backed_matrices(tmp_path):
    rng = np.random.default_rng(5)
    dense = (rng.random((3000, 12)) < 0.3) * rng.integers(1, 9, size=(3000, 12))
    adata = ad.AnnData(sp.csr_matrix(dense.astype(np.float32)))
    adata.layers["dense"] = dense.astype(np.float32)
    adata.write_h5ad(tmp_path / "m.h5ad")
    backed = ad.read_h5ad(tmp_path / "m.h5ad", backed="r")
    on_disk_dense = h5py.File(tmp_path / "m.h5ad", "r")["layers/dense"]
    # Gaps wider than max_gap (a block of held-out cells) split the reads.
    rows = np.sort(np.concatenate([rng.choice(500, 200, replace=False), 2600 + rng.choice(400, 150, replace=False)]))
    columns = np.array([0, 3, 4, 10])
    for matrix in (backed.X, on_disk_dense, dense, sp.csr_matrix(dense)):
        view = MatrixRows(matrix, rows, columns, np.sqrt)
        assert view.shape == (rows.size, columns.size)
        for start, stop in ((0, 350), (150, 260), (349, 350), (5, 5)):
            block = view[start:stop]
            assert sp.issparse(block) and block.format == "csr"
            np.testing.assert_allclose(block.toarray(), np.sqrt(dense[rows[start:stop]][:, columns]))
    with pytest.raises(TypeError, match="slice of consecutive rows"):
        MatrixRows(dense, rows)[::2]


def test_npy_file_reads_rows_like_numpy(tmp_path):
    expected = np.arange(7 * 5, dtype=np.int16).reshape(7, 5)
    writer = _NpyWriter(tmp_path / "a.npy", np.int16, (5,))
    for start in range(0, 7, 3):
        writer.append(expected[start : start + 3])
    array = writer.finish()
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), expected)  # a valid .npy for numpy too
    assert array.shape == (7, 5) and array.dtype == np.int16 and len(array) == 7
    keys = [3, -1, slice(None), slice(2, 5), slice(1, 7, 2), slice(5, 2), np.array([6, 0, 6]),
            np.array([], dtype=int), expected[:, 0] % 2 == 0, (np.array([4, 1]), slice(None, 3)), (2, 4)]
    for key in keys:
        np.testing.assert_array_equal(array[key], expected[key], err_msg=str(key))
    np.testing.assert_array_equal(np.asarray(array), expected)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(array))[[2, 5]], expected[[2, 5]])
    with pytest.raises(IndexError):
        array[np.array([7])]


def test_fit_from_a_backed_file_keeps_the_corpus_on_disk(h5ad_path, tmp_path, tiny_fast_config):
    config = {**tiny_fast_config, "max_epochs": 1}
    model = TRACE(h5ad_path, "time", holdout=_holdout(ad.read_h5ad(h5ad_path)), seed=0, **config)
    assert model.timecourse.adata.isbacked
    assert isinstance(model.corpus.tokens, NpyFile) and isinstance(model.corpus.counts, DiskCSR)
    scratch = model.corpus.tokens.path.parent
    model.fit(run_dir=tmp_path / "run", progress=False)
    assert model.is_trained and model.history is not None
    saved = tmp_path / "run" / CORPUS_DIR
    assert os.path.samefile(saved / "tokens.npy", scratch / "tokens.npy")
    assert not (saved / "counts_data.npy").exists()  # training counts are not part of a saved run
    predicted = model.predict(4.0, n_cells=6)
    assert predicted.shape == (6, model.spec.n_genes)
    loaded = TRACE.load(tmp_path / "run")
    loaded.save(tmp_path / "run", overwrite=True)  # its own files are removed first: the open ones are rewritten
    assert TRACE.load(tmp_path / "run").predict(4.0, n_cells=6).shape == predicted.shape

    model.fit(progress=False, max_steps=2)  # no run directory: checkpoints in a temporary one
    assert model.history["step"].max() <= 2
    del model
    assert not scratch.exists()  # the temporary corpus goes with the model
