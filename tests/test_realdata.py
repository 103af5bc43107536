"""The data pipeline and a tiny model on the two real time courses in ../shared/data (skipped where absent).

klein2015_mesc: raw UMI counts, obs 'time' = 'day0'..'day7', obs 'time_days' numeric.
shalek2014_mdc_lps: log-normalised values (BEELINE), obs 'time' = '1h'..'6h', obs 'time_hours' numeric.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
from conftest import real_dataset

from sctrace import SctraceInputError
from sctrace.data.corpus import prepare_corpus
from sctrace.data.io import parse_time, read_timecourse
from sctrace.data.tokenize import N_SPECIAL, PAD_ID

pytestmark = pytest.mark.realdata

# file, numeric time column, text time column's value for each numeric time, count kind
DATASETS = {
    "klein": ("klein2015_mesc.h5ad", "time_days", {0.0: "day0", 2.0: "day2", 4.0: "day4", 7.0: "day7"}, "counts"),
    "shalek": ("shalek2014_mdc_lps.h5ad", "time_hours", {1.0: "1h", 2.0: "2h", 4.0: "4h", 6.0: "6h"}, "lognorm"),
}
MAX_LEN = 64


def _check_corpus(tc, corpus, holdout: float, task: str) -> None:
    """Shapes and invariants every prepared corpus must satisfy."""
    adata, spec = tc.adata, corpus.spec
    train = ~np.isclose(tc.times, holdout) if task == "interpolate" else tc.times < holdout
    expected_times = np.unique(tc.times[train])
    np.testing.assert_allclose(spec.time_values, expected_times)
    assert spec.holdout == holdout and spec.count_kind == tc.count_kind

    # Genes: unique data genes, no more than the data hold.
    assert 0 < spec.n_genes <= adata.n_vars
    assert len(set(spec.genes)) == spec.n_genes and set(spec.genes) <= set(adata.var_names)
    assert len(spec.gene_medians) == spec.n_genes and np.all(np.asarray(spec.gene_medians) > 0)

    # Held-out cells (and, for extrapolation, everything later) are absent.
    assert corpus.obs_names.tolist() == adata.obs_names[train].tolist()
    assert not np.isin(corpus.obs_names, adata.obs_names[~train]).any()
    np.testing.assert_array_equal(corpus.cell_times, tc.times[train])
    assert corpus.counts.shape == (train.sum(), spec.n_genes)

    # Tokens: gene ids up to each cell's length, padding after, no gene twice in a cell.
    n = int(train.sum())
    assert corpus.tokens.shape == (n, MAX_LEN) and corpus.lengths.shape == (n,)
    assert np.all((corpus.lengths > 0) & (corpus.lengths <= MAX_LEN))
    filled = np.arange(MAX_LEN)[None, :] < corpus.lengths[:, None]
    assert np.all((corpus.tokens[filled] >= N_SPECIAL) & (corpus.tokens[filled] < spec.vocab_size))
    assert np.all(corpus.tokens[~filled] == PAD_ID)
    for row, length in zip(corpus.tokens[:50], corpus.lengths[:50], strict=True):
        assert len(np.unique(row[:length])) == length
    # A cell's first token is one of its expressed genes.
    first_gene = corpus.tokens[np.arange(n), 0] - N_SPECIAL
    assert np.all(corpus.counts[np.arange(n), first_gene].A1 > 0)

    # Pairs: one column per training time, each holding cells of that time; every training cell is used.
    assert corpus.pairs.shape[1] == len(spec.time_values)
    for k, time in enumerate(spec.time_values):
        assert np.allclose(corpus.cell_times[corpus.pairs[:, k]], time)
    assert set(np.unique(corpus.pairs)) == set(range(n))


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("task", ["interpolate", "extrapolate"])
def test_prepare_corpus_on_real_data(name, task):
    file, time_key, _, count_kind = DATASETS[name]
    tc = read_timecourse(real_dataset(file), time_key, count_kind=count_kind)
    values = tc.time_values
    assert len(values) == 4
    holdout = float(values[len(values) // 2] if task == "interpolate" else values[-1])
    # n_top_genes above the number of genes: every expressed gene is kept.
    corpus = prepare_corpus(tc, task=task, holdout=holdout, n_top_genes=2000, max_len=MAX_LEN, seed=0)
    _check_corpus(tc, corpus, holdout, task)
    # n_top_genes below it: scanpy's HVG choice on training cells only.
    corpus = prepare_corpus(tc, task=task, holdout=holdout, n_top_genes=300, max_len=MAX_LEN, seed=0)
    _check_corpus(tc, corpus, holdout, task)
    assert corpus.spec.n_genes <= 300


@pytest.mark.parametrize("name", DATASETS)
def test_text_time_labels_parse_to_the_numeric_column(name):
    file, time_key, labels, count_kind = DATASETS[name]
    for value, label in labels.items():
        assert parse_time(label) == value
    by_label = read_timecourse(real_dataset(file), "time", count_kind=count_kind)
    by_number = read_timecourse(real_dataset(file), time_key, count_kind=count_kind)
    np.testing.assert_array_equal(by_label.times, by_number.times)
    np.testing.assert_array_equal(by_label.time_values, sorted(labels))


def test_klein_reads_as_counts():
    tc = read_timecourse(real_dataset("klein2015_mesc.h5ad"), "time_days", count_kind="counts")
    assert tc.count_kind == "counts" and tc.adata.shape == (1000, 900)
    counts = tc.expression()
    assert np.all(counts.data >= 0) and np.all(counts.data == np.round(counts.data))


def test_shalek_is_not_counts():
    path = real_dataset("shalek2014_mdc_lps.h5ad")
    with pytest.raises(SctraceInputError, match="holds non-integer values .* raw counts are required.*count_kind='lognorm'"):
        read_timecourse(path, "time_hours", count_kind="counts")
    with warnings.catch_warnings():  # log-normalised values must not trip the "looks like raw counts" warning
        warnings.simplefilter("error")
        assert read_timecourse(path, "time_hours", count_kind="lognorm").count_kind == "lognorm"


@pytest.mark.parametrize(
    "name, likelihood, holdout",
    [("klein", "zinb", 4.0), ("shalek", "gaussian", 4.0), ("shalek", "hurdle", 4.0)],
)
def test_tiny_fit_and_predict_on_real_data(name, likelihood, holdout, tiny_fast_config, tmp_path):
    from sctrace.estimator import TRACE

    file, time_key, _, count_kind = DATASETS[name]
    config = {**tiny_fast_config, "max_epochs": 1, "likelihood": likelihood}
    model = TRACE(real_dataset(file), time_key, task="interpolate", holdout=holdout, count_kind=count_kind, **config)
    model.fit(run_dir=tmp_path / "run", progress=False)
    assert model.is_trained
    losses = model.history["val_loss"].dropna().to_numpy(float)
    assert losses.size > 0 and np.all(np.isfinite(losses))

    pred = TRACE.load(tmp_path / "run").predict(holdout, n_cells=40, seed=0)
    assert pred.shape == (40, model.spec.n_genes) and pred.var_names.tolist() == model.spec.genes
    mean = np.asarray(pred.layers[f"{likelihood}_mean"])
    assert mean.shape == pred.shape and np.all(np.isfinite(mean))
    values = pred.X.toarray()
    assert np.all(np.isfinite(values)) and np.all(values >= 0)
    if count_kind == "counts":
        assert np.all(values == np.round(values)) and np.all(mean >= 0)
    assert pred.obsm["X_sctrace"].shape == (40, config["d_model"])
    assert np.allclose(pred.obs["time"], holdout)
    # The source cells come from the training data, never from the held-out time.
    obs = ad.read_h5ad(real_dataset(file)).obs
    held = obs.index[np.isclose(obs[time_key], holdout)]
    assert not pred.obs["source_cell"].isin(held).any()
