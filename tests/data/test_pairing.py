"""Tests of cell pairing: shapes, time membership, no reuse before exhaustion, strata, seeding, errors."""

import numpy as np
import pandas as pd
import pytest

from sctrace._errors import SctraceInputError
from sctrace.data.pairing import pair_cells


def _shuffled_times(cells_per_time: dict[float, int], seed: int = 0) -> np.ndarray:
    """Times of cells with the given number of cells per time point, in a shuffled order."""
    times = np.concatenate([np.full(n, t, dtype=float) for t, n in cells_per_time.items()])
    return np.random.default_rng(seed).permutation(times)


def _assert_balanced(column: np.ndarray, pool: np.ndarray) -> None:
    """Each pool cell used once before any reuse: the first draws are distinct, counts differ by at most one."""
    assert np.isin(column, pool).all()
    first_round = column[: pool.size]
    assert np.unique(first_round).size == first_round.size
    counts = np.bincount(np.searchsorted(np.sort(pool), column), minlength=pool.size)
    if column.size <= pool.size:
        assert counts.max() <= 1
    else:
        assert counts.min() >= 1
        assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("n_target", [3, 7, 10, 25])
def test_random_pairs_shape_membership_and_balance(n_target):
    times = _shuffled_times({0.0: 10, 1.5: n_target, 4.0: 4, 9.0: 2})  # time 9 is not paired over
    pairs = pair_cells(times, [0.0, 1.5, 4.0], seed=3)

    assert pairs.shape == (10, 3)
    assert pairs.dtype == np.int64
    np.testing.assert_array_equal(pairs[:, 0], np.flatnonzero(times == 0.0))
    for k, t in enumerate([0.0, 1.5, 4.0]):
        assert (times[pairs[:, k]] == t).all()
    _assert_balanced(pairs[:, 1], np.flatnonzero(times == 1.5))
    _assert_balanced(pairs[:, 2], np.flatnonzero(times == 4.0))


def test_random_pairs_reproducible_and_seed_dependent():
    times = _shuffled_times({0.0: 50, 1.0: 40, 2.0: 60})
    first = pair_cells(times, [0.0, 1.0, 2.0], seed=7)
    np.testing.assert_array_equal(first, pair_cells(times, [0.0, 1.0, 2.0], seed=7))
    assert not np.array_equal(first, pair_cells(times, [0.0, 1.0, 2.0], seed=8))


def test_single_time_point_gives_source_column_only():
    times = _shuffled_times({0.0: 4, 1.0: 3})
    pairs = pair_cells(times, [0.0])
    np.testing.assert_array_equal(pairs, np.flatnonzero(times == 0.0)[:, None])


def test_stratified_pairs_stay_in_stratum_and_balance():
    rng = np.random.default_rng(0)
    times = _shuffled_times({0.0: 60, 2.0: 45, 5.0: 80})
    strata = pd.DataFrame(
        {
            "cell_type": pd.Categorical(rng.choice(["B", "T"], size=times.size)),
            "donor": rng.choice(["d1", "d2"], size=times.size),
        },
        index=[f"cell{i}" for i in range(times.size)],  # a non-default index: alignment must be positional
    )
    pairs = pair_cells(times, [0.0, 2.0, 5.0], strata=strata, mode="stratified", seed=1)

    keys = strata["cell_type"].astype(str).to_numpy() + "|" + strata["donor"].to_numpy()
    np.testing.assert_array_equal(pairs[:, 0], np.flatnonzero(times == 0.0))
    for k, t in enumerate([0.0, 2.0, 5.0]):
        assert (times[pairs[:, k]] == t).all()
        np.testing.assert_array_equal(keys[pairs[:, k]], keys[pairs[:, 0]])
    for k, t in [(1, 2.0), (2, 5.0)]:
        for key in np.unique(keys[pairs[:, 0]]):
            rows = keys[pairs[:, 0]] == key
            _assert_balanced(pairs[rows, k], np.flatnonzero((times == t) & (keys == key)))


def test_stratified_falls_back_to_random_with_warning_naming_stratum():
    times = np.array([0, 0, 0, 0, 1, 1, 1], dtype=float)
    strata = pd.DataFrame({"cell_type": ["B", "B", "NK", "NK", "B", "B", "T"]})
    with pytest.warns(UserWarning, match=r"no cells of stratum cell_type='NK' at time 1"):
        pairs = pair_cells(times, [0.0, 1.0], strata=strata, mode="stratified", seed=0)
    # B source cells keep their stratum; the NK ones take any cell of time 1.
    assert set(pairs[:2, 1]) == {4, 5}
    assert np.isin(pairs[2:, 1], [4, 5, 6]).all()


def test_stratified_without_fallback_does_not_warn(recwarn):
    times = np.array([0, 0, 1, 1], dtype=float)
    strata = pd.DataFrame({"donor": ["a", "b", "b", "a"]})
    pairs = pair_cells(times, [0.0, 1.0], strata=strata, mode="stratified")
    np.testing.assert_array_equal(pairs, [[0, 3], [1, 2]])
    assert not recwarn.list


def test_unknown_mode():
    with pytest.raises(SctraceInputError, match=r"unknown pairing mode 'nearest'; choose one of 'random', 'stratified', 'ot'"):
        pair_cells(np.array([0.0, 1.0]), [0.0, 1.0], mode="nearest")


def test_stratified_without_strata():
    with pytest.raises(SctraceInputError, match=r"'stratified' needs strata"):
        pair_cells(np.array([0.0, 1.0]), [0.0, 1.0], mode="stratified")


def test_stratified_with_misaligned_strata():
    with pytest.raises(SctraceInputError, match=r"strata has 3 rows but there are 2 cells"):
        pair_cells(np.array([0.0, 1.0]), [0.0, 1.0], strata=pd.DataFrame({"a": [1, 2, 3]}), mode="stratified")


def test_time_value_without_cells():
    with pytest.raises(SctraceInputError, match=r"no cells at time point\(s\) 2\.5"):
        pair_cells(np.array([0.0, 1.0, 1.0]), [0.0, 1.0, 2.5])


def test_time_values_not_increasing():
    with pytest.raises(SctraceInputError, match=r"must be a non-empty, strictly increasing list"):
        pair_cells(np.array([0.0, 1.0]), [1.0, 0.0])


def _two_branches(n_per_time: int = 60, seed: int = 0):
    """Cells on two branches (y = +1 / -1) that move right with time; time 0 sits at the fork, on both sides."""
    rng = np.random.default_rng(seed)
    times = np.repeat([0.0, 1.0, 2.0, 3.0], n_per_time)
    branch = np.tile(np.repeat([1.0, -1.0], n_per_time // 2), 4)
    coordinates = np.column_stack([times * 2.0, branch * (0.3 + times)]) + 0.1 * rng.normal(size=(times.size, 2))
    return times, branch, coordinates


def test_ot_pairs_follow_one_branch_where_random_pairs_mix():
    times, branch, coordinates = _two_branches()
    ot_pairs = pair_cells(times, [0.0, 1.0, 2.0, 3.0], mode="ot", coordinates=coordinates, seed=0)
    random_pairs = pair_cells(times, [0.0, 1.0, 2.0, 3.0], mode="random", seed=0)
    assert ot_pairs.shape == random_pairs.shape == (60, 4)
    assert np.array_equal(ot_pairs[:, 0], np.flatnonzero(times == 0.0))
    for k, t in enumerate([1.0, 2.0, 3.0], start=1):
        assert np.all(times[ot_pairs[:, k]] == t)
    # Every row stays on its source cell's branch; random partners agree about half the time.
    assert (branch[ot_pairs] == branch[ot_pairs[:, :1]]).all()
    assert (branch[random_pairs[:, 3]] == branch[random_pairs[:, 0]]).mean() < 0.75
    # Uniform weights: with as many rows as target cells the plan is a permutation, so every cell is used once.
    assert all(len(np.unique(ot_pairs[:, k])) == 60 for k in range(1, 4))


def test_ot_pairs_in_blocks_are_reproducible_and_use_every_block(monkeypatch):
    import sctrace.data.pairing as pairing

    times, branch, coordinates = _two_branches(n_per_time=80)
    monkeypatch.setattr(pairing, "OT_BLOCK", 16)  # 5 blocks per time point: minibatch OT
    first = pair_cells(times, [0.0, 1.0, 2.0, 3.0], mode="ot", coordinates=coordinates, seed=3)
    again = pair_cells(times, [0.0, 1.0, 2.0, 3.0], mode="ot", coordinates=coordinates, seed=3)
    other = pair_cells(times, [0.0, 1.0, 2.0, 3.0], mode="ot", coordinates=coordinates, seed=4)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert all(len(np.unique(first[:, k])) == 80 for k in range(1, 4))
    # Random blocks hold both branches, so some rows must cross; most still follow their branch.
    assert (branch[first[:, 3]] == branch[first[:, 0]]).mean() > 0.7


def test_ot_pairing_needs_finite_aligned_coordinates():
    times, _, coordinates = _two_branches()
    with pytest.raises(SctraceInputError, match="needs coordinates"):
        pair_cells(times, [0.0, 1.0], mode="ot")
    with pytest.raises(SctraceInputError, match="one row per cell"):
        pair_cells(times, [0.0, 1.0], mode="ot", coordinates=coordinates[:-1])
    bad = coordinates.copy()
    bad[3, 1] = np.nan
    with pytest.raises(SctraceInputError, match="NaN"):
        pair_cells(times, [0.0, 1.0], mode="ot", coordinates=bad)


def test_entropic_ot_gives_a_repeated_source_cell_different_partners_on_its_branch():
    times, branch, coordinates = _two_branches()
    sources = np.flatnonzero(times == 0.0)
    rows = np.concatenate([np.arange(times.size), np.tile(sources, 7)])  # each source cell in 8 rows
    exact = rows[pair_cells(times[rows], [0.0, 1.0, 2.0, 3.0], mode="ot", coordinates=coordinates[rows], seed=0)]
    soft = rows[pair_cells(times[rows], [0.0, 1.0, 2.0, 3.0], mode="ot", coordinates=coordinates[rows], seed=0,
                           entropy=0.02)]

    def distinct(pairs):
        return np.mean([len(np.unique(pairs[pairs[:, 0] == s, 1])) for s in sources])

    # The exact plan between equal-sized times is a permutation: one partner for all 8 rows of a source cell.
    assert distinct(exact) < 1.5 and distinct(soft) > 3
    assert (branch[soft] == branch[soft[:, :1]]).mean() > 0.95


def test_negative_entropy_refused():
    times, _, coordinates = _two_branches()
    with pytest.raises(SctraceInputError, match="entropy must be at least 0"):
        pair_cells(times, [0.0, 1.0], mode="ot", coordinates=coordinates, entropy=-1.0)
