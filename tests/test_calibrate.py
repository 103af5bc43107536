"""The extrapolation step calibrated on training cells only (sctrace.calibrate)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import wasserstein_distance

import sctrace.calibrate as calibrate
from sctrace import TRACE
from sctrace._errors import SctraceInputError
from sctrace.calibrate import STEPS, choose_step, decoded_time, mean_gene_emd


def test_mean_gene_emd_is_the_mean_of_each_genes_distance():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(50, 3))
    assert mean_gene_emd(real + np.array([0.5, 1.0, 0.0]), real) == pytest.approx(0.5)
    for n in (40, 50):  # scipy's distance, and the sorted values' difference for as many cells
        other = rng.exponential(size=(n, 3))
        expected = np.mean([wasserstein_distance(other[:, g], real[:, g]) for g in range(3)])
        assert mean_gene_emd(other, real) == pytest.approx(expected)


def test_a_shorter_step_needs_a_gain_beyond_the_bootstrap_noise():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(200, 20))
    near = rng.normal(size=(200, 20))
    far = rng.normal(loc=1.0, size=(200, 20))
    generated = {0.0: near, 1.0: far}
    scores = {s: mean_gene_emd(g, real) for s, g in generated.items()}
    assert choose_step(scores, generated, real, seed=0)[0] == 0.0
    # A gain within the noise of resampling the cells leaves the model's own step.
    barely = rng.normal(loc=0.02, size=(200, 20))
    generated = {0.0: near, 1.0: barely}
    scores = {s: mean_gene_emd(g, real) for s, g in generated.items()}
    chosen, best, noise = choose_step(scores, generated, real, seed=0)
    assert scores[1.0] - scores[0.0] < 2 * noise
    assert chosen == 1.0 and noise > 0


def test_decoded_time_moves_only_past_the_last_training_time():
    times = [0.0, 1.0, 4.0]
    assert decoded_time(None, times, 8.0) == 8.0
    assert decoded_time({"step": 0.25}, times, 2.0) == 2.0
    assert decoded_time({"step": 0.25}, times, 4.0) == 4.0
    assert decoded_time({"step": 0.25}, times, 8.0) == pytest.approx(5.0)
    assert decoded_time({"step": 0.0}, times, 8.0) == 4.0


def data_gene(model) -> str:
    return str(model.timecourse.gene_names()[0])


@pytest.fixture(scope="module")
def calibrated(small_timecourse, tiny_fast_config, tmp_path_factory):
    """Extrapolating 6 (and so 8.5): trained on 0, 1, 2.5, 4; the inner model on 0, 1, 2.5, scored at 4."""
    seen = {}
    real_prepare = calibrate.prepare_corpus

    def spying(*args, **kwargs):
        corpus = real_prepare(*args, **kwargs)
        seen["inner_times"] = sorted(set(corpus.cell_times.tolist()))
        return corpus

    # One gene silent before time 4: the model has it, the inner model (trained before 4) cannot.
    data = small_timecourse.copy()
    times = data.obs["time"].to_numpy()
    counts = data.X.toarray()
    counts[times < 4.0, 0] = 0
    counts[times == 4.0, 0] = 7
    data.X = sp.csr_matrix(counts)
    calibrate.prepare_corpus = spying
    try:
        model = TRACE(data, "time", task="extrapolate", holdout=6.0, seed=0, **tiny_fast_config)
        run_dir = tmp_path_factory.mktemp("calibrated") / "run"
        model.fit(run_dir=run_dir, progress=False)
    finally:
        calibrate.prepare_corpus = real_prepare
    return model, run_dir, seen


def test_an_extrapolation_fit_calibrates_on_training_times_only(calibrated):
    model, run_dir, seen = calibrated
    assert model.spec.time_values == [0.0, 1.0, 2.5, 4.0]
    # Neither the held-out 6 nor the later 8.5 nor the scored 4 reach the inner model.
    assert seen["inner_times"] == [0.0, 1.0, 2.5]
    found = model.extrapolation
    assert found["step"] in STEPS and found["target_time"] == 4.0 and found["inner_times"] == [0.0, 1.0, 2.5]
    assert set(found["scores"]) == {str(s) for s in STEPS}
    assert found["scores"][str(found["best_step"])] == min(found["scores"].values())
    gain = found["scores"]["1.0"] - found["scores"][str(found["best_step"])]
    assert found["step"] == (found["best_step"] if gain > 2 * found["gain_noise"] else 1.0)
    # Scored over the genes both models have.
    assert data_gene(model) in model.spec.genes and found["n_genes"] == len(model.spec.genes) - 1
    assert json.loads((run_dir / "extrapolation.json").read_text()) == found
    assert TRACE.load(run_dir).extrapolation == found


def test_predict_past_the_last_time_decodes_at_the_calibrated_step(calibrated):
    model, run_dir, _ = calibrated
    loaded = TRACE.load(run_dir)
    loaded.extrapolation = {**loaded.extrapolation, "step": 0.5}
    out = loaded.predict(8.0, n_cells=8, seed=0)
    assert out.uns["sctrace"]["decoded_time"] == pytest.approx(6.0)
    assert out.uns["sctrace"]["time"] == 8.0 and np.all(out.obs["time"] == 8.0)
    # The network was asked for 6: the same cells as asking a model without the calibration for 6.
    loaded.extrapolation = None
    direct = loaded.predict(6.0, n_cells=8, seed=0)
    np.testing.assert_array_equal(out.obsm["sctrace_tokens"], direct.obsm["sctrace_tokens"])
    assert "decoded_time" not in direct.uns["sctrace"]
    # Between training times nothing changes.
    loaded.extrapolation = {"step": 0.0}
    assert "decoded_time" not in loaded.predict(2.0, n_cells=4, seed=0).uns["sctrace"]


def test_a_corrupt_calibration_file_is_named(calibrated, tmp_path):
    import shutil

    _, run_dir, _ = calibrated
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "extrapolation.json").write_text('{"step": 3}')
    with pytest.raises(SctraceInputError, match="extrapolation.json holds step 3, outside 0 to 1"):
        TRACE.load(broken)
    (broken / "extrapolation.json").write_text("{not json")
    with pytest.raises(SctraceInputError, match="extrapolation.json is corrupt"):
        TRACE.load(broken)


def test_interpolation_fits_do_not_calibrate_and_two_times_cannot(small_timecourse, tiny_fast_config):
    model = TRACE(small_timecourse, "time", holdout=2.5, seed=0, **tiny_fast_config)
    model.fit(progress=False, max_steps=2)
    assert model.extrapolation is None
    two = small_timecourse[small_timecourse.obs["time"].isin([0.0, 1.0, 2.5])].copy()
    model = TRACE(two, "time", task="extrapolate", holdout=2.5, seed=0, **tiny_fast_config)
    model.fit(progress=False, max_steps=2)
    assert model.extrapolation["step"] == 1.0 and "reason" in model.extrapolation
