"""Faults a new user meets on the command line (issue 22): no lost file, no silent wrong result, no traceback,
and every error in the words of the interface that was called.

The CLI is driven as in ``test_cli.py``: ``CliRunner`` on ``sctrace.cli.app`` for runs that must succeed,
``sctrace.cli.main`` with ``sys.argv`` patched for errors (one ``error:`` line, exit code 2). Data are tiny
simulations and models train one epoch.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import yaml
from test_cli import assert_one_line_error, invoke, run_main
from typer.testing import CliRunner

from sctrace import cli

N_CELLS, N_GENES, HOLDOUT = 240, 120, 4.0


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rel") / "sim.h5ad"
    invoke("simulate", "--out", path, "--n-cells", N_CELLS, "--n-genes", N_GENES, "--seed", 5)
    return path


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory, tiny_fast_config) -> Path:
    path = tmp_path_factory.mktemp("relcfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump({**tiny_fast_config, "n_top_genes": 80, "max_epochs": 1}))
    return path


def fit_args(sim_file: Path, out: Path, tiny_yaml: Path, *extra) -> list:
    return ["fit", sim_file, "--holdout", HOLDOUT, "--out", out, "--config", tiny_yaml, "--no-progress", *extra]


@pytest.fixture(scope="module")
def run_dir(sim_file, tiny_yaml) -> Path:
    """A finished run that tests only read."""
    out = sim_file.parent / "run"
    invoke(*fit_args(sim_file, out, tiny_yaml))
    return out


def _fresh_run(sim_file, tiny_yaml, where: Path) -> Path:
    out = where / "run"
    invoke(*fit_args(sim_file, out, tiny_yaml))
    return out


# ---------------------------------------------------------------------------------------------- data loss
def test_fit_overwrite_keeps_the_old_run_until_the_new_one_is_done(sim_file, tiny_yaml, tmp_path, monkeypatch):
    import lightning as L

    out = _fresh_run(sim_file, tiny_yaml, tmp_path)
    (out / "notes.txt").write_text("mine")
    weights = (out / "model.safetensors").read_bytes()
    seen = {}

    def killed(self, *args, **kwargs):  # stands for a kill -9 in the middle of training
        seen["old model present"] = (out / "model.safetensors").exists()
        raise RuntimeError("killed")

    monkeypatch.setattr(L.Trainer, "fit", killed)
    outcome = CliRunner().invoke(cli.app, [str(a) for a in fit_args(sim_file, out, tiny_yaml, "--overwrite")])
    assert isinstance(outcome.exception, RuntimeError)
    assert seen["old model present"]
    assert (out / "model.safetensors").read_bytes() == weights
    invoke("predict", out, "--time", HOLDOUT, "--out", tmp_path / "p.h5ad", "--n-cells", 5)  # still usable

    monkeypatch.undo()
    invoke(*fit_args(sim_file, out, tiny_yaml, "--overwrite", "--seed", 1))
    assert (out / "model.safetensors").read_bytes() != weights
    assert (out / "notes.txt").read_text() == "mine"  # files sctrace did not write move with the run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.h5ad", "run"]  # no staging or old folder left


def test_predict_never_replaces_a_file_that_appeared_meanwhile(run_dir, tmp_path, monkeypatch, capsys):
    from sctrace.estimator import TRACE

    out = tmp_path / "pred.h5ad"
    (tmp_path / "pred.h5ad.tmp").mkdir()  # the fixed temporary name two predict runs used to share
    original = TRACE.predict

    def slow_predict(self, *args, **kwargs):  # another predict finishes first
        generated = original(self, *args, **kwargs)
        out.write_bytes(b"the other run's cells")
        return generated

    monkeypatch.setattr(TRACE, "predict", slow_predict)
    assert_one_line_error(monkeypatch, capsys, ["predict", run_dir, "--time", HOLDOUT, "--out", out, "--n-cells", 5],
                          "was written by another command while this one ran; pass --overwrite")
    assert out.read_bytes() == b"the other run's cells"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.h5ad", "pred.h5ad.tmp"]  # no temporary file left
    monkeypatch.setattr(TRACE, "predict", original)
    invoke("predict", run_dir, "--time", HOLDOUT, "--out", out, "--n-cells", 5, "--overwrite")
    assert ad.read_h5ad(out).n_obs == 5


# ---------------------------------------------------------------------------------------------- words
def _lognormalised(sim_file: Path, path: Path) -> Path:
    adata = ad.read_h5ad(sim_file)
    totals = np.asarray(adata.X.sum(axis=1))
    adata.X = adata.X.multiply(1e4 / totals).log1p().tocsr().astype(np.float32)
    adata.write_h5ad(path)
    return path


def test_errors_name_the_fix_in_the_interface_called(sim_file, run_dir, tiny_yaml, tmp_path, monkeypatch, capsys):
    from sctrace._errors import SctraceInputError
    from sctrace.data.io import read_timecourse
    from sctrace.estimator import TRACE

    with pytest.raises(SctraceInputError, match="pass time_key as one of the obs columns"):
        read_timecourse(sim_file, "day")
    line = assert_one_line_error(monkeypatch, capsys, ["prepare", sim_file, "--time-key", "day"],
                                 "pass --time-key as one of the obs columns")
    assert "time_key" not in line

    # A log-normalised file is read as such by default, through the API and the CLI alike; declared as counts it
    # is refused with the same hint in each interface's words.
    lognorm = _lognormalised(sim_file, tmp_path / "lognorm.h5ad")
    assert TRACE(lognorm, "time", holdout=HOLDOUT).config.counts.likelihood == "hurdle"
    invoke(*fit_args(lognorm, tmp_path / "fitted", tiny_yaml))
    assert TRACE.load(tmp_path / "fitted").spec.count_kind == "lognorm"
    with pytest.raises(SctraceInputError, match=r"or count_kind='lognorm': they look log-normalised"):
        TRACE(lognorm, "time", holdout=HOLDOUT, count_kind="counts")
    line = assert_one_line_error(monkeypatch, capsys, fit_args(lognorm, tmp_path / "r", tiny_yaml, "--count-kind", "counts"),
                                 "or --count-kind lognorm: they look log-normalised")
    assert "count_kind" not in line and "layer='counts'" not in line
    assert "--layer counts" in line

    line = assert_one_line_error(monkeypatch, capsys, fit_args(sim_file, run_dir, tiny_yaml),
                                 "already exists; pass --overwrite or choose another --out")
    assert "overwrite=True" not in line
    # The command's words do not leak into later Python calls in the same process.
    with pytest.raises(SctraceInputError, match="pass overwrite=True or choose another run_dir"):
        TRACE.load(run_dir).save(run_dir)


# ---------------------------------------------------------------------------------------------- silent wrong results
def test_resume_refuses_other_data_split_or_config(sim_file, tiny_yaml, tmp_path, monkeypatch, capsys):
    out = _fresh_run(sim_file, tiny_yaml, tmp_path)
    inputs = json.loads((out / "fit_inputs.json").read_text())
    assert inputs["n_obs"] == N_CELLS and inputs["holdout"] == HOLDOUT and inputs["time_key"] == "time"
    corpus_before = (out / "corpus" / "corpus.json").read_bytes()
    times = sorted(ad.read_h5ad(sim_file).obs["time"].unique())
    other_holdout = next(t for t in times[1:-1] if t != HOLDOUT)

    args = ["fit", sim_file, "--holdout", other_holdout, "--out", out, "--config", tiny_yaml, "--no-progress", "--resume"]
    line = assert_one_line_error(monkeypatch, capsys, args, f"cannot resume {out}: --holdout differs (4.0 then")
    assert "--overwrite or another --out" in line
    assert (out / "corpus" / "corpus.json").read_bytes() == corpus_before  # nothing was rewritten

    fewer = tmp_path / "fewer.h5ad"
    ad.read_h5ad(sim_file)[: N_CELLS - 10].write_h5ad(fewer)
    args = ["fit", fewer, "--holdout", HOLDOUT, "--out", out, "--config", tiny_yaml, "--no-progress", "--resume"]
    assert_one_line_error(monkeypatch, capsys, args, f"the data's number of cells differ ({N_CELLS} then, {N_CELLS - 10} now)")

    other_config = tmp_path / "other.yaml"
    other_config.write_text(tiny_yaml.read_text() + "lr: 0.01\n")
    args = ["fit", sim_file, "--holdout", HOLDOUT, "--out", out, "--config", other_config, "--no-progress", "--resume"]
    assert_one_line_error(monkeypatch, capsys, args, "config key(s) lr (0.001 then, 0.01 now) differ")

    # The same data and options, with more epochs, resume.
    invoke("fit", sim_file, "--holdout", HOLDOUT, "--out", out, "--config", tiny_yaml, "--no-progress", "--resume",
           "--max-epochs", 2)


def test_predict_refuses_no_cells_and_warns_far_from_the_data(run_dir, tmp_path, monkeypatch, capsys):
    for n_cells in (0, -5):
        assert_one_line_error(monkeypatch, capsys,
                              ["predict", run_dir, "--time", HOLDOUT, "--out", tmp_path / "p.h5ad", "--n-cells", n_cells],
                              f"--n-cells must be at least 1, got {n_cells}; leave it out")
    assert not (tmp_path / "p.h5ad").exists()
    times = sorted(ad.read_h5ad(run_dir.parent / "sim.h5ad").obs["time"].unique())
    first, last = times[0], times[-1]
    for far in (last + (last - first) + 1, first - 1):
        code, _, err = run_main(monkeypatch, capsys, "predict", run_dir, "--time", far, "--out", tmp_path / f"far{far}.h5ad",
                                "--n-cells", 3)
        assert code == 0
        assert f"warning: time {far:g} is far outside the observed times {first:g} to {last:g}" in err
    with warnings.catch_warnings(record=True) as caught:  # just past the observed range: no warning
        warnings.simplefilter("always")
        invoke("predict", run_dir, "--time", last + 1, "--out", tmp_path / "near.h5ad", "--n-cells", 3)
    assert not [w for w in caught if "far outside" in str(w.message)]


def test_embed_refuses_a_missing_time_column_and_unfit_values(run_dir, sim_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "emb.h5ad"
    line = assert_one_line_error(monkeypatch, capsys, ["embed", run_dir, sim_file, "--out", out, "--time-key", "tme"],
                                 "time column 'tme' is not in adata.obs; pass --time-key as one of")
    no_time = ad.read_h5ad(sim_file)
    del no_time.obs["time"]
    no_time.write_h5ad(tmp_path / "no_time.h5ad")
    assert_one_line_error(monkeypatch, capsys, ["embed", run_dir, tmp_path / "no_time.h5ad", "--out", out],
                          "time column 'time' is not in adata.obs")
    lognorm = _lognormalised(sim_file, tmp_path / "lognorm.h5ad")
    line = assert_one_line_error(monkeypatch, capsys, ["embed", run_dir, lognorm, "--out", out],
                                 "X holds non-integer values")
    assert "a run fitted with --count-kind lognorm: they look log-normalised" in line and "count_kind" not in line
    assert_one_line_error(monkeypatch, capsys, ["embed", run_dir, sim_file, "--out", out, "--layer", "raw"],
                          "layer 'raw' is not in adata.layers, which is empty; leave out --layer")
    assert not out.exists()


def test_a_version_2_run_without_the_keys_added_later_loads(run_dir, tmp_path):
    """config_version 2 had no min_rows: its migration fills it, so the file is old, not damaged."""
    import shutil

    from sctrace import TRACE
    from sctrace.config import TraceConfig

    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    flat = TraceConfig.from_yaml(run_dir / "config.yaml").flat()
    assert "min_rows" in flat
    del flat["min_rows"]
    (old / "config.yaml").write_text(yaml.safe_dump({"config_version": 2, **flat}, sort_keys=False))
    with pytest.warns(UserWarning, match="predates the key.s. min_rows"):
        model = TRACE.load(old)
    assert model.config.data.min_rows == 0


def test_a_run_with_missing_config_keys_or_other_shapes_is_corrupt(run_dir, tmp_path, monkeypatch, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    args = ["predict", broken, "--time", HOLDOUT, "--out", tmp_path / "p.h5ad", "--n-cells", 3]
    network, generation = config["network"], config["generation"]
    (broken / "config.yaml").write_text(yaml.safe_dump(
        {**config, "generation": {k: v for k, v in generation.items() if k != "count_sampling"}}))
    assert_one_line_error(monkeypatch, capsys, args, "is corrupt: its config.yaml lacks the key(s) count_sampling")
    (broken / "config.yaml").write_text(yaml.safe_dump(
        {**config, "network": {**network, "d_model": 2 * network["d_model"]}}))
    assert_one_line_error(monkeypatch, capsys, args, "do not match its config and corpus (")
    (broken / "config.yaml").write_text(yaml.safe_dump(
        {**config, "network": {**network, "n_encoder_layers": network["n_encoder_layers"] + 1}}))
    assert_one_line_error(monkeypatch, capsys, args, "missing, 0 unexpected tensors); the run directory is corrupt")
    assert not (tmp_path / "p.h5ad").exists()


def test_empty_or_tiny_time_points_are_named(sim_file, tmp_path, monkeypatch, capsys):
    adata = ad.read_h5ad(sim_file)
    times = sorted(adata.obs["time"].unique())
    zeroed = adata.copy()
    at = np.flatnonzero(zeroed.obs["time"].to_numpy() == times[1])
    matrix = zeroed.X.tolil()
    matrix[at] = 0
    zeroed.X = matrix.tocsr()
    zeroed.write_h5ad(tmp_path / "zeroed.h5ad")
    code, _, err = run_main(monkeypatch, capsys, "prepare", tmp_path / "zeroed.h5ad", "--holdout", HOLDOUT)
    assert code == 2 and "Traceback" not in err  # (after a warning of the HVG selection about the empty cells)
    assert err.strip().splitlines()[-1].startswith(f"error: all {len(at)} cells at time {times[1]:g} have no expression")

    keep = (adata.obs["time"].to_numpy() != times[1]) | (np.cumsum(adata.obs["time"].to_numpy() == times[1]) <= 2)
    adata[keep].copy().write_h5ad(tmp_path / "tiny.h5ad")
    code, _, err = run_main(monkeypatch, capsys, "prepare", tmp_path / "tiny.h5ad", "--holdout", HOLDOUT)
    assert code == 0
    assert f"warning: time {times[1]:g} has only 2 training cell(s) (fewer than 3)" in err


# ---------------------------------------------------------------------------------------------- tracebacks
def test_a_truncated_h5ad_is_one_sentence(sim_file, tiny_yaml, tmp_path, monkeypatch, capsys):
    data = sim_file.read_bytes()
    for fraction in (0.5, 0.9):
        broken = tmp_path / f"cut{fraction}.h5ad"
        broken.write_bytes(data[: int(len(data) * fraction)])
        for args in (["prepare", broken, "--holdout", HOLDOUT], fit_args(broken, tmp_path / "r", tiny_yaml)):
            assert_one_line_error(monkeypatch, capsys, args, "it is truncated or corrupt, so copy or write it again")
    assert not (tmp_path / "r").exists()


class _Crafted:
    """Stands for any object a checkpoint could smuggle in through pickle."""


def test_resume_from_a_damaged_or_crafted_checkpoint_is_refused(sim_file, tiny_yaml, tmp_path, monkeypatch, capsys):
    import io

    import lightning as L
    import torch

    out = _fresh_run(sim_file, tiny_yaml, tmp_path)
    last = out / "checkpoints" / "last.ckpt"
    good = last.read_bytes()
    args = fit_args(sim_file, out, tiny_yaml, "--resume", "--max-epochs", 2)

    last.write_bytes(good[: len(good) // 2])
    assert_one_line_error(monkeypatch, capsys, args, "cannot be read as a plain checkpoint")
    torch.save({"state_dict": {}, "payload": _Crafted()}, last)
    line = assert_one_line_error(monkeypatch, capsys, args, "cannot be read as a plain checkpoint")
    assert "truncated, corrupt or not written by sctrace: start the fit again with --overwrite" in line
    checkpoint = torch.load(io.BytesIO(good), weights_only=True)
    checkpoint["state_dict"] = {k: v[..., :1] for k, v in checkpoint["state_dict"].items()}
    torch.save(checkpoint, last)
    assert_one_line_error(monkeypatch, capsys, args, "does not hold the weights of this model")

    last.write_bytes(good)
    seen = {}
    original = L.Trainer.fit

    def spy(self, *a, weights_only=None, **kwargs):
        seen.update(kwargs, weights_only=weights_only)
        return original(self, *a, weights_only=weights_only, **kwargs)

    monkeypatch.setattr(L.Trainer, "fit", spy)
    invoke(*args)
    assert seen["ckpt_path"].endswith("last.ckpt") and seen.get("weights_only") is True


# ---------------------------------------------------------------------------------------------- temporary files
def test_a_killed_fits_temporary_corpus_is_removed_by_the_next(sim_file, tmp_path, monkeypatch, tiny_fast_config):
    import socket
    import subprocess
    import sys
    import tempfile

    from sctrace.estimator import TRACE

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    orphan, alive = tmp_path / "sctrace_corpus_orphan", tmp_path / "sctrace_corpus_alive"
    for folder, pid in ((orphan, dead.pid), (alive, os.getpid())):
        folder.mkdir()
        (folder / "owner.txt").write_text(f"{host} {pid}")
        (folder / "tokens.npy").write_bytes(b"x")
    model = TRACE(sim_file, "time", holdout=HOLDOUT, **{**tiny_fast_config, "n_top_genes": 80})
    assert not orphan.exists() and alive.exists()
    mine = [p for p in tmp_path.glob("sctrace_corpus_*") if p != alive]
    assert len(mine) == 1 and (mine[0] / "owner.txt").read_text() == f"{host} {os.getpid()}"
    del model


def test_more_messages_in_the_callers_words(sim_file, tiny_yaml, tmp_path, monkeypatch, capsys):
    from sctrace._errors import SctraceInputError
    from sctrace.estimator import TRACE
    from sctrace.harness.experiments import run_imputation

    assert_one_line_error(monkeypatch, capsys,
                                 ["fit", sim_file, "--out", tmp_path / "r", "--task", "interpolate", "--config", tiny_yaml],
                                 "needs a held-out time; pass --holdout VALUE.")
    with pytest.raises(SctraceInputError, match="needs a held-out time; pass holdout=VALUE"):
        TRACE(sim_file, "time", task="interpolate")
    assert_one_line_error(monkeypatch, capsys, ["impute", sim_file, "--out", tmp_path / "i", "--test-fraction", 2],
                          "pass e.g. --test-fraction 0.2.")
    with pytest.raises(SctraceInputError, match="pass e.g. test_fraction=0.2"):
        run_imputation(sim_file, "time", out_dir=tmp_path / "i", test_fraction=2)


# ---------------------------------------------------------------------------------------------- resume after a kill
_KILL_AT_STEP = """
import os, signal, sys
import sctrace.train as train
step = train.TracePlan.training_step
def killed(self, batch, batch_idx):
    if (self.current_epoch, batch_idx) == {at}:  # (epoch, batch): e.g. (1, 1) is inside the second epoch
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, batch, batch_idx)
train.TracePlan.training_step = killed
from sctrace.cli import main
sys.argv = ["sctrace", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_a_fit_killed_mid_epoch_resumes_to_the_weights_of_an_unbroken_fit(sim_file, tiny_yaml, tmp_path):
    """The checkpoint carries the random streams (masking, dropout, shuffling), so the resumed fit replays the
    killed epoch exactly; with one process only (several processes start fresh streams on resume)."""
    import signal
    import subprocess
    import sys

    from safetensors.torch import load_file

    common = ["--max-epochs", 3, "--seed", 2]
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", _KILL_AT_STEP.replace("{at}", "(1, 1)"),
                          *map(str, fit_args(sim_file, killed, tiny_yaml, *common))],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    assert (killed / "checkpoints" / "last.ckpt").exists() and not (killed / "model.safetensors").exists()
    invoke(*fit_args(sim_file, killed, tiny_yaml, *common, "--resume"))
    unbroken = tmp_path / "unbroken"
    invoke(*fit_args(sim_file, unbroken, tiny_yaml, *common))
    resumed, reference = load_file(str(killed / "model.safetensors")), load_file(str(unbroken / "model.safetensors"))
    assert resumed.keys() == reference.keys()
    for name in reference:
        assert (resumed[name] == reference[name]).all(), name


@pytest.mark.slow
def test_a_killed_overwrite_fit_leaves_the_old_run_usable(sim_file, tiny_yaml, tmp_path):
    import signal
    import subprocess
    import sys

    out = _fresh_run(sim_file, tiny_yaml, tmp_path)
    link = tmp_path / "latest"
    link.symlink_to(out)
    weights = (out / "model.safetensors").read_bytes()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", _KILL_AT_STEP.replace("{at}", "(0, 1)"),
                          *map(str, fit_args(sim_file, link, tiny_yaml, "--overwrite", "--max-epochs", 3))],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    assert (out / "model.safetensors").read_bytes() == weights
    invoke("predict", link, "--time", HOLDOUT, "--out", tmp_path / "p.h5ad", "--n-cells", 3)
    invoke(*fit_args(sim_file, link, tiny_yaml, "--overwrite", "--seed", 3))  # cleans the killed fit's staging folder
    assert link.is_symlink() and (out / "model.safetensors").read_bytes() != weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "p.h5ad", "run"]


def test_unusable_outputs_and_trainer_options_are_one_sentence(sim_file, run_dir, tiny_yaml, tmp_path, monkeypatch,
                                                                capsys):
    (tmp_path / "folder").mkdir()
    assert_one_line_error(monkeypatch, capsys, ["predict", run_dir, "--time", HOLDOUT, "--out", tmp_path / "folder",
                                                "--overwrite"], "is a directory; give a file path such as")
    (tmp_path / "locked").mkdir(mode=0o500)
    if not os.access(tmp_path / "locked", os.W_OK):  # (root may write anyway)
        assert_one_line_error(monkeypatch, capsys, ["predict", run_dir, "--time", HOLDOUT, "--out",
                                                    tmp_path / "locked" / "p.h5ad"], "cannot write to")
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(monkeypatch, capsys, ["predict", run_dir, "--time", HOLDOUT, "--out",
                                                tmp_path / "afile" / "p.h5ad"], "cannot write to")
    assert_one_line_error(monkeypatch, capsys, fit_args(sim_file, tmp_path / "afile", tiny_yaml),
                          "is a file, not a run directory; choose another --out")
    assert_one_line_error(monkeypatch, capsys, fit_args(sim_file, tmp_path / "r", tiny_yaml, "--devices", "abc"),
                          "Lightning cannot train with these options (")
    assert not (tmp_path / "r").exists()  # a fit that failed before its first checkpoint leaves no run behind
    assert_one_line_error(monkeypatch, capsys, fit_args(sim_file, tmp_path / "r", tiny_yaml, "--layer", "raw"),
                          "layer 'raw' is not in adata.layers, which is empty; leave out --layer to use X.")


def test_an_inconsistent_corpus_is_corrupt(run_dir, tmp_path, monkeypatch, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    spec = json.loads((broken / "corpus" / "corpus.json").read_text())
    (broken / "corpus" / "corpus.json").write_text(json.dumps({**spec, "time_values": spec["time_values"][:1]}))
    assert_one_line_error(monkeypatch, capsys, ["predict", broken, "--time", HOLDOUT, "--out", tmp_path / "p.h5ad"],
                          "is inconsistent (time points in pairs.npy")


@pytest.mark.slow
def test_two_predicts_to_one_out_started_together(run_dir, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "pred.h5ad"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "sctrace.cli", "predict", str(run_dir), "--time", str(HOLDOUT), "--out", str(out),
               "--n-cells", "5"]
    runs = [subprocess.Popen([*command, "--seed", str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env) for seed in (1, 2)]
    results = [(run.wait(timeout=300), *run.communicate()) for run in runs]
    codes = sorted(code for code, _, _ in results)
    assert all("Traceback" not in err for _, _, err in results), results
    assert codes == [0, 2], results  # exactly one writes; the other refuses, before or after its own work
    loser = next(err for code, _, err in results if code == 2)
    assert "already exists" in loser or "was written by another command" in loser
    winner = next(seed for seed, (code, _, _) in zip((1, 2), results) if code == 0)
    assert ad.read_h5ad(out).uns["sctrace"]["seed"] == winner
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.h5ad"]


def test_split_and_epoch_errors_in_the_callers_words(sim_file, tiny_yaml, tmp_path, monkeypatch, capsys):
    from sctrace._errors import SctraceInputError
    from sctrace.estimator import TRACE

    times = sorted(ad.read_h5ad(sim_file).obs["time"].unique())
    assert_one_line_error(monkeypatch, capsys, ["prepare", sim_file, "--holdout", times[-1], "--task", "interpolate"],
                          "use --task extrapolate to hold out the last.")
    with pytest.raises(SctraceInputError, match="use task='extrapolate' to hold out the last"):
        TRACE(sim_file, "time", holdout=times[-1], task="interpolate")
    assert_one_line_error(monkeypatch, capsys, ["prepare", sim_file, "--task", "interpolate"],
                          "task 'interpolate' needs a held-out time; pass --holdout VALUE.")
    assert_one_line_error(monkeypatch, capsys, fit_args(sim_file, tmp_path / "r", tiny_yaml, "--max-epochs", 0),
                          "--max-epochs must be at least 1, got 0.")
    with pytest.raises(SctraceInputError, match="pass the run_dir that fit.. or save.. wrote"):
        TRACE.load(tmp_path / "none")
    for bad in (0, -1):  # -1 used to select every gene without a word
        assert_one_line_error(monkeypatch, capsys, ["prepare", sim_file, "--holdout", HOLDOUT, "--n-top-genes", bad],
                              f"--n-top-genes must be a positive integer, got {bad}.")


def test_threads_below_one_is_refused_naming_the_option(tmp_path):
    result = CliRunner().invoke(cli.app, ["predict", str(tmp_path), "--time", "1", "--out", str(tmp_path / "p.h5ad"),
                                      "--threads", "0"])
    assert result.exit_code == 2 and "--threads" in result.output
