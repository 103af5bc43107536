"""Task splits, HVGs, tokenization and pairing together; nothing may depend on held-out cells."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from sctrace import SctraceInputError
from sctrace.data.corpus import (
    Corpus,
    prepare_corpus,
    split_times,
    subset_genes,
    tokenize_with_spec,
)
from sctrace.data.datamodule import TraceDataModule
from sctrace.data.io import read_timecourse
from sctrace.data.tokenize import N_SPECIAL
from sctrace.data.training_pairs import validation_cells


def test_split_times_interpolate_and_extrapolate():
    values = np.array([0.0, 1.0, 2.5, 4.0, 6.0])
    train, held = split_times(values, "interpolate", 2.5)
    assert held == 2.5 and train.tolist() == [0.0, 1.0, 4.0, 6.0]
    train, _ = split_times(values, "extrapolate", 4.0)
    assert train.tolist() == [0.0, 1.0, 2.5]
    train, held = split_times(values, "none", None)
    assert held is None and len(train) == 5


@pytest.mark.parametrize(
    "task, holdout, message",
    [
        ("interpolate", 0.0, "strictly between the first"),
        ("interpolate", 6.0, "use task='extrapolate'"),
        ("extrapolate", 1.0, "leaves 1 training time point"),
        ("sideways", 1.0, "unknown task 'sideways'"),
        ("interpolate", None, "needs a held-out time"),
    ],
)
def test_split_times_errors(task, holdout, message):
    with pytest.raises(SctraceInputError, match=message):
        split_times(np.array([0.0, 1.0, 2.5, 4.0, 6.0]), task, holdout)


def test_unknown_holdout_time_is_named(small_timecourse):
    tc = read_timecourse(small_timecourse, "time")
    with pytest.raises(SctraceInputError, match="3.3"):
        prepare_corpus(tc, task="interpolate", holdout=3.3)


def _fitted_artefacts(adata, holdout, pairing="random"):
    corpus = prepare_corpus(read_timecourse(adata, "time"), task="interpolate", holdout=holdout, n_top_genes=100, max_len=40,
                            pairing=pairing)
    return corpus


# "ot" too, cpu-small's pairing: its PCA coordinates must come from training cells only.
@pytest.mark.parametrize("pairing", ["random", "ot"])
def test_held_out_cells_change_nothing_that_is_fitted(small_timecourse, pairing):
    """Replace every held-out cell's counts by other counts: genes, medians, tokens, pairs, statistics stay equal."""
    holdout = sorted(small_timecourse.obs["time"].unique())[2]
    before = _fitted_artefacts(small_timecourse, holdout, pairing)

    changed = small_timecourse.copy()
    held = np.flatnonzero(np.isclose(changed.obs["time"].to_numpy(float), holdout))
    X = changed.X.tolil()
    rng = np.random.default_rng(5)
    X[held] = sp.random(len(held), changed.n_vars, density=0.5, random_state=rng, data_rvs=lambda n: rng.integers(1, 500, n))
    changed.X = sp.csr_matrix(X).astype(np.int32)
    after = _fitted_artefacts(changed, holdout, pairing)

    assert before.spec == after.spec
    np.testing.assert_array_equal(before.tokens, after.tokens)
    np.testing.assert_array_equal(before.lengths, after.lengths)
    np.testing.assert_array_equal(before.pairs, after.pairs)
    assert (before.counts != after.counts).nnz == 0
    assert not np.isclose(after.cell_times, holdout).any()


def test_corpus_shapes_and_pairs(small_timecourse):
    holdout = sorted(small_timecourse.obs["time"].unique())[2]
    corpus = _fitted_artefacts(small_timecourse, holdout)
    spec = corpus.spec
    assert spec.n_genes == 100 and corpus.tokens.shape == (len(corpus.cell_times), 40)
    assert corpus.tokens.max() < spec.vocab_size and corpus.tokens[corpus.tokens > 0].min() >= N_SPECIAL
    for k, t in enumerate(spec.time_values):
        assert np.isclose(corpus.cell_times[corpus.pairs[:, k]], t).all()
    # every target cell is used at least once (enough pairs per source were drawn)
    for k in range(1, len(spec.time_values)):
        n_at_time = np.isclose(corpus.cell_times, spec.time_values[k]).sum()
        assert len(np.unique(corpus.pairs[:, k])) == n_at_time
    assert len(spec.library_quantiles) == len(spec.time_values)
    assert all(np.all(np.diff(q) >= 0) for q in spec.library_quantiles)


def test_generation_statistics_interpolate(small_timecourse):
    holdout = sorted(small_timecourse.obs["time"].unique())[2]
    spec = _fitted_artefacts(small_timecourse, holdout).spec
    earlier, later, weight = spec.neighbours(holdout)
    assert spec.time_values[earlier] < holdout < spec.time_values[later] and 0 < weight < 1
    rng = np.random.default_rng(0)
    sizes = spec.sample_library_sizes(holdout, 2000, rng)
    lo = min(spec.library_quantiles[earlier][0], spec.library_quantiles[later][0])
    hi = max(spec.library_quantiles[earlier][-1], spec.library_quantiles[later][-1])
    assert sizes.min() >= lo and sizes.max() <= hi
    assert spec.default_length(holdout) == round((1 - weight) * spec.mean_lengths[earlier] + weight * spec.mean_lengths[later])
    assert spec.neighbours(1e6)[0] == len(spec.time_values) - 1


def test_save_load_roundtrip(tmp_path, small_timecourse):
    corpus = _fitted_artefacts(small_timecourse, sorted(small_timecourse.obs["time"].unique())[2])
    corpus.save(tmp_path / "corpus")
    loaded = Corpus.load(tmp_path / "corpus")
    assert loaded.spec == corpus.spec
    np.testing.assert_array_equal(loaded.tokens, corpus.tokens)
    np.testing.assert_array_equal(loaded.pairs, corpus.pairs)


def test_tokenize_with_spec_matches_training_tokens_and_names_missing_genes(small_timecourse):
    holdout = sorted(small_timecourse.obs["time"].unique())[2]
    corpus = _fitted_artefacts(small_timecourse, holdout)
    train = ~np.isclose(small_timecourse.obs["time"].to_numpy(float), holdout)
    tokens, _ = tokenize_with_spec(corpus.spec, small_timecourse.X[train], small_timecourse.var_names)
    np.testing.assert_array_equal(tokens, corpus.tokens)
    with pytest.raises(SctraceInputError, match="3 of the model's 100 genes are missing"):
        keep = ~np.isin(small_timecourse.var_names, corpus.spec.genes[:3])
        subset_genes(corpus.spec, small_timecourse.X[:, keep], small_timecourse.var_names[keep])


def test_stratified_pairing_keeps_strata(small_timecourse):
    holdout = sorted(small_timecourse.obs["time"].unique())[2]
    tc = read_timecourse(small_timecourse, "time", stratify=["donor"])
    corpus = prepare_corpus(tc, task="interpolate", holdout=holdout, n_top_genes=100, max_len=40, pairing="stratified")
    train = ~np.isclose(small_timecourse.obs["time"].to_numpy(float), holdout)
    donors = small_timecourse.obs["donor"].to_numpy()[train]
    assert (donors[corpus.pairs] == donors[corpus.pairs[:, :1]]).all()


def test_ot_pairing_keeps_each_row_on_one_lineage(small_timecourse):
    times = np.asarray(small_timecourse.obs["time"], dtype=float)
    values = sorted(set(times))
    holdout = values[3]
    train = np.flatnonzero(~np.isclose(times, holdout))
    lineage = small_timecourse.obs["lineage"].astype(str).to_numpy()[train]
    agreement = {}
    for mode in ("random", "ot"):
        corpus = prepare_corpus(read_timecourse(small_timecourse, "time"), task="interpolate", holdout=holdout,
                                n_top_genes=100, max_len=40, pairing=mode)
        assert np.allclose(corpus.cell_times[corpus.pairs], corpus.spec.time_values)  # column k at time k
        assert not np.isin(corpus.pairs, np.flatnonzero(np.isclose(corpus.cell_times, holdout))).any()
        rows = lineage[corpus.pairs]
        agreement[mode] = float((rows[:, -1] == rows[:, -2]).mean())  # the two latest, committed time points
    # Measured: random 0.46, ot 0.78 (100 HVGs of a small noisy set; 0.99 on the demo's data set).
    assert agreement["ot"] > 0.7 and agreement["random"] < 0.6, agreement


def test_the_task_a_holdout_means_is_decided_in_one_place():
    from sctrace.data.corpus import resolve_task

    times = np.array([0.0, 1.0, 2.5, 4.0])
    assert resolve_task(times, "auto", None) == ("none", None)
    assert resolve_task(times, "auto", 4.0) == ("extrapolate", 4.0)
    assert resolve_task(times, "auto", 2.5) == ("interpolate", 2.5)
    assert resolve_task(times, "extrapolate", None) == ("extrapolate", 4.0)
    assert resolve_task(times, "interpolate", 4.0) == ("interpolate", 4.0)  # split_times then refuses it
    with pytest.raises(SctraceInputError, match="unknown task 'forward'"):
        resolve_task(times, "forward", None)


def test_min_rows_gives_each_source_cell_several_different_partner_sets(small_timecourse):
    timecourse = read_timecourse(small_timecourse, "time")
    one = prepare_corpus(timecourse, n_top_genes=50, max_len=20, pairing="ot", seed=0)
    many = prepare_corpus(timecourse, n_top_genes=50, max_len=20, pairing="ot", seed=0, min_rows=1024)
    sources, uses = np.unique(many.pairs[:, 0], return_counts=True)
    assert len(one.pairs) < 1024 <= len(many.pairs) and uses.min() == uses.max() >= -(-1024 // len(sources))
    # The entropic plan gives a source cell's rows different partners at a later time.
    distinct = [len(np.unique(many.pairs[many.pairs[:, 0] == s, -1])) for s in sources]
    assert np.mean(distinct) > 2
    with pytest.raises(SctraceInputError, match="min_rows must be 0 or a positive integer"):
        prepare_corpus(timecourse, n_top_genes=50, max_len=20, min_rows=-1)


def test_validation_cells_are_a_fraction_of_every_training_time_or_none():
    times = np.repeat([0.0, 1.0, 2.0], [40, 20, 10])
    held = validation_cells(times, np.array([0.0, 1.0, 2.0]), 0.1, seed=0)
    assert [int(held[times == t].sum()) for t in (0.0, 1.0, 2.0)] == [4, 2, 1]
    assert (validation_cells(times, np.array([0.0, 1.0, 2.0]), 0.1, seed=0) == held).all()  # seeded
    assert (validation_cells(times, np.array([0.0, 1.0, 2.0]), 0.1, seed=1) != held).any()
    # A time point that would give none (or keep none for training) leaves nothing held aside anywhere.
    assert not validation_cells(times, np.array([0.0, 1.0, 2.0]), 0.04, seed=0).any()
    assert not validation_cells(times, np.array([0.0, 1.0, 2.0]), 0.0, seed=0).any()


@pytest.mark.parametrize("min_rows", [0, 1024])
def test_validation_rows_hold_only_cells_no_training_row_holds(small_timecourse, min_rows):
    timecourse = read_timecourse(small_timecourse, "time")
    holdout = sorted(small_timecourse.obs["time"].unique())[2]
    corpus = prepare_corpus(timecourse, task="interpolate", holdout=holdout, n_top_genes=50, max_len=20, pairing="ot",
                            seed=0, min_rows=min_rows, val_fraction=0.1)
    n_val = corpus.spec.validation_rows
    assert n_val is not None and n_val > 0
    train, val = corpus.pairs[:-n_val], corpus.pairs[-n_val:]
    assert not set(np.unique(train)) & set(np.unique(val))
    times = corpus.cell_times
    for k, t in enumerate(corpus.spec.time_values):
        assert np.isclose(times[val[:, k]], t).all() and np.isclose(times[train[:, k]], t).all()
        # About a tenth of each time's cells is held aside.
        n_cells, n_held = np.isclose(times, t).sum(), len(np.unique(val[:, k]))
        assert 0 < n_held <= round(0.1 * n_cells)
    if min_rows:  # validation rows in proportion to the training rows
        assert 0.05 < n_val / len(train) < 0.2
    module = TraceDataModule(corpus, batch_size=16, val_fraction=0.5, seed=0)  # the corpus's split, not 0.5
    assert module.val_rows.tolist() == list(range(len(train), len(corpus.pairs)))


def test_a_corpus_without_cells_held_aside_splits_validation_by_source_cell(small_timecourse, tmp_path):
    timecourse = read_timecourse(small_timecourse, "time")
    corpus = prepare_corpus(timecourse, n_top_genes=50, max_len=20, seed=0)
    assert corpus.spec.validation_rows is None
    module = TraceDataModule(corpus, batch_size=16, val_fraction=0.1, seed=0)
    train_sources, val_sources = corpus.pairs[module.train_rows, 0], corpus.pairs[module.val_rows, 0]
    assert len(val_sources) and not set(train_sources) & set(val_sources)
    # Saved and read back, a corpus keeps its split (corpora saved before the field read None).
    held = prepare_corpus(timecourse, n_top_genes=50, max_len=20, seed=0, val_fraction=0.1)
    held.save(tmp_path / "c")
    assert Corpus.load(tmp_path / "c").spec.validation_rows == held.spec.validation_rows > 0
