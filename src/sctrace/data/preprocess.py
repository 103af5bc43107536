"""Log-normalisation and HVG selection (scanpy's criterion, in memory or streamed), fitted on training cells only."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from sctrace._errors import SctraceInputError, option_name

TARGET_SUM = 1e4
# `genes: auto` models every expressed gene up to this many, the n_top_genes most variable above it. A gene costs
# one vocabulary row and one count-head output (d_model and count_hidden wide), so 3,000 genes keep a cpu-small
# step within about a third of its 1,000-gene time, while data sets of 20,000 genes (FPKM/TPM tables, whole
# transcriptomes) still get a selection instead of a vocabulary mostly of noise.
AUTO_ALL_GENES = 3000
GENE_CHOICES = ("auto", "hvg", "all")


def log_normalize(matrix, count_kind: str = "counts"):
    """Return log1p(normalize_total(matrix, 1e4)) as float32; values already log-normalised pass through.

    Parameters
    ----------
    matrix
        (n_cells, n_genes) raw counts (sparse or dense), or log-normalised values when ``count_kind='lognorm'``.
    count_kind
        ``"counts"`` or ``"lognorm"``.
    """
    if count_kind == "lognorm":
        return matrix.astype(np.float32) if sp.issparse(matrix) else np.asarray(matrix, dtype=np.float32)
    adata = ad.AnnData(sp.csr_matrix(matrix, dtype=np.float32) if sp.issparse(matrix) else np.asarray(matrix, np.float32))
    sc.pp.normalize_total(adata, target_sum=TARGET_SUM)
    sc.pp.log1p(adata)
    return adata.X


def select_hvgs(lognorm, gene_names, n_top_genes: int = 2000) -> np.ndarray:
    """Pick highly variable genes (scanpy 'seurat' flavour) and return their column indices in input order.

    The caller passes only training cells, so held-out cells never influence the choice. Where the data
    have no more genes than asked for, every gene that is expressed in some training cell is kept.
    """
    gene_names = np.asarray(gene_names).astype(str)
    adata = ad.AnnData(lognorm)
    adata.var_names = gene_names
    expressed = np.asarray((adata.X > 0).sum(axis=0)).ravel() > 0
    if expressed.sum() <= n_top_genes:
        return np.flatnonzero(expressed)
    adata = adata[:, expressed].copy()
    sc.pp.highly_variable_genes(adata, n_top_genes=n_top_genes, flavor="seurat")
    chosen = set(adata.var_names[adata.var["highly_variable"].to_numpy()])
    return np.flatnonzero(np.isin(gene_names, list(chosen)))


def select_hvgs_streamed(
    matrix, n_top_genes: int = 2000, count_kind: str = "counts", chunk_size: int = 16_384
) -> np.ndarray:
    """The genes :func:`select_hvgs` picks on ``log_normalize(matrix)``, from one pass over blocks of cells.

    scanpy's 'seurat' flavour needs only each gene's mean and variance of ``expm1`` of the log-normalised
    values, and :func:`log_normalize` treats every cell on its own, so blocks of cells are log-normalised
    one at a time and per-gene sums and sums of squares are accumulated; memory does not grow with the
    number of cells. The criterion is then applied as scanpy does (:func:`_seurat_top_genes`). Sums are
    float64 as in scanpy, only added in another order, so a gene could change sides only if its normalised
    dispersion tied another's at the cut-off to about 1e-15.

    Parameters
    ----------
    matrix
        ``(n_cells, n_genes)`` raw counts (or log-normalised values for ``count_kind='lognorm'``) of the
        training cells: anything whose ``matrix[start:stop]`` gives rows, in memory or backed
        (:class:`sctrace.data.io.MatrixRows`).
    n_top_genes, count_kind
        As for :func:`select_hvgs` and :func:`log_normalize`.
    chunk_size
        Cells read at a time.

    Returns
    -------
    np.ndarray
        ``(n_selected,)`` int64 column indices, increasing.
    """
    n_cells, n_genes = matrix.shape
    n_expressed = np.zeros(n_genes, dtype=np.int64)
    sums = np.zeros(n_genes, dtype=np.float64)
    squares = np.zeros(n_genes, dtype=np.float64)
    for start in range(0, n_cells, chunk_size):
        lognorm = sp.csr_matrix(log_normalize(matrix[start : start + chunk_size], count_kind))
        genes = lognorm.indices
        n_expressed += np.bincount(genes[lognorm.data > 0], minlength=n_genes)
        values = np.expm1(lognorm.data)  # the seurat flavour works on expm1 of the float32 values
        sums += np.bincount(genes, weights=values, minlength=n_genes)
        # squared in float32 and summed in float64, as scanpy's kernel does
        squares += np.bincount(genes, weights=values * values, minlength=n_genes)
    expressed = np.flatnonzero(n_expressed)
    if expressed.size <= n_top_genes:
        return expressed
    mean = sums[expressed] / n_cells
    var = squares[expressed] / n_cells - mean**2
    if n_cells > 1:
        var *= n_cells / (n_cells - 1)  # scanpy's unbiased variance
    return expressed[_seurat_top_genes(mean, var, n_top_genes)]


def _seurat_top_genes(mean: np.ndarray, var: np.ndarray, n_top_genes: int, n_bins: int = 20) -> np.ndarray:
    """scanpy's 'seurat' choice of the ``n_top_genes`` most variable genes from their moments.

    ``mean`` and ``var`` are ``(n_genes,)`` float64 moments of ``expm1`` of log-normalised values. The
    dispersion ``log(var / mean)`` is standardised within 20 equal-width bins of ``log1p(mean)`` (a bin
    holding one gene gets normalised dispersion 1), and genes at or above the ``n_top_genes``-th highest
    normalised dispersion are kept (ties may keep a few more, as in scanpy).

    Returns
    -------
    np.ndarray
        ``(n_genes,)`` bool, True for the chosen genes.
    """
    mean = np.where(mean == 0, 1e-12, mean)
    with np.errstate(divide="ignore", invalid="ignore"):
        dispersion = var / mean
        dispersion[dispersion == 0] = np.nan
        dispersion = np.log(dispersion)
    genes = pd.DataFrame({"dispersion": dispersion, "bin": pd.cut(np.log1p(mean), bins=n_bins)})
    stats = genes.groupby("bin", observed=True)["dispersion"].agg(avg="mean", dev="std")
    one_gene = stats["dev"].isnull()
    stats.loc[one_gene, "dev"] = stats.loc[one_gene, "avg"]
    stats.loc[one_gene, "avg"] = 0
    per_gene = stats.loc[genes["bin"]]
    normalised = (dispersion - per_gene["avg"].to_numpy()) / per_gene["dev"].to_numpy()
    ranked = np.sort(normalised[~np.isnan(normalised)])[::-1]
    if ranked.size == 0:  # every gene has zero variance: none is variable
        return np.zeros(mean.size, dtype=bool)
    cutoff = ranked[min(n_top_genes, ranked.size) - 1]
    return np.nan_to_num(normalised, nan=-np.inf) >= cutoff


def read_gene_choice(genes: str) -> str | list[str]:
    """The ``genes`` setting as prepare_corpus takes it: ``"auto"``, ``"hvg"``, ``"all"``, or the names in a file.

    A file holds one gene name per line (blank lines and lines starting with ``#`` are skipped).
    """
    if genes in GENE_CHOICES:
        return genes
    path = Path(genes)
    if not path.is_file():
        raise SctraceInputError(f"{option_name('genes')} takes auto, hvg, all or a file of gene names, one per line; "
                                f"{genes!r} is none of them.")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not names:
        raise SctraceInputError(f"the gene file {genes} lists no gene; put one gene name per line.")
    return list(dict.fromkeys(names))


def chosen_gene_columns(gene_names, choice: str | list[str], select: Callable[[int], np.ndarray],
                        n_top_genes: int) -> np.ndarray:
    """Column indices of the modelled genes, increasing: one rule for the model and the benchmark harness.

    ``select(n)``: the HVG selection of the training cells for ``n`` genes (:func:`select_hvgs` or
    :func:`select_hvgs_streamed`), which returns every expressed gene when ``n`` is at least their number.
    ``"hvg"``: the ``n_top_genes`` most variable; ``"all"``: every gene expressed in a training cell; ``"auto"``:
    ``"all"`` while that is at most :data:`AUTO_ALL_GENES` genes, else ``"hvg"`` (a user's few thousand genes are
    all predicted, a whole transcriptome is not); a list: its expressed genes (a gene never seen in a training
    cell has no rank to take and is left out, with a warning).
    """
    gene_names = np.asarray(gene_names).astype(str)
    if isinstance(choice, str):
        if choice == "hvg":
            return select(n_top_genes)
        expressed = select(len(gene_names))
        if choice == "auto" and len(expressed) > AUTO_ALL_GENES:
            return select(n_top_genes)
        return expressed
    listed = np.isin(gene_names, choice)
    missing = sorted(set(choice) - set(gene_names[listed]))
    if missing:
        raise SctraceInputError(f"{len(missing)} gene(s) of the gene list are not in the data (e.g. "
                                f"{', '.join(missing[:5])}); list genes of var_names only.")
    expressed = np.zeros(len(gene_names), dtype=bool)
    expressed[select(len(gene_names))] = True
    unexpressed = listed & ~expressed
    if unexpressed.any():
        warnings.warn(f"{int(unexpressed.sum())} listed gene(s) are never expressed in a training cell and are left "
                      f"out (e.g. {', '.join(gene_names[unexpressed][:5])}).", UserWarning, stacklevel=3)
    return np.flatnonzero(listed & expressed)
