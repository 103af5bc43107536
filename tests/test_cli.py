"""The command line: each command's output files and summary, and every input error as one ``error:`` line.

Successful runs go through ``typer.testing.CliRunner`` on ``sctrace.cli.app``. Errors go through
``sctrace.cli.main`` (the console script's entry point, which turns ``SctraceInputError`` into one line and
exit code 2) with ``sys.argv`` patched, so the message the user sees and the exit code are both checked.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from sctrace import cli
from sctrace.config import SECTION_OF

N_CELLS, N_GENES, HOLDOUT = 400, 200, 4.0
runner = CliRunner()


def invoke(*args) -> str:
    """Run a command that must succeed; return its output."""
    result = runner.invoke(cli.app, [str(a) for a in args])
    assert result.exit_code == 0, f"{args} failed: {result.output}\n{result.exception!r}"
    return result.output


def run_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Call the console-script entry point with ``args``; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["sctrace", *map(str, args)])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    out, err = capsys.readouterr()
    return stop.value.code, out, err


def assert_one_line_error(monkeypatch, capsys, args, fragment: str) -> str:
    code, out, err = run_main(monkeypatch, capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2, f"exit code {code} for {args}; stderr: {err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"not one 'error:' line: {err!r}"
    assert "Traceback" not in err + out
    assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "sim.h5ad"
    invoke("simulate", "--out", path, "--n-cells", N_CELLS, "--n-genes", N_GENES, "--seed", 3)
    return path


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory, tiny_fast_config) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_fast_config))
    return path


@pytest.fixture(scope="module")
def run_dir(sim_file, tiny_yaml) -> Path:
    out = sim_file.parent / "run"
    output = invoke(
        "fit", sim_file, "--time-key", "time", "--holdout", HOLDOUT, "--out", out, "--config", tiny_yaml,
        "--max-epochs", 1, "--no-progress",
    )
    assert f"saved the trained model to {out}" in output
    return out


# ---------------------------------------------------------------------------------------------- simulate
def test_simulate_writes_a_readable_time_course(sim_file):
    adata = ad.read_h5ad(sim_file)
    assert adata.shape == (N_CELLS, N_GENES)
    assert {"time", "cell_type", "donor"} <= set(adata.obs.columns)
    assert adata.obs["time"].nunique() >= 3
    values = adata.X.data if hasattr(adata.X, "data") else np.asarray(adata.X)
    assert np.all(values >= 0) and np.all(values == np.round(values))  # raw counts


def test_simulate_summary_lists_plain_time_values(tmp_path):
    output = invoke("simulate", "--out", tmp_path / "s.h5ad", "--n-cells", N_CELLS, "--n-genes", N_GENES)
    times = sorted(ad.read_h5ad(tmp_path / "s.h5ad").obs["time"].unique())
    assert f"wrote {N_CELLS} cells x {N_GENES} genes" in output
    assert "times " + ", ".join(f"{t:g}" for t in times) in output  # not numpy reprs like np.float64(0.0)


def test_simulate_refuses_to_overwrite(sim_file, monkeypatch, capsys):
    before = sim_file.stat().st_mtime_ns
    assert_one_line_error(
        monkeypatch, capsys, ["simulate", "--out", sim_file], "already exists; pass --overwrite or choose another --out"
    )
    assert sim_file.stat().st_mtime_ns == before
    invoke("simulate", "--out", sim_file, "--n-cells", N_CELLS, "--n-genes", N_GENES, "--seed", 3, "--overwrite")


# ---------------------------------------------------------------------------------------------- prepare
def _summary_rows(output: str) -> dict[float, tuple[int, str, str]]:
    """time -> (cells, role, mean tokens) from the summary's per-time table."""
    rows = {}
    for line in output.splitlines():
        match = re.match(r"^([-\d.e+]+)\s+(\d+)\s+(source|target|held out|unused)\s+(\S+)$", line)
        if match:
            rows[float(match[1])] = (int(match[2]), match[3], match[4])
    return rows


def test_prepare_prints_the_summary(sim_file):
    output = invoke("prepare", sim_file, "--holdout", HOLDOUT, "--n-top-genes", 100, "--max-len", 40, "--pairing", "random")
    obs_counts = ad.read_h5ad(sim_file).obs["time"].value_counts()
    rows = _summary_rows(output)
    assert rows.keys() == {float(t) for t in obs_counts.index}
    for time, n_cells in obs_counts.items():
        assert rows[float(time)][0] == n_cells
    assert rows[HOLDOUT][1:] == ("held out", "-")
    assert rows[min(rows)][1] == "source"
    for time, (_, role, mean_tokens) in rows.items():
        if role != "held out":
            assert 0 < float(mean_tokens) <= 40

    n_hvgs = int(re.search(r"HVGs: (\d+)", output)[1])
    assert 0 < n_hvgs <= 100
    mean_tokens = float(re.search(r"mean tokens per training cell: ([\d.]+)", output)[1])
    assert 0 < mean_tokens <= 40
    found = re.search(r"pairs: (\d+) \((\d+) source cells x (\d+) times; the last (\d+) pair validation cells held aside\)",
                      output)
    n_pairs, n_sources, n_times, n_val = map(int, found.groups())
    assert n_sources == obs_counts[min(obs_counts.index)] and n_times == len(obs_counts) - 1 and 0 < n_val < n_pairs
    # Every target cell is used, so there are at least as many pairs as cells at the largest training time.
    assert n_pairs >= max(n for t, n in obs_counts.items() if t != HOLDOUT)
    assert "pairing: random" in output


def test_prepare_takes_its_data_settings_from_the_preset(sim_file, tmp_path):
    # Without flags the summary is of the corpus fit would build: cpu-small's 1,000 HVGs, 64 tokens, OT pairs.
    output = invoke("prepare", sim_file, "--holdout", HOLDOUT)
    assert output == invoke("prepare", sim_file, "--holdout", HOLDOUT, "--n-top-genes", 1000, "--max-len", 64,
                            "--pairing", "ot")
    assert output != invoke("prepare", sim_file, "--holdout", HOLDOUT, "--n-top-genes", 2000, "--max-len", 256)
    config = tmp_path / "random.yaml"
    config.write_text("pairing: random\nn_top_genes: 50\n")
    output = invoke("prepare", sim_file, "--holdout", HOLDOUT, "--config", config, "--max-len", 40)
    assert "pairing: random" in output and int(re.search(r"HVGs: (\d+)", output)[1]) == 50
    assert 0 < float(re.search(r"mean tokens per training cell: ([\d.]+)", output)[1]) <= 40


def test_prepare_stratified_shows_strata(sim_file):
    output = invoke("prepare", sim_file, "--stratify", "donor", "--n-top-genes", 100, "--max-len", 40)
    donors = sorted(ad.read_h5ad(sim_file).obs["donor"].astype(str).unique())
    assert f"strata (donor): {len(donors)} -> {', '.join(donors)}" in output
    # Without --holdout nothing is held out, as for fit (task auto means none).
    assert [role for _, role, _ in _summary_rows(output).values()].count("held out") == 0
    # Holding out the last time means extrapolation, the middle ones interpolation: decided once, for fit too.
    times = sorted(_summary_rows(output))
    for held, task in ((times[-1], "extrapolate"), (times[2], "interpolate")):
        output = invoke("prepare", sim_file, "--holdout", held, "--n-top-genes", 100, "--max-len", 40)
        assert [t for t, (_, role, _) in _summary_rows(output).items() if role == "held out"] == [held]
        assert f"task: {task}" in output


def test_prepare_with_ot_pairing_and_its_errors(sim_file, monkeypatch, capsys):
    output = invoke("prepare", sim_file, "--pairing", "ot", "--n-top-genes", 100, "--max-len", 40)
    assert "pairing: ot" in output
    assert_one_line_error(monkeypatch, capsys, ["prepare", sim_file, "--stratify", "donor", "--pairing", "ot"],
                          "pairing 'ot' does not use strata")
    assert_one_line_error(monkeypatch, capsys, ["prepare", sim_file, "--pairing", "nearest"], "unknown pairing mode 'nearest'")
    assert_one_line_error(monkeypatch, capsys, ["fit", sim_file, "--out", "never", "--stratify", "donor", "--pairing", "random"],
                          "pairing 'random' does not use strata")


def test_prepare_without_a_file_uses_the_simulator():
    output = invoke("prepare", "--task", "extrapolate", "--n-top-genes", 100, "--max-len", 32)
    rows = _summary_rows(output)
    assert len(rows) >= 3 and sum(n for n, _, _ in rows.values()) == 3000  # the simulator's default size
    assert rows[max(rows)][1] == "held out"  # extrapolation holds out the last time point


def test_prepare_reads_lognormalised_data_as_such(sim_file, tmp_path, monkeypatch, capsys):
    adata = ad.read_h5ad(sim_file)
    totals = np.asarray(adata.X.sum(axis=1))
    adata.X = adata.X.multiply(1e4 / totals).log1p().tocsr().astype(np.float32)
    adata.write_h5ad(tmp_path / "lognorm.h5ad")
    args = ["prepare", tmp_path / "lognorm.h5ad", "--n-top-genes", 100, "--max-len", 40]
    for kind in ("auto", "lognorm"):
        output = invoke(*args, "--count-kind", kind)
        assert sum(n for n, _, _ in _summary_rows(output).values()) == N_CELLS
    assert_one_line_error(monkeypatch, capsys, [*args, "--count-kind", "counts"],
                          "holds non-integer values")


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "args, fragment",
    [
        (["prepare", "{dir}/missing.h5ad"], "missing.h5ad' does not exist"),
        (["prepare", "{sim}", "--time-key", "day"], "time column 'day' is not in adata.obs"),
        (["prepare", "{sim}", "--holdout", "3.3"], "held-out time 3.3 is not an observed time point"),
        (["prepare", "{sim}", "--time-map", "day2"], "--time-map entries look like LABEL=VALUE"),
        (["prepare", "{sim}", "--time-map", "day2=two"], "--time-map value for 'day2' must be a number"),
        (["prepare", "{sim}", "--task", "sideways"], "unknown task 'sideways'"),
        (["prepare", "{sim}", "--count-kind", "tpm"], "unknown --count-kind 'tpm'; choose auto or one of 'counts', 'lognorm'"),
        (["fit", "{sim}", "--out", "{dir}/r", "--likelihood", "poisson"],
         "config key 'likelihood' in overrides must be one of auto, zinb, nb, gaussian, hurdle, got 'poisson'"),
        (["benchmark", "{sim}", "--holdout", "4", "--out", "{dir}/b", "--pairing", "sideways"],
         "config key 'pairing' in overrides must be one of random, stratified, ot, got 'sideways'"),
        (["benchmark", "{sim}", "--holdout", "4", "--out", "{dir}/b", "--likelihood", "hurdle"],
         "likelihood 'hurdle' does not fit --count-kind counts"),
        (["benchmark", "{sim}", "--holdout", "4", "--out", "{dir}/b", "--ablate", "encoder", "--encoder-path", "{dir}/gf"],
         "gf is not a directory; pass the folder holding"),
        (["benchmark", "{sim}", "--holdout", "4", "--out", "{dir}/b", "--encoder-path", "{dir}"],
         "--encoder-path is read by --ablate encoder only"),
        (["plot", "{dir}"], "holds no results.json; pass the --out folder of `sctrace benchmark`"),
        (["plot", "{sim}", "--out", "{dir}/p"], "plotting a prediction file needs DATA, --time"),
        (["fit", "{sim}", "--out", "{dir}/r", "--preset", "huge"], "unknown preset 'huge'; choose one of"),
        (["fit", "{sim}", "--out", "{dir}/r", "--config", "{dir}/bad.yaml"], "unknown config key(s) d_modle in"),
        (["predict", "{dir}/no_run", "--time", "4", "--out", "{dir}/p.h5ad"], "no_run does not exist; pass the --out directory"),
    ],
)
def test_input_errors_are_one_line(args, fragment, sim_file, tmp_path, monkeypatch, capsys):
    (tmp_path / "bad.yaml").write_text("d_modle: 32\n")
    args = [a.format(sim=sim_file, dir=tmp_path) for a in args]
    assert_one_line_error(monkeypatch, capsys, args, fragment)
    assert not (tmp_path / "r").exists()  # a failed fit leaves no run directory behind


def test_console_script_is_installed(tmp_path):
    script = Path(sys.executable).parent / "sctrace"
    help_run = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert help_run.returncode == 0
    for command in ("simulate", "prepare", "fit", "predict", "embed", "demo"):
        assert command in help_run.stdout
    # The console script, not only main(), turns input errors into one line and exit code 2.
    (tmp_path / "taken.h5ad").write_text("")
    error_run = subprocess.run(
        [script, "simulate", "--out", tmp_path / "taken.h5ad"], capture_output=True, text=True, timeout=120
    )
    assert error_run.returncode == 2
    assert error_run.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'taken.h5ad'} already exists; pass --overwrite or choose another --out."
    ]


# ---------------------------------------------------------------------------------------------- fit -> predict -> embed
def test_fit_writes_a_run_with_the_yaml_config(run_dir, tiny_fast_config):
    for name in ("model.safetensors", "config.yaml", "corpus/corpus.json", "sctrace_run.json"):
        assert (run_dir / name).exists(), name
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["training"]["max_epochs"] == 1  # the flag beats the YAML file
    for key in ("d_model", "n_top_genes", "max_len", "n_encoder_layers"):
        assert config[SECTION_OF[key]][key] == tiny_fast_config[key]
    spec = json.loads((run_dir / "corpus/corpus.json").read_text())
    assert spec["holdout"] == HOLDOUT and HOLDOUT not in spec["time_values"]


def test_fit_calibrates_extrapolation_when_asked(run_dir, sim_file, tiny_yaml, tmp_path):
    """The interpolation run above has no calibration; --calibrate-extrapolation adds one and says its step."""
    assert not (run_dir / "extrapolation.json").exists()
    out = tmp_path / "calibrated"
    output = invoke("fit", sim_file, "--holdout", HOLDOUT, "--out", out, "--config", tiny_yaml, "--max-epochs", 1,
                    "--no-progress", "--calibrate-extrapolation")
    step = json.loads((out / "extrapolation.json").read_text())["step"]
    assert f"extrapolation step {step:g} (calibrated on the training times)" in output


def test_fit_refuses_an_existing_run_dir(run_dir, sim_file, tiny_yaml, monkeypatch, capsys):
    before = (run_dir / "model.safetensors").stat().st_mtime_ns
    args = ["fit", sim_file, "--holdout", HOLDOUT, "--out", run_dir, "--config", tiny_yaml, "--max-epochs", 1]
    assert_one_line_error(monkeypatch, capsys, args, f"run directory {run_dir} already exists; pass --overwrite or choose another --out")
    assert (run_dir / "model.safetensors").stat().st_mtime_ns == before


def test_predict_writes_generated_cells(run_dir, tiny_fast_config, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pred.h5ad"
    output = invoke("predict", run_dir, "--time", HOLDOUT, "--out", out, "--n-cells", 50, "--seed", 1)
    assert f"wrote 50 generated cells at time {HOLDOUT:g}" in output
    genes = json.loads((run_dir / "corpus/corpus.json").read_text())["genes"]
    pred = ad.read_h5ad(out)
    assert pred.n_obs == 50
    assert pred.var_names.tolist() == genes
    mean = np.asarray(pred.layers["zinb_mean"])
    assert mean.shape == (50, len(genes)) and np.all(np.isfinite(mean)) and np.all(mean >= 0)
    assert pred.obsm["X_sctrace"].shape == (50, tiny_fast_config["d_model"])
    assert np.allclose(pred.obs["time"], HOLDOUT)
    counts = pred.X.toarray()
    assert np.all(counts >= 0) and np.all(counts == np.round(counts))

    before = out.stat().st_mtime_ns
    assert_one_line_error(
        monkeypatch, capsys, ["predict", run_dir, "--time", HOLDOUT, "--out", out],
        "already exists; pass --overwrite or choose another --out",
    )
    assert out.stat().st_mtime_ns == before
    invoke("predict", run_dir, "--time", 9.5, "--out", out, "--n-cells", 10, "--overwrite")  # past the last time
    assert ad.read_h5ad(out).n_obs == 10
    invoke("predict", run_dir, "--time", HOLDOUT, "--out", out, "--n-cells", 10, "--library-size", 1500, "--overwrite")
    assert np.all(ad.read_h5ad(out).obs["library_size"] == 1500)
    invoke("predict", run_dir, "--time", HOLDOUT, "--out", out, "--n-cells", 10, "--sampling", "stratified", "--overwrite")
    assert ad.read_h5ad(out).uns["sctrace"]["sampling"] == "stratified"
    invoke("predict", run_dir, "--time", HOLDOUT, "--out", out, "--n-cells", 10, "--sampling", "copula", "--overwrite")
    assert ad.read_h5ad(out).uns["sctrace"]["sampling"] == "copula"
    assert_one_line_error(
        monkeypatch, capsys, ["predict", run_dir, "--time", HOLDOUT, "--out", out, "--sampling", "lhs", "--overwrite"],
        "unknown sampling 'lhs'; choose one of iid, stratified",
    )


def test_embed_writes_cell_and_gene_embeddings(run_dir, sim_file, tiny_fast_config, tmp_path):
    from sctrace.estimator import TRACE

    out = tmp_path / "emb.h5ad"
    output = invoke("embed", run_dir, sim_file, "--out", out)
    assert f"wrote embeddings of {N_CELLS} cells" in output
    emb = ad.read_h5ad(out)
    d = tiny_fast_config["d_model"]
    assert emb.obs_names.tolist() == ad.read_h5ad(sim_file).obs_names.tolist()
    cells = emb.obsm["X_sctrace"]
    assert cells.shape == (N_CELLS, d) and np.all(np.isfinite(cells))
    genes = emb.varm["sctrace_genes"]
    assert genes.shape == (N_GENES, d)
    model = TRACE.load(run_dir)
    known = emb.var_names.isin(model.spec.genes)
    assert known.sum() == model.spec.n_genes and np.isnan(genes[~known]).all()
    # Gene rows are the model's gene table, matched by name.
    order = [model.spec.genes.index(g) for g in emb.var_names[known]]
    np.testing.assert_allclose(genes[known], model.gene_embeddings()[order], rtol=1e-6)


def test_fit_encoder_flags_reach_the_config(sim_file, tmp_path, monkeypatch, capsys):
    base = ["fit", sim_file, "--holdout", HOLDOUT, "--out", tmp_path / "run", "--max-epochs", 1]
    assert_one_line_error(monkeypatch, capsys, base + ["--encoder", "bert"], "'encoder' in overrides must be one of scratch, random, geneformer")
    assert_one_line_error(monkeypatch, capsys, base + ["--encoder", "geneformer"], "pass --encoder-path DIR")
    assert_one_line_error(monkeypatch, capsys, base + ["--encoder", "geneformer", "--encoder-path", tmp_path / "none"],
                          "does not exist")
    assert not (tmp_path / "run").exists()
