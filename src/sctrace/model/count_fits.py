"""Fitting the count decoder's data-derived parts from the training cells, before any optimiser step.

Kept apart from :mod:`sctrace.model.counts` because they are one-off statistics of the corpus (quantile tables,
a log-rank regression), not part of the decoder's forward pass.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch

from sctrace.config import LOGNORM_LIKELIHOODS
from sctrace.data.arrays import dense
from sctrace.data.timecourse import capped_rows
from sctrace.model.counts import N_MARGINAL_QUANTILES, values_to_normal

if TYPE_CHECKING:
    from sctrace.data.corpus_files import NpyFile
    from sctrace.model.counts import CountDecoder

# Cells the quantiles are computed from (a seeded sample when the corpus holds more).
MARGINAL_CELLS = 10_000
SENTENCE_FIT_CELLS = 2_000  # cells the sentence offsets start from (dense float64: cells x genes)


def fit_marginals(decoder: "CountDecoder", values, seed: int = 0) -> None:
    """Each gene's quantiles of its positive values, from the training cells (``hurdle_marginal='quantile'``).

    Why: a Gaussian fitted to the positive part of log-normalised values misses their skewed, partly
    discrete shape. The decoder keeps the hurdle's per-cell Gaussian but places it on the normal scores of
    each gene's observed distribution, so draws take the shape of real values (BENCHMARKS.md, "Generation
    fidelity"). The tables pool every training time; the Gaussian's mean, per cell, moves along them.

    Parameters
    ----------
    values
        (n_cells, n_genes) log-normalised values of training cells: a scipy sparse matrix, or anything that
        returns one when indexed by an integer array of rows (a corpus's on-disk counts).
    seed
        Seeds the choice of cells when there are more than ``MARGINAL_CELLS``.
    """
    import scipy.sparse as sp
    from sklearn.preprocessing import QuantileTransformer

    if not decoder.quantile_marginal:
        raise ValueError("fit_marginals applies to the hurdle likelihood with hurdle_marginal='quantile'.")
    n_cells = values.shape[0]
    rows = capped_rows(np.arange(n_cells), MARGINAL_CELLS, seed)
    matrix = sp.csc_matrix(values[rows], dtype=np.float64)
    matrix.eliminate_zeros()  # zeros are the hurdle's "off" part; only positive values shape the tables
    transformer = QuantileTransformer(
        n_quantiles=N_MARGINAL_QUANTILES, ignore_implicit_zeros=True, subsample=None, random_state=seed
    )
    if n_cells < N_MARGINAL_QUANTILES:
        # scikit-learn needs as many cells as quantiles; a tiny corpus repeats its cells, same quantiles.
        matrix = sp.vstack([matrix] * -(-N_MARGINAL_QUANTILES // n_cells)).tocsc()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        transformer.fit(matrix)
    table = torch.as_tensor(transformer.quantiles_, dtype=decoder.marginal_quantiles.dtype)
    decoder.marginal_quantiles.copy_(table.to(decoder.marginal_quantiles.device))
    decoder.marginals_fitted.fill_(True)


@torch.no_grad()
def fit_sentence_offsets(decoder: "CountDecoder", values, tokens: "np.ndarray | NpyFile", seed: int = 0) -> dict[str, float]:
    """Start the sentence offsets where the training cells put them (``count_sentence``).

    Why: they are a handful of parameters on a log scale that the optimiser, at the count head's rate, moves
    by a few tenths in a small course's few hundred steps. For every training cell and every gene of its
    sentence, the gene's value relative to its mean over cells (log share for counts, the hurdle's normal
    score or the value for log-normalised data) is regressed on log rank with one slope and a level per gene;
    genes outside a sentence get the mean of their values there. Returns the slope and the r of that fit.

    Parameters
    ----------
    values
        (n_cells, n_genes) training values, rows indexable (a corpus's counts).
    tokens
        (n_cells, length) those cells' sentences (gene ids from N_SPECIAL, no [CLS]).
    """

    from sctrace.data.sentences import add_cls, sentence_ranks

    if not decoder.sentence_offsets:
        raise ValueError("fit_sentence_offsets applies to a decoder built with sentence_offsets.")
    n_cells = values.shape[0]
    rows = capped_rows(np.arange(n_cells), SENTENCE_FIT_CELLS, seed)
    block = values[rows]
    x = torch.as_tensor(dense(block), dtype=torch.float64)
    sentences = torch.as_tensor(np.asarray(tokens[rows]), dtype=torch.long)
    n_genes = x.shape[1]
    if decoder.likelihood in LOGNORM_LIKELIHOODS:
        on = x > 0
        scores = x
        if decoder.quantile_marginal:
            scores = values_to_normal(x.float(), decoder.marginal_quantiles).double()
        count = on.sum(0).clamp(min=1)
        y = scores - ((scores * on).sum(0) / count)  # each gene's positive values about their mean
        weight = on.double()
    else:
        share = x / x.sum(1, keepdim=True).clamp(min=1.0)
        mean_share = share.mean(0).clamp(min=1e-12)
        y = torch.log(share.clamp(min=1e-12) / mean_share)
        weight = (x > 0).double()
    ranks = sentence_ranks(add_cls(sentences), n_genes).double()
    present = (ranks > 0) & (weight > 0)
    log_rank = torch.log(ranks.clamp(min=1.0))
    n_in = present.sum(0).clamp(min=1)
    mean_y = (y * present).sum(0) / n_in
    mean_lr = (log_rank * present).sum(0) / n_in
    dy, dl = (y - mean_y) * present, (log_rank - mean_lr) * present
    slope = float((dy * dl).sum() / (dl * dl).sum().clamp(min=1e-12))
    fit_r = float((dy * dl).sum() / torch.sqrt((dy * dy).sum() * (dl * dl).sum()).clamp(min=1e-12))
    level = torch.where(present.any(0), mean_y - slope * mean_lr, torch.zeros_like(mean_y))
    absent = (ranks == 0).double()
    if decoder.likelihood in LOGNORM_LIKELIHOODS:
        out_weight = absent * weight
        outside = (y * out_weight).sum(0) / out_weight.sum(0).clamp(min=1)
    else:
        # The mean share where the gene is not in the sentence, zeros included, against its mean share.
        outside_share = (share * absent).sum(0) / absent.sum(0).clamp(min=1)
        outside = torch.log(outside_share.clamp(min=1e-12) / mean_share).clamp(min=-10.0)
    decoder.in_sentence.copy_(level.float())
    decoder.out_of_sentence.copy_(outside.float())
    decoder.rank_slope.fill_(slope)
    if decoder.likelihood == "hurdle":
        # A gene in the sentence is expressed: its off logit starts well below the gene's own.
        decoder.in_sentence_zero.fill_(4.0)
    return {"slope": slope, "r": fit_r}
