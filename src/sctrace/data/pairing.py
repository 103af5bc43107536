"""Pair every source cell with one cell of each later time point, to form training sequences.

Cells are drawn so that, within a time point (and stratum), every cell is used once before any is used
again: the draw is a concatenation of seeded permutations. This spreads the pairs over all target cells
instead of sampling some many times and others never.

``mode="ot"`` chains partners by optimal transport between consecutive time points instead, so that a
row's cells lie on one trajectory (one lineage): with random partners the target's state is independent of
everything the decoder conditions on, and the only thing it can learn is the mixture of all fates.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from sctrace._errors import SctraceInputError
from sctrace.config import CHOICES

__all__ = ["PAIRING_MODES", "check_pairing", "pair_cells"]

PAIRING_MODES = CHOICES["pairing"]
# Rows per exact-OT problem in mode "ot": the plan is (block x block) float64, 32 MB at 2,048.
OT_BLOCK = 2048
# How many strata a fallback warning names before summarising the rest.
_MAX_LISTED = 5


def check_pairing(mode: str, stratify: Sequence[str] | None) -> None:
    """Refuse a pairing mode that does not exist, or strata given to a mode that would ignore them."""
    if mode not in PAIRING_MODES:
        raise SctraceInputError(f"unknown pairing mode {mode!r}; choose one of {', '.join(map(repr, PAIRING_MODES))}.")
    if stratify and mode != "stratified":
        raise SctraceInputError(
            f"pairing {mode!r} does not use strata, but stratify columns were given ({', '.join(stratify)}); drop "
            "them or use pairing 'stratified'."
        )


def pair_cells(
    times: np.ndarray,
    time_values: np.ndarray | Sequence[float],
    *,
    strata: pd.DataFrame | None = None,
    mode: str = "random",
    coordinates: np.ndarray | None = None,
    seed: int = 0,
    entropy: float = 0.0,
) -> np.ndarray:
    """Pair each source cell with one cell of every other time point.

    Parameters
    ----------
    times
        ``(n_cells,) float`` time of each cell eligible for training (held-out cells already removed).
        Cells at times not in ``time_values`` are ignored.
    time_values
        ``(n_time_points,)`` strictly increasing time points to pair over; ``time_values[0]`` is the source
        time. A cell belongs to a time point when its time is :func:`numpy.isclose` to it.
    strata
        ``(n_cells, n_columns)`` obs columns aligned by position with ``times``; required for
        ``mode="stratified"``. A stratum is the combination of the columns' values (missing values form
        their own stratum).
    mode
        ``"random"``: partners are drawn from all cells of the target time point. ``"stratified"``: from the
        cells of the target time point in the source cell's stratum; when that stratum has no cells at the
        target time, from all cells of that time point, with a warning. ``"ot"``: the partner at time point
        ``k`` is drawn from the exact optimal-transport plan (squared Euclidean cost in ``coordinates``,
        uniform weights) between the row's partner at ``k - 1`` and the cells of ``k``, so each row follows
        one trajectory; problems larger than ``OT_BLOCK`` rows are split into random blocks, each with its
        own share of the target cells (minibatch OT).
    coordinates
        ``(n_cells, n_dims)`` embedding aligned with ``times`` (e.g. PCA of log-normalised expression);
        required for ``mode="ot"``.
    seed
        Seed of :func:`numpy.random.default_rng`; the same inputs and seed give the same pairs.
    entropy
        ``mode="ot"`` only: 0 for the exact plan; above 0, the entropic plan (Sinkhorn) with this regularisation
        on the cost scaled to a maximum of 1. Between time points of equal size the exact plan is a permutation,
        so a source cell repeated in several rows gets the same partner in each; the entropic plan spreads each
        cell's mass over its nearest partners, and the repeated rows draw different ones.

    Returns
    -------
    np.ndarray
        ``(n_source, n_time_points) int64`` row indices into ``times``. Column 0 lists every source cell in
        increasing order; column ``k`` holds the partner at ``time_values[k]``. Within a time point (and
        stratum) each cell is used once before any is reused, so use counts differ by at most one.

    Raises
    ------
    SctraceInputError
        For an unknown mode, ``mode="stratified"`` without ``strata``, ``mode="ot"`` without (or with
        misaligned or non-finite) ``coordinates``, misaligned ``strata``, time values that are not strictly
        increasing, or a time value with no cells.
    """
    check_pairing(mode, None)
    if not entropy >= 0:
        raise SctraceInputError(f"the OT plan's entropy must be at least 0, got {entropy}.")
    times = np.asarray(times, dtype=np.float64)
    time_values = np.asarray(time_values, dtype=np.float64)
    if time_values.ndim != 1 or time_values.size == 0 or np.any(np.diff(time_values) <= 0):
        raise SctraceInputError(f"time values {time_values.tolist()} must be a non-empty, strictly increasing list.")
    if mode == "stratified":
        if strata is None:
            raise SctraceInputError("pairing mode 'stratified' needs strata; pass the obs columns to stratify by.")
        if strata.shape[1] == 0:
            raise SctraceInputError("strata has no columns; pass at least one obs column to stratify by.")
        if len(strata) != times.size:
            raise SctraceInputError(
                f"strata has {len(strata)} rows but there are {times.size} cells; pass strata aligned with times."
            )

    if mode == "ot":
        if coordinates is None:
            raise SctraceInputError("pairing mode 'ot' needs coordinates; pass an embedding of the cells (e.g. PCA).")
        coordinates = np.asarray(coordinates, dtype=np.float64)
        if coordinates.ndim != 2 or len(coordinates) != times.size:
            raise SctraceInputError(
                f"coordinates have shape {coordinates.shape} but there are {times.size} cells; pass one row per cell."
            )
        if not np.isfinite(coordinates).all():
            raise SctraceInputError("coordinates hold NaN or infinite values; pass a finite embedding.")

    # (n_cells, n_time_points): which time point each cell belongs to.
    membership = np.isclose(times[:, None], time_values[None, :])
    cells_by_time = [np.flatnonzero(membership[:, k]) for k in range(time_values.size)]
    empty = [f"{value:g}" for value, cells in zip(time_values, cells_by_time, strict=True) if cells.size == 0]
    if empty:
        raise SctraceInputError(
            f"no cells at time point(s) {', '.join(empty)}; remove them from the time values to pair over."
        )

    rng = np.random.default_rng(seed)
    source_cells = cells_by_time[0]
    pairs = np.empty((source_cells.size, time_values.size), dtype=np.int64)
    pairs[:, 0] = source_cells
    if mode == "random":
        for k in range(1, time_values.size):
            pairs[:, k] = _draw_without_reuse(cells_by_time[k], source_cells.size, rng)
        return pairs
    if mode == "ot":
        assert coordinates is not None  # checked above
        for k in range(1, time_values.size):
            pairs[:, k] = _transport_partners(pairs[:, k - 1], cells_by_time[k], coordinates, rng, entropy)
        return pairs

    stratum_of_cell, stratum_names = _strata_codes(strata)
    # Sorting cells by stratum once turns every (time, stratum) group into a contiguous slice, so the cost is
    # O(n log n) however many strata there are.
    source_order = np.argsort(stratum_of_cell[source_cells], kind="stable")
    source_strata, source_starts, source_sizes = np.unique(
        stratum_of_cell[source_cells[source_order]], return_index=True, return_counts=True
    )
    for k in range(1, time_values.size):
        target_cells = cells_by_time[k]
        target_order = np.argsort(stratum_of_cell[target_cells], kind="stable")
        target_sorted = target_cells[target_order]
        target_strata = stratum_of_cell[target_sorted]
        target_starts = np.searchsorted(target_strata, source_strata, side="left")
        target_ends = np.searchsorted(target_strata, source_strata, side="right")
        unmatched_rows, missing_strata = [], []
        for stratum, start, size, target_start, target_end in zip(
            source_strata, source_starts, source_sizes, target_starts, target_ends, strict=True
        ):
            rows = source_order[start : start + size]
            if target_start == target_end:
                unmatched_rows.append(rows)
                missing_strata.append(stratum_names[stratum])
                continue
            pairs[rows, k] = _draw_without_reuse(target_sorted[target_start:target_end], size, rng)
        if missing_strata:
            listed = "; ".join(missing_strata[:_MAX_LISTED])
            if len(missing_strata) > _MAX_LISTED:
                listed += f" (and {len(missing_strata) - _MAX_LISTED} more)"
            warnings.warn(
                f"no cells of stratum {listed} at time {time_values[k]:g}; their source cells are paired with "
                "random cells of that time point.",
                UserWarning,
                stacklevel=2,
            )
            unmatched = np.sort(np.concatenate(unmatched_rows))
            pairs[unmatched, k] = _draw_without_reuse(target_cells, unmatched.size, rng)
    return pairs


def _transport_partners(
    current: np.ndarray, targets: np.ndarray, coordinates: np.ndarray, rng: np.random.Generator, entropy: float = 0.0
) -> np.ndarray:
    """For each row's current cell, one target cell drawn from its row of an OT plan (exact, or entropic with
    regularisation ``entropy`` on the cost scaled to a maximum of 1).

    Rows and targets are shuffled and cut into the same number of blocks of at most ``OT_BLOCK`` rows; each
    block is coupled to its share of the targets, so every target cell gets mass, as in the random modes.
    POT's network simplex (``ot.emd``) gives the exact plan, its Sinkhorn solver (``ot.sinkhorn``) the entropic
    one; the draw from a row keeps ties and splits random.
    """
    import ot

    row_order, target_order = rng.permutation(current.size), rng.permutation(targets.size)
    n_blocks = max(1, -(-current.size // OT_BLOCK), -(-targets.size // OT_BLOCK))
    partners = np.empty(current.size, dtype=np.int64)
    for rows, block_targets in zip(np.array_split(row_order, n_blocks), np.array_split(targets[target_order], n_blocks),
                                   strict=True):
        if rows.size == 0:
            continue
        source_points, target_points = coordinates[current[rows]], coordinates[block_targets]
        cost = ot.dist(source_points, target_points)  # squared Euclidean
        cost /= max(float(cost.max()), 1e-12)  # the plan does not change; the simplex's tolerances behave
        weights = np.full(rows.size, 1.0 / rows.size), np.full(block_targets.size, 1.0 / block_targets.size)
        if entropy > 0:
            plan = ot.sinkhorn(*weights, cost, entropy, numItermax=10_000)
        else:
            plan = ot.emd(*weights, cost, numItermax=10_000_000)
        cumulative = np.cumsum(plan, axis=1)
        threshold = rng.random(rows.size) * cumulative[:, -1]
        choice = (cumulative < threshold[:, None]).sum(axis=1)
        partners[rows] = block_targets[np.minimum(choice, block_targets.size - 1)]
    return partners


def _draw_without_reuse(pool: np.ndarray, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n_draws`` cells from ``pool`` so that every cell is used before any is reused.

    Parameters
    ----------
    pool
        ``(n_pool,) int64`` candidate cells, non-empty.
    n_draws
        How many cells to draw.
    rng
        Random generator.

    Returns
    -------
    np.ndarray
        ``(n_draws,) int64``: the first ``n_draws`` entries of ``ceil(n_draws / n_pool)`` concatenated
        independent permutations of ``pool``.
    """
    n_permutations = -(-n_draws // pool.size)
    permutations = rng.permuted(np.tile(pool, (n_permutations, 1)), axis=1)
    return permutations.ravel()[:n_draws]


def _strata_codes(strata: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Code each cell's stratum (its combination of column values) and name every stratum.

    Returns
    -------
    tuple
        ``(n_cells,) int64`` stratum code of each cell, and the name of each code as ``"col='value', ..."``
        for messages.
    """
    columns = list(strata.columns)
    codes = strata.groupby(columns, dropna=False, observed=True, sort=True).ngroup().to_numpy(dtype=np.int64)
    _, first_cell = np.unique(codes, return_index=True)
    names = [
        ", ".join(f"{column}='{value}'" for column, value in zip(columns, strata.iloc[cell], strict=True))
        for cell in first_cell
    ]
    return codes, names
