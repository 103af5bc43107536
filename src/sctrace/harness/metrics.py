"""Distribution and sequence metrics comparing generated cells with the real cells of a time point.

Every expression metric takes log-normalised values (``normalize_total`` to 1e4, then ``log1p``) over the same
genes in the same order: ``pred`` is (n_pred, n_genes), ``real`` is (n_real, n_genes), either a numpy array or
a scipy sparse matrix, and the two sets may differ in size. Sparse input is only densified where a metric needs
dense rows (MMD on its subsample, EMD a block of genes at a time); means and PCA fits work on it directly.

The ROUGE metrics compare paired gene-token sequences (the rank-value tokens of a generated cell and of the
real cell it stands for).
"""

from __future__ import annotations

from sctrace._errors import SctraceInputError
from sctrace.data.pca import PCAProjection, fit_pca
from sctrace.harness.classifier_test import classifier_auc
from sctrace.harness.distances import (
    MMD_GAMMAS,
    _as_expression_pair,
    e_distance,
    emd,
    emd_per_gene,
    gene_correlation,
    mmd_rbf,
    pearson_delta,
    pearson_mean,
    r2_mean,
)
from sctrace.harness.fidelity import per_cell_fidelity
from sctrace.harness.rouge import rouge1, rouge_l

# PCAProjection and fit_pca live in sctrace.data.pca (OT pairing uses them too); the E-distance projects with them.
__all__ = [
    "MMD_GAMMAS",
    "PCAProjection",
    "classifier_auc",
    "e_distance",
    "emd",
    "emd_per_gene",
    "fit_pca",
    "gene_correlation",
    "mmd_rbf",
    "pearson_delta",
    "pearson_mean",
    "per_cell_fidelity",
    "r2_mean",
    "rouge1",
    "rouge_l",
    "score",
]


def score(pred, real, reference=None, genes=None, per_gene: bool = False, mmd_max_cells: int | None = 2000,
          seed: int = 0) -> dict:
    """Every expression metric that applies, under stable names.

    Parameters
    ----------
    pred
        (n_pred, n_genes) generated cells, log-normalised, dense or sparse.
    real
        (n_real, n_genes) real cells of the same time point.
    reference
        (n_reference, n_genes) cells of the previous observed time point; adds ``pearson_delta``.
    genes
        (n_genes,) gene names, needed for ``per_gene``.
    per_gene
        Add ``emd_per_gene``: {gene name: EMD}.
    mmd_max_cells, seed
        Passed to :func:`mmd_rbf`.

    Returns
    -------
    dict
        ``mmd``, ``emd``, ``e_distance``, ``pearson``, ``r2``, ``gene_corr`` (:func:`gene_correlation`; with two
        cells or more in each set), ``c2st_auc`` (:func:`classifier_auc`; with five or more), and ``pearson_delta`` when ``reference`` is given, ``emd_per_gene`` when
        ``per_gene``.
    """
    pred, real = _as_expression_pair(pred, real)
    if per_gene:
        if genes is None or len(genes) != pred.shape[1]:
            raise SctraceInputError(
                f"per_gene=True needs one gene name per column ({pred.shape[1]}) but got "
                f"{'none' if genes is None else len(genes)}; pass genes=<the gene names>."
            )
    gene_distances = emd_per_gene(pred, real)
    scores: dict[str, float | dict[str, float]] = {
        "mmd": mmd_rbf(pred, real, max_cells=mmd_max_cells, seed=seed),
        "emd": float(gene_distances.mean()),
        "e_distance": e_distance(pred, real),
        "pearson": pearson_mean(pred, real),
        "r2": r2_mean(pred, real),
    }
    if reference is not None:
        scores["pearson_delta"] = pearson_delta(pred, real, reference)
    if pred.shape[0] > 1 and real.shape[0] > 1:
        scores["gene_corr"] = gene_correlation(pred, real)
    if min(pred.shape[0], real.shape[0]) >= 5:
        scores["c2st_auc"] = classifier_auc(pred, real, seed=seed)
    if per_gene:
        scores["emd_per_gene"] = {str(gene): float(value) for gene, value in zip(genes, gene_distances)}
    return scores
