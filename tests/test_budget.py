"""A training budget in optimiser steps (config min_steps): small data train as long as large, with warm-up."""

import numpy as np

from sctrace.estimator import TRACE


def test_min_steps_trains_past_max_epochs_with_a_warm_up(small_timecourse, tiny_fast_config):
    times = sorted(small_timecourse.obs["time"].unique())
    model = TRACE(small_timecourse, "time", holdout=times[2], seed=0,
                  **{**tiny_fast_config, "max_epochs": 1, "min_steps": 80, "patience": 1})
    model.fit(progress=False)
    history = model.history
    steps = history["step"].dropna().to_numpy(int)
    assert steps.max() >= 79  # 0-based: at least 80 optimiser steps although one epoch is fewer (~30)
    epochs = history["epoch"].dropna().to_numpy(int)
    assert epochs.max() >= 1
    # Validation came about every 50 steps (VALIDATE_EVERY_STEPS), here every other ~30-step epoch.
    assert np.isfinite(history["val_loss"].dropna().to_numpy(float)).all()


def test_without_min_steps_whole_epochs_only(small_timecourse, tiny_fast_config):
    times = sorted(small_timecourse.obs["time"].unique())
    model = TRACE(small_timecourse, "time", holdout=times[2], seed=0, **{**tiny_fast_config, "max_epochs": 1, "min_steps": 0})
    model.fit(progress=False)
    assert model.history["epoch"].dropna().to_numpy(int).max() == 0
