"""embedding_analysis: a trained TRACE puts each simulated program's genes nearest the cells that express it.

The simulator knows which genes belong to which program (``var['program']``), so the analysis can be checked
against the truth: lineage_A genes must score high for lineage_A cells, early genes for an early time point,
late genes for the last one, while a model whose gene rows are shuffled (or never trained) must fail the same check.
"""

import copy
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import typer
from typer.testing import CliRunner

from sctrace._errors import SctraceInputError
from sctrace.data.simulate import simulate_timecourse
from sctrace.estimator import TRACE
from sctrace.harness.embedding_analysis import (
    CELL_KEY,
    GENE_KEY,
    analyze_command,
    analyze_embeddings,
    decoder_embeddings,
    group_gene_scores,
    group_labels,
)
from sctrace.harness.plots import group_gene_similarity
from sctrace.model.module import N_SPECIAL

pytestmark = pytest.mark.filterwarnings("ignore:Total length of .list. across ranks is zero")  # no validation split

# A model small enough to train in ~20 s on one core, with a learning rate high enough that its output layer
# learns the programs within those ~170 steps; no validation split (it would cost half the time). The time code
# stays at time_scale 100 without context dropout: with cpu-small's smooth code (time_scale 1) this tiny model does
# not learn the programs in 15 epochs (AUROCs 0.53-0.63), while cpu-small itself does (30 epochs, full size:
# 0.92 / 0.94 / 0.93 / 0.95, BENCHMARKS.md "Embedding analysis"). Random pairs, with which the AUROCs below were
# measured (cpu-small has paired by OT since 2026-11-29).
CONFIG = dict(
    n_top_genes=120, max_len=48, d_model=32, n_heads=2, head_dim=16, n_encoder_layers=1, n_decoder_layers=1,
    count_hidden=32, batch_size=32, n_iter=6, dropout=0.0, lr=1e-2, val_fraction=0.0, time_scale=100.0,
    context_dropout=0.0, pairing="random",
)
EPOCHS = 15
# (group_by, group, program whose genes must score high for that group). Early genes are checked at the first
# time the decoder models (1), not at the source time 0, which the decoder never sees in training (see the
# module docstring of sctrace.harness.embedding_analysis: there the statistic swung from 0.37 to 0.94 across seeds).
CHECKS = (("cell_type", "lineage_A", "lineage_A"), ("cell_type", "lineage_B", "lineage_B"),
          ("time", "1", "early"), ("time", "8.5", "late"))
# Measured with seed 0: trained 0.78 / 0.92 / 0.97 / 0.85 (mean 0.88; training seeds 1-3: every value >= 0.73,
# means >= 0.79); five row shuffles and an untrained net: every value <= 0.64, means <= 0.56. A program's AUROC
# over ~120 genes has a chance sd of 0.07-0.09.
THRESHOLD = 0.70
MEAN_THRESHOLD = 0.75


@pytest.fixture(scope="module")
def simulated():
    return simulate_timecourse(n_cells=1200, n_genes=300, seed=0)


@pytest.fixture(scope="module")
def trained(simulated):
    torch.set_num_threads(1)
    return TRACE(simulated, "time", task="none", seed=0, **CONFIG).fit(max_epochs=EPOCHS, progress=False)


@pytest.fixture(scope="module")
def analyses(trained, simulated, tmp_path_factory):
    """The full analysis of every simulated cell, by cell type and by time."""
    results = {}
    for group_by in ("cell_type", "time"):
        with pytest.warns(UserWarning, match="cells are at the source time 0, which the decoder never saw"):
            results[group_by] = analyze_embeddings(trained, simulated, group_by=group_by, layout="pca", n_top=4,
                                                   out_dir=tmp_path_factory.mktemp(group_by))
    return results


def auroc(scores: np.ndarray, members: np.ndarray) -> float:
    """P(score of a member > score of a non-member), ties counting one half: the direct pairwise formula."""
    inside, outside = scores[members][:, None], scores[~members][None, :]
    return float((inside > outside).mean() + 0.5 * (inside == outside).mean())


def marker_aurocs(similarities: dict[str, pd.DataFrame], adata: ad.AnnData) -> list[float]:
    """AUROC of each check's program genes against the other model genes, ranked by the group's mean cosine."""
    values = []
    for group_by, group, program in CHECKS:
        scores = similarities[group_by].loc[group]
        programs = adata.var["program"].astype(str).reindex(scores.index).to_numpy()
        values.append(auroc(scores.to_numpy(), programs == program))
    return values


def test_auroc_matches_a_known_case():
    assert auroc(np.array([3.0, 2.0, 1.0, 0.0]), np.array([True, True, False, False])) == 1.0
    assert auroc(np.array([0.0, 3.0, 1.0, 2.0]), np.array([True, True, False, False])) == 0.5
    assert auroc(np.ones(4), np.array([True, False, False, False])) == 0.5


def test_trained_model_puts_each_programs_genes_nearest_its_cells(analyses, simulated):
    values = marker_aurocs({key: result.similarity for key, result in analyses.items()}, simulated)
    shown = dict(zip([c[1] for c in CHECKS], np.round(values, 3)))
    assert min(values) >= THRESHOLD and np.mean(values) >= MEAN_THRESHOLD, shown


@pytest.mark.filterwarnings("ignore:.*source time")
def test_shuffled_gene_rows_and_an_untrained_net_fail_the_same_check(trained, simulated):
    shuffled = copy.deepcopy(trained)
    rows = shuffled.net.token_head.weight.data
    permutation = torch.randperm(rows.shape[0] - N_SPECIAL, generator=torch.Generator().manual_seed(0)) + N_SPECIAL
    rows[N_SPECIAL:] = rows[permutation].clone()
    untrained = TRACE(simulated, "time", task="none", seed=0, **CONFIG)
    untrained.is_trained = True  # the check needs the net as initialised, which fit() would change
    for control in (shuffled, untrained):
        cells, genes = decoder_embeddings(control, simulated)
        similarities = {key: group_gene_scores(cells, genes, simulated.obs[key], control.spec.genes)
                        for key in ("cell_type", "time")}
        values = marker_aurocs(similarities, simulated)
        shown = dict(zip([c[1] for c in CHECKS], np.round(values, 3)))
        assert max(values) < THRESHOLD and np.mean(values) < MEAN_THRESHOLD - 0.1, shown


def test_tables_match_a_direct_computation(analyses, trained, simulated):
    result = analyses["cell_type"]
    cells = result.adata.obsm[CELL_KEY].astype(np.float64)
    genes = pd.DataFrame(result.adata.varm[GENE_KEY], index=simulated.var_names).loc[trained.spec.genes].to_numpy()
    assert not np.isnan(genes).any()
    assert np.isnan(result.adata.varm[GENE_KEY]).any(axis=1).sum() == simulated.n_vars - len(trained.spec.genes)
    centred = cells - cells.mean(0)
    table = pd.read_csv(result.paths["top_genes"])
    assert list(table.columns) == ["group", "rank", "gene", "mean_cosine", "fraction_expressing"]
    assert list(dict.fromkeys(table["group"])) == ["progenitor", "intermediate", "lineage_A", "lineage_B"]
    types = simulated.obs["cell_type"].astype(str).to_numpy()
    counts = simulated.X.toarray()
    for group, rows in table.groupby("group"):
        members = centred[types == group]
        # cos(c_i, e_j) for every member cell i and gene j, then the mean over the cells
        cosines = (members @ genes.T) / np.outer(np.linalg.norm(members, axis=1), np.linalg.norm(genes, axis=1))
        direct = cosines.mean(0)
        best = np.argsort(-direct)[:4]
        assert list(rows["gene"]) == [trained.spec.genes[j] for j in best] and list(rows["rank"]) == [1, 2, 3, 4]
        np.testing.assert_allclose(rows["mean_cosine"], direct[best], rtol=1e-6, atol=1e-9)
        columns = [list(simulated.var_names).index(gene) for gene in rows["gene"]]
        np.testing.assert_allclose(rows["fraction_expressing"], (counts[types == group][:, columns] > 0).mean(0))
    for key in ("map", "dotplot"):
        assert result.paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = ad.read_h5ad(result.paths["embedded"])
    np.testing.assert_array_equal(written.obsm[CELL_KEY], result.adata.obsm[CELL_KEY])
    assert "X_sctrace" in written.obsm and "sctrace_genes" in written.varm  # what TRACE.embed writes, too
    assert analyses["time"].paths["map"].name == "embedding_pca.png"
    assert list(analyses["time"].similarity.index) == ["0", "1", "2.5", "4", "6", "8.5"]


@pytest.mark.filterwarnings("ignore:.*source time")
def test_command_line(trained, simulated, tmp_path):
    run_dir, data = tmp_path / "run", tmp_path / "cells.h5ad"
    trained.save(run_dir)
    simulated[:300].copy().write_h5ad(data)
    app = typer.Typer()
    app.command("analyze")(analyze_command)
    app.command("other")(lambda: None)  # two commands, so "analyze" is a subcommand as in sctrace's app
    runner = CliRunner()
    args = ["analyze", str(run_dir), str(data), "--out", str(tmp_path / "out"), "--group-by", "cell_type",
            "--color-by", "donor", "--color-by", "pseudotime", "--layout", "pca", "--n-top", "3", "--threads", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "cell_type=progenitor:" in result.output
    table = pd.read_csv(tmp_path / "out" / "top_genes.csv")
    assert set(table["rank"]) == {1, 2, 3}
    assert (tmp_path / "out" / "embedding_pca.png").exists() and (tmp_path / "out" / "dotplot_cell_type.png").exists()
    again = runner.invoke(app, args)
    assert again.exit_code != 0 and "already exists" in str(again.exception)


def test_bad_input_is_named(trained, simulated, tmp_path):
    def run(adata, **kwargs):
        options = dict(group_by="cell_type", out_dir=tmp_path / "bad", layout="pca")
        return analyze_embeddings(trained, adata, **{**options, **kwargs})

    small = simulated[:200].copy()
    with pytest.raises(SctraceInputError, match="'kind' is not in obs .available: time, cell_type"):
        run(small, group_by="kind")
    with pytest.raises(SctraceInputError, match="color_by column 'batch'"):
        run(small, color_by=["batch"])
    with pytest.raises(SctraceInputError, match="genes are missing from the data"):
        run(small[:, [g for g in small.var_names if g != trained.spec.genes[0]]].copy())
    gaps = small.copy()
    gaps.obs["cell_type"] = gaps.obs["cell_type"].astype(object)
    gaps.obs.iloc[:3, gaps.obs.columns.get_loc("cell_type")] = np.nan
    with pytest.raises(SctraceInputError, match="3 cells have no value in obs.'cell_type'."):
        run(gaps)
    with pytest.raises(SctraceInputError, match="time column 'when'"):
        run(small, time_key="when")
    with pytest.raises(SctraceInputError, match="no cells"):
        run(small[:0].copy())
    with pytest.raises(SctraceInputError, match="n_top"):
        run(small, n_top=0)
    with pytest.raises(SctraceInputError, match="unknown layout"):
        run(small, layout="tsne")
    with pytest.raises(SctraceInputError, match="no cells"):
        group_gene_similarity(np.ones((4, 3)), np.ones((2, 3)), np.array(["a", "a", "b", "b"]), order=["a", "c"])


def test_groups_keep_their_order_skip_empty_categories_and_read_a_layer(analyses, trained, simulated, tmp_path):
    chosen = simulated.obs["cell_type"].isin(["lineage_B", "lineage_A"]).to_numpy()
    lineages = simulated[chosen].copy()
    lineages.layers["counts"] = lineages.X.copy()
    lineages.X = sp.csr_matrix(lineages.X.shape, dtype=np.float32)  # so only the layer can give these results
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = analyze_embeddings(trained, lineages, group_by="cell_type", out_dir=tmp_path, layout="pca",
                                    n_top=2, layer="counts")
    assert not [w for w in caught if "source time" in str(w.message)]  # no lineage cell is at the source time
    assert list(result.similarity.index) == ["lineage_A", "lineage_B"]  # categories in order, unused ones left out
    np.testing.assert_allclose(result.adata.obsm[CELL_KEY], analyses["cell_type"].adata.obsm[CELL_KEY][chosen],
                               rtol=1e-5, atol=1e-5)
    assert (result.top_genes["fraction_expressing"] > 0).all()
    assert group_labels(pd.Series([10.0, 2.5, 0.0, 2.5]))[1] == ["0", "2.5", "10"]
    assert group_labels(pd.Series(["b", "a", "b"]))[1] == ["a", "b"]
