"""How generated cells' values are drawn from the count decoder's distributions (``count_sampling``): ``iid``,
each value on its own; ``stratified``, levels from a Latin hypercube per block of cells (:class:`StratifiedLevels`);
``copula``, those levels re-ordered across cells so genes co-vary as in the nearest times' training cells
(:class:`GeneCopula`).

The copula: gene-gene dependence for generated cells, a Gaussian copula of the training cells imposed by rank
(Iman-Conover).

Why: the count decoder gives nearly one profile per time point (BENCHMARKS.md, "The count decoder barely tells
cells apart"), so values drawn gene by gene from it have the right marginals but no co-variation between genes:
cells that no real cell resembles, which per-gene EMD and the mean scores cannot see (``gene-gene r`` can). This
module keeps each gene's drawn values and only re-orders them across the generated cells, so that their ranks
follow normal draws with the gene-gene correlation of the training cells at the nearest observed times (the two
neighbours, mixed by distance, for a time between them). It is the construction of scDesign2/3 (marginals +
Gaussian copula) applied to the model's marginals, with Iman and Conover's (1982) rank re-ordering so that the
stratified per-gene levels stay exactly as drawn. Written here because no maintained library does rank-based
copula re-ordering of a given sample; scipy supplies the ranks and the normal quantiles.

Only training cells enter (the corpus's), so a held-out time's cells are never read. The structure of an unseen
time is borrowed from its neighbours: what the transformer does not learn here, the data's own co-variation fills.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import scipy.special
import scipy.stats

from sctrace.data.arrays import dense
from sctrace.data.timecourse import capped_rows


def stratified_uniforms(n_cells: int, n_genes: int, rng: np.random.Generator) -> np.ndarray:
    """(n_cells, n_genes) levels in (0, 1) for :meth:`CountDecoder.sample`: a Latin hypercube (scipy's qmc).

    Why: each gene's levels fall one in each of ``n_cells`` equal strata, in an independent random order per
    gene, so every cell's level is still uniform, but the population of generated cells covers each gene's
    distribution evenly. With a hundred cells, independent draws leave per-gene means and spreads noisy
    enough to move the scores against real cells; stratified ones give what the model predicts.
    """
    from scipy.stats import qmc

    if n_cells < 1 or n_genes < 1:
        raise ValueError(f"need at least one cell and one gene, got {n_cells} x {n_genes}")
    return qmc.LatinHypercube(d=n_genes, rng=rng).random(n_cells)


STRATIFIED_BLOCK = 4096


class StratifiedLevels:
    """Levels for :meth:`CountDecoder.sample` over ``n_cells`` cells, one Latin hypercube per block of cells.

    Why blocks: the levels of a whole call would be one more float64 (cells x genes) array, 1.6 GB for 100,000
    cells x 2,000 genes; a block of ``block`` cells bounds that (65 MB at 2,000 genes) and keeps nearly all of the
    noise reduction, which is already large at a few hundred cells. Blocks are drawn from ``rng`` in order, as
    :meth:`rows` reaches them, so a call of at most ``block`` cells draws exactly
    ``stratified_uniforms(n_cells, n_genes, rng)``.
    """

    def __init__(self, n_cells: int, n_genes: int, rng: np.random.Generator, block: int = STRATIFIED_BLOCK,
                 transform: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None) -> None:
        if n_cells < 1 or n_genes < 1 or block < 1:
            raise ValueError(f"need at least one cell, gene and block row, got {n_cells} x {n_genes}, block {block}")
        self.n_cells, self.n_genes, self.block, self._rng = n_cells, n_genes, block, rng
        self._transform = transform  # applied to each block as drawn (e.g. the gene copula's re-ordering)
        self._drawn: dict[int, np.ndarray] = {}
        self._next_block = 0

    def _block(self, index: int) -> np.ndarray:
        while self._next_block <= index:
            size = min(self.block, self.n_cells - self._next_block * self.block)
            levels = stratified_uniforms(size, self.n_genes, self._rng)
            self._drawn[self._next_block] = levels if self._transform is None else self._transform(levels, self._rng)
            self._next_block += 1
        return self._drawn[index]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, n_genes) levels of cells ``start:stop``; earlier blocks are released once passed."""
        if not 0 <= start < stop <= self.n_cells:
            raise ValueError(f"rows {start}:{stop} outside 0:{self.n_cells}")
        first, last = start // self.block, (stop - 1) // self.block
        parts = []
        for index in range(first, last + 1):
            offset = index * self.block
            parts.append(self._block(index)[max(start - offset, 0) : min(stop - offset, self.block)])
        for index in [k for k in self._drawn if k < first]:
            del self._drawn[index]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


# Training cells per time point whose normal scores define the copula: enough for a correlation matrix whose
# leading structure is stable, few enough that (cells x genes) float32 per time stays a few MB.
COPULA_CELLS = 500


def normal_scores(values: np.ndarray) -> np.ndarray:
    """Each column's van der Waerden scores (ties averaged), standardised; a constant column becomes 0.

    Rank-based, so the depth normalisation and the log do not change them, and zero-inflated genes give a
    tied block rather than a spike.
    """
    values = np.asarray(values, dtype=np.float64)
    n_cells = values.shape[0]
    scores = scipy.special.ndtri((scipy.stats.rankdata(values, axis=0) - 0.5) / n_cells)
    scores -= scores.mean(axis=0)
    spread = scores.std(axis=0)
    return np.where(spread > 0, scores / np.where(spread > 0, spread, 1.0), 0.0)


def reorder_levels(levels: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Re-order each column of ``levels`` across rows to follow the ranks of the same column of ``normals``.

    Every column keeps exactly its values (so stratified levels stay stratified); the row with the largest
    normal draw of a gene gets that gene's largest level.
    """
    if levels.shape != normals.shape:
        raise ValueError(f"levels {levels.shape} and normals {normals.shape} differ in shape")
    out = np.empty_like(levels)
    np.put_along_axis(out, np.argsort(normals, axis=0, kind="stable"), np.sort(levels, axis=0), axis=0)
    return out


class GeneCopula:
    """Per observed time, factors ``F_t`` (cells x genes) with ``F_t.T @ F_t`` the genes' normal-score correlation.

    Normal draws with that correlation are ``W @ F_t`` for ``W`` of independent standard normals, which needs
    no decomposition of a (genes x genes) matrix and is exact even when there are fewer cells than genes.
    """

    def __init__(self, times: np.ndarray, factors: list[np.ndarray]):
        if len(times) != len(factors) or not len(times):
            raise ValueError("one factor per time point, and at least one time point")
        self.times = np.asarray(times, dtype=np.float64)
        # C order: safetensors writes the raw buffer, and a Fortran-ordered array would come back transposed.
        self.factors = [np.ascontiguousarray(f, dtype=np.float32) for f in factors]
        self.n_genes = self.factors[0].shape[1]
        # Each gene's variance under each factor (1, or 0 for a gene constant at that time), once, not per block.
        self._variances = [(f.astype(np.float64) ** 2).sum(axis=0) for f in self.factors]

    @classmethod
    def fit(cls, values, cell_times: np.ndarray, times, count_kind: str, seed: int = 0,
            max_cells: int = COPULA_CELLS) -> GeneCopula:
        """From training cells: ``values`` (n_cells, n_genes) counts or log-normalised values (sparse, dense, or
        anything that returns a sparse matrix when indexed by sorted rows, like an on-disk corpus).

        Counts are divided by each cell's total over these genes first, so that depth does not pass for co-variation.
        """
        rng = np.random.default_rng(seed)
        factors = []
        for time in times:
            rows = np.flatnonzero(np.isclose(cell_times, time))
            rows = capped_rows(rows, max_cells, rng)
            block = dense(values[rows], np.float64)
            if count_kind == "counts":
                totals = block.sum(axis=1, keepdims=True)
                block = block / np.where(totals > 0, totals, 1.0)
            factors.append(normal_scores(block) / np.sqrt(max(rows.size, 1)))
        return cls(np.asarray(times, dtype=np.float64), factors)

    def weights(self, time: float) -> list[tuple[int, float]]:
        """Observed time points and their weights for ``time``: the two around it by distance, else the nearest."""
        times = self.times
        if time <= times[0]:
            return [(0, 1.0)]
        if time >= times[-1]:
            return [(len(times) - 1, 1.0)]
        later = int(np.searchsorted(times, time, side="left"))
        if np.isclose(times[later], time):
            return [(later, 1.0)]
        fraction = (time - times[later - 1]) / (times[later] - times[later - 1])
        return [(later - 1, 1.0 - fraction), (later, fraction)]

    def normals(self, time: float, n_cells: int, rng: np.random.Generator) -> np.ndarray:
        """(n_cells, n_genes) normal draws with the (mixed) gene-gene correlation at ``time``.

        A gene constant in the training cells of those times gets independent draws (its order is then random).
        """
        draws = np.zeros((n_cells, self.n_genes), dtype=np.float64)
        variance = np.zeros(self.n_genes)
        for index, weight in self.weights(time):
            factor = self.factors[index]
            draws += np.sqrt(weight) * (rng.standard_normal((n_cells, factor.shape[0])) @ factor)
            variance += weight * self._variances[index]
        flat = variance < 1e-8
        if flat.any():
            draws[:, flat] = rng.standard_normal((n_cells, int(flat.sum())))
        return draws

    def save(self, path: str | os.PathLike) -> None:
        from safetensors.numpy import save_file

        tensors: dict[str, np.ndarray] = {"times": self.times, **{f"factor_{k}": f for k, f in enumerate(self.factors)}}
        save_file(tensors, str(path), metadata={"format": "sctrace-copula", "version": "1"})

    @classmethod
    def load(cls, path: str | os.PathLike) -> GeneCopula:
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
        times = tensors["times"]
        return cls(times, [tensors[f"factor_{k}"] for k in range(len(times))])
