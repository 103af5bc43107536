"""MIOFlow (Huguet et al., NeurIPS 2022) as a peer method: a neural ODE fitted by optimal transport between
consecutive observed time points.

The recipe, all fitted on the training time points only, with the same inputs as the OT-CFM peer:

1. A PCA (at most ``n_pcs`` components, fewer when there are fewer genes or cells) of the log-normalised
   training cells; coordinates are divided by one scalar, the standard deviation along PC1. (MIOFlow's own
   ``MIOFlow`` class z-scores every dimension of a low-dimensional PHATE/GAGA embedding; z-scoring 100 PCs
   would give the noise components as much weight in the OT cost as the leading ones, so the geometry of
   the PCA space is kept instead, as for OT-CFM.)
2. MIOFlow's vector field :class:`mioflow.core.models.ode_model.ODEFunc` ``f(u, x)`` with
   ``u = (t - t_first) / (t_last - t_first)``, the real time rescaled so the training time points span
   [0, 1]. (The ``MIOFlow`` class numbers the time points 0, 1, 2, ... instead, which would place a
   held-out time between unequally spaced observed ones at the wrong fraction.)
3. MIOFlow's training routine :func:`mioflow.mioflow.train_mioflow`: each epoch takes every consecutive pair
   ``(t_k, t_k+1)`` in turn, integrates a minibatch of ``t_k`` cells to ``u_k+1`` with torchdiffeq and
   descends the exact OT (earth mover's) loss to a minibatch of ``t_k+1`` cells, plus its energy penalty on
   ``||f||^2`` along the path (and, when ``lambda_density > 0``, its k-nearest-neighbour density loss).
   It is called directly rather than through ``MIOFlow.fit``, which besides the time numbering above
   configures the root logger, creates an output folder and integrates only from the first time point on a
   fixed grid.
4. A prediction draws cells of the nearest observed time at or before the target, integrates MIOFlow's ODE
   from there to the target with torchdiffeq (as MIOFlow does; past the last observed time the field is
   extrapolated), maps back with the inverse PCA and clips at 0 (log-normalised expression is non-negative).

mioflow is an optional dependency: ``pip install mioflow==0.1.14`` (it brings torchdiffeq, torchsde and phate;
importing it takes several seconds because its package imports phate).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from unittest import mock

import numpy as np
import torch

from sctrace._errors import SctraceInputError
from sctrace.harness.peers._pca_space import PCASpace, scaled_pca

if TYPE_CHECKING:
    from mioflow.core.models.ode_model import ODEFunc

__all__ = ["INSTALL_HINT", "MIOFlowModel", "MIOFlowSettings", "fit_mioflow", "mioflow_available",
           "predict_mioflow"]

INSTALL_HINT = "pip install mioflow==0.1.14"


def mioflow_available() -> bool:
    """Whether mioflow (an optional peer dependency) can be found."""
    return importlib.util.find_spec("mioflow") is not None


@dataclass(frozen=True)
class MIOFlowSettings:
    """Hyper-parameters of the MIOFlow peer: the defaults of MIOFlow's ``MIOFlow`` class except ``n_pcs`` and
    ``sample_size`` (the class draws every cell of both time points in each step; 256, OT-CFM's batch, bounds
    the cost of a step).

    On the simulator (``simulate_timecourse(seed=0)`` with time 4 held out: 2,589 training cells x 1,000 HVGs
    at five time points, 100 PCs) the defaults fit and predict in 110-133 s on one CPU thread of a shared
    2-core machine (about 1.1-1.3 s per epoch), not counting the few seconds of importing mioflow.

    Attributes
    ----------
    n_pcs
        PCA components (capped at the number of genes and of training cells minus one); 100 as for OT-CFM.
    hidden
        Width of the two hidden layers of MIOFlow's ``ODEFunc``.
    n_epochs
        Training epochs; each takes one optimiser step per consecutive pair of observed times.
    sample_size
        Cells drawn from each time point of a pair per step (MIOFlow's ``sample_size``; capped at the smaller
        time point).
    lr
        Adam learning rate.
    lambda_ot, lambda_density, lambda_energy
        Weights of MIOFlow's OT loss, density loss (off, as in the ``MIOFlow`` class) and energy penalty.
    energy_time_steps
        Points along each interval where the energy penalty evaluates the field.
    grad_clip
        Maximum gradient norm.
    """

    n_pcs: int = 100
    hidden: int = 64
    n_epochs: int = 100
    sample_size: int = 256
    lr: float = 1e-3
    lambda_ot: float = 1.0
    lambda_density: float = 0.0
    lambda_energy: float = 0.01
    energy_time_steps: int = 10
    grad_clip: float = 1.0


@dataclass
class MIOFlowModel(PCASpace):
    """A fitted MIOFlow peer: the :class:`~sctrace.harness.peers._pca_space.PCASpace` it was fitted in (``pca``, ``scale``,
    ``time_values``, ``coordinates``) and what it learned there.

    Attributes
    ----------
    ode_func
        The trained ``mioflow.core.models.ode_model.ODEFunc`` over rescaled time and scaled coordinates.
    settings
        The hyper-parameters it was trained with.
    losses
        Training loss per epoch (mean over the intervals).
    """

    ode_func: ODEFunc
    settings: MIOFlowSettings
    losses: list[float] = field(default_factory=list)


def _import_mioflow():
    """MIOFlow's training module, or a clear error naming the install command."""
    try:
        import mioflow.mioflow
    except ImportError as err:
        raise SctraceInputError(
            f"the MIOFlow peer needs mioflow, which could not be imported ({err}); run `{INSTALL_HINT}`."
        ) from err
    return mioflow.mioflow


def _without_progress_bar(iterable, **_):
    return iterable


def fit_mioflow(expr, times: np.ndarray, settings: MIOFlowSettings | None = None, seed: int = 0) -> MIOFlowModel:
    """Train MIOFlow's ODE on log-normalised training cells.

    Parameters
    ----------
    expr
        (n, n_genes) log-normalised training cells, dense or sparse (held-out cells already removed).
    times
        (n,) real time of each training cell; at least two distinct values.
    settings
        Hyper-parameters; default :class:`MIOFlowSettings`.
    seed
        Seeds the order of the cells, the minibatches and the network's initialisation; the global torch
        random state is restored afterwards.

    Returns
    -------
    MIOFlowModel
    """
    package = _import_mioflow()
    from mioflow.core.datasets import TimeSeriesDataset
    from mioflow.core.models.ode_model import ODEFunc

    settings = settings or MIOFlowSettings()
    space = scaled_pca(expr, times, settings.n_pcs, "MIOFlow")
    pca, coordinates, rescaled = space.pca, space.coordinates, space.rescaled_times
    # train_mioflow draws the same minibatch rows from both time points of a pair among the first
    # min(n_k, n_k+1) rows, so it gets the rows in a seeded random order: otherwise the input order would
    # decide which cells of the larger time point it may ever see.
    rng = np.random.default_rng(seed)
    dataset = TimeSeriesDataset([(cells[rng.permutation(len(cells))], float(u))
                                 for cells, u in zip(coordinates, rescaled)])

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # ODEFunc's initialisation and train_mioflow's torch.randperm minibatches
        ode_func = ODEFunc(input_dim=pca.components.shape[0], hidden_dim=settings.hidden)
        # train_mioflow is used as is, with device="cpu" (its default picks CUDA when present); it wraps its
        # epochs in a tqdm bar that it offers no switch for, so that name is swapped for a pass-through.
        with mock.patch.object(package, "tqdm", _without_progress_bar):
            history = package.train_mioflow(
                ode_func, dataset, num_epochs=settings.n_epochs, batch_size=settings.sample_size,
                learning_rate=settings.lr, device="cpu", lambda_ot=settings.lambda_ot,
                lambda_density=settings.lambda_density, lambda_energy=settings.lambda_energy,
                energy_time_steps=settings.energy_time_steps, grad_clip=settings.grad_clip,
            )
    ode_func.eval()
    return MIOFlowModel(**vars(space), ode_func=ode_func, settings=settings, losses=list(history["total_loss"]))


def predict_mioflow(model: MIOFlowModel, target_time: float, n_cells: int | None = None, seed: int = 0) -> np.ndarray:
    """Push cells of the nearest observed time at or before ``target_time`` along MIOFlow's ODE to ``target_time``.

    Parameters
    ----------
    model
        A fitted :class:`MIOFlowModel`.
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
    from torchdiffeq import odeint

    start, cells = model.start_cells(target_time, n_cells, seed, "MIOFlow")
    moved = torch.from_numpy(cells)
    u_start, u_end = model.rescale_time(model.time_values[start]), model.rescale_time(target_time)
    if u_end > u_start + 1e-9:  # torchdiffeq needs strictly increasing times; at an observed time nothing moves
        model.ode_func.reset_momentum()
        with torch.no_grad():
            moved = odeint(model.ode_func, moved, torch.tensor([u_start, u_end], dtype=torch.float32))[-1]
    return model.to_genes(moved.numpy())
