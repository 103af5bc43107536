import numpy as np
import pytest
import torch
from scipy import stats

from sctrace._errors import SctraceInputError
from sctrace.model.counts import (
    LIKELIHOODS,
    CountDecoder,
    _standard_gamma,
    gaussian_log_prob,
    log_hurdle_gaussian,
    log_nb_positive,
    log_zinb_positive,
    normal_to_values,
    values_to_normal,
)
from sctrace.model.sampling import StratifiedLevels, stratified_uniforms

torch.set_num_threads(1)


def _random_count_params(n=400, seed=0):
    rng = np.random.default_rng(seed)
    mu = 10 ** rng.uniform(-3, 4, n)
    theta = 10 ** rng.uniform(-2, 3, n)
    # Zeros, small counts and counts far in the tail.
    x = np.concatenate([np.zeros(n // 4), rng.integers(1, 10, n // 4), rng.poisson(mu[n // 2 :] + 1)]).astype(float)
    x[-5:] = [1e4, 5e4, 2e5, 1e3, 3e5]
    logits = rng.normal(0, 3, n)
    return x, mu, theta, logits


def _t(a):
    return torch.tensor(a, dtype=torch.float64)


def test_log_nb_positive_matches_scipy():
    x, mu, theta, _ = _random_count_params()
    expected = stats.nbinom.logpmf(x, n=theta, p=theta / (theta + mu))
    got = log_nb_positive(_t(x), _t(mu), _t(theta)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_log_zinb_positive_matches_scipy_mixture():
    x, mu, theta, logits = _random_count_params(seed=1)
    pi = 1 / (1 + np.exp(-logits))
    nb = stats.nbinom(n=theta, p=theta / (theta + mu))
    expected = np.where(x == 0, np.log(pi + (1 - pi) * nb.pmf(0)), np.log1p(-pi) + nb.logpmf(x))
    got = log_zinb_positive(_t(x), _t(mu), _t(theta), _t(logits)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_zinb_reduces_to_nb_without_inflation():
    x, mu, theta, _ = _random_count_params(seed=2)
    nb = log_nb_positive(_t(x), _t(mu), _t(theta))
    # Logits far below every log NB(0) here (>= -2400), so the inflation weight is negligible even at zeros.
    zinb = log_zinb_positive(_t(x), _t(mu), _t(theta), torch.full((len(x),), -1e4, dtype=torch.float64))
    torch.testing.assert_close(zinb, nb, rtol=1e-8, atol=1e-10)


def test_zinb_probabilities_sum_to_one():
    x = torch.arange(0, 3000, dtype=torch.float64)
    total = log_zinb_positive(x, _t(12.0), _t(0.7), _t(0.3)).exp().sum()
    assert abs(total.item() - 1.0) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_likelihood_gradients_finite_at_extremes(dtype):
    values = torch.tensor([1e-10, 1e-4, 1.0, 1e4, 1e7], dtype=dtype)
    mu, theta, logits = torch.meshgrid(values, values, torch.tensor([-60.0, 0.0, 60.0], dtype=dtype), indexing="ij")
    mu, theta, logits = (t.reshape(-1).clone().requires_grad_(True) for t in (mu, theta, logits))
    for x_value in (0.0, 1.0, 1e6):
        x = torch.full_like(mu, x_value)
        ll = log_zinb_positive(x, mu, theta, logits) + log_nb_positive(x, mu, theta)
        assert torch.isfinite(ll).all()
        grads = torch.autograd.grad(ll.sum(), (mu, theta, logits))
        assert all(torch.isfinite(g).all() for g in grads)


def test_gaussian_log_prob_matches_scipy():
    rng = np.random.default_rng(3)
    x, mean, log_var = rng.normal(size=(3, 50))
    expected = stats.norm.logpdf(x, loc=mean, scale=np.exp(0.5 * log_var))
    np.testing.assert_allclose(gaussian_log_prob(_t(x), _t(mean), _t(log_var)).numpy(), expected, rtol=1e-10)


def test_log_hurdle_gaussian_matches_direct_formula():
    rng = np.random.default_rng(4)
    mean, log_var, logits = rng.normal(size=(3, 60))
    x = np.where(rng.random(60) < 0.4, 0.0, np.abs(rng.normal(2, 1, 60)))
    p_zero = 1 / (1 + np.exp(-logits))
    expected = np.where(x == 0, np.log(p_zero), np.log1p(-p_zero) + stats.norm.logpdf(x, mean, np.exp(0.5 * log_var)))
    got = log_hurdle_gaussian(_t(x), _t(mean), _t(log_var), _t(logits)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # Logits far out stay finite, and a zero is likelier the larger the zero logit.
    far = log_hurdle_gaussian(_t([0.0, 1.0]), _t([1.0, 1.0]), _t([0.0, 0.0]), _t([-200.0, 200.0]))
    assert torch.isfinite(far).all() and far[0] < -100 and far[1] < -100


def test_count_decoder_hurdle_sample_zeros_and_mean():
    decoder, cls_embedding, _ = _decoder_and_inputs("hurdle", n_cells=2, n_genes=10)
    with torch.no_grad():
        decoder.log_var.fill_(np.log(0.01))
        params = {k: v.repeat(5000, 1) for k, v in decoder(cls_embedding).items()}
        params["mean"] = params["mean"].abs() + 2.0  # the positive part sits well away from the clip at 0
    samples = decoder.sample(params, torch.Generator().manual_seed(0)).reshape(5000, 2, 10)
    assert (samples >= 0).all()
    p_zero = torch.sigmoid(params["zero_logits"][:2])
    torch.testing.assert_close((samples == 0).float().mean(0), p_zero, atol=0.03, rtol=0)
    torch.testing.assert_close(samples.mean(0), decoder.mean({k: v[:2] for k, v in params.items()}), atol=0.1, rtol=0.05)


def test_standard_gamma_moments_and_seed():
    shape = torch.tensor([0.05, 0.5, 1.0, 3.0, 50.0], dtype=torch.float64).repeat(20000, 1)
    draws = _standard_gamma(shape, torch.Generator().manual_seed(0))
    assert (draws >= 0).all()
    torch.testing.assert_close(draws.mean(0), shape[0], rtol=0.05, atol=0.01)
    torch.testing.assert_close(draws.var(0), shape[0], rtol=0.08, atol=0.01)
    again = _standard_gamma(shape, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)


def _decoder_and_inputs(likelihood, n_cells=8, n_input=16, n_genes=30, seed=0):
    torch.manual_seed(seed)
    decoder = CountDecoder(n_input, n_genes, n_hidden=32, dropout=0.0, likelihood=likelihood)
    cls_embedding = torch.randn(n_cells, n_input)
    library_size = torch.linspace(500, 5000, n_cells)
    return decoder, cls_embedding, library_size


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_count_decoder_shapes(likelihood):
    decoder, cls_embedding, library_size = _decoder_and_inputs(likelihood)
    params = decoder(cls_embedding, library_size)
    expected_keys = {"zinb": {"mu", "theta", "pi_logits"}, "nb": {"mu", "theta"}, "gaussian": {"mean", "log_var"},
                     "hurdle": {"mean", "log_var", "zero_logits"}}
    assert set(params) == expected_keys[likelihood]
    assert all(v.shape == (8, 30) for v in params.values())
    assert decoder.mean(params).shape == (8, 30)
    assert decoder.sample(params, torch.Generator().manual_seed(0)).shape == (8, 30)
    assert decoder.loss(params, torch.ones(8, 30)).ndim == 0


@pytest.mark.parametrize("likelihood", ["zinb", "nb"])
def test_count_decoder_mu_sums_to_library_size(likelihood):
    decoder, cls_embedding, library_size = _decoder_and_inputs(likelihood)
    params = decoder(cls_embedding, library_size)
    torch.testing.assert_close(params["mu"].sum(1), library_size)
    assert (params["theta"] > 0).all()


def test_count_decoder_is_scale_invariant_in_cls():
    # The L2 normalisation comes first, so rescaling the CLS embedding changes nothing.
    decoder, cls_embedding, library_size = _decoder_and_inputs("zinb")
    a = decoder(cls_embedding, library_size)
    b = decoder(7.0 * cls_embedding, library_size)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_count_decoder_loss_is_mean_cell_nll():
    decoder, cls_embedding, library_size = _decoder_and_inputs("zinb")
    params = decoder(cls_embedding, library_size)
    x = torch.poisson(params["mu"].detach())
    expected = -log_zinb_positive(x, params["mu"], params["theta"], params["pi_logits"]).sum(1).mean()
    torch.testing.assert_close(decoder.loss(params, x), expected)


@pytest.mark.parametrize("likelihood", ["zinb", "nb"])
def test_count_decoder_sample_mean_matches_mean(likelihood):
    decoder, cls_embedding, library_size = _decoder_and_inputs(likelihood, n_cells=2, n_genes=10)
    with torch.no_grad():
        decoder.log_theta.fill_(np.log(2.0))
        params = {k: v.repeat(5000, 1) for k, v in decoder(cls_embedding, library_size).items()}
    samples = decoder.sample(params, torch.Generator().manual_seed(0))
    assert torch.equal(samples, samples.round()) and (samples >= 0).all()
    empirical = samples.reshape(5000, 2, 10).mean(0)
    expected = decoder.mean(params)[:2]
    # Relative standard error of a mean of 5000 NB(theta=2) draws is < 3 %; allow ~5 of them.
    torch.testing.assert_close(empirical, expected, rtol=0.15, atol=0.5)


def test_count_decoder_sample_reproducible():
    decoder, cls_embedding, library_size = _decoder_and_inputs("zinb")
    params = decoder(cls_embedding, library_size)
    a = decoder.sample(params, torch.Generator().manual_seed(4))
    b = decoder.sample(params, torch.Generator().manual_seed(4))
    c = decoder.sample(params, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_count_decoder_gaussian_sample_clipped_and_mean():
    decoder, cls_embedding, _ = _decoder_and_inputs("gaussian")
    params = decoder(cls_embedding)
    samples = decoder.sample(params, torch.Generator().manual_seed(0))
    assert (samples >= 0).all()
    torch.testing.assert_close(decoder.mean(params), params["mean"])
    x = torch.rand(8, 30)
    expected = -gaussian_log_prob(x, params["mean"], params["log_var"]).sum(1).mean()
    torch.testing.assert_close(decoder.loss(params, x), expected)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_count_decoder_training_reduces_loss(likelihood):
    decoder, cls_embedding, library_size = _decoder_and_inputs(likelihood)
    generator = torch.Generator().manual_seed(1)
    rates = torch.rand(8, 30, generator=generator) * 20
    counts = torch.poisson(rates, generator=generator)
    x = torch.log1p(counts) if likelihood in ("gaussian", "hurdle") else counts
    optimiser = torch.optim.Adam(decoder.parameters(), lr=2e-2)
    losses = []
    for _ in range(40):
        loss = decoder.loss(decoder(cls_embedding, counts.sum(1)), x)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


def test_count_decoder_errors():
    with pytest.raises(SctraceInputError, match="zinb, nb, gaussian, hurdle"):
        CountDecoder(8, 10, likelihood="poisson")
    decoder = CountDecoder(8, 10)
    with pytest.raises(SctraceInputError, match="library_size"):
        decoder(torch.randn(2, 8))


def test_zinb_mean_scale_keeps_the_library_size():
    # scVI's link puts library x scale on the NB part, so zero-inflation lowers the expected total; with
    # zinb_mean="scale" the ZINB's own mean is library x scale and sampled cells keep their depth on average.
    torch.manual_seed(0)
    cls_embedding, library_size = torch.randn(4, 8), torch.tensor([500.0, 1000.0, 2000.0, 4000.0])
    totals = {}
    for zinb_mean in ("nb", "scale"):
        torch.manual_seed(0)
        decoder = CountDecoder(8, 30, dropout=0.0, zinb_mean=zinb_mean)
        with torch.no_grad():
            decoder.dropout_head.bias.fill_(1.0)  # pi ~ 0.73: a large effect
            params = decoder(cls_embedding, library_size)
        expected = decoder.mean(params)
        draws = decoder.sample({k: v.repeat(2000, 1) for k, v in params.items()}, torch.Generator().manual_seed(0))
        totals[zinb_mean] = (expected.sum(1), draws.sum(1).reshape(2000, 4).mean(0))
    torch.testing.assert_close(totals["scale"][0], library_size)
    torch.testing.assert_close(totals["scale"][1], library_size, rtol=0.03, atol=0.0)
    assert (totals["nb"][1] < 0.6 * library_size).all()
    with pytest.raises(SctraceInputError, match="zinb_mean.*nb, scale"):
        CountDecoder(8, 10, zinb_mean="total")


def test_zinb_mean_scale_stays_finite_for_large_dropout_logits():
    decoder = CountDecoder(8, 10, zinb_mean="scale")
    with torch.no_grad():
        decoder.dropout_head.bias.fill_(80.0)
        params = decoder(torch.randn(3, 8), torch.full((3,), 1000.0))
    assert torch.isfinite(params["mu"]).all()
    loss = decoder.loss(params, torch.poisson(torch.full((3, 10), 5.0)))
    assert torch.isfinite(loss)


def _skewed_positive_values(n_cells=600, seed=0):
    """Log-normalised-like values: zeros, a skewed continuous gene, a discrete one (ties), a gene never on."""
    rng = np.random.default_rng(seed)
    values = np.zeros((n_cells, 4))
    values[:, 0] = rng.gamma(1.5, 0.7, n_cells)
    values[:, 1] = np.log1p(rng.poisson(3.0, n_cells))  # few distinct values, many ties
    values[:, 2] = 4.0 - rng.gamma(2.0, 0.3, n_cells)  # skewed towards zero
    values[:, :3][rng.random((n_cells, 3)) < 0.4] = 0.0
    values[:, 2] = np.clip(values[:, 2], 0.0, None)
    return values


def _quantile_decoder(values, n_input=8):
    import scipy.sparse as sp

    decoder = CountDecoder(n_input, values.shape[1], n_hidden=16, dropout=0.0, likelihood="hurdle",
                           hurdle_marginal="quantile")
    decoder.fit_marginals(sp.csr_matrix(values))
    return decoder


def test_normal_scores_match_scikit_learn_and_invert():
    from sklearn.preprocessing import QuantileTransformer

    values = _skewed_positive_values()
    decoder = _quantile_decoder(values)
    # float32 values against the float32 tables, as in training: equal values are then equal bit for bit.
    scores = values_to_normal(torch.tensor(values, dtype=torch.float32), decoder.marginal_quantiles).double().numpy()
    positive = np.where(values > 0, values, np.nan)
    reference = QuantileTransformer(n_quantiles=256, output_distribution="normal", subsample=None).fit(positive)
    expected = reference.transform(positive)
    # Inside the clamp (half a quantile step from 0 and 1) the two agree; ties map to the middle of their run.
    inside = (values > 0) & (np.abs(expected) < 2.8)
    assert inside[:, 1].sum() > 200
    np.testing.assert_allclose(scores[inside], expected[inside], atol=1e-4)
    assert np.isfinite(scores).all() and np.abs(scores).max() < 3.0
    back = normal_to_values(torch.tensor(scores, dtype=torch.float32), decoder.marginal_quantiles).numpy()
    np.testing.assert_allclose(back[inside], values[inside], atol=1e-4)


def test_quantile_hurdle_draws_take_the_shape_of_the_training_values():
    values = _skewed_positive_values()
    decoder = _quantile_decoder(values)
    n = 4000
    params = {"mean": torch.zeros(n, 4), "log_var": torch.zeros(n, 4), "zero_logits": torch.full((n, 4), -30.0)}
    draws = decoder.sample(params, torch.Generator().manual_seed(0)).numpy()
    for gene in range(3):
        real = values[values[:, gene] > 0, gene].astype(np.float32)  # the tables hold float32
        # A standard-normal score is each gene's own distribution again; a Gaussian on the values is not.
        assert stats.ks_2samp(draws[:, gene], real).statistic < 0.06
        gaussian = np.clip(np.random.default_rng(0).normal(real.mean(), real.std(), n), 0, None)
        assert stats.wasserstein_distance(draws[:, gene], real) < 0.5 * stats.wasserstein_distance(gaussian, real)
    assert (draws[:, 3] == 0).all()  # a gene never on in training has nothing to draw from
    # The expected value (quadrature) agrees with a large Monte Carlo one; the "off" probability scales it.
    params["zero_logits"][:, :] = 0.0
    mean = decoder.mean({k: v[:1] for k, v in params.items()}).numpy()[0]
    scores = torch.randn(200_000, 4, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(mean, 0.5 * normal_to_values(scores, decoder.marginal_quantiles).mean(0).numpy(), rtol=0.01)


def test_quantile_hurdle_loss_trains_and_needs_its_tables():
    values = _skewed_positive_values(n_cells=200)
    torch.manual_seed(0)
    decoder = CountDecoder(8, 4, n_hidden=16, dropout=0.0, likelihood="hurdle", hurdle_marginal="quantile")
    state = torch.randn(200, 8)
    with pytest.raises(RuntimeError, match="never fitted; call fit_marginals"):
        decoder.loss(decoder(state), torch.tensor(values, dtype=torch.float32))
    import scipy.sparse as sp

    decoder.fit_marginals(sp.csr_matrix(values))
    x = torch.tensor(values, dtype=torch.float32)
    optimiser = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = decoder.loss(decoder(state), x)
        optimiser.zero_grad(), loss.backward(), optimiser.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    # Tables are buffers: in the state dict (saved with the weights), not trained.
    assert {"marginal_quantiles", "marginals_fitted"} <= set(decoder.state_dict())
    assert all(name not in dict(decoder.named_parameters()) for name in ("marginal_quantiles", "marginals_fitted"))
    with pytest.raises(SctraceInputError, match="Unknown hurdle_marginal 'empirical'; choose one of gaussian, quantile"):
        CountDecoder(8, 4, likelihood="hurdle", hurdle_marginal="empirical")
    assert not CountDecoder(8, 4, likelihood="zinb", hurdle_marginal="quantile").quantile_marginal


def test_stratified_uniforms_put_one_level_in_each_stratum_per_gene():
    levels = stratified_uniforms(50, 7, np.random.default_rng(0))
    assert levels.shape == (50, 7) and (levels >= 0).all() and (levels < 1).all()
    for gene in range(7):
        assert sorted(np.floor(levels[:, gene] * 50).astype(int)) == list(range(50))
    # Independent orders across genes (else genes would be coupled through the cells), reproducible by seed.
    assert not np.array_equal(np.argsort(levels[:, 0]), np.argsort(levels[:, 1]))
    np.testing.assert_array_equal(levels, stratified_uniforms(50, 7, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="at least one cell"):
        stratified_uniforms(0, 7, np.random.default_rng(0))


def test_stratified_levels_come_in_blocks_that_are_each_a_latin_hypercube():
    # One block: exactly stratified_uniforms, so predict calls up to the block size are unchanged by blocking.
    np.testing.assert_array_equal(StratifiedLevels(50, 7, np.random.default_rng(0)).rows(0, 50),
                                  stratified_uniforms(50, 7, np.random.default_rng(0)))
    whole = StratifiedLevels(20, 3, np.random.default_rng(4), block=8).rows(0, 20)
    for start, size in ((0, 8), (8, 8), (16, 4)):
        for gene in range(3):
            assert sorted(np.floor(whole[start : start + size, gene] * size).astype(int)) == list(range(size))
    # Batches that straddle blocks see the same levels as one request, and passed blocks are let go.
    levels = StratifiedLevels(20, 3, np.random.default_rng(4), block=8)
    batches = [levels.rows(start, min(start + 5, 20)) for start in range(0, 20, 5)]
    np.testing.assert_array_equal(np.concatenate(batches), whole)
    assert set(levels._drawn) == {1, 2}  # the last batch (15:20) straddles blocks 1 and 2; block 0 is gone
    with pytest.raises(ValueError, match="outside 0:20"):
        levels.rows(15, 21)
    with pytest.raises(ValueError, match="at least one cell"):
        StratifiedLevels(5, 3, np.random.default_rng(0), block=0)


def _exact_cdf(likelihood, params, grid):
    """(len(grid), n_genes) CDF of every gene (one cell's parameters) by scipy, written independently of counts.py."""
    if likelihood in ("zinb", "nb"):
        mu, theta = params["mu"][0].double().numpy(), params["theta"][0].double().numpy()
        zero = torch.sigmoid(params["pi_logits"][0]).double().numpy() if likelihood == "zinb" else 0.0
        return zero + (1 - zero) * stats.nbinom.cdf(grid[:, None], theta, theta / (theta + mu))
    mean, sd = params["mean"][0].double().numpy(), np.exp(0.5 * params["log_var"][0].double().numpy())
    zero = torch.sigmoid(params["zero_logits"][0]).double().numpy() if likelihood == "hurdle" else 0.0
    # Values below 0 are clipped to 0, so the CDF at x >= 0 is the Gaussian's.
    return zero + (1 - zero) * stats.norm.cdf(grid[:, None], mean, sd)


@pytest.mark.parametrize("likelihood", ["zinb", "nb", "hurdle", "gaussian"])
def test_quantile_sampling_follows_the_distribution_within_one_stratum(likelihood):
    decoder, cls_embedding, library_size = _decoder_and_inputs(likelihood, n_cells=1, n_genes=6)
    n = 400
    with torch.no_grad():
        params = {k: v.repeat(n, 1) for k, v in decoder(cls_embedding, library_size[:1] if likelihood in ("zinb", "nb") else None).items()}
    levels = torch.as_tensor(stratified_uniforms(n, 6, np.random.default_rng(1)))
    draws = decoder.sample(params, uniforms=levels).double().numpy()
    assert (draws >= 0).all()
    grid = np.unique(np.concatenate([draws.ravel(), [0.0]]))
    empirical = (draws[:, None, :] <= grid[None, :, None]).mean(0)
    # Stratified: the empirical CDF of n draws is within 1/n of the exact one everywhere (iid draws: ~1/sqrt(n)).
    assert np.abs(empirical - _exact_cdf(likelihood, params, grid)).max() <= 1.0 / n + 1e-6
    iid = decoder.sample(params, torch.Generator().manual_seed(0)).double().numpy()
    iid_empirical = (iid[:, None, :] <= grid[None, :, None]).mean(0)
    assert np.abs(iid_empirical - _exact_cdf(likelihood, params, grid)).max() > 2.0 / n


def test_quantile_hurdle_stratified_draws_take_the_training_shape():
    values = _skewed_positive_values()
    decoder = _quantile_decoder(values)
    n = 2000
    params = {"mean": torch.zeros(n, 4), "log_var": torch.zeros(n, 4), "zero_logits": torch.full((n, 4), -1.0)}
    draws = decoder.sample(params, uniforms=torch.as_tensor(stratified_uniforms(n, 4, np.random.default_rng(0)))).numpy()
    np.testing.assert_allclose((draws == 0).mean(0)[:3], torch.sigmoid(torch.tensor(-1.0)).item(), atol=1.0 / n + 1e-6)
    for gene in range(3):
        real = values[values[:, gene] > 0, gene].astype(np.float32)
        assert stats.ks_2samp(draws[draws[:, gene] > 0, gene], real).statistic < 0.04


@pytest.mark.parametrize("likelihood", ["zinb", "nb", "hurdle", "gaussian"])
def test_quantile_sampling_at_the_edges_of_the_levels_stays_finite_and_non_negative(likelihood):
    # Level 0 (a Latin hypercube can draw it) and a level exactly at the zero probability map to 0, not to
    # scipy's -1 for ``nbinom.ppf(0)`` or the Gaussian's -inf.
    decoder, cls_embedding, library_size = _decoder_and_inputs(likelihood, n_cells=1, n_genes=6)
    with torch.no_grad():
        params = {k: v.repeat(3, 1) for k, v in decoder(cls_embedding, library_size[:1] if likelihood in ("zinb", "nb") else None).items()}
    logits = params.get("pi_logits", params.get("zero_logits"))
    at_zero = torch.sigmoid(logits[0].double()) if logits is not None else torch.zeros(6, dtype=torch.float64)
    levels = torch.stack([torch.zeros(6, dtype=torch.float64), at_zero, torch.full((6,), 1.0 - 1e-15, dtype=torch.float64)])
    draws = decoder.quantile(params, levels)
    assert torch.isfinite(draws).all() and (draws >= 0).all()
    assert (draws[0] == 0).all()
