"""Metrics: invariants, agreement with slow direct formulas, sparse == dense, input validation."""

import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats

from sctrace._errors import SctraceInputError
from sctrace.harness.metrics import (
    MMD_GAMMAS,
    classifier_auc,
    e_distance,
    emd,
    emd_per_gene,
    fit_pca,
    gene_correlation,
    mmd_rbf,
    pearson_delta,
    pearson_mean,
    r2_mean,
    rouge1,
    rouge_l,
    score,
)


def _cells(n_cells, n_genes=12, seed=0, shift=0.0, sparsity=0.5):
    """Non-negative log-normalised-looking cells with zeros, plus a shift on every gene."""
    rng = np.random.default_rng(seed)
    values = np.log1p(rng.gamma(2.0, 2.0, size=(n_cells, n_genes)))
    values[rng.random((n_cells, n_genes)) < sparsity] = 0.0
    return values + shift


# ---------------------------------------------------------------------------------------------------- slow references


def _mmd_slow(x, y, gamma):
    def mean_kernel(a, b):
        total = 0.0
        for u in a:
            for v in b:
                total += math.exp(-gamma * float(((u - v) ** 2).sum()))
        return total / (len(a) * len(b))

    return mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y)


def _e_distance_slow(x, y):
    def mean_sq(a, b):
        return np.mean([[((u - v) ** 2).sum() for v in b] for u in a])

    return 2 * mean_sq(x, y) - mean_sq(x, x) - mean_sq(y, y)


def _lcs_slow(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, u in enumerate(a):
        for j, v in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if u == v else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


# ---------------------------------------------------------------------------------------------------- identical inputs


def test_every_metric_is_zero_or_one_on_identical_inputs():
    cells = _cells(40)
    assert mmd_rbf(cells, cells) == pytest.approx(0.0, abs=1e-12)
    assert emd(cells, cells) == 0.0
    assert e_distance(cells, cells) == pytest.approx(0.0, abs=1e-12)
    assert pearson_mean(cells, cells) == pytest.approx(1.0)
    assert r2_mean(cells, cells) == pytest.approx(1.0)
    assert gene_correlation(cells, cells) == pytest.approx(1.0)
    tokens = np.array([[2, 10, 11, 12, 0], [2, 7, 5, 0, 0]])
    assert rouge1(tokens, tokens) == {"rouge1_precision": 1.0, "rouge1_recall": 1.0, "rouge1_f1": 1.0}
    assert rouge_l(tokens, tokens) == {"rougeL_precision": 1.0, "rougeL_recall": 1.0, "rougeL_f1": 1.0}


@pytest.mark.parametrize("metric", [mmd_rbf, emd, e_distance])
def test_distances_are_symmetric(metric):
    a, b = _cells(30, seed=1), _cells(45, seed=2, shift=0.3)
    assert metric(a, b) == pytest.approx(metric(b, a), rel=1e-9)


@pytest.mark.parametrize("metric", [mmd_rbf, emd, e_distance])
def test_distances_grow_monotonically_with_a_shift(metric):
    real = _cells(50, seed=3)
    values = [metric(real + shift, real) for shift in (0.0, 0.1, 0.3, 0.6, 1.0)]
    assert all(later > earlier for earlier, later in zip(values, values[1:])), values


# ---------------------------------------------------------------------------------------------------- MMD


def test_mmd_matches_double_loop_for_each_gamma():
    x, y = _cells(9, n_genes=5, seed=5), _cells(13, n_genes=5, seed=6, shift=0.2)
    for gamma in MMD_GAMMAS:
        assert mmd_rbf(x, y, gammas=(gamma,)) == pytest.approx(_mmd_slow(x, y, gamma), abs=1e-12)
    expected = np.mean([_mmd_slow(x, y, gamma) for gamma in MMD_GAMMAS])
    assert mmd_rbf(x, y) == pytest.approx(expected, abs=1e-12)


def test_mmd_subsampling_equals_exact_when_max_cells_covers_all_and_is_seeded_otherwise():
    x, y = _cells(60, seed=7), _cells(80, seed=8, shift=0.2)
    assert mmd_rbf(x, y, max_cells=80) == mmd_rbf(x, y, max_cells=None)
    sub = mmd_rbf(x, y, max_cells=30, seed=3)
    assert sub == mmd_rbf(x, y, max_cells=30, seed=3)
    assert sub != mmd_rbf(x, y, max_cells=None)
    rows = np.sort(np.random.default_rng(3).choice(60, 30, replace=False))
    rows_y = np.sort(np.random.default_rng(3).choice(80, 30, replace=False))
    assert sub == pytest.approx(mmd_rbf(x[rows], y[rows_y], max_cells=None), abs=1e-15)


# ---------------------------------------------------------------------------------------------------- EMD


@pytest.mark.parametrize(("n_pred", "n_real"), [(7, 11), (10, 10), (1, 5), (64, 48)])
def test_emd_matches_scipy_per_gene(n_pred, n_real):
    x, y = _cells(n_pred, seed=9), _cells(n_real, seed=10, shift=0.1)
    expected = [scipy.stats.wasserstein_distance(x[:, g], y[:, g]) for g in range(x.shape[1])]
    np.testing.assert_allclose(emd_per_gene(x, y), expected, rtol=1e-10, atol=1e-12)
    assert emd(x, y) == pytest.approx(np.mean(expected), rel=1e-10)


# ---------------------------------------------------------------------------------------------------- E-distance


def test_e_distance_matches_explicit_pairwise_loops_in_the_real_pca_space():
    x, y = _cells(15, n_genes=8, seed=11), _cells(20, n_genes=8, seed=12, shift=0.4)
    pca = fit_pca(y, n_pcs=3)
    expected = _e_distance_slow(pca.transform(x), pca.transform(y))
    assert e_distance(x, y, n_pcs=3) == pytest.approx(expected, rel=1e-9)
    assert e_distance(x, y, pca_fit=pca) == pytest.approx(expected, rel=1e-9)


def test_pca_matches_svd_of_centred_data():
    cells = _cells(30, n_genes=6, seed=13)
    centred = cells - cells.mean(0)
    _, singular_values, right = np.linalg.svd(centred, full_matrices=False)
    pca = fit_pca(sp.csr_matrix(cells), n_pcs=4)
    np.testing.assert_allclose(pca.explained_variance, singular_values[:4] ** 2 / 29, rtol=1e-9)
    # Axes agree up to sign.
    np.testing.assert_allclose(np.abs(pca.components @ right[:4].T), np.eye(4), atol=1e-8)
    np.testing.assert_allclose(pca.transform(cells), pca.transform(sp.csr_matrix(cells)), atol=1e-12)


# ---------------------------------------------------------------------------------------------------- means


def test_pearson_and_r2_of_means_match_direct_formulas():
    x, y = _cells(25, seed=14), _cells(35, seed=15, shift=0.2)
    assert pearson_mean(x, y) == pytest.approx(scipy.stats.pearsonr(x.mean(0), y.mean(0))[0], rel=1e-10)
    truth, guess = y.mean(0), x.mean(0)
    expected = 1 - ((truth - guess) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    assert r2_mean(x, y) == pytest.approx(expected, rel=1e-10)


def test_r2_can_be_negative_and_is_not_symmetric():
    real = _cells(30, seed=16)
    far = real + 3.0
    assert r2_mean(far, real) < 0
    assert pearson_mean(far, real) == pytest.approx(1.0)
    # Scaling the truth changes the denominator: R^2 is not symmetric, unlike r.
    assert r2_mean(2 * real, real) != pytest.approx(r2_mean(real, 2 * real))
    assert pearson_mean(2 * real, real) == pytest.approx(pearson_mean(real, 2 * real))


def test_pearson_delta_is_about_zero_for_a_copy_of_the_reference_while_plain_pearson_is_high():
    rng = np.random.default_rng(17)
    n_genes = 400
    baseline = rng.gamma(1.0, 2.0, n_genes)  # large spread of expression across genes
    reference = baseline + rng.normal(0, 0.3, (300, n_genes))
    real = baseline + rng.normal(0.0, 0.5, n_genes) + rng.normal(0, 0.3, (300, n_genes))
    copy_like = baseline + rng.normal(0, 0.3, (300, n_genes))  # a fresh draw of the reference time point
    assert pearson_mean(copy_like, real) > 0.9
    assert abs(pearson_delta(copy_like, real, reference)) < 0.2
    assert pearson_delta(real, real, reference) == pytest.approx(1.0)


def test_zero_variance_gives_nan_with_a_warning():
    reference = _cells(20, seed=18)
    real = _cells(20, seed=19, shift=0.5)
    with pytest.warns(RuntimeWarning, match="zero variance"):
        assert math.isnan(pearson_delta(reference, real, reference))
    constant = np.ones((5, 4))
    with pytest.warns(RuntimeWarning, match="zero variance"):
        assert math.isnan(pearson_mean(_cells(5, n_genes=4), constant))
    with pytest.warns(RuntimeWarning, match="constant"):
        assert math.isnan(r2_mean(_cells(5, n_genes=4), constant))


def _programmes(n_cells, n_genes=30, seed=0, shift=0.0):
    """Cells whose genes follow three shared programmes (blocks of co-varying genes), with noise and zeros."""
    rng = np.random.default_rng(seed)
    loadings = np.zeros((3, n_genes))
    for k in range(3):
        loadings[k, k * n_genes // 3 : (k + 1) * n_genes // 3] = np.linspace(0.5, 1.5, n_genes // 3)
    values = np.maximum(rng.standard_normal((n_cells, 3)) @ loadings + 0.3 * rng.standard_normal((n_cells, n_genes)) + 1.0, 0)
    return values + shift


def test_gene_correlation_matches_a_direct_formula_and_sees_what_the_marginals_hide():
    real, pred = _programmes(300, seed=0), _programmes(200, seed=1, shift=0.1)
    chosen = np.argsort(-real.var(axis=0), kind="stable")[:20]
    upper = np.triu_indices(20, k=1)
    direct = scipy.stats.pearsonr(np.corrcoef(pred[:, chosen].T)[upper], np.corrcoef(real[:, chosen].T)[upper])[0]
    assert gene_correlation(pred, real, n_genes=20) == pytest.approx(direct, abs=1e-10)
    assert gene_correlation(pred, real) > 0.9  # the same programmes, another draw
    # Each gene's values shuffled across cells: every marginal (and so EMD and the means) kept, the co-variation gone.
    rng = np.random.default_rng(2)
    shuffled = np.column_stack([rng.permutation(pred[:, g]) for g in range(pred.shape[1])])
    assert emd(shuffled, real) == pytest.approx(emd(pred, real)) and e_distance(shuffled, real) == pytest.approx(e_distance(pred, real))
    assert abs(gene_correlation(shuffled, real)) < 0.2
    # A gene constant in pred correlates 0 with the others instead of spoiling the whole score with NaN.
    pred[:, chosen[0]] = 1.0
    assert np.isfinite(gene_correlation(pred, real))
    with pytest.warns(RuntimeWarning, match="fewer than three genes vary"):
        assert math.isnan(gene_correlation(pred, np.ones((10, 30))))


# ---------------------------------------------------------------------------------------------------- sparse input


def test_sparse_input_equals_dense_input():
    x, y, ref = _cells(40, seed=20), _cells(50, seed=21, shift=0.2), _cells(30, seed=22)
    dense = score(x, y, reference=ref, genes=[f"g{i}" for i in range(12)], per_gene=True)
    for fmt in (sp.csr_matrix, sp.csc_matrix):
        sparse = score(fmt(x), fmt(y), reference=fmt(ref), genes=[f"g{i}" for i in range(12)], per_gene=True)
        assert sparse.keys() == dense.keys()
        for key, value in dense.items():
            if key == "emd_per_gene":
                np.testing.assert_allclose(list(sparse[key].values()), list(value.values()), rtol=1e-10)
            else:
                assert sparse[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_score_keys_and_values():
    x, y = _cells(20, seed=23), _cells(25, seed=24)
    result = score(x, y)
    assert list(result) == ["mmd", "emd", "e_distance", "pearson", "r2", "gene_corr", "c2st_auc"]
    assert result["gene_corr"] == pytest.approx(gene_correlation(x, y))
    assert result["c2st_auc"] == pytest.approx(classifier_auc(x, y))
    assert result["emd"] == pytest.approx(emd(x, y))
    assert result["mmd"] == pytest.approx(mmd_rbf(x, y))
    assert "pearson_delta" in score(x, y, reference=_cells(10, seed=25))
    genes = [f"gene{i}" for i in range(12)]
    per_gene = score(x, y, genes=genes, per_gene=True)["emd_per_gene"]
    assert list(per_gene) == genes
    assert per_gene["gene3"] == pytest.approx(emd_per_gene(x, y)[3])
    with pytest.raises(SctraceInputError, match="gene name"):
        score(x, y, per_gene=True)


# ---------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("metric", [mmd_rbf, emd, emd_per_gene, e_distance, pearson_mean, r2_mean, gene_correlation, score])
def test_input_validation(metric):
    good = _cells(5)
    with pytest.raises(SctraceInputError, match=r"\(5, 12\).*\(5, 11\)"):
        metric(good, good[:, :11])
    with pytest.raises(SctraceInputError, match="empty"):
        metric(good[:0], good)
    bad = good.copy()
    bad[2, 3] = np.nan
    with pytest.raises(SctraceInputError, match="non-finite"):
        metric(good, bad)
    bad[2, 3] = np.inf
    with pytest.raises(SctraceInputError, match="non-finite"):
        metric(sp.csr_matrix(bad), good)


def test_pearson_delta_checks_reference_genes():
    good = _cells(5)
    with pytest.raises(SctraceInputError, match="reference"):
        pearson_delta(good, good, good[:, :3])


# ---------------------------------------------------------------------------------------------------- ROUGE


def test_rouge1_hand_made_example():
    # Pair 1: G = {10, 11, 12, 13}, R = {11, 13, 20}: overlap 2, P = 1/2, R = 2/3.
    # Pair 2: G = {5, 6}, R = {7}: no overlap.
    generated = np.array([[2, 10, 11, 12, 13], [2, 5, 6, 0, 0]])
    reference = [[13, 20, 11], [7]]
    result = rouge1(generated, reference)
    f1_first = 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3)
    assert result["rouge1_precision"] == pytest.approx(0.25)
    assert result["rouge1_recall"] == pytest.approx(1 / 3)
    assert result["rouge1_f1"] == pytest.approx(f1_first / 2)


def test_rouge1_ignores_special_tokens_and_order():
    generated = [[2, 1, 9, 8, 7, 0, 0]]
    reference = [[7, 8, 9]]
    assert rouge1(generated, reference)["rouge1_f1"] == 1.0
    assert rouge_l(generated, reference)["rougeL_f1"] == pytest.approx(1 / 3)


def test_rouge_l_hand_made_example():
    # LCS of [3, 4, 5, 6, 7] and [4, 9, 6, 3, 7] is [4, 6, 7]: P = 3/5, R = 3/5.
    # LCS of [10, 11] and [11, 10, 12] is 1: P = 1/2, R = 1/3.
    result = rouge_l([[3, 4, 5, 6, 7], [2, 10, 11]], np.array([[4, 9, 6, 3, 7], [11, 10, 12, 0, 0]]))
    assert result["rougeL_precision"] == pytest.approx((3 / 5 + 1 / 2) / 2)
    assert result["rougeL_recall"] == pytest.approx((3 / 5 + 1 / 3) / 2)
    assert result["rougeL_f1"] == pytest.approx((3 / 5 + 2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3)) / 2)


def test_rouge_l_matches_textbook_dp_on_random_sequences():
    rng = np.random.default_rng(26)
    generated = [rng.permutation(np.arange(3, 40))[: rng.integers(1, 30)] for _ in range(25)]
    reference = [rng.permutation(np.arange(3, 40))[: rng.integers(1, 30)] for _ in range(25)]
    lcs = np.array([_lcs_slow(list(a), list(b)) for a, b in zip(generated, reference)])
    precision = lcs / [len(a) for a in generated]
    recall = lcs / [len(b) for b in reference]
    f1 = np.where(lcs > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    result = rouge_l(generated, reference)
    assert result["rougeL_precision"] == pytest.approx(precision.mean())
    assert result["rougeL_recall"] == pytest.approx(recall.mean())
    assert result["rougeL_f1"] == pytest.approx(f1.mean())


def test_rouge_empty_sides_score_zero_and_bad_input_raises():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = rouge1([[0, 0], [5, 6]], [[5], [5, 6]])
    assert result["rouge1_precision"] == pytest.approx(0.5)
    assert rouge_l([[2, 0]], [[5]])["rougeL_f1"] == 0.0
    only_specials = {"rouge1_precision": 0.0, "rouge1_recall": 0.0, "rouge1_f1": 0.0}
    assert rouge1([[0, 2]], [[1]]) == only_specials
    with pytest.raises(SctraceInputError, match="paired"):
        rouge1([[5]], [[5], [6]])
    with pytest.raises(SctraceInputError, match="empty"):
        rouge_l([], [])
    with pytest.raises(SctraceInputError, match="integer"):
        rouge1(np.ones((2, 3)), np.ones((2, 3)))


def test_classifier_two_sample_auc():
    """0.5 for two draws of one population; higher for a shift or for a population with too little spread."""
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 40))
    assert classifier_auc(rng.normal(size=(300, 40)), real) == pytest.approx(0.5, abs=0.06)
    assert classifier_auc(real + 1.0, real) > 0.95
    assert classifier_auc(0.3 * rng.normal(size=(300, 40)), real) > 0.6  # an average of cells is told apart
    assert classifier_auc(real[:50], real, seed=1) == classifier_auc(real[:50], real, seed=1)
    with pytest.raises(SctraceInputError, match="at least 5 generated"):
        classifier_auc(real[:3], real)
