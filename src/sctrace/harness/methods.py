"""The floors and peers the harness compares sctrace with, behind one interface: fit, then predict a time.

Why: the benchmark, the paper's experiments and the protocol each picked a method by a chain of ``if method ==``
branches; a method is now one entry here, and every caller asks :func:`fit_method` for a predictor. sctrace
itself is fitted through its own façade (:class:`sctrace.TRACE`), whose run directory, variants and token
sentences the harness needs beyond this interface.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sctrace.harness.baselines import INTERPOLATION_ONLY

__all__ = ["METHOD_REGISTRY", "Method", "Predictor", "fit_method"]

# predict(target_time, n_cells) -> (n_cells, n_genes) log-normalised cells
Predictor = Callable[[float, int], np.ndarray]


@dataclass(frozen=True)
class Method:
    """One method: how to fit it on log-normalised training cells and what it can do.

    ``fit(expression, cell_times, seed, settings) -> predictor``; ``settings`` are the fields of the method's
    settings class (empty for the floors). ``interpolation_only``: defined only between two observed times.
    ``uses_torch``: its process limits torch's threads too.
    """

    name: str
    fit: Callable[[object, np.ndarray, int, dict], Predictor]
    interpolation_only: bool = False
    uses_torch: bool = False


def _floor(function_name: str) -> Callable[[object, np.ndarray, int, dict], Predictor]:
    """A floor of :mod:`sctrace.harness.baselines`: nothing to fit, each prediction draws from the training cells."""

    def fit(expression, cell_times: np.ndarray, seed: int, settings: dict) -> Predictor:
        function = getattr(importlib.import_module("sctrace.harness.baselines"), function_name)
        return lambda target_time, n_cells: function(expression, cell_times, target_time, n_cells=n_cells, seed=seed)

    return fit


def _peer(module: str, settings_class: str, fit_name: str, predict_name: str):
    """A peer of :mod:`sctrace.harness.peers`: fitted once (its settings class fills in defaults), then predicted."""

    def fit(expression, cell_times: np.ndarray, seed: int, settings: dict) -> Predictor:
        peer = importlib.import_module(module)
        model = getattr(peer, fit_name)(expression, cell_times, getattr(peer, settings_class)(**settings), seed=seed)
        predict = getattr(peer, predict_name)
        return lambda target_time, n_cells: predict(model, target_time, n_cells=n_cells, seed=seed)

    return fit


METHOD_REGISTRY: dict[str, Method] = {
    "identity": Method("identity", _floor("identity_baseline")),
    "mixture": Method("mixture", _floor("mixture_baseline"), interpolation_only="mixture" in INTERPOLATION_ONLY),
    "linear": Method("linear", _floor("linear_baseline"), interpolation_only="linear" in INTERPOLATION_ONLY),
    "otcfm": Method("otcfm", _peer("sctrace.harness.peers.otcfm", "OTCFMSettings", "fit_otcfm", "predict_otcfm"), uses_torch=True),
    "mioflow": Method("mioflow", _peer("sctrace.harness.peers.mioflow", "MIOFlowSettings", "fit_mioflow", "predict_mioflow"),
                      uses_torch=True),
}


def fit_method(name: str, expression, cell_times: np.ndarray, seed: int = 0, settings: dict | None = None) -> Predictor:
    """Fit the registered method ``name`` on log-normalised training cells; returns its predictor."""
    return METHOD_REGISTRY[name].fit(expression, np.asarray(cell_times, dtype=np.float64), seed, settings or {})
