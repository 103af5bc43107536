"""A built-in simulated single-cell time course with branching lineages and non-linear gene dynamics.

The simulation is a small generative model, drawn in three independent random streams derived from
one seed:

1. genes: each gene belongs to one expression *program* (``housekeeping``, ``early``, ``transient``,
   ``lineage_A``, ``lineage_B``, ``late``) with a baseline level, a program-shaped log-fold change along
   pseudotime, a negative-binomial inverse dispersion and, for some genes, a donor-specific scaling;
2. cells: each cell belongs to one sample (time point x donor), has a pseudotime spread around its
   time point's position, a branch point at which it commits, a fate (lineage A or B, with donor-specific
   odds) and a log-normal size factor;
3. counts: gamma-Poisson (negative-binomial) counts with extra dropout of low-expressed entries, drawn in
   fixed blocks of cells, each block with its own random stream, so the result does not depend on how
   many cells are generated at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctrace._errors import SctraceInputError
from sctrace.data._csr_steps import assemble_csr, row_steps

__all__ = ["simulate_timecourse"]

PROGRAMS = ("housekeeping", "early", "transient", "lineage_A", "lineage_B", "late")
CELL_TYPES = ("progenitor", "intermediate", "lineage_A", "lineage_B")
LINEAGES = ("lineage_A", "lineage_B")

# Share of the genes in each time-varying program; the rest are housekeeping. About a third of the
# genes vary in time, as among highly variable genes of a real differentiation time course.
_PROGRAM_FRACTIONS = {"early": 0.06, "transient": 0.08, "lineage_A": 0.065, "lineage_B": 0.065, "late": 0.05}
_NAME_PREFIXES = {
    "housekeeping": "Gene",
    "early": "Early_",
    "transient": "Trans_",
    "lineage_A": "LinA_",
    "lineage_B": "LinB_",
    "late": "Late_",
}
_MIN_GENES = 100  # so that every program has at least a few genes
_MIN_CELLS_PER_SAMPLE = 10

# Every gene's highest expected count (at size factor 1) is log-normal, scaled so these sum to
# _BASELINE_LIBRARY_SIZE whatever n_genes; programs are never all on at once, so with dropout the median
# library is ~2,500-3,000 counts. The wide spread gives many low-expressed genes.
_BASELINE_LIBRARY_SIZE = 10000.0
_BASELINE_LOG_SD = 1.8
# Time-varying genes at their peak sit this many log units above housekeeping genes, as detected markers do.
_MARKER_LOG_BOOST = 2.0
_LIBRARY_SIZE_LOG_SD = 0.4
# Inverse dispersion theta (variance = mu + mu^2 / theta), log-normal around e ~ 2.7 as in UMI data.
_LOG_THETA_MEAN, _LOG_THETA_SD = 1.0, 0.5
# Extra dropout of a non-zero count with probability sigmoid(-(log mu - midpoint) * shape), so mostly
# low-expressed entries drop out.
_DROPOUT_MIDPOINT, _DROPOUT_SHAPE = math.log(3.0), 0.7

_PSEUDOTIME_SPREAD = 0.035  # sd around the time point's position in [0, 1]: neighbours overlap a little
_BRANCH_POINT_MEAN, _BRANCH_POINT_SD = 0.35, 0.05
_COMMITMENT_WIDTH = 0.04
_LINEAGE_A_FRACTION_SD = 0.05
_DONOR_SCALED_FRACTION, _DONOR_LOG_SCALE_SD = 0.15, 0.5

# Cells per random stream of the count draws. Fixed, so chunk_size never changes the result; small, so
# the dense (cells, genes) arrays of one step stay small whatever chunk_size is.
_BLOCK_SIZE = 1024
_GENE_STREAM, _CELL_STREAM, _COUNT_STREAM = 0, 1, 2


@dataclass(frozen=True)
class _Genes:
    """Per-gene parameters; every array has length n_genes except ``donor_log_scale``."""

    program: np.ndarray  # (n_genes,) index into PROGRAMS
    log_baseline: np.ndarray  # (n_genes,) log expected count at size factor 1, before program changes
    amplitude: np.ndarray  # (n_genes,) largest log-fold change of the program
    center: np.ndarray  # (n_genes,) pseudotime of the switch or peak (lineage genes: delay after branching)
    width: np.ndarray  # (n_genes,) pseudotime scale of the switch or peak
    theta: np.ndarray  # (n_genes,) negative-binomial inverse dispersion
    donor_log_scale: np.ndarray  # (n_genes, n_donors) log multiplier per donor; 0 for most genes


@dataclass(frozen=True)
class _Cells:
    """Per-cell latent state; every array has length n_cells."""

    time_index: np.ndarray  # int, index into times
    donor_index: np.ndarray  # int
    pseudotime: np.ndarray  # float in [0, 1]
    branch_point: np.ndarray  # float, pseudotime at which the cell commits to its fate
    fate: np.ndarray  # int, index into LINEAGES
    log_size_factor: np.ndarray  # float


def simulate_timecourse(
    n_cells: int = 3000,
    n_genes: int = 1200,
    times: Sequence[float] = (0.0, 1.0, 2.5, 4.0, 6.0, 8.5),
    n_donors: int = 2,
    seed: int = 0,
    chunk_size: int = 100_000,
) -> anndata.AnnData:
    """Simulate a branching differentiation time course with raw UMI-like counts.

    Progenitors advance in pseudotime with real time, commit progressively to one of two lineages and
    switch gene programs on and off non-linearly: ``transient`` genes rise and fall (a gaussian bump in
    pseudotime), so a middle time point is not the average of its neighbours.

    Parameters
    ----------
    n_cells
        Number of cells; at least 10 per sample (time point x donor). Samples get uneven sizes.
    n_genes
        Number of genes, at least 100. About a third vary in time; the rest are housekeeping genes of
        constant mean spanning a wide range of levels.
    times
        Real time of each measured time point, strictly increasing, at least two. Pseudotime positions are
        the times rescaled to [0, 1], so irregular spacing carries into the dynamics.
    n_donors
        Number of donors (at least 1). Donors differ by a scaling of some genes and by their odds of
        lineage A.
    seed
        Non-negative integer; the same seed gives the same data set, whatever ``chunk_size``.
    chunk_size
        The most cells whose dense (cells, genes) arrays are held at once, to bound peak memory. Cells are
        also drawn in internal blocks of 1,024 cells with their own random streams, so the effective step
        is ``min(chunk_size, 1024)``; the result never depends on ``chunk_size``.

    Returns
    -------
    anndata.AnnData
        ``X``: raw counts, scipy CSR int32, shape (n_cells, n_genes).
        ``obs``: ``time`` (float, real time), ``cell_type`` (categorical: progenitor, intermediate,
        lineage_A, lineage_B), ``donor`` (categorical), ``pseudotime`` (float in [0, 1]) and ``lineage``
        (categorical: the branch the cell is on, or for progenitors the one it will take).
        ``var``: ``program`` (categorical). Marker genes are named by program (``Early_0001``,
        ``Trans_0001``, ``LinA_0001``, ``LinB_0001``, ``Late_0001``), housekeeping genes ``Gene0001``.
        ``varm['donor_log_scale']``: (n_genes, n_donors) true log multiplier of each donor.
        ``uns['simulation']``: the parameters (JSON-safe).
    """
    time_values = _validate(n_cells, n_genes, times, n_donors, seed, chunk_size)
    n_cells, n_genes, n_donors, seed, chunk_size = map(int, (n_cells, n_genes, n_donors, seed, chunk_size))
    genes = _draw_genes(_stream(seed, _GENE_STREAM), n_genes, n_donors)
    cell_rng = _stream(seed, _CELL_STREAM)
    lineage_a_fraction = _draw_lineage_a_fraction(cell_rng, n_donors)
    cells = _draw_cells(cell_rng, n_cells, time_values, n_donors, lineage_a_fraction)
    counts = _sample_counts(genes, cells, seed, chunk_size)

    obs = pd.DataFrame(
        {
            "time": time_values[cells.time_index],
            "cell_type": pd.Categorical.from_codes(_cell_type_codes(cells), categories=list(CELL_TYPES)),
            "donor": pd.Categorical.from_codes(
                cells.donor_index, categories=[f"donor{d + 1}" for d in range(n_donors)]
            ),
            "pseudotime": cells.pseudotime,
            "lineage": pd.Categorical.from_codes(cells.fate, categories=list(LINEAGES)),
        },
        index=pd.Index(_numbered_names("Cell", np.arange(1, n_cells + 1), n_cells), dtype=object),
    )
    var = pd.DataFrame(
        {"program": pd.Categorical.from_codes(genes.program, categories=list(PROGRAMS))},
        index=pd.Index(_gene_names(genes.program), dtype=object),
    )
    program_sizes = np.bincount(genes.program, minlength=len(PROGRAMS))
    simulation = {
        "generator": "sctrace.data.simulate.simulate_timecourse",
        "seed": seed,
        "n_cells": n_cells,
        "n_genes": n_genes,
        "n_donors": n_donors,
        "times": [float(t) for t in time_values],
        "program_sizes": {name: int(size) for name, size in zip(PROGRAMS, program_sizes)},
        "lineage_A_fraction_by_donor": [float(f) for f in lineage_a_fraction],
        "pseudotime_spread": _PSEUDOTIME_SPREAD,
        "branch_point_mean": _BRANCH_POINT_MEAN,
        "branch_point_sd": _BRANCH_POINT_SD,
        "baseline_library_size": _BASELINE_LIBRARY_SIZE,
        "library_size_log_sd": _LIBRARY_SIZE_LOG_SD,
        "dropout_midpoint": _DROPOUT_MIDPOINT,
        "dropout_shape": _DROPOUT_SHAPE,
        "donor_scaled_fraction": _DONOR_SCALED_FRACTION,
        "donor_log_scale_sd": _DONOR_LOG_SCALE_SD,
    }
    return anndata.AnnData(
        X=counts,
        obs=obs,
        var=var,
        varm={"donor_log_scale": genes.donor_log_scale},
        uns={"simulation": simulation},
    )


def _validate(
    n_cells: int, n_genes: int, times: Sequence[float], n_donors: int, seed: int, chunk_size: int
) -> np.ndarray:
    """Check the arguments and return the times as a float64 array."""
    for name, value, minimum in (
        ("n_genes", n_genes, _MIN_GENES),
        ("n_donors", n_donors, 1),
        ("seed", seed, 0),
        ("chunk_size", chunk_size, 1),
        ("n_cells", n_cells, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
            raise SctraceInputError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    time_values = np.asarray(times)
    if time_values.dtype.kind not in "iuf" or time_values.ndim != 1:
        raise SctraceInputError(f"times must be a flat sequence of real numbers, got {times!r}.")
    time_values = time_values.astype(np.float64)
    if time_values.size < 2 or not np.isfinite(time_values).all():
        raise SctraceInputError(f"times must hold at least two finite numbers, got {time_values.tolist()}.")
    if (np.diff(time_values) <= 0).any():
        raise SctraceInputError(
            f"times must be strictly increasing without repeats, got {time_values.tolist()}; "
            "pass them sorted."
        )
    n_samples = time_values.size * n_donors
    if n_cells < _MIN_CELLS_PER_SAMPLE * n_samples:
        raise SctraceInputError(
            f"n_cells={n_cells} is too few for {time_values.size} time points x {n_donors} donors; "
            f"pass n_cells >= {_MIN_CELLS_PER_SAMPLE * n_samples} ({_MIN_CELLS_PER_SAMPLE} cells per sample)."
        )
    return time_values


def _stream(seed: int, *key: int) -> np.random.Generator:
    """An independent generator for one part of the simulation, derived from the seed and a fixed key."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _draw_genes(rng: np.random.Generator, n_genes: int, n_donors: int) -> _Genes:
    """Draw the program and expression parameters of every gene (programs in contiguous blocks)."""
    sizes = {name: round(fraction * n_genes) for name, fraction in _PROGRAM_FRACTIONS.items()}
    sizes = {"housekeeping": n_genes - sum(sizes.values()), **sizes}
    program = np.repeat(np.arange(len(PROGRAMS)), [sizes[name] for name in PROGRAMS])

    # (amplitude range, center range, width range) per program; see _log_fold_change for their meaning.
    # Transient peaks spread over the course, so every middle time point has genes peaking near it.
    shapes = {
        "housekeeping": ((0.0, 0.0), (0.0, 0.0), (1.0, 1.0)),
        "early": ((1.5, 3.0), (0.15, 0.45), (0.04, 0.08)),
        "transient": ((2.0, 3.5), (0.1, 0.85), (0.05, 0.09)),
        "lineage_A": ((2.0, 3.5), (0.0, 0.25), (0.04, 0.08)),
        "lineage_B": ((2.0, 3.5), (0.0, 0.25), (0.04, 0.08)),
        "late": ((1.5, 3.0), (0.55, 0.85), (0.04, 0.08)),
    }
    low = np.array([[shapes[name][k][0] for k in range(3)] for name in PROGRAMS])[program]
    high = np.array([[shapes[name][k][1] for k in range(3)] for name in PROGRAMS])[program]
    amplitude, center, width = rng.uniform(low, high).T

    # Drawing the peak (not the baseline) keeps switched-on programs from swamping the library; a
    # program's baseline is then its off state, amplitude below the peak.
    log_peak = rng.normal(0.0, _BASELINE_LOG_SD, n_genes) + _MARKER_LOG_BOOST * (program != 0)
    log_peak += math.log(_BASELINE_LIBRARY_SIZE) - np.log(np.exp(log_peak).sum())
    log_baseline = log_peak - amplitude
    theta = np.exp(rng.normal(_LOG_THETA_MEAN, _LOG_THETA_SD, n_genes))
    donor_scaled = rng.random(n_genes) < _DONOR_SCALED_FRACTION
    donor_log_scale = rng.normal(0.0, _DONOR_LOG_SCALE_SD, (n_genes, n_donors)) * donor_scaled[:, None]
    return _Genes(program, log_baseline, amplitude, center, width, theta, donor_log_scale)


def _draw_lineage_a_fraction(rng: np.random.Generator, n_donors: int) -> np.ndarray:
    """Each donor's probability that a cell takes lineage A: near one half, slightly donor-specific."""
    return np.clip(0.5 + rng.normal(0.0, _LINEAGE_A_FRACTION_SD, n_donors), 0.3, 0.7)


def _draw_cells(
    rng: np.random.Generator,
    n_cells: int,
    time_values: np.ndarray,
    n_donors: int,
    lineage_a_fraction: np.ndarray,
) -> _Cells:
    """Draw every cell's sample, pseudotime, branch point, fate and size factor, ordered by sample."""
    n_samples = time_values.size * n_donors
    # Uneven sample sizes as in real experiments, with a floor of _MIN_CELLS_PER_SAMPLE each.
    shares = rng.gamma(8.0, size=n_samples)
    extra = (n_cells - _MIN_CELLS_PER_SAMPLE * n_samples) * shares / shares.sum()
    sample_sizes = _MIN_CELLS_PER_SAMPLE + np.floor(extra).astype(np.int64)
    remainder = n_cells - sample_sizes.sum()
    sample_sizes[np.argsort(np.floor(extra) - extra, kind="stable")[:remainder]] += 1
    sample = np.repeat(np.arange(n_samples), sample_sizes)
    time_index, donor_index = np.divmod(sample, n_donors)

    position = (time_values - time_values[0]) / (time_values[-1] - time_values[0])
    pseudotime = position[time_index] + rng.normal(0.0, _PSEUDOTIME_SPREAD, n_cells)
    # Reflect at the ends rather than clip, so no mass piles up at exactly 0 or 1.
    pseudotime = np.clip(1.0 - np.abs(1.0 - np.abs(pseudotime)), 0.0, 1.0)
    branch_point = rng.normal(_BRANCH_POINT_MEAN, _BRANCH_POINT_SD, n_cells)
    fate = (rng.random(n_cells) >= lineage_a_fraction[donor_index]).astype(np.int64)
    log_size_factor = rng.normal(0.0, _LIBRARY_SIZE_LOG_SD, n_cells)
    return _Cells(time_index, donor_index, pseudotime, branch_point, fate, log_size_factor)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # tanh form never overflows


def _commitment(cells: _Cells) -> np.ndarray:
    """How far each cell has committed to its fate, 0 (progenitor) to 1 (committed): (n_cells,)."""
    return _sigmoid((cells.pseudotime - cells.branch_point) / _COMMITMENT_WIDTH)


def _cell_type_codes(cells: _Cells) -> np.ndarray:
    """Index into CELL_TYPES: progenitor below 20 % commitment, intermediate below 80 %, else the fate."""
    commitment = _commitment(cells)
    return np.where(commitment < 0.2, 0, np.where(commitment < 0.8, 1, 2 + cells.fate))


def _log_fold_change(
    genes: _Genes, pseudotime: np.ndarray, branch_point: np.ndarray, fate: np.ndarray
) -> np.ndarray:
    """Log-fold change of each gene's mean over its baseline, by program.

    Parameters
    ----------
    genes
        Gene parameters (n_genes each).
    pseudotime, branch_point, fate
        (cells,) state of the cells.

    Returns
    -------
    np.ndarray
        (cells, n_genes) float64. ``early``: a * (1 - sigmoid((s - c) / w)), switching off;
        ``transient``: a * exp(-(s - c)^2 / (2 w^2)), a bump; ``late``: a * sigmoid((s - c) / w);
        ``lineage_X``: a * sigmoid((s - b - c) / w) in cells of fate X only, c after the cell's branch
        point b; ``housekeeping``: 0. Here s is pseudotime, a amplitude, c center, w width.
    """
    log_fold = np.zeros((pseudotime.size, genes.program.size))
    s = pseudotime[:, None]
    for code, name in enumerate(PROGRAMS):
        columns = np.flatnonzero(genes.program == code)
        a, c, w = genes.amplitude[columns], genes.center[columns], genes.width[columns]
        if name == "early":
            log_fold[:, columns] = a * (1.0 - _sigmoid((s - c) / w))
        elif name == "transient":
            log_fold[:, columns] = a * np.exp(-0.5 * ((s - c) / w) ** 2)
        elif name == "late":
            log_fold[:, columns] = a * _sigmoid((s - c) / w)
        elif name in LINEAGES:
            on_branch = (fate == LINEAGES.index(name))[:, None]
            log_fold[:, columns] = a * _sigmoid((s - branch_point[:, None] - c) / w) * on_branch
    return log_fold


def _log_mean(genes: _Genes, cells: _Cells, rows: slice) -> np.ndarray:
    """Log expected count of every gene in the cells ``rows``: (cells, n_genes) float64."""
    return (
        genes.log_baseline
        + _log_fold_change(genes, cells.pseudotime[rows], cells.branch_point[rows], cells.fate[rows])
        + genes.donor_log_scale.T[cells.donor_index[rows]]
        + cells.log_size_factor[rows, None]
    )


def _sample_counts(genes: _Genes, cells: _Cells, seed: int, chunk_size: int) -> sp.csr_matrix:
    """Draw zero-inflated negative-binomial counts step by step and assemble one int32 CSR matrix.

    Each block of _BLOCK_SIZE cells has three generators (gamma, Poisson, dropout) that are consumed
    element by element in row-major order, so splitting a block across steps draws the same numbers.
    """
    n_cells, n_genes = cells.pseudotime.size, genes.program.size
    data_parts, index_parts, row_nnz_parts = [], [], []
    for start, stop in row_steps(n_cells, chunk_size, _BLOCK_SIZE):
        if start % _BLOCK_SIZE == 0:
            block = np.random.SeedSequence(seed, spawn_key=(_COUNT_STREAM, start // _BLOCK_SIZE))
            gamma_rng, poisson_rng, dropout_rng = (np.random.default_rng(s) for s in block.spawn(3))
        log_mean = _log_mean(genes, cells, slice(start, stop))
        # Gamma-Poisson mixture = negative binomial with mean mu and inverse dispersion theta.
        rate = gamma_rng.gamma(genes.theta, np.exp(log_mean) / genes.theta)
        counts = poisson_rng.poisson(rate)
        rows, columns = np.nonzero(counts)
        dropout = _sigmoid(-_DROPOUT_SHAPE * (log_mean[rows, columns] - _DROPOUT_MIDPOINT))
        kept = dropout_rng.random(rows.size) >= dropout
        rows, columns = rows[kept], columns[kept]
        data_parts.append(counts[rows, columns].astype(np.int32))
        index_parts.append(columns.astype(np.int32))
        row_nnz_parts.append(np.bincount(rows, minlength=stop - start))
    return assemble_csr(data_parts, index_parts, np.concatenate(row_nnz_parts), n_genes)


def _gene_names(program: np.ndarray) -> list[str]:
    """Names numbered within each program, prefixed by it, e.g. Gene0001, Trans_0001, LinA_0001."""
    names = np.empty(program.size, dtype=object)
    for code, name in enumerate(PROGRAMS):
        members = np.flatnonzero(program == code)
        names[members] = _numbered_names(_NAME_PREFIXES[name], np.arange(1, members.size + 1), members.size)
    return names.tolist()


def _numbered_names(prefix: str, numbers: np.ndarray, largest: int) -> list[str]:
    """prefix + zero-padded number, at least four digits wide."""
    width = max(4, len(str(largest)))
    return [f"{prefix}{n:0{width}d}" for n in numbers.tolist()]
