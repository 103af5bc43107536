"""The count decoder's time prior: statistics per training time, interpolated in time, its own time left out."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from sctrace.model.counts import CountDecoder
from sctrace.model.prior import N_PRIOR_FEATURES, TimePrior


def _prior(stats: torch.Tensor, kind: int = 0) -> TimePrior:
    prior = TimePrior([0.0, 1.0, 3.0], stats.shape[-1])
    prior.stats.copy_(stats)
    prior.kind.fill_(kind)
    return prior


# Shares (counts) or on fractions (hurdle) in [:, 0], means of the positive part in [:, 1].
STATS = torch.stack([torch.tensor([[0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 4.0]]),
                     torch.tensor([[0.4, 0.3, 0.2, 0.1], [2.0, 2.0, 2.0, 2.0]]),
                     torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.0, 1.0, 0.0, 1.0]])])


def _counts_offsets(share: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.log(share + 1e-7), torch.zeros_like(share)])


def test_between_two_times_the_prior_mixes_their_populations():
    offsets, features = _prior(STATS)(2.0, batch=2)
    assert offsets.shape == (2, 2, 4) and features.shape == (2, N_PRIOR_FEATURES)
    # Counts: the mean shares are mixed, then put on the head's log scale.
    torch.testing.assert_close(offsets[0], _counts_offsets(0.5 * (STATS[1, 0] + STATS[2, 0])))
    torch.testing.assert_close(features[0], torch.tensor([1 / 3, 1 / 3, 1.0]))
    # Hurdle: on fractions mixed (off logit), the positive part's mean weighted by each time's on cells.
    offsets, _ = _prior(STATS, kind=1)(2.0, batch=1)
    on = 0.5 * (STATS[1, 0] + STATS[2, 0])
    torch.testing.assert_close(offsets[0, 0], torch.log((1 - on) / on))
    torch.testing.assert_close(offsets[0, 1], 0.5 * (STATS[1, 0] * STATS[1, 1] + STATS[2, 0] * STATS[2, 1]) / on)


def test_a_training_target_is_built_from_its_neighbours():
    """Time 1 with its own statistics left out: a third of the way from time 0 to time 3."""
    offsets, features = _prior(STATS)(1.0, batch=1, exclude=1)
    torch.testing.assert_close(offsets[0], _counts_offsets(STATS[0, 0] + (STATS[2, 0] - STATS[0, 0]) / 3))
    torch.testing.assert_close(features[0], torch.tensor([1 / 3, 2 / 3, 1.0]))
    own, _ = _prior(STATS)(1.0, batch=1)
    torch.testing.assert_close(own[0], _counts_offsets(STATS[1, 0]))


def test_past_the_ends_the_nearest_time_is_taken():
    offsets, features = _prior(STATS)(5.0, batch=1)
    torch.testing.assert_close(offsets[0], _counts_offsets(STATS[2, 0]))
    torch.testing.assert_close(features[0], torch.tensor([2 / 3, 0.0, 0.0]))
    offsets, features = _prior(STATS)(torch.tensor([-1.0, 3.0]), batch=2, exclude=2)  # per-cell times
    torch.testing.assert_close(offsets[0], _counts_offsets(STATS[0, 0]))
    torch.testing.assert_close(offsets[1], _counts_offsets(STATS[1, 0]))
    torch.testing.assert_close(features[:, 2], torch.tensor([0.0, 0.0]))


def test_fitted_statistics_of_counts_and_of_log_normalised_values():
    counts = np.array([[1, 3, 0], [2, 2, 0], [0, 4, 4], [5, 0, 5]], dtype=np.float32)
    times = np.array([0.0, 0.0, 1.0, 3.0])
    prior = TimePrior([0.0, 1.0, 3.0], 3)
    prior.fit(sp.csr_matrix(counts), times, "zinb")
    share_0 = np.mean(counts[:2] / counts[:2].sum(1, keepdims=True), axis=0)
    np.testing.assert_allclose(prior.stats[0, 0].numpy(), share_0, rtol=1e-5)
    assert bool(prior.fitted) and int(prior.kind) == 0
    logged = np.array([[0.0, 1.5], [2.0, 0.5], [0.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    prior.__init__([0.0, 1.0, 3.0], 2)
    prior.fit(logged, times, "hurdle")
    # Time 0: gene 0 on in 1 of 2 cells, mean of its positive values 2.0; gene 1 always on, kept a quarter
    # cell from 1 (0.5 / n), mean 1.0.
    assert int(prior.kind) == 1
    torch.testing.assert_close(prior.stats[0, 0], torch.tensor([0.5, 0.75]))
    torch.testing.assert_close(prior.stats[0, 1], torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(prior.stats[1, 1], torch.tensor([0.0, 0.0]))  # no positive value: 0


@pytest.mark.parametrize("likelihood", ["zinb", "hurdle"])
def test_an_untrained_decoder_returns_the_prior(likelihood):
    decoder = CountDecoder(8, 4, n_hidden=16, likelihood=likelihood, zinb_mean="scale", n_prior_features=N_PRIOR_FEATURES)
    offsets, features = _prior(STATS, kind=0 if likelihood == "zinb" else 1)(2.0, batch=3)
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
    model = TRACE(small_timecourse, "time", holdout=times[3], seed=0, count_prior="residual",
                  **{**tiny_fast_config, "max_epochs": 1})
    model.fit(progress=False, max_steps=3)  # a network barely trained: the prior sets where the prediction lies
    stats = model.net.count_prior.stats[:, 0]
    k = list(model.spec.time_values).index(times[2])
    expected = model.predict(times[3], n_cells=64, seed=0, sampling="iid").layers["zinb_mean"]
    shares = expected.mean(0) / expected.mean(0).sum()
    low, high = stats[k].numpy(), stats[k + 1].numpy()
    between = np.corrcoef(shares - low, high - low)[0, 1]
    assert between > 0.5, between


def test_centred_offsets_leave_the_population_at_the_prior():
    """count_prior 'centred': whatever the network says, the cells decoded together average to the prior."""
    decoder = CountDecoder(8, 4, n_hidden=16, likelihood="hurdle", n_prior_features=N_PRIOR_FEATURES, centre_prior=True)
    for head in (decoder.mean_head, decoder.zero_head):
        torch.nn.init.normal_(head.weight)
    offsets, features = _prior(STATS, kind=1)(2.0, batch=5)
    params = decoder(torch.randn(5, 8), None, prior=(offsets, features))
    torch.testing.assert_close(params["mean"].mean(0), offsets[0, 1])
    torch.testing.assert_close(params["zero_logits"].mean(0), offsets[0, 0])
    assert params["mean"].std(0).min() > 0  # cells still differ
