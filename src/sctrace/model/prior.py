"""The count decoder's prior: each gene's training-time statistics, interpolated in time to the decoded time.

Why: the decoder's states at a time it never trained on resemble those of a trained neighbour, so a count head
that reads only them returns that neighbour's profile (the prediction "snaps" to a training time; issue 21 of the
project). Here the count head's outputs are offsets from a prior that moves with time by construction: for a
decoded time ``t`` it is the population of the two nearest observed training times around ``t`` mixed in proportion
to the distance to each (the nearest one past the ends), as the ``mixture`` floor mixes their cells, put in the
head's own parameter space. The populations are mixed, not their logits: a gene that switches on between two
times has a mean share that rises linearly across the gap, while an interpolated log share would stay near the
off level until the last moment. In training the target's own time is
left out of the prior, so the target is decoded from its neighbours exactly as an unseen time is at generation,
and the network learns what the neighbours' interpolation misses (the residual), not a lookup of trained times.

The statistics per training time and gene, and what the head receives:

- raw counts (``zinb``, ``nb``): the mean share of the cell's library; the head gets the log of the mixed share
  (the softmax logits of ``scale``);
- log-normalised (``hurdle``): the fraction of cells where the gene is on and the mean of its positive values (on
  their normal scores under ``hurdle_marginal: quantile``); the head gets the logit of the mixed off fraction and
  the mean of the mixed positive part; ``gaussian``: the mean value, mixed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sctrace.data.arrays import dense
from sctrace.data.timecourse import capped_rows
from sctrace.model.distributions import values_to_normal

__all__ = ["N_PRIOR_FEATURES", "TimePrior"]

# What the count head reads beside the decoder state: the distances to the lower and upper neighbour (fractions
# of the span; 0 where there is none) and whether the time lies between two of them.
N_PRIOR_FEATURES = 3
_MAX_PRIOR_CELLS = 20_000  # per time point: the means barely move past this many cells
_LOG_EPS = 1e-7


class TimePrior(nn.Module):
    """Per-time, per-gene statistics (buffers, saved with the weights) and their interpolation in time."""

    times: torch.Tensor
    stats: torch.Tensor
    fitted: torch.Tensor
    kind: torch.Tensor

    def __init__(self, time_values, n_genes: int):
        super().__init__()
        times = torch.as_tensor(np.asarray(time_values, dtype=np.float32))
        self.register_buffer("times", times)
        # (times, [share or on fraction, mean of the positive part], genes)
        self.register_buffer("stats", torch.zeros(len(times), 2, n_genes))
        self.register_buffer("fitted", torch.tensor(False))
        self.register_buffer("kind", torch.tensor(0))  # what the statistics are: 0 counts, 1 hurdle, 2 gaussian
        span = float(times[-1] - times[0]) if len(times) > 1 else 1.0
        self.span = span if span > 0 else 1.0

    @torch.no_grad()
    def fit(self, values, cell_times: np.ndarray, likelihood: str, quantiles: torch.Tensor | None = None,
            seed: int = 0) -> None:
        """Statistics of the training cells at each time (``values``: rows indexable, counts or log-normalised).

        ``quantiles``: the hurdle's quantile tables (``hurdle_marginal: quantile``), whose normal scores the positive
        part's mean is taken on; None takes the values themselves.
        """
        rng = np.random.default_rng(seed)
        stats = torch.zeros_like(self.stats)
        for k, t in enumerate(self.times.tolist()):
            rows = np.flatnonzero(np.isclose(cell_times, t))
            if rows.size == 0:
                continue
            rows = capped_rows(rows, _MAX_PRIOR_CELLS, rng)
            x = torch.as_tensor(dense(values[rows]), dtype=torch.float32)
            if likelihood in ("zinb", "nb"):
                share = x / x.sum(1, keepdim=True).clamp_min(1.0)
                stats[k, 0] = share.mean(0)
                continue
            on = x > 0
            n = x.shape[0]
            # Kept half a cell from 0 and 1, so a gene never or always seen on has a finite logit.
            stats[k, 0] = on.float().mean(0).clamp(0.5 / n, 1.0 - 0.5 / n)
            scores = x if quantiles is None else values_to_normal(x, quantiles)
            if likelihood == "gaussian":
                stats[k, 1] = x.mean(0)
            else:
                count = on.float().sum(0)
                stats[k, 1] = torch.where(count > 0, (scores * on).sum(0) / count.clamp_min(1.0), torch.zeros_like(count))
        self.stats.copy_(stats)
        self.kind.fill_(0 if likelihood in ("zinb", "nb") else 1 if likelihood == "hurdle" else 2)
        self.fitted.fill_(True)

    def forward(self, time: torch.Tensor | float, batch: int, exclude: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Offsets (batch, 2, n_genes) and features (batch, N_PRIOR_FEATURES) at ``time`` (scalar or (batch,)).

        ``exclude``: index of a training time left out (the training target's own), so that the prior at it is
        built from its neighbours, as at an unseen time.
        """
        times = self.times
        t = torch.as_tensor(time, dtype=times.dtype, device=times.device)
        t = t.expand(batch) if t.ndim == 0 else t
        available = torch.ones_like(times, dtype=torch.bool)
        if exclude is not None:
            available[exclude] = False
        inf = torch.tensor(float("inf"), device=times.device)
        # (batch, times): the available times at or below t, and at or above it; the others at -inf and +inf.
        below = torch.where(available & (times[None, :] <= t[:, None] + 1e-6), times, -inf)
        above = torch.where(available & (times[None, :] >= t[:, None] - 1e-6), times, inf)
        lower_time, lower = below.max(1)
        upper_time, upper = above.min(1)
        has_lower, has_upper = torch.isfinite(lower_time), torch.isfinite(upper_time)
        gap = (upper_time - lower_time).clamp_min(1e-12)
        weight = torch.where(has_lower & has_upper, ((t - lower_time) / gap).clamp(0, 1), torch.zeros_like(t))
        weight = torch.where(~has_lower, torch.ones_like(t), weight)  # only an upper neighbour: take it
        lower = torch.where(has_lower, lower, upper)
        upper = torch.where(has_upper, upper, lower)
        offsets = self._mix(self.stats[lower], self.stats[upper], weight[:, None])
        features = torch.stack([
            torch.where(has_lower, (t - lower_time) / self.span, torch.zeros_like(t)),
            torch.where(has_upper, (upper_time - t) / self.span, torch.zeros_like(t)),
            (has_lower & has_upper).to(t.dtype),
        ], dim=1)
        return offsets, features

    def _mix(self, low: torch.Tensor, high: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The head's offsets for the populations ``low`` and ``high`` ((batch, 2, n_genes) statistics) mixed with
        ``weight`` (batch, 1) of ``high``."""
        first = (1 - weight) * low[:, 0] + weight * high[:, 0]
        kind = int(self.kind)
        if kind == 0:  # counts: log of the mixed mean share
            return torch.stack([torch.log(first + _LOG_EPS), torch.zeros_like(first)], dim=1)
        if kind == 2:  # gaussian: the mixed mean
            mean = (1 - weight) * low[:, 1] + weight * high[:, 1]
            return torch.stack([torch.zeros_like(first), mean], dim=1)
        # hurdle: off logit of the mixed on fraction, mean of the mixed positive part
        on_mean = ((1 - weight) * low[:, 0] * low[:, 1] + weight * high[:, 0] * high[:, 1]) / first
        return torch.stack([torch.log1p(-first) - torch.log(first), on_mean], dim=1)
