"""Which training cells form each training sequence: the source cells paired with later cells, by stratum or OT on PCA."""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from sctrace._errors import SctraceInputError, option
from sctrace.data.pairing import pair_cells
from sctrace.data.preprocess import log_normalize
from sctrace.data.timecourse import MatrixRows, TimeCourse, capped_rows

# The OT plan's entropic regularisation (on the cost scaled to a maximum of 1) where rows repeat source cells on
# purpose (config min_rows): the exact plan between time points of equal size is a permutation, which would give a
# repeated source cell the same partners in every row; at 0.02 the rows of one source cell draw different near
# partners (Shalek LPS: 9-10 distinct partners over 11 rows) at a transport cost 12% of the way from the exact
# plan's to random pairs'.
OT_ENTROPY = 0.02


def validation_cells(cell_times: np.ndarray, train_times: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the cells held aside for validation: ``fraction`` of each training time's cells, seeded.

    Empty (all False) where some time point would keep none, or none for training: validation then needs a cell
    at every time, and training every time too.
    """
    held = np.zeros(len(cell_times), dtype=bool)
    rng = np.random.default_rng([seed, 104_729])
    for t in train_times:
        cells = np.flatnonzero(np.isclose(cell_times, t))
        n = int(round(fraction * len(cells)))
        if n < 1 or n >= len(cells):
            return np.zeros(len(cell_times), dtype=bool)
        held[rng.choice(cells, size=n, replace=False)] = True
    return held


def pair_training_and_validation(
    timecourse: TimeCourse,
    train_rows: np.ndarray,
    cell_times: np.ndarray,
    train_times: np.ndarray,
    pairing: str,
    seed: int,
    pairs_per_source: int | None,
    coordinates: np.ndarray | None = None,
    min_rows: int = 0,
    val_fraction: float | None = None,
) -> tuple[np.ndarray, int | None]:
    """``(n_pairs, n_times)`` rows (into the training cells) of each source cell and its partners, and how many of
    the last ones are validation rows.

    ``min_rows`` > 0: at least that many rows, each source cell with several partner sets, drawn from the entropic
    OT plan (:data:`OT_ENTROPY`) so that they differ; 0 keeps one set per source cell and the exact plan.
    ``val_fraction`` given: that fraction of every training time's cells (:func:`validation_cells`) is paired
    only among itself, in rows after the training rows, which never hold them: validation then scores cells the
    model never trained on, as the held-out time's are. None: one set of rows over every cell, and the validation
    split is left to the caller (``validation_rows`` None).
    """
    strata = None
    if pairing == "stratified":
        if not timecourse.stratify_keys:
            raise SctraceInputError(f"stratified pairing needs at least one obs column; pass {option('stratify', 'COL')}.")
        strata = timecourse.adata.obs.iloc[train_rows][list(timecourse.stratify_keys)].reset_index(drop=True)

    def pair(cells: np.ndarray, at_least: int) -> np.ndarray:
        """The rows of the cells ``cells`` (indices into the training cells), paired among themselves."""
        times = cell_times[cells]
        n_source = int(np.isclose(times, train_times[0]).sum())
        largest = max(int(np.isclose(times, t).sum()) for t in train_times)
        repeats = pairs_per_source or max(1, math.ceil(max(largest, at_least) / max(n_source, 1)))
        # Repeating the source cells inside ONE pairing call keeps the rule "every target cell is used before any
        # is reused" across the repeats (independent calls would each restart it).
        source_rows = np.flatnonzero(np.isclose(times, train_times[0]))
        rows = cells[np.concatenate([np.arange(len(cells)), np.tile(source_rows, repeats - 1)])]
        return rows[
            pair_cells(
                cell_times[rows],
                train_times,
                strata=None if strata is None else strata.iloc[rows].reset_index(drop=True),
                mode=pairing,
                coordinates=None if coordinates is None else coordinates[rows],
                seed=seed,
                entropy=OT_ENTROPY if at_least > 0 else 0.0,
            )
        ]

    if val_fraction is None:
        return pair(np.arange(len(cell_times)), min_rows), None
    held = validation_cells(cell_times, train_times, val_fraction, seed)
    pairs = pair(np.flatnonzero(~held), min_rows)
    if not held.any():
        return pairs, 0
    # Validation rows in proportion to the training rows (several partner sets per held-aside source cell where
    # training has them), so that the validation loss is not the noise of a handful of rows.
    validation = pair(np.flatnonzero(held), int(round(min_rows * val_fraction)))
    return np.concatenate([pairs, validation]), len(validation)


OT_PCS = 30


OT_FIT_CELLS = 20_000


def _pairing_coordinates(view: MatrixRows, count_kind: str, seed: int, chunk_size: int) -> np.ndarray:
    """``(n_cells, <= OT_PCS)`` float32 PCA coordinates of log-normalised training cells, for OT pairing.

    The PCA is fitted on at most ``OT_FIT_CELLS`` seeded cells and every cell is projected block by block, so
    memory stays bounded by the block and the coordinates (120 bytes a cell).
    """
    from sctrace.data.pca import fit_pca

    n_cells = view.shape[0]
    fit_rows = capped_rows(np.arange(n_cells), OT_FIT_CELLS, seed)
    blocks = []
    for start in range(0, n_cells, chunk_size):
        chosen = fit_rows[(fit_rows >= start) & (fit_rows < start + chunk_size)] - start
        if chosen.size:
            blocks.append(sp.csr_matrix(log_normalize(view[start : start + chunk_size], count_kind))[chosen])
    pca = fit_pca(sp.vstack(blocks).tocsr(), OT_PCS)
    coordinates = np.empty((n_cells, pca.components.shape[0]), dtype=np.float32)
    for start in range(0, n_cells, chunk_size):
        coordinates[start : start + chunk_size] = pca.transform(log_normalize(view[start : start + chunk_size], count_kind))
    return coordinates
