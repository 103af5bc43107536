"""A training budget in optimiser steps (config min_steps): small data train as long as large, with warm-up."""

import numpy as np

from sctrace.estimator import TRACE


def test_min_steps_trains_past_max_epochs_with_a_warm_up(small_timecourse, tiny_fast_config):
    times = sorted(small_timecourse.obs["time"].unique())
    model = TRACE(small_timecourse, "time", holdout=times[2], seed=0,
                  **{**tiny_fast_config, "max_epochs": 1, "min_steps": 14, "patience": 1})
    model.fit(progress=False)
    history = model.history
    steps = history["step"].dropna().to_numpy(int)
    assert steps.max() >= 13  # 0-based: at least 14 optimiser steps although one epoch is fewer
    epochs = history["epoch"].dropna().to_numpy(int)
    assert epochs.max() >= 1
    # Validation came every few epochs, not after each (about every 50 steps: here every epoch is ~5 steps).
    assert np.isfinite(history["val_loss"].dropna().to_numpy(float)).all()


def test_without_min_steps_whole_epochs_only(small_timecourse, tiny_fast_config):
    times = sorted(small_timecourse.obs["time"].unique())
    model = TRACE(small_timecourse, "time", holdout=times[2], seed=0, **{**tiny_fast_config, "max_epochs": 1, "min_steps": 0})
    model.fit(progress=False)
    assert model.history["epoch"].dropna().to_numpy(int).max() == 0
