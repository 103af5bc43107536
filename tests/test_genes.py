"""Which genes are modelled (config `genes`, CLI --genes): the most variable, every expressed one, or a list."""

import numpy as np
import pytest
import scipy.sparse as sp

from sctrace._errors import SctraceInputError
from sctrace.data.corpus import prepare_corpus
from sctrace.data.io import read_timecourse
from sctrace.data.preprocess import read_gene_choice
from sctrace.harness.benchmark import training_hvgs


@pytest.fixture(scope="module")
def course(small_timecourse):
    adata = small_timecourse.copy()
    adata.X = sp.csr_matrix(adata.X)
    adata.X[:, 7] = 0  # a gene never expressed
    adata.X.eliminate_zeros()
    return read_timecourse(adata, "time")


def _genes(course, genes, n_top_genes=50):
    return prepare_corpus(course, holdout=4.0, n_top_genes=n_top_genes, genes=genes, max_len=32, seed=0).spec.genes


def test_hvg_all_and_a_list_and_the_harness_agrees(course):
    names = course.gene_names()
    rows = np.flatnonzero(~np.isclose(course.times, 4.0))
    hvg = _genes(course, "hvg")
    assert len(hvg) == 50
    everything = _genes(course, "all")
    expressed = np.asarray((course.expression()[rows] > 0).sum(0)).ravel() > 0
    assert not expressed[7] and expressed.sum() > 50
    assert everything == list(names[expressed])  # every gene expressed in a training cell, in data order
    listed = _genes(course, [names[3], names[1], names[10]])
    assert listed == [names[1], names[3], names[10]]
    # The benchmark harness picks the same genes as the model for each choice.
    assert training_hvgs(course, rows, 50) == hvg
    assert training_hvgs(course, rows, 50, "all") == everything


def test_auto_models_every_gene_up_to_the_limit_and_the_most_variable_above(course, monkeypatch):
    import sctrace.data.preprocess as preprocess

    everything = _genes(course, "all")
    assert _genes(course, "auto") == everything  # fewer expressed genes than the limit: every one is modelled
    monkeypatch.setattr(preprocess, "AUTO_ALL_GENES", len(everything) - 1)
    assert _genes(course, "auto") == _genes(course, "hvg")  # one gene over it: the n_top_genes most variable
    rows = np.flatnonzero(~np.isclose(course.times, 4.0))
    assert training_hvgs(course, rows, 50, "auto") == _genes(course, "hvg")


def test_the_default_is_auto():
    from sctrace.config import TraceConfig, load_config

    assert TraceConfig().data.genes == "auto" and load_config().data.genes == "auto"
    # A number of HVGs the user asks for means HVGs; an explicit choice of genes wins over it.
    assert load_config(n_top_genes=100).data.genes == "hvg"
    assert load_config(n_top_genes=100, genes="all").data.genes == "all"


def test_gene_files_and_bad_choices(course, tmp_path):
    names = course.gene_names()
    path = tmp_path / "genes.txt"
    path.write_text(f"# my genes\n{names[2]}\n\n{names[5]}\n{names[2]}\n")
    assert read_gene_choice(str(path)) == [names[2], names[5]]
    assert [read_gene_choice(choice) for choice in ("auto", "all", "hvg")] == ["auto", "all", "hvg"]
    with pytest.raises(SctraceInputError, match="auto, hvg, all or a file"):
        read_gene_choice(str(tmp_path / "absent.txt"))
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(SctraceInputError, match="lists no gene"):
        read_gene_choice(str(tmp_path / "empty.txt"))
    with pytest.raises(SctraceInputError, match="not in the data"):
        _genes(course, [names[0], "NOT_A_GENE"])
    with pytest.warns(UserWarning, match="never expressed"):
        assert _genes(course, [names[0], names[7]]) == [names[0]]


def test_fit_predict_with_every_gene_says_so(small_timecourse, tiny_fast_config, tmp_path):
    from sctrace.estimator import TRACE

    model = TRACE(small_timecourse, "time", holdout=4.0, seed=0, **{**tiny_fast_config, "genes": "all", "max_epochs": 1})
    assert model.spec.n_genes > tiny_fast_config["n_top_genes"]
    model.fit(progress=False)
    generated = model.predict(4.0, n_cells=8)
    assert generated.n_vars == model.spec.n_genes and generated.uns["sctrace"]["genes"] == "all"
