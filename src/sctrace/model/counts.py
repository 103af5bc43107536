"""Count likelihoods (NB, ZINB, Gaussian) and the count decoder that maps a cell's CLS embedding to them.

Parametrisation follows scVI (Lopez et al., 2018): the negative binomial has mean ``mu`` and inverse
dispersion ``theta`` (variance ``mu + mu^2 / theta``), and the zero-inflation probability is given by its
logit ``pi_logits``. The ZINB negative log-likelihood is eq. (3) of the paper's Appendix A.2.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from sctrace._errors import SctraceInputError
from sctrace.config import CHOICES, LOGNORM_LIKELIHOODS

LIKELIHOODS = CHOICES["likelihood"]
ZINB_MEANS = ("nb", "scale")
# Largest log factor by which zinb_mean="scale" raises the NB mean (pi = 1 - e^-20): keeps mu finite where the
# dropout logit runs away.
_MAX_LOG_INFLATION = 20.0


def log_nb_positive(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Elementwise log-probability of counts under NB(mean ``mu``, inverse dispersion ``theta``).

    ``log NB(x) = lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)
    + theta * log(theta / (theta + mu)) + x * log(mu / (theta + mu))``.

    Parameters
    ----------
    x
        (...) non-negative counts (float).
    mu
        (...) positive means, broadcastable with ``x``.
    theta
        (...) positive inverse dispersions, broadcastable with ``x``.
    eps
        Added inside the logarithms so ``mu = 0`` stays finite.

    Returns
    -------
    (...) log-likelihood of each entry.
    """
    log_theta_mu = torch.log(theta + mu + eps)
    return (
        torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
        + theta * (torch.log(theta + eps) - log_theta_mu)
        + x * (torch.log(mu + eps) - log_theta_mu)
    )


def log_zinb_positive(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, pi_logits: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Elementwise log-probability of counts under a zero-inflated NB (eq. 3 of the paper, with a sign flip).

    With ``pi = sigmoid(pi_logits)``: ``P(0) = pi + (1 - pi) NB(0)`` and ``P(x > 0) = (1 - pi) NB(x)``.
    Written in terms of logits so no probability is formed: ``log(1 - pi) = -softplus(pi_logits)`` and
    ``log P(0) = logaddexp(pi_logits, log NB(0)) - softplus(pi_logits)``, finite for logits of any size.

    Parameters
    ----------
    x
        (...) non-negative counts (float).
    mu, theta
        (...) NB mean and inverse dispersion, as in :func:`log_nb_positive`.
    pi_logits
        (...) logit of the zero-inflation (dropout) probability.
    eps
        Added inside the logarithms so ``mu = 0`` stays finite.

    Returns
    -------
    (...) log-likelihood of each entry.
    """
    log_one_minus_pi = -F.softplus(pi_logits)
    log_nb_zero = theta * (torch.log(theta + eps) - torch.log(theta + mu + eps))
    log_prob_zero = torch.logaddexp(pi_logits, log_nb_zero) + log_one_minus_pi
    log_prob_positive = log_one_minus_pi + log_nb_positive(x, mu, theta, eps=eps)
    return torch.where(x < eps, log_prob_zero, log_prob_positive)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Elementwise log-density of ``x`` under ``Normal(mean, exp(log_var))``.

    Parameters
    ----------
    x, mean, log_var
        (...) broadcastable tensors.

    Returns
    -------
    (...) log-density of each entry.
    """
    return -0.5 * (math.log(2.0 * math.pi) + log_var + (x - mean) ** 2 * torch.exp(-log_var))


def log_hurdle_gaussian(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor, zero_logits: torch.Tensor) -> torch.Tensor:
    """Elementwise log-likelihood of log-normalised expression under a hurdle model (MAST's, Finak et al. 2015).

    A gene is off with probability ``sigmoid(zero_logits)``; when on, its value is ``Normal(mean, exp(log_var))``.
    Why: log-normalised data hold exact zeros next to a continuous positive part, and one Gaussian spreads its
    mass across both (on Shalek LPS a per-gene Gaussian fitted to the real cells themselves scores a per-gene
    EMD of 0.38 against them, a per-gene hurdle 0.26). Zeros and positives are told apart exactly (``x == 0``).

    Parameters
    ----------
    x, mean, log_var
        (...) broadcastable tensors, as in :func:`gaussian_log_prob`.
    zero_logits
        (...) logit of the probability that the gene is off (value exactly 0).

    Returns
    -------
    (...) log-likelihood of each entry.
    """
    # log sigmoid(z) = -softplus(-z), log (1 - sigmoid(z)) = -softplus(z): finite for logits of any size.
    return torch.where(x == 0, -F.softplus(-zero_logits), -F.softplus(zero_logits) + gaussian_log_prob(x, mean, log_var))


def _standard_gamma(shape: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draw Gamma(shape, rate 1) elementwise with an explicit generator (torch's own sampler takes none).

    Marsaglia & Tsang (2000) rejection sampling, vectorised over the entries still rejected; shapes below 1
    are drawn at ``shape + 1`` and scaled by ``U^(1/shape)`` (the same paper's boost). Acceptance is above
    95 %, so the loop runs a handful of times.

    Parameters
    ----------
    shape
        (...) positive shape parameters.
    generator
        Random generator on ``shape.device``; the global one when None.

    Returns
    -------
    (...) gamma draws, same dtype and device as ``shape``.
    """
    flat_shape = shape.reshape(-1)
    boosted = flat_shape < 1.0
    d = torch.where(boosted, flat_shape + 1.0, flat_shape) - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    draws = torch.empty_like(flat_shape)
    pending = torch.arange(flat_shape.numel(), device=shape.device)
    options = {"generator": generator, "device": shape.device, "dtype": shape.dtype}
    while pending.numel() > 0:
        d_p, c_p = d[pending], c[pending]
        normal = torch.randn(pending.numel(), **options)
        uniform = torch.rand(pending.numel(), **options)
        v = (1.0 + c_p * normal) ** 3
        log_v = torch.log(v.clamp(min=torch.finfo(v.dtype).tiny))
        accept = (v > 0) & (torch.log(uniform) < 0.5 * normal**2 + d_p - d_p * v + d_p * log_v)
        draws[pending[accept]] = (d_p * v)[accept]
        pending = pending[~accept]
    boost_uniform = torch.rand(flat_shape.numel(), **options)
    draws = torch.where(boosted, draws * boost_uniform ** (1.0 / flat_shape), draws)
    return draws.reshape(shape.shape)


class CountDecoder(nn.Module):
    """Count decoder ``d(phi)``: a cell's decoder state to the parameters of its gene count distribution.

    The state is the [CLS] embedding, or [CLS] next to the mean of the gene positions (``TraceNet.count_state``).
    State -> L2 normalisation -> ``Linear, GELU, Dropout, Linear, GELU, Dropout`` -> heads.
    For ``zinb`` and ``nb`` (raw counts): ``mu = library_size * softmax(scale logits)`` (see ``zinb_mean``), a
    gene-wise learnable inverse dispersion ``theta = exp(log_theta)`` (scVI's ``dispersion="gene"``), and for ``zinb`` per-cell,
    per-gene zero-inflation logits. For ``gaussian`` (log-normalised expression): a per-cell mean and a
    gene-wise learnable log-variance; the library size is not used. ``hurdle`` adds per-cell, per-gene logits
    of the gene being off (exactly 0), as MAST does (:func:`log_hurdle_gaussian`).

    Parameters
    ----------
    n_input
        Size of the decoder state (``d``, or ``2 d`` with the gene-position mean).
    n_genes
        Number of genes modelled (the HVGs).
    n_hidden
        Width of both hidden layers.
    dropout
        Dropout probability after each hidden layer.
    likelihood
        One of :data:`LIKELIHOODS`.
    zinb_mean
        ``nb`` (scVI): the NB part has mean ``library_size * scale``, so the zero-inflation removes counts and
        the expected total falls below the library size, by a quarter on the simulator: generated cells are
        then shallower than real ones and their log-normalised non-zero values too high. ``scale``: the NB
        mean is ``library_size * scale / (1 - pi)``, so the expected counts are ``library_size * scale``
        and sum to the library size; zero-inflation shapes the zeros without moving the mean.
    """

    def __init__(
        self,
        n_input: int,
        n_genes: int,
        n_hidden: int = 128,
        dropout: float = 0.1,
        likelihood: str = "zinb",
        zinb_mean: str = "nb",
    ):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise SctraceInputError(f"Unknown likelihood {likelihood!r}; choose one of {', '.join(LIKELIHOODS)}.")
        if zinb_mean not in ZINB_MEANS:
            raise SctraceInputError(f"Unknown zinb_mean {zinb_mean!r}; choose one of {', '.join(ZINB_MEANS)}.")
        self.likelihood = likelihood
        self.zinb_mean = zinb_mean
        self.hidden = nn.Sequential(
            nn.Linear(n_input, n_hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(n_hidden, n_hidden),
            nn.GELU(),
            nn.Dropout(dropout),
        )
        if likelihood in LOGNORM_LIKELIHOODS:
            self.mean_head = nn.Linear(n_hidden, n_genes)
            self.log_var = nn.Parameter(torch.zeros(n_genes))
            if likelihood == "hurdle":
                self.zero_head = nn.Linear(n_hidden, n_genes)
        else:
            self.scale_head = nn.Linear(n_hidden, n_genes)
            # theta = 1 at start: a moderate overdispersion typical of scRNA-seq counts.
            self.log_theta = nn.Parameter(torch.zeros(n_genes))
            if likelihood == "zinb":
                self.dropout_head = nn.Linear(n_hidden, n_genes)

    def forward(self, cls_embedding: torch.Tensor, library_size: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Distribution parameters for each cell.

        Parameters
        ----------
        cls_embedding
            (batch, n_input) CLS output of the decoder transformer.
        library_size
            (batch,) total counts of each cell; required for ``zinb`` and ``nb``, ignored for ``gaussian`` and
            ``hurdle``.

        Returns
        -------
        ``zinb``: ``{'mu', 'theta', 'pi_logits'}``; ``nb``: ``{'mu', 'theta'}``; ``hurdle``: the Gaussian's
        keys and ``'zero_logits'``; ``gaussian``:
        ``{'mean', 'log_var'}``; every value (batch, n_genes).
        """
        hidden = self.hidden(F.normalize(cls_embedding, dim=-1))
        batch = cls_embedding.shape[0]
        if self.likelihood in LOGNORM_LIKELIHOODS:
            params = {"mean": self.mean_head(hidden), "log_var": self.log_var.expand(batch, -1)}
            if self.likelihood == "hurdle":
                params["zero_logits"] = self.zero_head(hidden)
            return params
        if library_size is None:
            raise SctraceInputError(
                f"The {self.likelihood} count decoder needs library_size; pass each cell's total counts."
            )
        params = {
            "mu": library_size[:, None] * torch.softmax(self.scale_head(hidden), dim=-1),
            "theta": torch.exp(self.log_theta).expand(batch, -1),
        }
        if self.likelihood == "zinb":
            params["pi_logits"] = self.dropout_head(hidden)
            if self.zinb_mean == "scale":
                # 1 / (1 - pi) = exp(softplus(pi_logits)), formed in log space so large logits stay finite.
                inflation = F.softplus(params["pi_logits"]).clamp(max=_MAX_LOG_INFLATION)
                params["mu"] = params["mu"] * torch.exp(inflation)
        return params

    def log_prob(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """(batch, n_genes) elementwise log-likelihood of ``x`` (counts, or log-normalised for ``gaussian``/``hurdle``)."""
        if self.likelihood == "zinb":
            return log_zinb_positive(x, params["mu"], params["theta"], params["pi_logits"])
        if self.likelihood == "nb":
            return log_nb_positive(x, params["mu"], params["theta"])
        if self.likelihood == "hurdle":
            return log_hurdle_gaussian(x, params["mean"], params["log_var"], params["zero_logits"])
        return gaussian_log_prob(x, params["mean"], params["log_var"])

    def loss(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Scalar loss: negative log-likelihood summed over genes, averaged over cells.

        Parameters
        ----------
        params
            Output of :meth:`forward`.
        x
            (batch, n_genes) observed raw counts (``zinb``, ``nb``) or log-normalised expression (``gaussian``).
        """
        return -self.log_prob(params, x).sum(dim=-1).mean()

    @torch.no_grad()
    def sample(self, params: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw one expression profile per cell, reproducible with a seeded ``generator``.

        NB draws are a Gamma-Poisson mixture (rate ``~ Gamma(theta, theta / mu)``, count ``~ Poisson(rate)``),
        set to zero where ``Bernoulli(sigmoid(pi_logits))`` fires for ``zinb``. Gaussian draws are clipped at
        zero, since log-normalised expression is non-negative; ``hurdle`` sets them to zero where
        ``Bernoulli(sigmoid(zero_logits))`` fires.

        Parameters
        ----------
        params
            Output of :meth:`forward`.
        generator
            Random generator on the parameters' device; the global one when None.

        Returns
        -------
        (batch, n_genes) float draws.
        """
        if self.likelihood in LOGNORM_LIKELIHOODS:
            mean = params["mean"]
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            values = (mean + torch.exp(0.5 * params["log_var"]) * noise).clamp(min=0.0)
            if self.likelihood == "hurdle":
                zero = torch.bernoulli(torch.sigmoid(params["zero_logits"]), generator=generator).bool()
                values = values.masked_fill(zero, 0.0)
            return values
        mu, theta = params["mu"], params["theta"]
        rate = _standard_gamma(theta, generator) * mu / theta
        counts = torch.poisson(rate, generator=generator)
        if self.likelihood == "zinb":
            dropped = torch.bernoulli(torch.sigmoid(params["pi_logits"]), generator=generator).bool()
            counts = counts.masked_fill(dropped, 0.0)
        return counts

    def mean(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """(batch, n_genes) expected value: ``(1 - pi) mu`` for ``zinb``, ``mu`` for ``nb``, ``mean`` for
        ``gaussian`` (the unclipped Gaussian mean, not the mean of the clipped :meth:`sample`)."""
        if self.likelihood == "zinb":
            return torch.sigmoid(-params["pi_logits"]) * params["mu"]
        if self.likelihood == "nb":
            return params["mu"]
        if self.likelihood == "hurdle":
            return torch.sigmoid(-params["zero_logits"]) * params["mean"]
        return params["mean"]
