"""Classifier two-sample test: how well a kNN classifier tells generated cells from real ones (ROC AUC)."""

from __future__ import annotations

import numpy as np

from sctrace._errors import SctraceInputError
from sctrace.data.pca import fit_pca
from sctrace.harness.distances import _as_expression_pair


def classifier_auc(pred, real, n_pcs: int = 30, n_neighbors: int = 15, n_folds: int = 5, max_cells: int = 2000,
                   seed: int = 0) -> float:
    """Classifier two-sample test: cross-validated ROC AUC of a kNN classifier telling ``pred`` from ``real``.

    0.5 means the classifier cannot tell generated from real cells; 1.0 that it always can. The cells are put on
    the real cells' PCA (``n_pcs`` components, fitted on the real cells only) and each cell's class probability
    comes from a classifier trained on the other folds (stratified ``n_folds``-fold). kNN rather than a linear
    classifier: a population with the right mean but too little spread (an average of cells) is told apart by its
    neighbourhoods, not by a hyperplane. Each set is subsampled to ``max_cells`` (seeded).

    Parameters
    ----------
    pred, real
        (n, n_genes) log-normalised cells, dense or sparse; each needs at least ``n_folds`` cells.

    Returns
    -------
    float
        The AUC.
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    pred, real = _as_expression_pair(pred, real)
    if min(pred.shape[0], real.shape[0]) < n_folds:
        raise SctraceInputError(f"the classifier two-sample test needs at least {n_folds} generated and {n_folds} real "
                                f"cells, got {pred.shape[0]} and {real.shape[0]}.")
    rng = np.random.default_rng(seed)
    pred = pred[rng.choice(pred.shape[0], max_cells, replace=False)] if pred.shape[0] > max_cells else pred
    real = real[rng.choice(real.shape[0], max_cells, replace=False)] if real.shape[0] > max_cells else real
    pca = fit_pca(real, n_pcs)
    cells = np.vstack([pca.transform(real), pca.transform(pred)])
    labels = np.r_[np.zeros(real.shape[0]), np.ones(pred.shape[0])]
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    classifier = KNeighborsClassifier(n_neighbors=min(n_neighbors, int(len(labels) * (n_folds - 1) / n_folds) - 1))
    probability = cross_val_predict(classifier, cells, labels, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(labels, probability))
