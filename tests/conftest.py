"""Shared fixtures: small simulated time courses and paths to the real data sets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def small_timecourse():
    """600 cells x 300 genes at 6 irregular times: big enough for every pipeline step, small enough for seconds."""
    from sctrace.data.simulate import simulate_timecourse

    return simulate_timecourse(n_cells=600, n_genes=300, seed=0)


@pytest.fixture(scope="session")
def tiny_fast_config():
    """Overrides that make a TRACE model train in a few seconds on one core."""
    return dict(
        n_top_genes=120, max_len=48, d_model=32, n_heads=2, head_dim=16, n_encoder_layers=1, n_decoder_layers=1,
        count_hidden=32, batch_size=32, max_epochs=2, n_iter=6,
    )


def real_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data set {path} is absent (it lives in ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def fitted(tmp_path_factory, small_timecourse, tiny_fast_config):
    """A tiny TRACE fitted once on ``small_timecourse`` (its third time held out): (model, run_dir, holdout).

    Shared by the model and copula tests; tests that change it (monkeypatch) must undo the change.
    """
    from sctrace.estimator import TRACE

    holdout = sorted(small_timecourse.obs["time"].unique())[2]
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    model = TRACE(small_timecourse, "time", holdout=holdout, seed=0, **tiny_fast_config)
    model.fit(run_dir=run_dir, progress=False)
    return model, run_dir, holdout
