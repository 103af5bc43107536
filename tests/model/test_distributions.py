"""The count likelihoods as torch distributions, against closed forms (scipy) and their own draws."""

import numpy as np
import pytest
import torch
from scipy import stats

from sctrace.model.distributions import Gaussian, Hurdle, NegativeBinomial, ZeroInflatedNegativeBinomial

MU = torch.tensor([[0.5, 3.0, 20.0]], dtype=torch.float64)
THETA = torch.tensor([[0.7, 2.0, 10.0]], dtype=torch.float64)
X = torch.tensor([[0.0, 2.0, 17.0]], dtype=torch.float64)


def _scipy_nb(mu, theta):
    return stats.nbinom(theta.numpy(), (theta / (theta + mu)).numpy())


def test_negative_binomial_matches_scipy():
    nb = NegativeBinomial(MU, THETA)
    np.testing.assert_allclose(nb.log_prob(X).numpy(), _scipy_nb(MU, THETA).logpmf(X.numpy()), rtol=1e-6)
    np.testing.assert_allclose(nb.variance.numpy(), _scipy_nb(MU, THETA).var(), rtol=1e-10)
    levels = torch.tensor([[0.1, 0.5, 0.9]], dtype=torch.float64)
    np.testing.assert_array_equal(nb.icdf(levels).numpy(), _scipy_nb(MU, THETA).ppf(levels.numpy()))


def test_zero_inflation_adds_its_mass_at_zero():
    logits = torch.tensor([[-1.0, 0.0, 2.0]], dtype=torch.float64)
    pi = torch.sigmoid(logits).numpy()
    zinb = ZeroInflatedNegativeBinomial(MU, THETA, logits)
    pmf = _scipy_nb(MU, THETA).pmf(X.numpy())
    expected = np.where(X.numpy() == 0, pi + (1 - pi) * pmf, (1 - pi) * pmf)
    np.testing.assert_allclose(zinb.log_prob(X).exp().numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(zinb.mean.numpy(), (1 - pi) * MU.numpy())
    # Below the zero mass every level is 0; above it the NB's quantile at the rest of the level.
    levels = torch.tensor([[0.2, 0.9, 0.95]], dtype=torch.float64)
    rest = np.clip((levels.numpy() - pi) / (1 - pi), 1e-12, 1 - 1e-12)
    expected = np.where(levels.numpy() < pi, 0.0, _scipy_nb(MU, THETA).ppf(rest))
    np.testing.assert_array_equal(zinb.icdf(levels).numpy(), expected)


def test_draws_follow_the_mean_and_are_seeded():
    mu, theta = MU.expand(20000, 3).float(), THETA.expand(20000, 3).float()
    logits = torch.full_like(mu, -0.5)
    zinb = ZeroInflatedNegativeBinomial(mu, theta, logits)
    first = zinb.sample(generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, zinb.sample(generator=torch.Generator().manual_seed(1)))
    np.testing.assert_allclose(first.mean(0).numpy(), zinb.mean[0].numpy(), rtol=0.05)
    np.testing.assert_allclose(first.var(0).numpy(), zinb.variance[0].numpy(), rtol=0.1)


def test_hurdle_and_gaussian():
    loc = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    log_var = torch.tensor([[0.0, np.log(0.25)]], dtype=torch.float64)
    zero_logits = torch.tensor([[0.0, -2.0]], dtype=torch.float64)
    hurdle = Hurdle(loc, log_var, zero_logits)
    x = torch.tensor([[0.0, 1.5]], dtype=torch.float64)
    off = torch.sigmoid(zero_logits).numpy()
    expected = np.array([[np.log(off[0, 0]), np.log(1 - off[0, 1]) + stats.norm(2.0, 0.5).logpdf(1.5)]])
    np.testing.assert_allclose(hurdle.log_prob(x).numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(hurdle.mean.numpy(), (1 - off) * loc.numpy())
    levels = torch.tensor([[0.25, 0.6]], dtype=torch.float64)
    rest = (0.6 - off[0, 1]) / (1 - off[0, 1])
    np.testing.assert_allclose(hurdle.icdf(levels).numpy(), [[0.0, stats.norm(2.0, 0.5).ppf(rest)]], rtol=1e-10)
    gaussian = Gaussian(loc, log_var)
    np.testing.assert_allclose(gaussian.log_prob(x).numpy(), stats.norm(loc.numpy(), [[1.0, 0.5]]).logpdf(x.numpy()))
    draws = Gaussian(torch.zeros(5000, 1), torch.zeros(5000, 1)).sample(generator=torch.Generator().manual_seed(0))
    assert (draws >= 0).all() and (draws == 0).float().mean() == pytest.approx(0.5, abs=0.03)
