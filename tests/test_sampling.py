"""Generation internals: the categorical draw (right distribution, never a forbidden token, exact
log-probability) and the cross-attention keys and values projected once per batch (same decoder output)."""

from __future__ import annotations

import pytest
import torch

from sctrace.data.tokenize import CLS_ID, PAD_ID
from sctrace.generate import _sample_categorical
from sctrace.model.module import TraceNet


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


@pytest.mark.parametrize("vocab", [128, 150, 300])
def test_two_level_search_matches_the_softmax_across_blocks(vocab):
    """Vocabularies of whole 64-token blocks and with a short last block; rows allowing one token anywhere."""
    generator = torch.Generator().manual_seed(vocab)
    logits = 2.0 * torch.randn(6, vocab, generator=generator)
    logits[0, torch.rand(vocab, generator=generator) < 0.5] = float("-inf")  # holes in every block
    logits[1, :] = float("-inf")
    logits[1, vocab - 1] = 0.0  # only the very last token (in the short block when there is one)
    logits[2, :] = float("-inf")
    logits[2, 64] = 0.0  # only the first token of the second block
    logits[3, 70:] = float("-inf")  # mass in the first block and a bit of the second
    logits[4, :] = 0.0  # uniform
    logits[5, : vocab // 2] = float("-inf")
    n_draws = 20_000
    tokens, log_probs = _sample_categorical(logits.repeat_interleave(n_draws, dim=0), torch.Generator().manual_seed(1))
    tokens = tokens.view(6, n_draws)
    expected = torch.softmax(logits.double(), dim=1)
    frequencies = torch.stack([torch.bincount(row, minlength=vocab) for row in tokens]).double() / n_draws
    assert (frequencies[expected == 0] == 0).all()
    standard_error = (expected * (1 - expected) / n_draws).sqrt()
    # 5 standard errors, plus 3 draws of slack for tokens too rare for the normal approximation.
    assert ((frequencies - expected).abs() <= 5 * standard_error + 3 / n_draws).all()
    # Block totals: a wrong block boundary would shift whole blocks of mass.
    for start in range(0, vocab, 64):
        block = slice(start, start + 64)
        assert frequencies[:, block].sum(1) == pytest.approx(expected[:, block].sum(1), abs=0.02)
    exact = torch.log_softmax(logits.double(), dim=1).repeat_interleave(n_draws, dim=0).gather(1, tokens.reshape(-1, 1))
    torch.testing.assert_close(log_probs.double(), exact.squeeze(1), atol=1e-5, rtol=0)


def test_draws_are_reproducible_with_a_seeded_generator():
    logits = torch.randn(64, 100, generator=torch.Generator().manual_seed(1))
    first = _sample_categorical(logits.clone(), torch.Generator().manual_seed(3))
    second = _sample_categorical(logits.clone(), torch.Generator().manual_seed(3))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_projected_memory_gives_the_same_decoder_output():
    torch.manual_seed(0)
    net = TraceNet(40, 37, 10, d_model=16, n_heads=2, head_dim=8, n_encoder_layers=1, n_decoder_layers=3).eval()
    target = torch.randint(3, 40, (4, 11))
    target[:, 0] = CLS_ID
    target[1, 7:] = PAD_ID
    memory = torch.randn(4, 23, 16)
    memory_pad = torch.zeros(4, 23, dtype=torch.bool)
    memory_pad[2, 15:] = True
    with torch.no_grad():
        plain = net.decode(target, 0.5, memory, memory_pad)
        cached = net.decode(target, 0.5, memory, memory_pad, net.decoder.project_memory(memory))
        other = net.decode(target, 0.5, memory, memory_pad, net.decoder.project_memory(memory + 1.0))
    assert torch.equal(plain, cached)
    assert not torch.allclose(plain, other)  # the keys and values passed are the ones used
