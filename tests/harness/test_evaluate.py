"""evaluate: real cells prepared once for scoring, a prediction scored against them, ROUGE pairing, the CLI."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from sctrace._errors import SctraceInputError
from sctrace.cli import app
from sctrace.harness.evaluate import (
    evaluate_prediction,
    format_evaluation,
    lognorm_over_genes,
    rouge_scores,
    scoring_cells,
)

SCORED_GENES = slice(10, 130)


def _prediction_from_real(adata, time, genes):
    """A 'prediction' that is exactly the real cells of ``time`` over ``genes`` (raw counts)."""
    real = adata[np.isclose(adata.obs["time"], time), genes]
    pred = ad.AnnData(sp.csr_matrix(real.X), var=pd.DataFrame(index=list(genes)))
    pred.uns["sctrace"] = {"count_kind": "counts"}
    return pred


def test_prediction_equal_to_real_cells_scores_perfectly(small_timecourse):
    genes = small_timecourse.var_names[SCORED_GENES]
    pred = _prediction_from_real(small_timecourse, 4.0, genes)
    result = evaluate_prediction(pred, small_timecourse, "time", "4")
    metrics = result["metrics"]
    assert metrics["emd"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["mmd"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["e_distance"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["pearson"] == pytest.approx(1.0)
    assert metrics["r2"] == pytest.approx(1.0)
    assert metrics["pearson_delta"] == pytest.approx(1.0)
    assert result["reference_time"] == 2.5 and result["n_real"] == result["n_pred"] == pred.n_obs
    assert result["n_genes"] == len(genes)
    assert any("ROUGE skipped" in note for note in result["notes"])
    assert "EMD" in format_evaluation(result)


def test_prediction_of_another_time_scores_worse(small_timecourse):
    genes = small_timecourse.var_names[SCORED_GENES]
    pred = _prediction_from_real(small_timecourse, 2.5, genes)
    with pytest.warns(RuntimeWarning, match="pearson_delta is undefined"):
        metrics = evaluate_prediction(pred, small_timecourse, "time", 4.0)["metrics"]
    assert metrics["emd"] > 0.05 and metrics["mmd"] > 0
    # The copy of the reference time has no change at all from it: r of the change is undefined.
    assert np.isnan(metrics["pearson_delta"])


def test_missing_genes_are_counted_in_the_error(small_timecourse):
    genes = list(small_timecourse.var_names[:20])
    pred = _prediction_from_real(small_timecourse, 4.0, genes)
    pred.var_names = genes[:17] + ["NotAGene1", "NotAGene2", "NotAGene3"]
    with pytest.raises(SctraceInputError, match="3 of the 20 genes to score are missing"):
        evaluate_prediction(pred, small_timecourse, "time", 4.0)


def test_unobserved_time_is_refused(small_timecourse):
    pred = _prediction_from_real(small_timecourse, 4.0, small_timecourse.var_names[:20])
    with pytest.raises(SctraceInputError, match="no cells at time 5"):
        evaluate_prediction(pred, small_timecourse, "time", 5.0)


def test_lognorm_normalises_over_the_scored_genes_only():
    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, size=(30, 12)).astype(np.float32)
    counts[:, 0] += 1  # no all-zero cell
    names = [f"g{i}" for i in range(12)]
    chosen = ["g7", "g0", "g3", "g5"]
    got = lognorm_over_genes(sp.csr_matrix(counts), names, chosen).toarray()
    subset = counts[:, [7, 0, 3, 5]]
    expected = np.log1p(subset / subset.sum(1, keepdims=True) * 1e4)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Already log-normalised values are subset and kept as they are.
    np.testing.assert_allclose(lognorm_over_genes(counts, names, chosen, "lognorm").toarray(), subset)


def test_reference_is_the_previous_observed_time(small_timecourse):
    times = small_timecourse.obs["time"].to_numpy(float)
    names = small_timecourse.var_names
    genes = names[:30]
    cells = scoring_cells(small_timecourse.X, times, names, genes, 4.0)
    assert cells.reference_time == 2.5
    assert cells.real.shape == (int(np.isclose(times, 4.0).sum()), 30)
    # When 2.5 is not observed (held out too), the reference falls back to the time before it.
    cells = scoring_cells(small_timecourse.X, times, names, genes, 4.0, observed_times=[0.0, 1.0, 6.0, 8.5])
    assert cells.reference_time == 1.0
    assert cells.reference.shape[0] == int(np.isclose(times, 1.0).sum())
    assert scoring_cells(small_timecourse.X, times, names, genes, 0.0).reference is None


def test_rouge_pairs_every_real_cell_once_before_reusing():
    # Real cell j holds only gene j; a generated sentence holding gene j matches only real cell j.
    real = np.arange(3, 13)[:, None]
    generated = np.arange(3, 13)[:, None]
    f1 = [rouge_scores(generated, real, seed=s)["rouge1_f1"] for s in range(20)]
    # Each pairing is a permutation: the mean F1 is the fraction of fixed points, a multiple of 1/10.
    assert all(abs(v * 10 - round(v * 10)) < 1e-9 for v in f1)
    assert rouge_scores(np.tile(real[:1], (5, 1)), np.tile(real[:1], (3, 1)))["rouge1_f1"] == 1.0
    disjoint = rouge_scores(np.full((4, 2), 20), np.full((4, 2), 21))
    assert disjoint["rouge1_f1"] == 0.0 and disjoint["rougeL_f1"] == 0.0


def test_cli_evaluate_writes_json(small_timecourse, tmp_path):
    genes = small_timecourse.var_names[SCORED_GENES]
    pred_path, data_path = tmp_path / "pred.h5ad", tmp_path / "data.h5ad"
    _prediction_from_real(small_timecourse, 6.0, genes).write_h5ad(pred_path)
    small_timecourse.write_h5ad(data_path)
    out = tmp_path / "metrics.json"
    result = CliRunner().invoke(app, ["evaluate", str(pred_path), str(data_path), "--time", "6", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "PearsonR" in result.output and "ROUGE skipped" in result.output
    saved = json.loads(out.read_text())
    assert saved["metrics"]["emd"] == pytest.approx(0.0, abs=1e-9)
    assert saved["reference_time"] == 4.0
