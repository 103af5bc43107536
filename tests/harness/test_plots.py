"""plots: the numbers behind the plots against direct formulas, and every plot writes a non-empty PNG."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sctrace._errors import SctraceInputError
from sctrace.harness.plots import (
    embedding_dotplot,
    embedding_map,
    group_gene_similarity,
    layout_2d,
    nearest_labels,
    pca_cell_types,
    pca_overlay,
    plot_prediction,
    time_variable_genes,
    violin_genes,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000, path


def _cells(n, n_genes=10, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(1.0 + shift, 1.0, size=(n, n_genes)), 0, None)


def test_group_gene_similarity_matches_a_loop():
    rng = np.random.default_rng(0)
    cells, genes = rng.normal(size=(30, 6)), rng.normal(size=(9, 6))
    groups = np.array(["b", "a", "c"] * 10)
    names, similarity = group_gene_similarity(cells, genes, groups)
    assert names == ["a", "b", "c"]
    for g, name in enumerate(names):
        members = cells[groups == name]
        for j, gene in enumerate(genes):
            cosines = [m @ gene / (np.linalg.norm(m) * np.linalg.norm(gene)) for m in members]
            assert similarity[g, j] == pytest.approx(np.mean(cosines))
    with pytest.raises(SctraceInputError, match="same model"):
        group_gene_similarity(cells, genes[:, :5], groups)


def test_nearest_labels_match_brute_force_when_all_pcs_are_kept():
    real = _cells(40, n_genes=5, seed=1)
    labels = np.array([f"type{i % 3}" for i in range(40)])
    cells = _cells(15, n_genes=5, seed=2)
    got = nearest_labels(real, labels, cells, n_pcs=5)
    expected = labels[np.argmin(((cells[:, None] - real[None]) ** 2).sum(-1), axis=1)]
    np.testing.assert_array_equal(got, expected)


def test_time_variable_genes_ranks_by_variance_of_time_means():
    rng = np.random.default_rng(0)
    times = np.repeat([0.0, 1.0, 2.0], 50)
    expression = rng.normal(2.0, 0.1, size=(150, 6))
    expression[:, 4] += times * 3.0  # strongest trend
    expression[:, 1] += times * 1.0
    genes = [f"g{i}" for i in range(6)]
    assert time_variable_genes(sp.csr_matrix(expression), times, genes, n_genes=2) == ["g4", "g1"]


def test_every_plot_writes_a_png(tmp_path):
    real = _cells(60)
    methods = {"a": _cells(60, shift=0.5, seed=1), "b": _cells(60, shift=-0.2, seed=2)}
    types = np.array(["x", "y", "z"] * 20)
    genes = [f"g{i}" for i in range(10)]
    constant = {"a": methods["a"].copy()}
    constant["a"][:, 0] = 0.0  # a constant gene has no density: drawn as a line instead of a violin
    embeddings = np.random.default_rng(3).normal(size=(60, 8))
    paths = [
        pca_overlay(real, methods, tmp_path / "pca.png"),
        pca_cell_types(real, types, methods, tmp_path / "pca_types.png"),
        violin_genes(real, constant, genes, ["g0", "g3", "g5"], tmp_path / "violins.png"),
        embedding_map(embeddings, {"type": types, "half": np.array(["p", "q"] * 30)}, tmp_path / "map.png",
                      layout="pca"),
        embedding_dotplot(embeddings, np.random.default_rng(4).normal(size=(10, 8)), types, real > 1.0, genes,
                          tmp_path / "dots.png"),
    ]
    for path in paths:
        _assert_png(path)


def test_layout_is_checked():
    with pytest.raises(SctraceInputError, match="unknown layout"):
        layout_2d(np.zeros((20, 3)), layout="tsne")
    assert layout_2d(np.random.default_rng(0).normal(size=(20, 1)), layout="pca").shape == (20, 2)


def test_plot_prediction_without_a_run(small_timecourse, tmp_path):
    genes = list(small_timecourse.var_names[:80])
    source = small_timecourse[np.isclose(small_timecourse.obs["time"], 2.5), genes]
    pred = ad.AnnData(sp.csr_matrix(source.X), var=pd.DataFrame(index=genes))
    pred.obsm["X_sctrace"] = np.random.default_rng(0).normal(size=(pred.n_obs, 8)).astype(np.float32)
    written = plot_prediction(pred, small_timecourse, "time", 4.0, tmp_path, layout="pca")
    assert sorted(p.name for p in written) == ["embedding_pca.png", "pca.png", "pca_cell_type.png", "violins.png"]
    for path in written:
        _assert_png(path)
