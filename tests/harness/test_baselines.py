"""Floors: identity copies the previous time point; mixture mixes the neighbours' real cells; linear interpolates
along optimal-transport pairs."""

import numpy as np
import pytest
import scipy.sparse as sp

import sctrace.harness.baselines as baselines
from sctrace._errors import SctraceInputError
from sctrace.harness.baselines import (
    baseline_names,
    identity_baseline,
    linear_baseline,
    mixture_baseline,
)


def _time_course(sizes=(30, 30), times=(0.0, 1.0), n_genes=8, seed=0):
    """Cells of each time point, centred further out at later times, in shuffled row order."""
    rng = np.random.default_rng(seed)
    blocks, labels = [], []
    for step, (size, time) in enumerate(zip(sizes, times)):
        blocks.append(np.log1p(rng.gamma(2.0 + step, 1.0 + step, size=(size, n_genes))))
        labels.append(np.full(size, time))
    order = rng.permutation(sum(sizes))
    return np.vstack(blocks)[order], np.concatenate(labels)[order]


def _sorted_rows(matrix):
    return matrix[np.lexsort(matrix.T[::-1])]


def test_names():
    assert baseline_names() == ("identity", "mixture", "linear")


# ---------------------------------------------------------------------------------------------------- identity


def test_identity_returns_exactly_the_previous_time_point():
    expr, times = _time_course(sizes=(10, 12, 9), times=(0.0, 1.0, 2.5))
    out = identity_baseline(expr, times, target_time=2.0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expr[times == 1.0].astype(np.float32))
    # Strictly earlier: an observed target time maps to the time before it.
    np.testing.assert_array_equal(identity_baseline(expr, times, 1.0), expr[times == 0.0].astype(np.float32))
    np.testing.assert_array_equal(identity_baseline(sp.csr_matrix(expr), times, 2.0), out)


def test_identity_subsamples_with_and_without_replacement_deterministically():
    expr, times = _time_course(sizes=(10, 12), times=(0.0, 1.0))
    previous = {tuple(row) for row in expr[times == 1.0].astype(np.float32)}
    few = identity_baseline(expr, times, 5.0, n_cells=7, seed=1)
    assert few.shape == (7, 8)
    assert len({tuple(row) for row in few}) == 7
    assert {tuple(row) for row in few} <= previous
    many = identity_baseline(expr, times, 5.0, n_cells=30, seed=1)
    assert many.shape == (30, 8) and {tuple(row) for row in many} <= previous
    np.testing.assert_array_equal(few, identity_baseline(expr, times, 5.0, n_cells=7, seed=1))
    assert not np.array_equal(few, identity_baseline(expr, times, 5.0, n_cells=7, seed=2))


def test_identity_errors():
    expr, times = _time_course()
    with pytest.raises(SctraceInputError, match="not after any observed time"):
        identity_baseline(expr, times, target_time=0.0)
    with pytest.raises(SctraceInputError, match="one time per cell"):
        identity_baseline(expr, times[:-1], target_time=1.0)
    with pytest.raises(SctraceInputError, match="n_cells"):
        identity_baseline(expr, times, target_time=1.0, n_cells=0)


# ---------------------------------------------------------------------------------------------------- linear


def test_linear_at_the_ends_recovers_the_observed_cells_with_full_rank_pca():
    expr, times = _time_course(n_genes=8)
    start = linear_baseline(expr, times, target_time=0.0, n_pcs=8)
    end = linear_baseline(expr, times, target_time=1.0, n_pcs=8)
    # Equal sizes: the plan is a permutation and every pair is used once, so each end is recovered as a set.
    np.testing.assert_allclose(_sorted_rows(start), _sorted_rows(expr[times == 0.0]), atol=1e-5)
    np.testing.assert_allclose(_sorted_rows(end), _sorted_rows(expr[times == 1.0]), atol=1e-5)


def test_linear_midpoint_mean_is_the_average_of_the_two_means():
    expr, times = _time_course(times=(2.0, 6.0), n_genes=8, seed=3)
    middle = linear_baseline(expr, times, target_time=4.0, n_pcs=8)
    expected = (expr[times == 2.0].mean(0) + expr[times == 6.0].mean(0)) / 2
    np.testing.assert_allclose(middle.mean(0), expected, atol=1e-5)
    # A quarter of the way: the mean moves a quarter of the way.
    quarter = linear_baseline(expr, times, target_time=3.0, n_pcs=8)
    np.testing.assert_allclose(quarter.mean(0), 0.75 * expr[times == 2.0].mean(0) + 0.25 * expr[times == 6.0].mean(0),
                               atol=1e-5)


def test_linear_pairs_cells_by_optimal_transport():
    # Cells on a line through gene space: the optimal coupling pairs the i-th smallest with the i-th smallest,
    # a random coupling would not.
    rng = np.random.default_rng(4)
    direction = np.array([1.0, 2.0, 0.5])
    start_positions, end_positions = rng.uniform(0, 1, 25), rng.uniform(2, 5, 25)
    expr = np.concatenate([start_positions, end_positions])[:, None] * direction
    times = np.repeat([0.0, 1.0], 25)
    middle = linear_baseline(expr, times, target_time=0.5, n_pcs=3)
    expected = (np.sort(start_positions) + np.sort(end_positions))[:, None] / 2 * direction
    np.testing.assert_allclose(_sorted_rows(middle), expected, atol=1e-5)


def test_linear_uses_the_neighbouring_time_points_and_closes_the_last_interval():
    expr, times = _time_course(sizes=(20, 20, 20), times=(0.0, 1.0, 3.0), n_genes=6, seed=5)
    last = linear_baseline(expr, times, target_time=3.0, n_pcs=6)
    np.testing.assert_allclose(_sorted_rows(last), _sorted_rows(expr[times == 3.0]), atol=1e-5)
    between = linear_baseline(expr, times, target_time=2.0, n_pcs=6)
    np.testing.assert_allclose(between.mean(0), (expr[times == 1.0].mean(0) + expr[times == 3.0].mean(0)) / 2,
                               atol=1e-5)


def test_linear_unequal_sizes_sparse_input_and_determinism():
    expr, times = _time_course(sizes=(20, 35), n_genes=8, seed=6)
    out = linear_baseline(expr, times, target_time=0.3, n_cells=50, n_pcs=4, seed=7)
    assert out.shape == (50, 8) and out.dtype == np.float32 and (out >= 0).all()
    np.testing.assert_array_equal(out, linear_baseline(expr, times, 0.3, n_cells=50, n_pcs=4, seed=7))
    np.testing.assert_allclose(out, linear_baseline(sp.csr_matrix(expr), times, 0.3, n_cells=50, n_pcs=4, seed=7),
                               atol=1e-5)
    assert not np.array_equal(out, linear_baseline(expr, times, 0.3, n_cells=50, n_pcs=4, seed=8))
    assert linear_baseline(expr, times, 0.3, n_pcs=4).shape == (20, 8)


def test_linear_subsamples_large_time_points(monkeypatch):
    monkeypatch.setattr(baselines, "_MAX_OT_CELLS", 10)
    expr, times = _time_course(sizes=(30, 40), n_genes=5, seed=8)
    start = linear_baseline(expr, times, target_time=0.0, n_pcs=5, seed=9)
    assert start.shape == (10, 5)
    observed = expr[times == 0.0]
    # Every output cell is one of the observed start cells.
    assert np.abs(start[:, None, :] - observed[None]).max(-1).min(1).max() < 1e-5


def test_linear_refuses_extrapolation():
    expr, times = _time_course(times=(1.0, 2.0))
    for target in (0.5, 2.5):
        with pytest.raises(SctraceInputError, match="only defined for interpolation"):
            linear_baseline(expr, times, target_time=target)
    with pytest.raises(SctraceInputError, match="only defined for interpolation"):
        linear_baseline(expr, np.ones_like(times), target_time=1.0)


# ----------------------------------------------------------------------------------------------------- mixture


def _rows_of(out, expr):
    """For each output row, the index of the identical input row (-1 where there is none)."""
    match = np.all(np.isclose(out[:, None, :], expr[None].astype(np.float32)), axis=-1)
    return np.where(match.any(1), match.argmax(1), -1)


def test_mixture_draws_real_neighbour_cells_in_proportion_to_distance():
    expr, times = _time_course(sizes=(40, 50, 60), times=(0.0, 1.0, 5.0))
    out = mixture_baseline(expr, times, target_time=2.0, n_cells=4000, seed=3)
    rows = _rows_of(out, expr)
    assert out.dtype == np.float32 and out.shape == (4000, 8) and (rows >= 0).all()
    drawn = times[rows]
    assert set(np.unique(drawn)) == {1.0, 5.0}  # never the time point outside the interval
    assert abs((drawn == 5.0).mean() - 0.25) < 0.03  # (2 - 1) / (5 - 1)
    # Its mean moves along the straight line between the neighbours' means.
    expected = 0.75 * expr[times == 1.0].mean(0) + 0.25 * expr[times == 5.0].mean(0)
    np.testing.assert_allclose(out.mean(0), expected, atol=0.05)


def test_mixture_at_an_observed_time_is_that_time_point_and_is_seeded():
    expr, times = _time_course(sizes=(10, 12, 9), times=(0.0, 1.0, 2.5))
    at_one = mixture_baseline(expr, times, target_time=1.0, seed=0)
    assert at_one.shape == (12, 8)  # None: as many cells as the nearer time point has
    assert set(times[_rows_of(at_one, expr)]) == {1.0}
    assert set(times[_rows_of(mixture_baseline(expr, times, 2.5, n_cells=5), expr)]) == {2.5}
    out = mixture_baseline(expr, times, 1.5, n_cells=30, seed=4)
    np.testing.assert_array_equal(out, mixture_baseline(sp.csr_matrix(expr), times, 1.5, n_cells=30, seed=4))
    assert not np.array_equal(out, mixture_baseline(expr, times, 1.5, n_cells=30, seed=5))


def test_mixture_refuses_extrapolation():
    expr, times = _time_course(times=(1.0, 2.0))
    with pytest.raises(SctraceInputError, match="the mixture baseline is only defined for interpolation"):
        mixture_baseline(expr, times, target_time=2.5)
    with pytest.raises(SctraceInputError, match="n_cells must be at least 1"):
        mixture_baseline(expr, times, target_time=1.5, n_cells=0)
