"""The harness's method registry: every floor and peer behind one fit -> predict interface."""

import numpy as np

from sctrace.harness.baselines import INTERPOLATION_ONLY, identity_baseline
from sctrace.harness.methods import METHOD_REGISTRY, fit_method


def test_registry_covers_the_benchmark_methods_but_sctrace():
    from sctrace.harness.benchmark import METHODS

    assert set(METHOD_REGISTRY) == set(METHODS) - {"sctrace"}
    assert {name for name, method in METHOD_REGISTRY.items() if method.interpolation_only} == set(INTERPOLATION_ONLY)
    assert {name for name, method in METHOD_REGISTRY.items() if method.uses_torch} == {"otcfm", "mioflow"}


def test_a_floor_through_the_registry_is_the_floor_itself():
    rng = np.random.default_rng(0)
    expr = rng.poisson(2.0, (60, 5)).astype(np.float32)
    times = np.repeat([0.0, 1.0, 2.0], 20)
    predict = fit_method("identity", expr, times, seed=4)
    np.testing.assert_array_equal(predict(1.5, 7), identity_baseline(expr, times, 1.5, n_cells=7, seed=4))
