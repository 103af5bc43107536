"""benchmark: the same split for every method, child-process timing and memory, results files; the OT-CFM peer."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sctrace._errors import SctraceInputError
from sctrace.config import DEFAULT_LOGNORM_LIKELIHOOD, load_config
from sctrace.data.io import resolve_count_kind
from sctrace.harness.baselines import identity_baseline
from sctrace.harness.benchmark import (
    ablation_variants,
    peak_rss_mb,
    run_benchmark,
    sctrace_options,
    summarise_runs,
)
from sctrace.harness.evaluate import evaluate_prediction, lognorm_over_genes, scoring_cells
from sctrace.harness.metrics import score
from sctrace.harness.peers import otcfm_available

HOLDOUT = 4.0
PARENT_BALLAST_MB = 1536
TINY_OTCFM = {"n_steps": 20, "hidden": 32, "n_layers": 2, "batch_size": 64}


@pytest.fixture(scope="module")
def benchmark_run(small_timecourse, tiny_fast_config, tmp_path_factory):
    """One interpolation benchmark with every method (otcfm where torchcfm is installed), one seed."""
    root = tmp_path_factory.mktemp("benchmark")
    data_path = root / "data.h5ad"
    small_timecourse.write_h5ad(data_path)
    methods = ["identity", "mixture", "linear", "sctrace"] + (["otcfm"] if otcfm_available() else [])
    # Ballast held by this (parent) process while the children run: ru_maxrss of a spawned child would
    # inherit it (over 1.5 GB); the child's own peak (VmHWM) does not.
    ballast = np.ones(PARENT_BALLAST_MB * 2**20 // 8)
    results = run_benchmark(data_path, "time", task="interpolate", holdout=HOLDOUT, out_dir=root / "out",
                            methods=methods, seeds=[0], sctrace_overrides=tiny_fast_config, otcfm_settings=TINY_OTCFM,
                            embedding_layout="pca", echo=lambda line: None)
    assert peak_rss_mb() > PARENT_BALLAST_MB
    del ballast
    return root / "out", data_path, results, methods


def test_every_method_is_scored_with_every_metric(benchmark_run):
    out, _, results, methods = benchmark_run
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["methods"]) == set(methods)
    assert saved["train_times"] == [0.0, 1.0, 2.5, 6.0, 8.5] and saved["reference_time"] == 2.5
    for name in methods:
        entry = saved["methods"][name]
        assert "failed" not in entry
        (run,) = entry["runs"]
        for key in ("mmd", "emd", "e_distance", "pearson", "r2", "pearson_delta", "gene_corr", "c2st_auc"):
            assert np.isfinite(run[key]), (name, key)
            assert entry["mean"][key] == run[key]
            assert entry["sd"][key] is None or np.isnan(entry["sd"][key])  # one seed: no spread
        assert run["wall_s"] > 0
        # Memory is the child's own peak: at least what it held before the method, below the parent's ballast.
        assert 0 < run["start_mb"] <= run["peak_mb"] < PARENT_BALLAST_MB - 300
    assert 0 <= saved["methods"]["sctrace"]["runs"][0]["rouge1_f1"] <= 1
    assert "rouge1_f1" not in saved["methods"]["identity"]["runs"][0]
    # Gene-gene structure with every value drawn on its own: sctrace's copula borrows it from training cells, so its
    # iid score is another (lower) number; a floor has no sampler and reports the same one twice.
    sctrace_run, identity_run = saved["methods"]["sctrace"]["runs"][0], saved["methods"]["identity"]["runs"][0]
    assert np.isfinite(sctrace_run["gene_corr_iid"]) and np.isfinite(sctrace_run["c2st_auc_iid"])
    assert sctrace_run["gene_corr_iid"] < sctrace_run["gene_corr"]
    assert identity_run["gene_corr_iid"] == identity_run["gene_corr"]
    assert identity_run["c2st_auc_iid"] == identity_run["c2st_auc"]


def test_results_table_has_one_row_per_method(benchmark_run):
    out, _, _, methods = benchmark_run
    table = (out / "results.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    labels = ["MMD", "EMD", "E-distance", "PearsonR", "R²", "Pearson-delta", "gene-gene r", "C2ST AUC", "ROUGE-1 F1",
              "wall s", "peak MB"]
    assert header == "| method | " + " | ".join(labels) + " |"
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert sorted(row.split(" | ")[0][2:] for row in rows) == sorted(methods)
    sctrace_row = next(row for row in rows if row.startswith("| sctrace"))
    identity_row = next(row for row in rows if row.startswith("| identity"))
    assert sctrace_row.split(" | ")[9] != "-" and identity_row.split(" | ")[9] == "-"  # ROUGE only for sctrace
    assert identity_row.split(" | ")[7] != "-" and identity_row.split(" | ")[8] != "-"  # gene-gene r, C2ST: every method


def test_plots_are_drawn_again_from_the_saved_predictions(benchmark_run, tmp_path):
    from sctrace.harness.benchmark import plot_benchmark

    out, data_path, _, _ = benchmark_run
    written = plot_benchmark(out, tmp_path / "again", layout="pca")
    assert sorted(p.name for p in written) == sorted(p.name for p in (out / "plots").glob("*.png"))
    assert all(p.stat().st_size > 0 for p in written)
    with pytest.raises(SctraceInputError, match="holds no results.json"):
        plot_benchmark(tmp_path)


def test_methods_never_see_the_held_out_cells(benchmark_run, small_timecourse):
    out, _, _, _ = benchmark_run
    train = ad.read_h5ad(out / "work" / "train.h5ad")
    assert not np.isclose(train.obs["time"].to_numpy(float), HOLDOUT).any()
    assert train.n_obs == int((~np.isclose(small_timecourse.obs["time"], HOLDOUT)).sum())


def test_identity_scores_match_a_direct_computation(benchmark_run, small_timecourse):
    out, _, results, _ = benchmark_run
    times = small_timecourse.obs["time"].to_numpy(float)
    genes = results["genes"]
    train = ~np.isclose(times, HOLDOUT)
    expression = lognorm_over_genes(small_timecourse.X[train], small_timecourse.var_names, genes)
    cells = scoring_cells(small_timecourse.X, times, small_timecourse.var_names, genes, HOLDOUT,
                          observed_times=results["train_times"])
    predicted = identity_baseline(expression, times[train], HOLDOUT, n_cells=cells.real.shape[0], seed=0)
    expected = score(predicted, cells.real, reference=cells.reference, seed=0)
    run = results["methods"]["identity"]["runs"][0]
    for key, value in expected.items():
        assert run[key] == pytest.approx(value, rel=1e-6), key


def test_evaluate_on_the_saved_prediction_agrees_with_the_benchmark(benchmark_run):
    out, data_path, results, _ = benchmark_run
    arrays = np.load(out / "work" / "predictions" / "sctrace_seed0.npz")
    pred = ad.AnnData(sp.csr_matrix(arrays["counts"]), var=pd.DataFrame(index=results["genes"]))
    pred.obsm["sctrace_tokens"] = arrays["tokens"]
    pred.uns["sctrace"] = {"count_kind": "counts"}
    evaluated = evaluate_prediction(pred, data_path, "time", HOLDOUT, run_dir=out / "runs" / "sctrace_seed0")
    run = results["methods"]["sctrace"]["runs"][0]
    # The benchmark scores the dense array, evaluate a sparse one: float32 sums in another order. abs covers
    # scores near 0 (an R² of 0.04 from 1 - SS_res / SS_tot differs in its sixth digit).
    for key in ("mmd", "emd", "e_distance", "pearson", "r2", "pearson_delta", "rouge1_f1", "rougeL_f1"):
        assert evaluated["metrics"][key] == pytest.approx(run[key], rel=1e-6, abs=1e-7), key


def test_plots_are_written(benchmark_run):
    out, _, _, _ = benchmark_run
    for name in ("pca.png", "pca_cell_type.png", "violins.png", "embedding_pca.png", "dotplot.png"):
        path = out / "plots" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000, name


def test_existing_results_are_not_overwritten(benchmark_run):
    out, data_path, _, _ = benchmark_run
    with pytest.raises(SctraceInputError, match="already holds benchmark results"):
        run_benchmark(data_path, "time", holdout=HOLDOUT, out_dir=out, methods=["identity"], seeds=[0])


def test_extrapolation_skips_the_interpolation_only_baselines(small_timecourse, tmp_path):
    results = run_benchmark(small_timecourse, "time", task="extrapolate", holdout=8.5, out_dir=tmp_path,
                            methods=["linear", "mixture"], seeds=[0], plots=False, echo=lambda line: None)
    assert set(results["skipped"]) == {"linear", "mixture"} and results["methods"] == {}
    assert results["reference_time"] == 6.0 and results["train_times"] == [0.0, 1.0, 2.5, 4.0, 6.0]
    assert "linear: skipped" in (tmp_path / "results.md").read_text()


def test_otcfm_is_skipped_with_the_install_command_when_torchcfm_is_missing(small_timecourse, tmp_path, monkeypatch):
    import sctrace.harness.peers

    monkeypatch.setattr(sctrace.harness.peers, "otcfm_available", lambda: False)
    results = run_benchmark(small_timecourse, holdout=HOLDOUT, out_dir=tmp_path, methods=["otcfm"], seeds=[0],
                            plots=False, echo=lambda line: None)
    assert results["methods"] == {} and "pip install --no-deps torchcfm" in results["skipped"]["otcfm"]


def test_bad_arguments_are_refused_before_any_work(small_timecourse, tmp_path):
    with pytest.raises(SctraceInputError, match="unknown method"):
        run_benchmark(small_timecourse, holdout=HOLDOUT, out_dir=tmp_path, methods=["identity", "scgpt"])
    with pytest.raises(SctraceInputError, match="unknown benchmark task"):
        run_benchmark(small_timecourse, holdout=HOLDOUT, out_dir=tmp_path, task="none")
    with pytest.raises(SctraceInputError, match="bad OT-CFM settings"):
        run_benchmark(small_timecourse, holdout=HOLDOUT, out_dir=tmp_path, methods=["otcfm"], otcfm_settings={"epochs": 3})
    with pytest.raises(SctraceInputError, match="unknown ablation"):
        run_benchmark(small_timecourse, holdout=HOLDOUT, out_dir=tmp_path, ablate="dropout")
    with pytest.raises(SctraceInputError, match="not an observed time"):
        run_benchmark(small_timecourse, holdout=3.0, out_dir=tmp_path, methods=["identity"])
    assert not (tmp_path / "results.json").exists()


def test_ablation_variants():
    assert [v.label for v in ablation_variants(None)] == ["sctrace"]
    schedule = ablation_variants("schedule")
    assert [v.fit_overrides["mask_schedule"] for v in schedule] == ["cosine", "exponential", "cubic", "linear"]
    iterations = ablation_variants("iterations")
    assert [v.predict_options["n_iter"] for v in iterations] == [1, 5, 20]
    assert all(not v.fit_overrides for v in iterations)  # generation-only: one fit serves every variant
    assert [v.label for v in ablation_variants("length")] == [
        "sctrace[length_factor=0.5x]", "sctrace[length_factor=1x]", "sctrace[length_factor=1.5x]"]
    assert [v.fit_overrides["rank_encoding"] for v in ablation_variants("pos-encoding")] == [
        "learnable", "sinusoidal", "unified"]


def test_encoder_ablation_adds_the_pretrained_rows_with_a_local_model(tmp_path):
    offline = ablation_variants("encoder")
    assert [v.fit_overrides for v in offline] == [{"encoder": "scratch"}, {"encoder": "random"}]
    full = ablation_variants("encoder", tmp_path)
    assert [v.label for v in full] == ["sctrace[encoder=scratch]", "sctrace[encoder=random]",
                                       "sctrace[encoder=geneformer-frozen]", "sctrace[encoder=geneformer-finetune]"]
    assert [v.fit_overrides.get("encoder_mode") for v in full] == [None, None, "frozen", "finetune"]
    assert {v.fit_overrides.get("encoder_path") for v in full[2:]} == {str(tmp_path.resolve())}
    with pytest.raises(SctraceInputError, match="not a directory"):
        ablation_variants("encoder", tmp_path / "nope")
    with pytest.raises(SctraceInputError, match="--ablate encoder only"):
        ablation_variants("schedule", tmp_path)
    with pytest.raises(SctraceInputError, match="encoder_path: DIR"):
        ablation_variants(None, tmp_path)


def test_summarise_runs_matches_numpy():
    runs = [{"emd": 1.0, "mmd": 0.5}, {"emd": 2.0, "mmd": None}, {"emd": 4.0}]
    mean, sd = summarise_runs(runs, ["emd", "mmd", "r2"])
    assert mean["emd"] == pytest.approx(7 / 3) and sd["emd"] == pytest.approx(np.std([1, 2, 4], ddof=1))
    assert mean["mmd"] == 0.5 and np.isnan(sd["mmd"]) and "r2" not in mean


# ----------------------------------------------------------------------------------------------------------------
# OT-CFM peer (skipped without the optional torchcfm)
# ----------------------------------------------------------------------------------------------------------------

needs_torchcfm = pytest.mark.skipif(not otcfm_available(), reason="torchcfm (optional extra 'peers') is not installed")


def _drifting_cells(times, n_per_time=150, n_genes=8, seed=0):
    """Cells whose mean moves along a fixed direction at constant speed: mean(t) = base + t * velocity."""
    rng = np.random.default_rng(seed)
    velocity = np.linspace(0.5, 1.5, n_genes)
    expr = np.concatenate([5.0 + t * velocity + 0.3 * rng.standard_normal((n_per_time, n_genes)) for t in times])
    return expr, np.repeat(np.asarray(times, dtype=float), n_per_time), velocity


@needs_torchcfm
def test_otcfm_reaches_a_held_out_time_at_its_real_fraction():
    from sctrace.harness.peers.otcfm import OTCFMSettings, fit_otcfm, predict_otcfm

    # Unequal intervals: 2 lies two thirds of the way from 1 to 4, which only real-time rescaling gets right.
    expr, times, velocity = _drifting_cells([0.0, 1.0, 4.0])
    model = fit_otcfm(expr, times, OTCFMSettings(n_steps=150, hidden=64, n_layers=2, batch_size=64, sigma=0.05), seed=0)
    predicted = predict_otcfm(model, 2.0, n_cells=150, seed=0)
    expected = 5.0 + 2.0 * velocity
    assert predicted.shape == (150, 8) and predicted.dtype == np.float32
    assert np.abs(predicted.mean(0) - expected).max() < 0.2
    # Stopping at t=1 (equal spans per interval instead of real ones) would be off by a velocity, >= 0.5.
    assert np.abs(5.0 + 1.0 * velocity - expected).min() >= 0.5


@needs_torchcfm
def test_otcfm_is_seeded_and_leaves_global_random_state_alone():
    from sctrace.harness.methods import fit_method

    expr, times, _ = _drifting_cells([0.0, 1.0, 2.0], n_per_time=40)
    settings = {"n_steps": 5, "hidden": 16, "n_layers": 1, "batch_size": 16}

    def otcfm_predict(target, n_cells=10, seed=3):
        return fit_method("otcfm", expr, times, seed, settings)(target, n_cells)

    numpy_state = np.random.get_state()[1].copy()
    first = otcfm_predict(1.5)
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    np.testing.assert_array_equal(first, otcfm_predict(1.5))
    assert (first >= 0).all()
    with pytest.raises(SctraceInputError, match="before the first observed time"):
        otcfm_predict(-1.0)


def test_otcfm_without_torchcfm_names_the_install_command(monkeypatch):
    import sys

    from sctrace.harness.peers.otcfm import fit_otcfm

    monkeypatch.setitem(sys.modules, "torchcfm.conditional_flow_matching", None)
    with pytest.raises(SctraceInputError, match="pip install --no-deps torchcfm"):
        fit_otcfm(np.ones((4, 3)), np.array([0.0, 0.0, 1.0, 1.0]))


def test_python_and_cli_run_the_same_methods_by_default():
    import inspect

    from sctrace import cli_harness
    from sctrace.harness.benchmark import DEFAULT_METHODS, METHODS

    assert inspect.signature(run_benchmark).parameters["methods"].default == DEFAULT_METHODS
    assert inspect.signature(cli_harness.benchmark).parameters["methods"].default == ",".join(DEFAULT_METHODS)
    assert set(DEFAULT_METHODS) < set(METHODS) and "mioflow" not in DEFAULT_METHODS


def test_lognorm_benchmark_keeps_a_log_normalised_likelihood_from_the_config(tmp_path):
    config = tmp_path / "hurdle.yaml"
    config.write_text("likelihood: hurdle\n")

    def likelihood(config_path, count_kind, overrides=None):
        chosen, _ = sctrace_options("cpu-small", config_path, None, count_kind, overrides)
        return load_config("cpu-small", config_path, **chosen).counts.likelihood

    # cpu-small's "auto" is kept: TRACE turns it into the data's likelihood, hurdle for log-normalised values.
    assert likelihood(None, "lognorm") == likelihood(None, "counts") == "auto"
    assert resolve_count_kind(ad.AnnData(np.array([[0.5, 1.25]], np.float32)), None, "lognorm", "auto") == (
        "lognorm", DEFAULT_LOGNORM_LIKELIHOOD)
    assert resolve_count_kind(ad.AnnData(np.array([[0.5, 1.25]], np.float32)), None, "counts", "auto") == (
        "counts", "zinb")
    assert likelihood(config, "lognorm") == "hurdle"  # before, the default overrode the file
    assert likelihood(None, "lognorm", {"likelihood": "hurdle"}) == "hurdle"
    for count_kind, asked in (("lognorm", "zinb"), ("counts", "hurdle"), ("counts", "gaussian")):
        with pytest.raises(SctraceInputError, match=f"likelihood '{asked}' does not fit --count-kind {count_kind}"):
            likelihood(None, count_kind, {"likelihood": asked})
