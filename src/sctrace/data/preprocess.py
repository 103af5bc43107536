"""Log-normalisation and HVG selection with scanpy, fitted on training cells only."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp

TARGET_SUM = 1e4


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
