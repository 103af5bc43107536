"""sctrace as an scTimeBench method, end to end on a tiny simulated course (skipped without the extra)."""

from __future__ import annotations

import importlib
import pickle
import sys

import numpy as np
import pytest
import yaml

NEXT_GEX = "next_timepoint_gene_expression.npy"
TEST_TPS = [2.0, 4.0]  # held out; scTimeBench adds the first time (0) to the test set
# A few seconds of training on one core (as tests/conftest.py's tiny_fast_config, over every gene).
TINY = dict(max_len=48, d_model=32, n_heads=2, head_dim=16, n_encoder_layers=1, n_decoder_layers=1, count_hidden=32,
            batch_size=32, max_epochs=2, n_iter=6)


@pytest.fixture(scope="module")
def stb():
    return pytest.importorskip("scTimeBench", reason="scTimeBench (the optional sctimebench extra) is not installed")


class _Splits:
    """What scTimeBench pickles as the dataset: ``load_data()`` gives (train, test)."""

    def __init__(self, train, test):
        self.splits = (train, test)

    def load_data(self):
        return self.splits


def _splits(stb, lognorm: bool):
    """scTimeBench's own preprocessors on a simulated course: its time column, log-normalisation, test split."""
    from scTimeBench.shared.constants import ObservationColumns
    from scTimeBench.shared.dataset.preprocessors.log_norm import LogNormPreprocessor
    from scTimeBench.shared.dataset.preprocessors.test_timepoint_selection import TestTimepointSelection

    from sctrace.data.simulate import simulate_timecourse

    data = simulate_timecourse(n_cells=400, n_genes=100, times=(0.0, 1.0, 2.0, 3.0, 4.0), seed=0)
    data.obs = data.obs.rename(columns={"time": ObservationColumns.TIMEPOINT.value,
                                        "cell_type": ObservationColumns.CELL_TYPE.value})
    if lognorm:
        data = LogNormPreprocessor({}).preprocess(data)
    return TestTimepointSelection({}, TEST_TPS).preprocess(data)


def _check(stb, prediction, test, counts: bool):
    from scTimeBench.metrics.gex_prediction.ot_eval.base import OTLossMetric
    from scTimeBench.shared.constants import ObservationColumns

    times = test.obs[ObservationColumns.TIMEPOINT.value].to_numpy()
    last = times == times.max()
    assert prediction.shape == test.shape
    assert np.isnan(prediction[last]).all()
    rows = prediction[~last]
    assert np.isfinite(rows).all() and (rows >= 0).all()
    if counts:
        np.testing.assert_array_equal(rows, np.round(rows))
    source = test.X.toarray() if hasattr(test.X, "toarray") else np.asarray(test.X)
    first = times == times.min()
    assert not np.allclose(prediction[first], source[first]), "the prediction is a copy of the input time point"
    assert rows.sum(axis=1).min() > 0
    # scTimeBench's evaluator reads the array as the next time point of each test cell, over the test genes.
    pred = OTLossMetric._make_pred_next_timepoint_adata(None, test, prediction)
    assert list(pred.var_names) == list(test.var_names)
    assert sorted(set(pred.obs[ObservationColumns.TIMEPOINT.value])) == TEST_TPS


def test_scTimeBench_runner_trains_and_writes_next_time_point(stb, tmp_path, monkeypatch):
    """scTimeBench's own runner (``main``) on log-normalised data, as its gex datasets are: the file it checks."""
    from scTimeBench.method_utils.method_runner import main

    from sctrace.integrations.sctimebench import RUN_DIR, SctraceMethod

    train, test = _splits(stb, lognorm=True)
    (tmp_path / "dataset.pkl").write_bytes(pickle.dumps(_Splits(train, test)))
    config = {"output_path": str(tmp_path), "dataset_pkl_path": str(tmp_path / "dataset.pkl"),
              "required_outputs": [NEXT_GEX], "method": {"name": "sctrace", "metadata": TINY}}
    (tmp_path / "method_config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setattr(sys, "argv", ["sctimebench", "--yaml_config", str(tmp_path / "method_config.yaml")])
    main(SctraceMethod)
    _check(stb, np.load(tmp_path / NEXT_GEX), test, counts=False)
    assert (tmp_path / RUN_DIR / "model.safetensors").exists()
    # A rerun (another metric, same dataset) loads the saved run instead of training again.
    method = SctraceMethod(config)
    method.train(train)
    assert method.model.is_trained and method.model.spec.count_kind == "lognorm"


def test_no_test_time_past_the_training_times_means_no_calibration(stb, tmp_path):
    from sctrace.integrations.sctimebench import SctraceMethod

    train, _ = _splits(stb, lognorm=True)
    method = SctraceMethod({"output_path": str(tmp_path), "required_outputs": [NEXT_GEX],
                            "method": {"name": "sctrace", "metadata": TINY}})
    method.train(train, all_tps=sorted(set(train.obs["scTimeBench_timepoint"]) | {2.0}))
    assert method.model.extrapolation is None


def test_counts_in_counts_out(stb, tmp_path):
    from sctrace.integrations.sctimebench import RUN_DIR, SctraceMethod

    train, test = _splits(stb, lognorm=False)
    method = SctraceMethod({"output_path": str(tmp_path), "required_outputs": [NEXT_GEX],
                            "method": {"name": "sctrace", "metadata": {**TINY, "seed": 1}}})
    method.train(train, all_tps=sorted(set(train.obs["scTimeBench_timepoint"]) | set(TEST_TPS)))
    assert method.model.spec.count_kind == "counts"
    # A test time (4) past the last training time (3): the step past it was calibrated, and saved with the run.
    assert method.model.extrapolation is not None and 0.0 <= method.model.extrapolation["step"] <= 1.0
    assert (tmp_path / RUN_DIR / "extrapolation.json").exists()
    assert method.model.spec.n_genes == train.n_vars - int((train.X.sum(axis=0) == 0).sum())  # genes: all
    _check(stb, method.generate_next_tp_gex(test), test, counts=True)


def test_without_sctimebench_the_error_names_the_extra(monkeypatch):
    for name in ("scTimeBench", "scTimeBench.method_utils.method_runner"):  # its import now fails, installed or not
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "sctrace.integrations.sctimebench", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'sctrace\[sctimebench\]'"):
        importlib.import_module("sctrace.integrations.sctimebench")
