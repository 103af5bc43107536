"""The count decoder's time prior: statistics per training time, interpolated in time, its own time left out."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from sctrace.model.counts import CountDecoder
from sctrace.model.prior import N_PRIOR_FEATURES, TimePrior


def _prior(stats: torch.Tensor) -> TimePrior:
    prior = TimePrior([0.0, 1.0, 3.0], stats.shape[-1])
    prior.stats.copy_(stats)
    return prior


STATS = torch.arange(3 * 2 * 4, dtype=torch.float32).view(3, 2, 4)


def test_between_two_times_the_prior_interpolates_them():
    offsets, features = _prior(STATS)(2.0, batch=2)
    assert offsets.shape == (2, 2, 4) and features.shape == (2, N_PRIOR_FEATURES)
    torch.testing.assert_close(offsets[0], 0.5 * (STATS[1] + STATS[2]))
    torch.testing.assert_close(features[0], torch.tensor([1 / 3, 1 / 3, 1.0]))


def test_a_training_target_is_built_from_its_neighbours():
    """Time 1 with its own statistics left out: a third of the way from time 0 to time 3."""
    offsets, features = _prior(STATS)(1.0, batch=1, exclude=1)
    torch.testing.assert_close(offsets[0], STATS[0] + (STATS[2] - STATS[0]) / 3)
    torch.testing.assert_close(features[0], torch.tensor([1 / 3, 2 / 3, 1.0]))
    own, _ = _prior(STATS)(1.0, batch=1)
    torch.testing.assert_close(own[0], STATS[1])


def test_past_the_ends_the_nearest_time_is_taken():
    offsets, features = _prior(STATS)(5.0, batch=1)
    torch.testing.assert_close(offsets[0], STATS[2])
    torch.testing.assert_close(features[0], torch.tensor([2 / 3, 0.0, 0.0]))
    offsets, features = _prior(STATS)(torch.tensor([-1.0, 3.0]), batch=2, exclude=2)  # per-cell times
    torch.testing.assert_close(offsets[0], STATS[0])
    torch.testing.assert_close(offsets[1], STATS[1])
    torch.testing.assert_close(features[:, 2], torch.tensor([0.0, 0.0]))


def test_fitted_statistics_of_counts_and_of_log_normalised_values():
    counts = np.array([[1, 3, 0], [2, 2, 0], [0, 4, 4], [5, 0, 5]], dtype=np.float32)
    times = np.array([0.0, 0.0, 1.0, 3.0])
    prior = TimePrior([0.0, 1.0, 3.0], 3)
    prior.fit(sp.csr_matrix(counts), times, "zinb")
    share_0 = np.mean(counts[:2] / counts[:2].sum(1, keepdims=True), axis=0)
    np.testing.assert_allclose(prior.stats[0, 0].numpy(), np.log(share_0 + 1e-7), rtol=1e-5)
    assert bool(prior.fitted)
    logged = np.array([[0.0, 1.5], [2.0, 0.5], [0.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    prior.__init__([0.0, 1.0, 3.0], 2)
    prior.fit(logged, times, "hurdle")
    # Time 0: gene 0 off in 1 of 2 cells (logit 0), mean of its positive values 2.0; gene 1 never off, kept
    # a quarter cell from 0 (0.5 / n), mean 1.0.
    torch.testing.assert_close(prior.stats[0, 0], torch.tensor([0.0, float(np.log(0.25 / 0.75))]))
    torch.testing.assert_close(prior.stats[0, 1], torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(prior.stats[1, 1], torch.tensor([0.0, 0.0]))  # no positive value: 0


@pytest.mark.parametrize("likelihood", ["zinb", "hurdle"])
def test_an_untrained_decoder_returns_the_prior(likelihood):
    decoder = CountDecoder(8, 4, n_hidden=16, likelihood=likelihood, zinb_mean="scale", n_prior_features=N_PRIOR_FEATURES)
    offsets, features = _prior(STATS * 0.1)(2.0, batch=3)
    params = decoder(torch.randn(3, 8), torch.full((3,), 100.0), prior=(offsets, features))
    if likelihood == "zinb":
        torch.testing.assert_close(params["mu"] / (100.0 * torch.exp(torch.nn.functional.softplus(params["pi_logits"]))),
                                   torch.softmax(offsets[:, 0], dim=-1))
    else:
        torch.testing.assert_close(params["mean"], offsets[:, 1])
    with pytest.raises(ValueError, match="time prior"):
        decoder(torch.randn(3, 8), torch.full((3,), 100.0))


def test_a_fitted_model_with_the_prior_moves_between_its_neighbours(small_timecourse, tiny_fast_config):
    """Prediction at a held-out time: the expected shares lie between the neighbouring training times'."""
    from sctrace.estimator import TRACE

    times = sorted(small_timecourse.obs["time"].unique())
    model = TRACE(small_timecourse, "time", holdout=times[3], seed=0, count_prior="residual", time_bias=True,
                  **{**tiny_fast_config, "max_epochs": 1})
    model.fit(progress=False)
    stats = model.net.count_prior.stats[:, 0]
    k = list(model.spec.time_values).index(times[2])
    expected = model.predict(times[3], n_cells=64, seed=0, sampling="iid").layers["zinb_mean"]
    shares = np.log(expected.mean(0) / expected.mean(0).sum())
    low, high = stats[k].numpy(), stats[k + 1].numpy()
    between = np.corrcoef(shares - low, high - low)[0, 1]
    assert between > 0.5, between


def test_centred_offsets_leave_the_population_at_the_prior():
    """count_prior 'centred': whatever the network says, the cells decoded together average to the prior."""
    decoder = CountDecoder(8, 4, n_hidden=16, likelihood="hurdle", n_prior_features=N_PRIOR_FEATURES, centre_prior=True)
    for head in (decoder.mean_head, decoder.zero_head):
        torch.nn.init.normal_(head.weight)
    offsets, features = _prior(STATS * 0.1)(2.0, batch=5)
    params = decoder(torch.randn(5, 8), None, prior=(offsets, features))
    torch.testing.assert_close(params["mean"].mean(0), offsets[0, 1])
    torch.testing.assert_close(params["zero_logits"].mean(0), offsets[0, 0])
    assert params["mean"].std(0).min() > 0  # cells still differ
