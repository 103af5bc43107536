"""Gene copula: normal scores, rank re-ordering, correlated draws, and sampling 'copula' through TRACE."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats

from sctrace import SctraceInputError
from sctrace.estimator import COPULA_FILE, TRACE
from sctrace.harness.evaluate import lognorm_over_genes
from sctrace.harness.metrics import emd, gene_correlation
from sctrace.model.sampling import GeneCopula, normal_scores, reorder_levels


def test_normal_scores_keep_ranks_average_ties_and_zero_constant_columns():
    values = np.array([[0.0, 5.0, 1.0], [0.0, 1.0, 1.0], [3.0, 2.0, 1.0], [1.0, 9.0, 1.0]])
    scores = normal_scores(values)
    np.testing.assert_allclose(scores.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(scores[:, :2].std(axis=0), 1.0)
    assert np.all(scores[:, 2] == 0.0)  # a constant gene carries no order
    assert scores[0, 0] == scores[1, 0] < scores[3, 0] < scores[2, 0]  # tied zeros share one score
    assert np.array_equal(np.argsort(scores[:, 1]), np.argsort(values[:, 1]))


def test_reorder_levels_keeps_each_column_and_follows_the_normals_ranks():
    rng = np.random.default_rng(0)
    levels, normals = rng.random((50, 4)), rng.standard_normal((50, 4))
    out = reorder_levels(levels, normals)
    np.testing.assert_array_equal(np.sort(out, axis=0), np.sort(levels, axis=0))
    for g in range(4):
        assert scipy.stats.spearmanr(out[:, g], normals[:, g])[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        reorder_levels(levels, normals[:, :3])


def _correlated(n, seed, rho):
    """Three genes: 0 and 1 correlated by rho, 2 independent; counts-like non-negative values."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(n)
    z = np.column_stack([shared, rho * shared + np.sqrt(1 - rho**2) * rng.standard_normal(n), rng.standard_normal(n)])
    return np.exp(1.0 + z).round()


def test_copula_draws_follow_the_training_correlation_and_mix_neighbouring_times():
    a, b = _correlated(400, 0, 0.9), _correlated(400, 1, -0.9)
    values = sp.csr_matrix(np.vstack([a, b]))
    times = np.repeat([0.0, 2.0], 400)
    copula = GeneCopula.fit(values, times, [0.0, 2.0], "lognorm", seed=0)
    rng = np.random.default_rng(2)
    at_a, at_b, middle = (copula.normals(t, 4000, rng) for t in (0.0, 2.0, 1.0))
    assert np.corrcoef(at_a.T)[0, 1] > 0.8 and np.corrcoef(at_b.T)[0, 1] < -0.8
    assert abs(np.corrcoef(middle.T)[0, 1]) < 0.1  # half of +0.9 and half of -0.9
    assert abs(np.corrcoef(at_a.T)[0, 2]) < 0.1
    np.testing.assert_allclose(at_a.std(axis=0), 1.0, atol=0.05)
    assert copula.weights(-1.0) == [(0, 1.0)] and copula.weights(5.0) == [(1, 1.0)] and copula.weights(2.0) == [(1, 1.0)]
    assert copula.weights(0.5) == [(0, 0.75), (1, 0.25)]


def test_constant_genes_get_independent_draws_and_counts_are_depth_normalised():
    values = np.column_stack([np.arange(1.0, 101.0), 2 * np.arange(1.0, 101.0)])
    # Counts: both genes grow with depth only; normalised by the cell total their shares (1/3, 2/3) are constant.
    copula = GeneCopula.fit(values, np.zeros(100), [0.0], "counts")
    draws = copula.normals(0.0, 2000, np.random.default_rng(0))
    assert np.isfinite(draws).all() and np.allclose(draws.std(axis=0), 1.0, atol=0.1)
    assert abs(np.corrcoef(draws.T)[0, 1]) < 0.1  # depth alone is no co-variation
    as_values = GeneCopula.fit(values, np.zeros(100), [0.0], "lognorm").normals(0.0, 2000, np.random.default_rng(0))
    assert np.corrcoef(as_values.T)[0, 1] > 0.99


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def test_copula_sampling_makes_genes_co_vary_and_keeps_the_marginals(fitted, small_timecourse):
    model, _, _ = fitted
    time = model.spec.time_values[-1]
    real_rows = np.isclose(small_timecourse.obs["time"].to_numpy(float), time)
    real = lognorm_over_genes(small_timecourse.X[real_rows], small_timecourse.var_names, model.spec.genes, "counts")
    generated = {}
    for sampling in ("stratified", "copula"):
        out = model.predict(time, n_cells=300, seed=3, sampling=sampling)
        assert out.uns["sctrace"]["sampling"] == sampling
        generated[sampling] = lognorm_over_genes(out.X, out.var_names, model.spec.genes, "counts")
    assert gene_correlation(generated["copula"], real) > gene_correlation(generated["stratified"], real) + 0.2
    assert emd(generated["copula"], real) == pytest.approx(emd(generated["stratified"], real), rel=0.1)
    first, second = (model.predict(time, n_cells=40, seed=4, sampling="copula").X for _ in range(2))
    np.testing.assert_array_equal(_dense(first), _dense(second))  # seeded


def test_copula_is_fitted_on_the_corpus_saved_and_loaded(fitted):
    model, run_dir, holdout = fitted
    assert not np.isclose(model.copula.times, holdout).any()  # the held-out time has no factor
    again = GeneCopula.fit(model.corpus.counts, model.corpus.cell_times, model.spec.time_values, "counts", seed=0)
    for ours, theirs in zip(model.copula.factors, again.factors):
        np.testing.assert_array_equal(ours, theirs)
    loaded = TRACE.load(run_dir)
    for ours, theirs in zip(model.copula.factors, loaded.copula.factors):
        np.testing.assert_array_equal(ours, theirs)
    first = model.predict(holdout, n_cells=20, seed=1, sampling="copula")
    second = loaded.predict(holdout, n_cells=20, seed=1, sampling="copula")
    np.testing.assert_array_equal(_dense(first.X), _dense(second.X))


def test_copula_errors_name_the_fix(fitted, tmp_path):
    import shutil

    model, run_dir, holdout = fitted
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    (old / COPULA_FILE).unlink()  # a run fitted before the copula existed
    loaded = TRACE.load(old)
    assert loaded.copula is None
    loaded.predict(holdout, n_cells=5, seed=0, sampling="stratified")
    with pytest.raises(SctraceInputError, match="no gene copula.*sampling='stratified'"):
        loaded.predict(holdout, n_cells=5, seed=0, sampling="copula")
    (old / COPULA_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(SctraceInputError, match="copula.safetensors is corrupt"):
        TRACE.load(old)


def test_each_block_of_levels_stays_a_latin_hypercube_after_the_copula_reorders_it():
    from sctrace.model.sampling import StratifiedLevels

    copula = GeneCopula.fit(_correlated(300, 0, 0.9), np.zeros(300), [0.0], "lognorm")
    levels = StratifiedLevels(40, 3, np.random.default_rng(0), block=16,
                              transform=lambda block, rng: reorder_levels(block, copula.normals(0.0, len(block), rng)))
    rows = levels.rows(0, 40)
    for start, stop in ((0, 16), (16, 32), (32, 40)):
        strata = np.sort(np.floor(rows[start:stop] * (stop - start)), axis=0)
        np.testing.assert_array_equal(strata, np.repeat(np.arange(stop - start)[:, None], 3, axis=1))
    assert scipy.stats.spearmanr(rows[:, 0], rows[:, 1])[0] > 0.6  # the copula's correlation carried across blocks
