"""The MIOFlow peer (skipped without the optional mioflow) and its place in the benchmark."""

import numpy as np
import pytest
import torch

from sctrace._errors import SctraceInputError
from sctrace.harness.benchmark import run_benchmark

TRAIN_TIMES = (0.0, 1.0, 3.0, 4.0)  # unequal intervals: only real-time rescaling reaches 2 halfway
N_GENES = 20
BASE = np.linspace(-1.0, 3.0, N_GENES)
VELOCITY = np.linspace(0.2, 0.8, N_GENES)
TINY = {"n_pcs": N_GENES, "hidden": 32, "n_epochs": 12, "sample_size": 64, "lr": 0.02}  # ~3 s of training


@pytest.fixture(scope="module")
def mioflow_package():
    return pytest.importorskip("mioflow", reason="mioflow (optional peer dependency) is not installed")


def _moving_blob(times, n_per_time=120, seed=0):
    """Gaussian cells whose mean moves at constant speed, BASE + t * VELOCITY, clipped at 0 like log counts.

    The first genes sit around 0, so a prediction has values below 0 to clip.
    """
    rng = np.random.default_rng(seed)
    expr = np.concatenate([np.clip(BASE + t * VELOCITY + 0.25 * rng.standard_normal((n_per_time, N_GENES)), 0, None)
                           for t in times])
    return expr, np.repeat(np.asarray(times, dtype=float), n_per_time)


@pytest.fixture(scope="module")
def fitted(mioflow_package):
    from sctrace.harness.peers.mioflow import MIOFlowSettings, fit_mioflow

    expr, times = _moving_blob(TRAIN_TIMES)
    return fit_mioflow(expr, times, MIOFlowSettings(**TINY), seed=0), expr, times


def _true_mean(t: float) -> np.ndarray:
    """Mean of the clipped Gaussian cells at time t, estimated from many draws."""
    expr, _ = _moving_blob([t], n_per_time=20000, seed=99)
    return expr.mean(0)


def test_interpolation_beats_copying_the_previous_time(fitted):
    from sctrace.harness.peers.mioflow import predict_mioflow

    model, expr, times = fitted
    predicted = predict_mioflow(model, 2.0, n_cells=200, seed=0)
    assert predicted.shape == (200, N_GENES) and predicted.dtype == np.float32
    assert predicted.min() == 0.0  # genes near 0 were clipped, none went negative
    truth = _true_mean(2.0)
    mioflow_error = np.linalg.norm(predicted.mean(0) - truth)
    identity_error = np.linalg.norm(expr[times == 1.0].mean(0) - truth)  # about one VELOCITY
    assert mioflow_error < 0.3 * identity_error, (mioflow_error, identity_error)  # ~0.1x measured
    assert model.losses[-1] < model.losses[0]


def test_extrapolation_keeps_moving_past_the_last_time(fitted):
    from sctrace.harness.peers.mioflow import predict_mioflow

    model, expr, times = fitted
    predicted = predict_mioflow(model, 4.5, n_cells=200, seed=0)
    last = expr[times == 4.0].mean(0)
    # Copying t=4 would give no step along VELOCITY; the field carries the cells on past it.
    step = (predicted.mean(0) - last) @ VELOCITY / np.linalg.norm(VELOCITY)
    assert step > 0.5 * 0.5 * np.linalg.norm(VELOCITY), step


def test_an_observed_target_returns_its_own_cells(fitted):
    from sctrace.harness.peers.mioflow import predict_mioflow

    model, expr, times = fitted
    predicted = predict_mioflow(model, 3.0, seed=0)  # all cells of t=3, nothing to integrate
    reconstructed = np.clip(model.pca.inverse_transform(model.pca.transform(expr[times == 3.0])), 0, None)
    np.testing.assert_allclose(predicted, reconstructed, atol=1e-4)


def test_seeded_and_leaves_global_torch_state_alone(mioflow_package):
    from sctrace.harness.methods import fit_method

    expr, times = _moving_blob((0.0, 1.0, 2.0), n_per_time=40)
    settings = {"n_pcs": 4, "hidden": 16, "n_epochs": 3, "sample_size": 16}

    def mioflow_predict(target, n_cells, seed):
        return fit_method("mioflow", expr, times, seed, settings)(target, n_cells)

    torch_state = torch.random.get_rng_state()
    first = mioflow_predict(1.5, 10, seed=3)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    np.testing.assert_array_equal(first, mioflow_predict(1.5, 10, seed=3))
    assert not np.array_equal(first, mioflow_predict(1.5, 10, seed=4))
    assert first.shape == (10, N_GENES) and (first >= 0).all()


def test_bad_input_is_refused(mioflow_package):
    from sctrace.harness.peers.mioflow import MIOFlowSettings, fit_mioflow, predict_mioflow

    expr, times = _moving_blob((0.0, 1.0), n_per_time=10)
    settings = MIOFlowSettings(n_pcs=2, hidden=8, n_epochs=1, sample_size=8)
    with pytest.raises(SctraceInputError, match="at least two observed time points"):
        fit_mioflow(expr[:10], times[:10], settings)
    with pytest.raises(SctraceInputError, match="before the first observed time"):
        predict_mioflow(fit_mioflow(expr, times, settings), -0.5)
    with pytest.raises(SctraceInputError, match="one time per cell"):
        fit_mioflow(expr, times[:-1], settings)


def test_without_mioflow_the_error_names_the_install_command(monkeypatch):
    import sys

    from sctrace.harness.peers.mioflow import fit_mioflow

    monkeypatch.setitem(sys.modules, "mioflow.mioflow", None)
    with pytest.raises(SctraceInputError, match="pip install mioflow"):
        fit_mioflow(np.ones((4, 3)), np.array([0.0, 0.0, 1.0, 1.0]))


# ----------------------------------------------------------------------------------------------------------------
# benchmark
# ----------------------------------------------------------------------------------------------------------------


def test_benchmark_skips_mioflow_with_the_install_command_when_missing(small_timecourse, tmp_path, monkeypatch):
    import sctrace.harness.peers

    monkeypatch.setattr(sctrace.harness.peers, "mioflow_available", lambda: False)
    results = run_benchmark(small_timecourse, holdout=4.0, out_dir=tmp_path, methods=["mioflow"], seeds=[0],
                            plots=False, echo=lambda line: None)
    assert results["methods"] == {} and "pip install mioflow" in results["skipped"]["mioflow"]


def test_benchmark_refuses_unknown_mioflow_settings(small_timecourse, tmp_path):
    with pytest.raises(SctraceInputError, match="bad MIOFlow settings"):
        run_benchmark(small_timecourse, holdout=4.0, out_dir=tmp_path, methods=["mioflow"],
                      mioflow_settings={"n_steps": 3})


def test_benchmark_runs_and_scores_mioflow(mioflow_package, small_timecourse, tmp_path):
    settings = {"n_pcs": 10, "hidden": 16, "n_epochs": 2, "sample_size": 32}
    results = run_benchmark(small_timecourse, holdout=4.0, out_dir=tmp_path, methods=["mioflow"], seeds=[0],
                            mioflow_settings=settings, plots=False, echo=lambda line: None)
    entry = results["methods"]["mioflow"]
    assert "failed" not in entry and results["mioflow_settings"]["n_epochs"] == 2
    (run,) = entry["runs"]
    assert all(np.isfinite(run[key]) for key in ("mmd", "emd", "e_distance", "pearson", "r2", "pearson_delta"))
    prediction = np.load(tmp_path / "work" / "predictions" / "mioflow_seed0.npz")["expression"]
    assert prediction.shape == (results["n_real"], results["n_genes"]) and (prediction >= 0).all()
