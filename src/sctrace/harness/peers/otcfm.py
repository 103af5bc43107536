"""OT-CFM (Tong et al., TMLR 2024) as a peer method: a time-conditioned flow between observed time points.

The recipe, all fitted on the training time points only:

1. A PCA (at most 100 components, fewer when there are fewer genes or cells) of the log-normalised training
   cells; coordinates are divided by one scalar, the standard deviation along PC1, so the squared Euclidean
   cost of the OT coupling keeps the geometry of the PCA space.
2. An MLP vector field ``v(x, u)`` with ``u = (t - t_first) / (t_last - t_first)``, the real time rescaled so
   the training time points span [0, 1].
3. Each training step draws a minibatch from every pair of consecutive observed times ``(t_k, t_k+1)``, couples
   the two minibatches by exact OT and samples ``x_s = (1 - s) x0 + s x1 + sigma eps`` with ``s ~ U(0, 1)``
   (torchcfm's :class:`ExactOptimalTransportConditionalFlowMatcher`). It is placed at
   ``u = u_k + s (u_k+1 - u_k)`` with target velocity ``(x1 - x0) / (u_k+1 - u_k)``: each pair spans its real
   interval, so a held-out time between two observed ones is reached at its true fraction of the way.
4. A prediction draws cells of the nearest observed time at or before the target, integrates the field from
   there to the target, maps back with the inverse PCA and clips at 0 (log-normalised expression is
   non-negative).

torchcfm is an optional dependency (only its ``conditional_flow_matching`` module is used, which needs torch,
numpy and POT): install it with ``pip install --no-deps torchcfm`` (its declared dependencies include torchdyn,
which pulls torchvision and a CUDA build of torch).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from sctrace._errors import SctraceInputError
from sctrace.harness.peers._pca_space import PCASpace, scaled_pca

__all__ = ["INSTALL_HINT", "OTCFMModel", "OTCFMSettings", "fit_otcfm", "otcfm_available",
           "predict_otcfm"]

INSTALL_HINT = "pip install --no-deps torchcfm==1.0.7"


def otcfm_available() -> bool:
    """Whether torchcfm (the optional ``peers`` dependency) can be imported."""
    return importlib.util.find_spec("torchcfm") is not None


@dataclass(frozen=True)
class OTCFMSettings:
    """Hyper-parameters of the OT-CFM peer (torchcfm's single-cell examples use an MLP, sigma 0.1, batch 256).

    Attributes
    ----------
    n_pcs
        PCA components (capped at the number of genes and of training cells minus one).
    hidden, n_layers
        Width and number of hidden layers of the vector-field MLP (SELU activations).
    n_steps
        Optimiser steps; each uses one minibatch per consecutive pair of observed times (about 0.1 s per step
        with five pairs on one CPU thread).
    batch_size
        Cells drawn from each time point per pair and step.
    lr
        Adam learning rate.
    sigma
        Standard deviation of the Gaussian probability path, in scaled PCA units.
    ode_step
        Step of the RK4 integration in rescaled time (0.01 = 100 steps across the training span).
    """

    n_pcs: int = 100
    hidden: int = 256
    n_layers: int = 3
    n_steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    sigma: float = 0.1
    ode_step: float = 0.01


class _VectorField(nn.Module):
    """``v(x, u)``: an MLP on the concatenation of (batch, dim) coordinates and the (batch, 1) rescaled time."""

    def __init__(self, dim: int, hidden: int, n_layers: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = dim + 1
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), nn.SELU()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """x: (batch, dim), u: (batch,) -> (batch, dim) velocity with respect to the rescaled time."""
        return self.net(torch.cat([x, u[:, None]], dim=1))


@dataclass
class OTCFMModel(PCASpace):
    """A fitted OT-CFM peer: the :class:`~sctrace.harness.peers._pca_space.PCASpace` it was fitted in (``pca``, ``scale``,
    ``time_values``, ``coordinates``) and what it learned there.

    Attributes
    ----------
    field
        The trained vector field over scaled coordinates and rescaled time.
    settings
        The hyper-parameters it was trained with.
    losses
        Training loss per step.
    """

    field: _VectorField
    settings: OTCFMSettings
    losses: list[float] = field(default_factory=list)


def fit_otcfm(expr, times: np.ndarray, settings: OTCFMSettings | None = None, seed: int = 0) -> OTCFMModel:
    """Train the OT-CFM vector field on log-normalised training cells.

    Parameters
    ----------
    expr
        (n, n_genes) log-normalised training cells, dense or sparse (held-out cells already removed).
    times
        (n,) real time of each training cell; at least two distinct values.
    settings
        Hyper-parameters; default :class:`OTCFMSettings`.
    seed
        Seeds the minibatches, the OT plan sampling and the network's initialisation; the global torch and
        numpy random states are restored afterwards.

    Returns
    -------
    OTCFMModel
    """
    try:
        from torchcfm.conditional_flow_matching import (
            ExactOptimalTransportConditionalFlowMatcher,
        )
    except ImportError as err:
        raise SctraceInputError(f"the OT-CFM peer needs torchcfm, which is not installed; run `{INSTALL_HINT}`.") from err
    settings = settings or OTCFMSettings()
    space = scaled_pca(expr, times, settings.n_pcs, "OT-CFM")
    pca, time_values, coordinates, rescaled = space.pca, space.time_values, space.coordinates, space.rescaled_times

    rng = np.random.default_rng(seed)
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)  # torchcfm draws from the OT plan with numpy's global generator
        try:
            field_net = _VectorField(pca.components.shape[0], settings.hidden, settings.n_layers)
            optimizer = torch.optim.Adam(field_net.parameters(), lr=settings.lr)
            matcher = ExactOptimalTransportConditionalFlowMatcher(sigma=settings.sigma)
            losses = []
            for _ in range(settings.n_steps):
                positions, targets, locations = [], [], []
                for k in range(len(time_values) - 1):
                    start, end = (torch.from_numpy(_minibatch(c, settings.batch_size, rng))
                                  for c in (coordinates[k], coordinates[k + 1]))
                    s, x_s, velocity = matcher.sample_location_and_conditional_flow(start, end)
                    span = float(rescaled[k + 1] - rescaled[k])
                    locations.append(x_s)
                    positions.append(float(rescaled[k]) + s * span)
                    targets.append(velocity / span)
                prediction = field_net(torch.cat(locations), torch.cat(positions).float())
                loss = torch.mean((prediction - torch.cat(targets)) ** 2)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        finally:
            np.random.set_state(numpy_state)
    field_net.eval()
    return OTCFMModel(**vars(space), field=field_net, settings=settings, losses=losses)


def _minibatch(cells: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``batch_size`` rows, without replacement when there are enough."""
    return cells[rng.choice(len(cells), size=batch_size, replace=batch_size > len(cells))]


@torch.no_grad()
def _integrate(field_net: _VectorField, x: torch.Tensor, u_start: float, u_end: float, max_step: float) -> torch.Tensor:
    """Fixed-step classic RK4 from ``u_start`` to ``u_end``.

    Hand-written rather than torchdiffeq: it is twenty lines, adds no dependency, and a fixed step is
    deterministic and accurate enough for a smooth MLP field over a span of at most a few units.
    """
    n_steps = max(1, math.ceil(abs(u_end - u_start) / max_step))
    h = (u_end - u_start) / n_steps
    u = torch.full((x.shape[0],), float(u_start))
    for _ in range(n_steps):
        k1 = field_net(x, u)
        k2 = field_net(x + 0.5 * h * k1, u + 0.5 * h)
        k3 = field_net(x + 0.5 * h * k2, u + 0.5 * h)
        k4 = field_net(x + h * k3, u + h)
        x = x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        u = u + h
    return x


def predict_otcfm(model: OTCFMModel, target_time: float, n_cells: int | None = None, seed: int = 0) -> np.ndarray:
    """Push cells of the nearest observed time at or before ``target_time`` along the flow to ``target_time``.

    Parameters
    ----------
    model
        A fitted :class:`OTCFMModel`.
    target_time
        Time to predict, not before the first observed time (past the last one the field is extrapolated).
    n_cells
        Number of cells: drawn from the start time point without replacement when it has enough, else with;
        None takes all of its cells.
    seed
        Seed of the draw.

    Returns
    -------
    np.ndarray
        (n_out, n_genes) float32 log-normalised cells, clipped at 0.
    """
    start, cells = model.start_cells(target_time, n_cells, seed, "OT-CFM")
    moved = _integrate(model.field, torch.from_numpy(cells), model.rescale_time(model.time_values[start]),
                       model.rescale_time(target_time), model.settings.ode_step)
    return model.to_genes(moved.numpy())
