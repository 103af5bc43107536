"""The leave-one-time-out protocol: its splits, resuming, the win table, the snap check and the data kinds."""

import json

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

import sctrace.harness.protocol as protocol
from sctrace._errors import SctraceInputError
from sctrace.data.io import detect_count_kind
from sctrace.harness.protocol import protocol_splits, run_protocol, win_table

METHODS = ["sctrace", "identity", "mixture"]


@pytest.fixture(scope="module")
def four_times(small_timecourse, tmp_path_factory):
    """The small simulated course cut to its first four times (0, 1, 2.5, 4): two interpolation splits, one
    extrapolation split."""
    keep = small_timecourse.obs["time"].isin([0.0, 1.0, 2.5, 4.0]).to_numpy()
    path = tmp_path_factory.mktemp("protocol_data") / "four.h5ad"
    small_timecourse[keep].copy().write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def protocol_run(four_times, tiny_fast_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("protocol") / "out"
    summary = run_protocol(four_times, "time", out_dir=out, methods=METHODS, sctrace_overrides=tiny_fast_config,
                           echo=lambda line: None)
    return out, summary


def test_splits_are_every_interior_time_and_the_last():
    assert protocol_splits([0, 1, 2.5, 4]) == [("interpolate", 1.0), ("interpolate", 2.5), ("extrapolate", 4.0)]
    assert protocol_splits([4, 0, 1]) == [("interpolate", 1.0), ("extrapolate", 4.0)]
    assert protocol_splits([0, 1, 2.5, 4], times=[4]) == [("extrapolate", 4.0)]
    with pytest.raises(SctraceInputError, match="never held out"):
        protocol_splits([0, 1, 2.5, 4], times=[0])
    with pytest.raises(SctraceInputError, match="at least 3"):
        protocol_splits([0, 1])


def test_a_row_per_split_and_method(protocol_run):
    out, summary = protocol_run
    saved = json.loads((out / "protocol.json").read_text())
    assert saved["splits"] == ["interpolate-1", "interpolate-2.5", "extrapolate-4"]
    pairs = {(row["split"], row["method"]) for row in saved["rows"]}
    # mixture only interpolates: no extrapolation row for it.
    assert pairs == {(s, m) for s in saved["splits"] for m in METHODS} - {("extrapolate-4", "mixture")}
    for row in saved["rows"]:
        assert not row["failed"]
        for key in ("emd", "mmd", "pearson_delta", "gene_corr", "c2st_auc", "gene_corr_iid", "c2st_auc_iid", "wall_s"):
            assert np.isfinite(row[key]), (row["split"], row["method"], key)
        # Distances to the truth and to every training time (for extrapolation: every earlier time).
        expected = {"interpolate-1": {"0", "2.5", "4"}, "interpolate-2.5": {"0", "1", "4"}, "extrapolate-4": {"0", "1", "2.5"}}
        assert set(row["snap"]["to_times"]) == expected[row["split"]]
        if row["method"] == "sctrace":  # training speed from the run's log: steps and steps per second
            assert row["steps"] >= 1 and row["steps_per_s"] > 0
    table = (out / "protocol.md").read_text()
    assert "| interpolate-2.5 | sctrace |" in table and "Pearson-delta wins" in table


def test_identity_copies_a_training_time(protocol_run):
    """identity draws the previous time's real cells: its mean is near that time's mean, so it snaps."""
    _, summary = protocol_run
    for row in summary["rows"]:
        if row["method"] == "identity":
            previous = {"interpolate-1": "0", "interpolate-2.5": "1", "extrapolate-4": "2.5"}[row["split"]]
            assert row["snap"]["nearest_train_time"] == previous
            assert row["snap"]["to_times"][previous] < 0.5 * row["snap"]["to_truth"]
            assert row["snap"]["snapped_seeds"] == 1


def test_win_table_counts_splits_where_both_scored():
    rows = [
        {"split": "a", "method": "sctrace", "emd": 0.1, "pearson_delta": 0.5},
        {"split": "a", "method": "linear", "emd": 0.2, "pearson_delta": 0.6},
        {"split": "b", "method": "sctrace", "emd": 0.3, "pearson_delta": 0.9},
        {"split": "b", "method": "linear", "emd": 0.2, "pearson_delta": 0.1},
        {"split": "c", "method": "sctrace", "emd": 0.3, "pearson_delta": 0.9},
        {"split": "c", "method": "linear", "failed": "boom"},
    ]
    assert win_table(rows) == {"linear": {"emd": 1, "emd_n": 2, "pearson_delta": 1, "pearson_delta_n": 2}}


def _record_benchmarks(monkeypatch) -> list:
    """(held-out time, methods) of every benchmark the protocol runs from now on; each still runs."""
    calls = []
    real = protocol.run_benchmark

    def recording(*args, **kwargs):
        calls.append((kwargs["holdout"], tuple(kwargs["methods"])))
        return real(*args, **kwargs)

    monkeypatch.setattr(protocol, "run_benchmark", recording)
    return calls


def test_finished_splits_are_kept_and_rerun_refits_only_what_is_asked(protocol_run, four_times, tiny_fast_config,
                                                                      monkeypatch):
    out, summary = protocol_run
    calls = _record_benchmarks(monkeypatch)
    again = run_protocol(four_times, "time", out_dir=out, methods=METHODS, sctrace_overrides=tiny_fast_config,
                         echo=lambda line: None)
    assert calls == []
    assert again["rows"] == summary["rows"]
    run_protocol(four_times, "time", out_dir=out, methods=METHODS, times=[2.5], rerun=["identity"],
                 sctrace_overrides=tiny_fast_config, echo=lambda line: None)
    assert calls == [(2.5, ("identity",))]
    # --no-run: a summary of what is there, nothing fitted, even for methods never run.
    summary_only = run_protocol(four_times, "time", out_dir=out, methods=[*METHODS, "linear"], run=False,
                                echo=lambda line: None)
    assert calls == [(2.5, ("identity",))]
    assert {row["method"] for row in summary_only["rows"]} == set(METHODS)


def test_a_kept_split_scored_over_other_genes_runs_again(protocol_run, four_times, tiny_fast_config, monkeypatch,
                                                         tmp_path):
    """A finished split whose genes differ from today's choice (another gene rule or sctrace version) is not mixed
    with today's runs: its scores and means would be over other genes."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(protocol_run[0], out)
    calls = _record_benchmarks(monkeypatch)
    lines: list[str] = []
    fewer = {**tiny_fast_config, "n_top_genes": 100}
    summary = run_protocol(four_times, "time", out_dir=out, methods=["identity"], times=[2.5],
                           sctrace_overrides=fewer, echo=lines.append)
    assert calls == [(2.5, ("identity",))]
    assert any("scored other genes; running again" in line for line in lines)
    (row,) = summary["rows"]
    assert len(json.loads((out / "splits" / "interpolate-2.5" / "identity" / "results.json").read_text())["genes"]) == 100
    assert np.isfinite(row["emd"])
    # A summary of a split whose methods ran over other genes measures each method's snap over its own genes.
    mixed = run_protocol(four_times, "time", out_dir=out, methods=METHODS, times=[2.5], run=False, echo=lambda line: None)
    assert {r["method"] for r in mixed["rows"]} == set(METHODS)
    assert all(np.isfinite(r["snap"]["to_truth"]) for r in mixed["rows"])


def test_a_split_another_run_holds_is_refused_and_left_alone(protocol_run, four_times, monkeypatch, tmp_path):
    """Two protocol runs on one split would each clear the folder the other writes: the second one stops first."""
    import shutil

    from filelock import FileLock

    out = tmp_path / "out"
    shutil.copytree(protocol_run[0], out)
    calls = _record_benchmarks(monkeypatch)
    held = FileLock(str(out / "splits" / "interpolate-2.5") + ".lock")
    with held:
        with pytest.raises(SctraceInputError, match="another `sctrace protocol` is running split interpolate-2.5"):
            run_protocol(four_times, "time", out_dir=out, methods=["identity"], times=[2.5], rerun=["identity"],
                         echo=lambda line: None)
    assert calls == []
    assert (out / "splits" / "interpolate-2.5" / "identity" / "results.json").exists()
    # Released (or its process gone), the split runs again.
    run_protocol(four_times, "time", out_dir=out, methods=["identity"], times=[2.5], rerun=["identity"],
                 echo=lambda line: None)
    assert calls == [(2.5, ("identity",))]


def test_detect_count_kind():
    assert detect_count_kind(sp.csr_matrix(np.array([[0, 3], [5, 0]], dtype=np.int32))) == "counts"
    assert detect_count_kind(np.array([[0.0, 3.0], [5.0, 0.0]], dtype=np.float32)) == "counts"
    assert detect_count_kind(np.array([[0.0, 1.5], [2.7, 0.0]], dtype=np.float32)) == "lognorm"
    assert detect_count_kind(sp.csr_matrix(np.array([[0.0, 812.25], [3.5, 0.0]], dtype=np.float32))) == "values"


def test_fpkm_like_values_are_read_as_log1p(small_timecourse, tmp_path):
    """Values that are neither counts nor logs (FPKM) go to every method as log1p(values)."""
    adata = small_timecourse[small_timecourse.obs["time"].isin([0.0, 1.0, 2.5])].copy()
    adata.X = sp.csr_matrix(adata.X.astype(np.float32) * 37.25)
    path = tmp_path / "fpkm.h5ad"
    adata.write_h5ad(path)
    summary = run_protocol(path, "time", out_dir=tmp_path / "out", methods=["identity"], echo=lambda line: None)
    assert summary["count_kind"] == "values"
    logged = ad.read_h5ad(tmp_path / "out" / "work" / "log1p_values.h5ad")
    np.testing.assert_allclose(logged.X.toarray(), np.log1p(adata.X.toarray()), rtol=1e-6)
    assert {row["split"] for row in summary["rows"]} == {"interpolate-1", "extrapolate-2.5"}


def test_cli_runs_the_protocol(four_times, tmp_path):
    from sctrace.cli import app

    result = CliRunner().invoke(app, ["protocol", str(four_times), "--out", str(tmp_path / "p"), "--methods",
                                      "identity,mixture", "--times", "1,4"])
    assert result.exit_code == 0, result.output
    assert "interpolate-1" in (tmp_path / "p" / "protocol.md").read_text()
    bad = CliRunner().invoke(app, ["protocol", str(four_times), "--out", str(tmp_path / "q"), "--times", "0"])
    assert bad.exit_code != 0 and "never held out" in str(bad.exception)
