"""The appendix experiments: the 80/20 split, imputation from held-out source cells, extrapolation by distance.

The split is checked against its definition (exact per-time counts, Hamilton shares per stratum); the runs
train a tiny model for one epoch and are checked for what they promise: no held-out cell reaches training,
the identity floor is made of the right real cells, the scores are those of the right real cells, and the
tables have one row per time point (and distance) and method.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from sctrace._errors import SctraceInputError
from sctrace.harness.evaluate import lognorm_over_genes
from sctrace.harness.experiments import (
    run_extrapolation_distance,
    run_imputation,
    split_cells,
)
from sctrace.harness.metrics import score
from sctrace.harness.peers import available_peers


# ---------------------------------------------------------------------------------------------------------- split
def _synthetic_cells(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    times = np.repeat([0.0, 1.0, 2.5, 7.0], [50, 37, 101, 12])
    strata = rng.choice(["a", "b", "c", "rare"], size=times.size, p=[0.5, 0.3, 0.15, 0.05])
    return times, strata


def test_split_holds_out_the_rounded_fraction_of_every_time_point():
    times, strata = _synthetic_cells()
    held_out = split_cells(times, strata, test_fraction=0.2, seed=0)
    for time in np.unique(times):
        n = int((times == time).sum())
        n_test = int(held_out[times == time].sum())
        assert n_test == math.floor(0.2 * n + 0.5)
        assert abs(n_test - 0.2 * n) <= 0.5


def test_split_shares_each_time_point_among_strata_by_largest_remainders():
    times, strata = _synthetic_cells()
    held_out = split_cells(times, strata, test_fraction=0.2, seed=1)
    for time in np.unique(times):
        here = times == time
        n_test = held_out[here].sum()
        for label in np.unique(strata[here]):
            group = here & (strata == label)
            quota = n_test * group.sum() / here.sum()
            assert held_out[group].sum() in (math.floor(quota), math.ceil(quota))
            assert abs(held_out[group].sum() - 0.2 * group.sum()) < 1.5


def test_split_keeps_a_rare_stratum_in_both_halves():
    times = np.zeros(100)
    strata = np.array(["common"] * 90 + ["rare"] * 10)
    held_out = split_cells(times, strata, test_fraction=0.2, seed=0)
    assert held_out[strata == "rare"].sum() == 2
    assert held_out[strata == "common"].sum() == 18


def test_split_is_reproducible_by_seed():
    times, strata = _synthetic_cells()
    first = split_cells(times, strata, seed=3)
    assert np.array_equal(first, split_cells(times, strata, seed=3))
    assert not np.array_equal(first, split_cells(times, strata, seed=4))


@pytest.mark.parametrize("fraction, fragment", [(0.0, "between 0 and 1"), (1.0, "between 0 and 1"),
                                                (0.05, "time point 7 has 12 cells")])
def test_split_rejects_fractions_that_leave_too_few_cells(fraction, fragment):
    times, strata = _synthetic_cells()
    with pytest.raises(SctraceInputError, match=fragment):
        split_cells(times, strata, test_fraction=fraction)


# ---------------------------------------------------------------------------------------------------- imputation
@pytest.fixture(scope="module")
def imputation(tmp_path_factory, small_timecourse, tiny_fast_config):
    out = tmp_path_factory.mktemp("impute") / "out"
    results = run_imputation(small_timecourse, "time", out_dir=out, seed=0, overrides=tiny_fast_config,
                             max_epochs=1, echo=lambda _: None)
    split = pd.read_csv(out / "split.csv")
    return out, results, split


def test_imputation_scores_every_time_point_after_the_source_and_their_mean(imputation, small_timecourse):
    out, results, _ = imputation
    times = np.unique(small_timecourse.obs["time"].to_numpy(dtype=float))
    assert results["source_time"] == times[0]
    assert results["data"] == "the built-in simulator (seed 0, 600 cells x 300 genes)"
    assert [(row["time"], row["method"]) for row in results["rows"]] == [
        (t, m) for t in times[1:] for m in ("sctrace", "identity")]
    for method in ("sctrace", "identity"):
        mine = [row for row in results["rows"] if row["method"] == method]
        for metric in ("mmd", "emd", "e_distance", "pearson_delta"):
            assert results["mean"][method][metric] == pytest.approx(np.mean([row[metric] for row in mine]))
    assert "rouge1_f1" in results["mean"]["sctrace"] and "rouge1_f1" not in results["mean"]["identity"]
    assert json.loads((out / "imputation.json").read_text())["rows"] == results["rows"]
    table = (out / "imputation.md").read_text()
    assert table.count("| **mean** |") == 2 and table.count("| sctrace |") == len(times)  # 5 time points and the mean
    for t in times[1:]:
        assert (out / "plots" / f"pca_time_{t:g}.png").stat().st_size > 0
    assert (out / "plots" / "pca_all_times.png").exists()


def test_imputation_split_is_stratified_and_recorded(imputation, small_timecourse):
    _, results, split = imputation
    obs = small_timecourse.obs
    assert results["stratify_key"] == "cell_type"
    assert list(split["obs_name"]) == list(obs.index)
    assert list(split["stratum"]) == list(obs["cell_type"].astype(str))
    expected = split_cells(obs["time"].to_numpy(dtype=float), obs["cell_type"].astype(str).to_numpy(), 0.2, seed=0)
    assert np.array_equal(split["split"].to_numpy() == "held_out", expected)
    for entry in results["cells"]:
        here = split[np.isclose(split["time"], entry["time"])]
        assert entry["held_out"] == (here["split"] == "held_out").sum()
        assert entry["train"] == (here["split"] == "train").sum()


def test_no_held_out_cell_reaches_training(imputation):
    out, _, split = imputation
    trained_on = set(np.load(out / "runs" / "sctrace_seed0" / "corpus" / "obs_names.npy").astype(str))
    held_out = set(split.loc[split["split"] == "held_out", "obs_name"])
    assert trained_on.isdisjoint(held_out)
    assert trained_on == set(split.loc[split["split"] == "train", "obs_name"])


def test_sctrace_starts_from_held_out_source_cells(imputation):
    out, results, split = imputation
    source = set(split.loc[(split["split"] == "held_out") & np.isclose(split["time"], results["source_time"]),
                           "obs_name"])
    for t in results["target_times"]:
        started = np.load(out / "work" / "predictions" / f"sctrace_time{t:g}.npz")["source_cells"]
        n_real = (np.isclose(split["time"], t) & (split["split"] == "held_out")).sum()
        assert len(started) == n_real and set(started) <= source
        # every held-out source cell is used once before any is used twice
        counts = pd.Series(started).value_counts()
        assert counts.max() - counts.min() <= 1 and (len(started) < len(source) or set(started) == source)


def test_identity_floor_is_training_cells_of_the_same_time_scored_on_held_out_cells(imputation, small_timecourse):
    out, results, split = imputation
    genes = results["genes"]
    for row in (r for r in results["rows"] if r["method"] == "identity"):
        t = row["time"]
        at_time = np.isclose(split["time"], t)
        arrays = np.load(out / "work" / "predictions" / f"identity_time{t:g}.npz")
        assert set(arrays["cells"]) <= set(split.loc[at_time & (split["split"] == "train"), "obs_name"])
        assert len(set(arrays["cells"])) == len(arrays["cells"]) == row["n_real"]
        chosen = small_timecourse[list(arrays["cells"])]
        assert np.allclose(arrays["expression"], lognorm_over_genes(chosen.X, chosen.var_names, genes).toarray())
        real = small_timecourse[list(split.loc[at_time & (split["split"] == "held_out"), "obs_name"])]
        rescored = score(arrays["expression"], lognorm_over_genes(real.X, real.var_names, genes), seed=0)
        assert row["mmd"] == pytest.approx(rescored["mmd"]) and row["emd"] == pytest.approx(rescored["emd"])


# ---------------------------------------------------------------------------------------------------- extrapolation
# The peers whose package is installed (`make` installs both); each is fitted and scored like the others.
PEERS = available_peers()


@pytest.fixture(scope="module")
def extrapolation(tmp_path_factory, small_timecourse, tiny_fast_config):
    out = tmp_path_factory.mktemp("extrapolate") / "out"
    results = run_extrapolation_distance(
        small_timecourse, "time", k=3, out_dir=out, seeds=(0, 1), methods=("sctrace", "identity", "linear", "mixture") + PEERS,
        overrides=tiny_fast_config, max_epochs=1, otcfm_settings={"n_steps": 5, "hidden": 16},
        mioflow_settings={"n_pcs": 4, "hidden": 16, "n_epochs": 2, "sample_size": 16}, echo=lambda _: None,
    )
    return out, results


def test_extrapolation_has_a_row_per_later_time_and_method_with_its_distance(extrapolation, small_timecourse):
    out, results = extrapolation
    times = np.unique(small_timecourse.obs["time"].to_numpy(dtype=float))
    assert results["train_times"] == list(times[:3]) and results["target_times"] == list(times[3:])
    assert {"linear", "mixture"} <= set(results["skipped"]) and results["methods"] == ["sctrace", "identity", *PEERS]
    expected = [(steps, t, t - times[2], m) for steps, t in enumerate(times[3:], start=1)
                for m in ("sctrace", "identity", *PEERS)]
    assert [(r["steps"], r["time"], r["time_delta"], r["method"]) for r in results["rows"]] == expected
    for row in results["rows"]:
        assert [run["seed"] for run in row["runs"]] == [0, 1]
        emd = [run["emd"] for run in row["runs"]]
        assert row["mean"]["emd"] == pytest.approx(np.mean(emd))
        assert row["sd"]["emd"] == pytest.approx(np.std(emd, ddof=1))
        assert row["n_real"] == int(np.isclose(small_timecourse.obs["time"], row["time"]).sum())
    assert (out / "plots" / "extrapolation_by_distance.png").stat().st_size > 0
    assert "± " in (out / "extrapolation.md").read_text()


def test_extrapolation_trains_only_on_the_first_k_time_points(extrapolation, small_timecourse):
    out, results = extrapolation
    spec = json.loads((out / "runs" / "sctrace_seed1" / "corpus" / "corpus.json").read_text())
    assert spec["time_values"] == results["train_times"]
    names = np.load(out / "runs" / "sctrace_seed1" / "corpus" / "obs_names.npy").astype(str)
    assert set(small_timecourse.obs.loc[names, "time"]) <= set(results["train_times"])
    # Every target lies past the training times: each seed's fit calibrated the step past the last one.
    for seed in (0, 1):
        step = json.loads((out / "runs" / f"sctrace_seed{seed}" / "extrapolation.json").read_text())["step"]
        assert 0.0 <= step <= 1.0


def test_extrapolation_identity_is_the_last_training_time_point(extrapolation, small_timecourse):
    out, results = extrapolation
    last = small_timecourse[np.isclose(small_timecourse.obs["time"], results["train_times"][-1])]
    pool = lognorm_over_genes(last.X, last.var_names, results["genes"]).toarray()
    for t in results["target_times"]:
        predicted = np.load(out / "work" / "predictions" / f"identity_time{t:g}_seed0.npz")["expression"]
        distances = ((predicted[:, None, :] - pool[None, :, :]) ** 2).sum(-1)
        assert np.allclose(distances.min(1), 0.0)


def test_extrapolation_rejects_bad_k_before_any_work(tmp_path, small_timecourse):
    for k, fragment in ((1, "got 1"), (6, "less than the 6 observed")):
        with pytest.raises(SctraceInputError, match=fragment):
            run_extrapolation_distance(small_timecourse, "time", k=k, out_dir=tmp_path / f"k{k}", echo=lambda _: None)
        assert not (tmp_path / f"k{k}").exists()


def test_imputation_input_errors(tmp_path, small_timecourse):
    with pytest.raises(SctraceInputError, match="stratify column 'batch' is not in adata.obs"):
        run_imputation(small_timecourse, "time", out_dir=tmp_path / "a", stratify_key="batch", echo=lambda _: None)
    with pytest.raises(SctraceInputError, match="at least 2 of each"):
        run_imputation(small_timecourse, "time", out_dir=tmp_path / "b", test_fraction=0.01, echo=lambda _: None)
    with pytest.raises(SctraceInputError, match="cannot impute"):
        run_imputation(small_timecourse, "time", out_dir=tmp_path / "c", methods=("linear",), echo=lambda _: None)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(SctraceInputError, match="already exists"):
        run_imputation(small_timecourse, "time", out_dir=taken, echo=lambda _: None)
    with pytest.raises(SctraceInputError, match="did not write"):
        run_imputation(small_timecourse, "time", out_dir=taken, overwrite=True, echo=lambda _: None)


# ---------------------------------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def cli_app():
    from sctrace.cli import app

    return app


@pytest.fixture(scope="module")
def data_files(tmp_path_factory, small_timecourse, tiny_fast_config):
    folder = tmp_path_factory.mktemp("cli_exp")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(tiny_fast_config))
    small_timecourse.write_h5ad(folder / "sim.h5ad")
    return folder


def test_impute_command_writes_the_table(cli_app, data_files):
    out = data_files / "impute"
    result = CliRunner().invoke(cli_app, ["impute", str(data_files / "sim.h5ad"), "--out", str(out), "--config",
                                          str(data_files / "tiny.yaml"), "--max-epochs", "1", "--no-plots"])
    assert result.exit_code == 0, result.output
    assert "| **mean** | sctrace |" in (out / "imputation.md").read_text()
    again = CliRunner().invoke(cli_app, ["impute", str(data_files / "sim.h5ad"), "--out", str(out)])
    assert isinstance(again.exception, SctraceInputError) and "--overwrite" in str(again.exception)


def test_extrapolation_command_runs_and_reports_errors(cli_app, data_files):
    sim = str(data_files / "sim.h5ad")
    out = data_files / "extrapolation"
    result = CliRunner().invoke(cli_app, ["extrapolation", sim, "--train-steps", "2", "--out", str(out),
                                          "--methods", "identity", "--seeds", "0,1"])
    assert result.exit_code == 0, result.output
    assert len(json.loads((out / "extrapolation.json").read_text())["rows"]) == 4
    for args, fragment in ((["--train-steps", "1"], "got 1"), (["--train-steps", "2", "--seeds", "a"], "--seeds"),
                           (["--train-steps", "2", "--methods", "magic"], "unknown method")):
        failed = CliRunner().invoke(cli_app, ["extrapolation", sim, "--out", str(data_files / "bad"), *args])
        assert isinstance(failed.exception, SctraceInputError) and fragment in str(failed.exception), failed.output
