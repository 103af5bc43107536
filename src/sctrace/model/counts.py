"""Count likelihoods (NB, ZINB, Gaussian) and the count decoder that maps a cell's CLS embedding to them.

Parametrisation follows scVI (Lopez et al., 2018): the negative binomial has mean ``mu`` and inverse
dispersion ``theta`` (variance ``mu + mu^2 / theta``), and the zero-inflation probability is given by its
logit ``pi_logits``. The ZINB negative log-likelihood is eq. (3) of the paper's Appendix A.2.
"""

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sctrace._errors import SctraceInputError
from sctrace.config import CHOICES, LOGNORM_LIKELIHOODS
from sctrace.model.distributions import (  # noqa: F401  (re-exported: callers import the functions from here)
    Gaussian,
    Hurdle,
    NegativeBinomial,
    ZeroInflatedNegativeBinomial,
    _standard_gamma,
    gaussian_log_prob,
    log_hurdle_gaussian,
    log_nb_positive,
    log_zinb_positive,
    normal_to_values,
    values_to_normal,
)

if TYPE_CHECKING:
    from sctrace.data.corpus_files import NpyFile

# What the decoder can be built with ("auto" is resolved from the data before a network is built).
LIKELIHOODS = tuple(name for name in CHOICES["likelihood"] if name != "auto")
ZINB_MEANS = ("nb", "scale")
HURDLE_MARGINALS = CHOICES["hurdle_marginal"]
# Quantiles kept per gene for hurdle_marginal="quantile": finer than the per-gene EMD can see on a few
# thousand cells, and small in the weights file (256 x n_genes floats).
N_MARGINAL_QUANTILES = 256
# Largest log factor by which zinb_mean="scale" raises the NB mean (pi = 1 - e^-20): keeps mu finite where the
# dropout logit runs away.
_MAX_LOG_INFLATION = 20.0


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

    marginal_quantiles: torch.Tensor  # buffers, with hurdle_marginal="quantile"
    marginals_fitted: torch.Tensor

    def __init__(
        self,
        n_input: int,
        n_genes: int,
        n_hidden: int = 128,
        dropout: float = 0.1,
        likelihood: str = "zinb",
        zinb_mean: str = "nb",
        hurdle_marginal: str = "gaussian",
        sentence_offsets: bool = False,
    ):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise SctraceInputError(f"Unknown likelihood {likelihood!r}; choose one of {', '.join(LIKELIHOODS)}.")
        if zinb_mean not in ZINB_MEANS:
            raise SctraceInputError(f"Unknown zinb_mean {zinb_mean!r}; choose one of {', '.join(ZINB_MEANS)}.")
        if hurdle_marginal not in HURDLE_MARGINALS:
            raise SctraceInputError(
                f"Unknown hurdle_marginal {hurdle_marginal!r}; choose one of {', '.join(HURDLE_MARGINALS)}."
            )
        self.likelihood = likelihood
        self.zinb_mean = zinb_mean
        self.quantile_marginal = likelihood == "hurdle" and hurdle_marginal == "quantile"
        if self.quantile_marginal:
            # Saved with the weights: a loaded model decodes on the same tables it was trained on.
            self.register_buffer("marginal_quantiles", torch.zeros(N_MARGINAL_QUANTILES, n_genes))
            self.register_buffer("marginals_fitted", torch.tensor(False))
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
        # Values from the cell's own sentence (count_sentence): along a Geneformer sentence log(value / the gene's
        # median) falls linearly in log rank (r about -0.98 on every development set, benchmarks/rank_values.py),
        # so a gene in the sentence gets offset_g + slope * log rank on its level, a gene outside it offset'_g
        # (below the last rank), and in-sentence genes their own shift of the zero logits. All start at zero:
        # an untrained decoder is the state-only one.
        self.sentence_offsets = sentence_offsets
        if sentence_offsets:
            self.in_sentence = nn.Parameter(torch.zeros(n_genes))
            self.out_of_sentence = nn.Parameter(torch.zeros(n_genes))
            self.rank_slope = nn.Parameter(torch.zeros(()))
            self.in_sentence_zero = nn.Parameter(torch.zeros(n_genes))

    def fit_marginals(self, values, seed: int = 0) -> None:
        """Each gene's quantiles of its positive values (see :func:`sctrace.model.count_fits.fit_marginals`)."""
        from sctrace.model.count_fits import fit_marginals

        fit_marginals(self, values, seed)

    def fit_sentence_offsets(self, values, tokens: "np.ndarray | NpyFile", seed: int = 0) -> dict[str, float]:
        """Start the sentence offsets from the training cells (:func:`sctrace.model.count_fits.fit_sentence_offsets`)."""
        from sctrace.model.count_fits import fit_sentence_offsets

        return fit_sentence_offsets(self, values, tokens, seed)

    def forward(self, cls_embedding: torch.Tensor, library_size: torch.Tensor | None = None,
                sentence_ranks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Distribution parameters for each cell.

        Parameters
        ----------
        cls_embedding
            (batch, n_input) CLS output of the decoder transformer.
        library_size
            (batch,) total counts of each cell; required for ``zinb`` and ``nb``, ignored for ``gaussian`` and
            ``hurdle``.
        sentence_ranks
            (batch, n_genes) each gene's rank in the cell's sentence (1 for the first), 0 for genes not in it;
            required with ``sentence_offsets``.

        Returns
        -------
        ``zinb``: ``{'mu', 'theta', 'pi_logits'}``; ``nb``: ``{'mu', 'theta'}``; ``hurdle``: the Gaussian's
        keys and ``'zero_logits'``; ``gaussian``:
        ``{'mean', 'log_var'}``; every value (batch, n_genes).
        """
        state = F.normalize(cls_embedding, dim=-1)
        hidden = self.hidden(state)
        batch = cls_embedding.shape[0]
        level, expressed = None, None
        if self.sentence_offsets:
            if sentence_ranks is None:
                raise ValueError("this count decoder reads the sentence; pass sentence_ranks.")
            present = (sentence_ranks > 0).to(hidden.dtype)
            log_rank = torch.log(sentence_ranks.to(hidden.dtype).clamp(min=1.0))
            level = present * (self.in_sentence + self.rank_slope * log_rank) + (1 - present) * self.out_of_sentence
            expressed = present * self.in_sentence_zero

        def shifted(values: torch.Tensor, which: int) -> torch.Tensor:
            if level is None:
                return values
            assert expressed is not None  # set with level
            # which 0: the counts' scale logits or the hurdle's off logits; 1: the log-normalised mean.
            return values + (level if which == 1 or self.likelihood not in LOGNORM_LIKELIHOODS else -expressed)

        if self.likelihood in LOGNORM_LIKELIHOODS:
            params = {"mean": shifted(self.mean_head(hidden), 1), "log_var": self.log_var.expand(batch, -1)}
            if self.likelihood == "hurdle":
                params["zero_logits"] = shifted(self.zero_head(hidden), 0)
            return params
        if library_size is None:
            raise SctraceInputError(
                f"The {self.likelihood} count decoder needs library_size; pass each cell's total counts."
            )
        params = {
            "mu": library_size[:, None] * torch.softmax(shifted(self.scale_head(hidden), 0), dim=-1),
            "theta": torch.exp(self.log_theta).expand(batch, -1),
        }
        if self.likelihood == "zinb":
            params["pi_logits"] = self.dropout_head(hidden) - (0 if expressed is None else expressed)
            if self.zinb_mean == "scale":
                # 1 / (1 - pi) = exp(softplus(pi_logits)), formed in log space so large logits stay finite.
                inflation = F.softplus(params["pi_logits"]).clamp(max=_MAX_LOG_INFLATION)
                params["mu"] = params["mu"] * torch.exp(inflation)
        return params

    def distribution(self, params: dict[str, torch.Tensor]) -> NegativeBinomial | Gaussian | Hurdle:
        """The cells' distributions (:mod:`sctrace.model.distributions`) for the parameters of :meth:`forward`."""
        if self.likelihood == "zinb":
            return ZeroInflatedNegativeBinomial(params["mu"], params["theta"], params["pi_logits"])
        if self.likelihood == "nb":
            return NegativeBinomial(params["mu"], params["theta"])
        if self.likelihood == "hurdle":
            quantiles = None
            if self.quantile_marginal:
                self._check_marginals()
                quantiles = self.marginal_quantiles
            return Hurdle(params["mean"], params["log_var"], params["zero_logits"], quantiles)
        return Gaussian(params["mean"], params["log_var"])

    def log_prob(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """(batch, n_genes) elementwise log-likelihood of ``x`` (counts, or log-normalised for ``gaussian``/``hurdle``)."""
        return self.distribution(params).log_prob(x)

    def _check_marginals(self) -> None:
        if not bool(self.marginals_fitted):
            raise RuntimeError("the count decoder's quantile tables were never fitted; call fit_marginals first.")

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
    def sample(self, params: dict[str, torch.Tensor], generator: torch.Generator | None = None,
               uniforms: torch.Tensor | None = None) -> torch.Tensor:
        """Draw one expression profile per cell, reproducible with a seeded ``generator``.

        With ``uniforms`` (batch, n_genes), values in (0, 1), each entry is instead the distribution's quantile
        at that level (inverse-CDF sampling, :meth:`quantile`); ``generator`` is then not used. Stratified
        uniforms (:func:`sctrace.model.sampling.stratified_uniforms`) make a population whose per-gene spread follows the model
        with less sampling noise, while every cell's own draw keeps its distribution.

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
        if uniforms is not None:
            return self.quantile(params, uniforms)
        return self.distribution(params).sample(generator=generator)

    @torch.no_grad()
    def quantile(self, params: dict[str, torch.Tensor], levels: torch.Tensor) -> torch.Tensor:
        """(batch, n_genes) each cell's and gene's value at probability ``levels`` (same shape, in (0, 1)).

        The zero part comes first: below the zero probability (``sigmoid`` of ``zero_logits`` or ``pi_logits``)
        the value is 0, above it the rest of the level is spent on the positive part. The NB quantile is
        scipy's (``nbinom.ppf``, on CPU); the Gaussian's is ``ndtri``, through the quantile tables where fitted.
        """
        return self.distribution(params).icdf(levels)

    def mean(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """(batch, n_genes) expected value: ``(1 - pi) mu`` for ``zinb``, ``mu`` for ``nb``, ``mean`` for
        ``gaussian`` (the unclipped Gaussian mean, not the mean of the clipped :meth:`sample`)."""
        return self.distribution(params).mean
