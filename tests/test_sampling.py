"""The categorical draw of MaskGIT generation: right distribution, never a forbidden token, exact log-probability."""

from __future__ import annotations

import torch

from sctrace.generate import _sample_categorical


def test_draws_follow_the_softmax_and_never_pick_a_forbidden_token():
    logits = torch.tensor(
        [
            [0.0, 1.0, 2.0, -1.0, 0.5, float("-inf")],
            [float("-inf"), 3.0, float("-inf"), 3.0, -2.0, 0.0],
            [float("-inf")] * 5 + [4.0],  # only the last token allowed
            [7.0] + [float("-inf")] * 5,  # only the first
        ]
    )
    n_draws = 50_000
    tokens, log_probs = _sample_categorical(logits.repeat_interleave(n_draws, dim=0), torch.Generator().manual_seed(0))
    tokens = tokens.view(4, n_draws)
    expected = torch.softmax(logits.double(), dim=1)
    frequencies = torch.stack([torch.bincount(row, minlength=6) for row in tokens]).double() / n_draws
    assert (frequencies[expected == 0] == 0).all()
    # Within 5 standard errors of the binomial proportion, for every token of every row.
    standard_error = (expected * (1 - expected) / n_draws).sqrt()
    assert ((frequencies - expected).abs() <= 5 * standard_error + 1e-12).all()
    exact = torch.log_softmax(logits.double(), dim=1).repeat_interleave(n_draws, dim=0).gather(1, tokens.reshape(-1, 1))
    torch.testing.assert_close(log_probs.double(), exact.squeeze(1), atol=1e-5, rtol=0)


def test_draws_are_reproducible_with_a_seeded_generator():
    logits = torch.randn(64, 100, generator=torch.Generator().manual_seed(1))
    first = _sample_categorical(logits.clone(), torch.Generator().manual_seed(3))
    second = _sample_categorical(logits.clone(), torch.Generator().manual_seed(3))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
