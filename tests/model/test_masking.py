import math

import pytest
import torch

from sctrace._errors import SctraceInputError
from sctrace.model.masking import (
    SCHEDULES,
    mask_ratio,
    n_tokens_to_mask,
    random_mask,
    unmask_count_schedule,
)

torch.set_num_threads(1)

PAD, MASK, CLS = 0, 1, 2


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_mask_ratio_endpoints_range_and_monotone(schedule):
    u = torch.linspace(0, 1, 1001, dtype=torch.float64)  # float32 rounds 1 - u**3 to 1 near u = 0
    ratio = mask_ratio(u, schedule)
    assert ratio.shape == u.shape
    assert ratio[0].item() == 1.0
    assert ratio[-1].item() == 0.0
    assert ((ratio >= 0) & (ratio <= 1)).all()
    assert (ratio[1:] < ratio[:-1]).all()
    assert mask_ratio(torch.tensor([0.0, 1.0]), schedule).tolist() == [1.0, 0.0]  # exact in float32 too


def test_mask_ratio_closed_forms():
    u = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    assert torch.allclose(mask_ratio(u, "cosine"), torch.cos(math.pi / 2 * u))
    assert torch.allclose(mask_ratio(u, "cubic"), 1 - u**3)
    assert torch.allclose(mask_ratio(u, "linear"), 1 - u)
    k = 5.0
    assert torch.allclose(mask_ratio(u, "exponential"), (torch.exp(-k * u) - math.exp(-k)) / (1 - math.exp(-k)))


def test_unknown_schedule_names_choices():
    with pytest.raises(SctraceInputError, match="cosine, exponential, cubic, linear"):
        mask_ratio(torch.tensor([0.5]), "sigmoid")


def _tokens_with_cls_and_padding(lengths, max_len, generator):
    """(batch, 1 + max_len) CLS + distinct gene ids (>= 3) + trailing PAD."""
    rows = []
    for n in lengths:
        genes = torch.randperm(500, generator=generator)[:n] + 3
        rows.append(torch.cat([torch.tensor([CLS]), genes, torch.full((max_len - n,), PAD)]))
    return torch.stack(rows)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_random_mask_follows_algorithm_1(schedule):
    gen = torch.Generator().manual_seed(0)
    lengths = [50, 1, 0, 30, 64, 17, 64, 5] * 8
    tokens = _tokens_with_cls_and_padding(lengths, 64, gen)
    seed = 123
    masked, labels = random_mask(tokens, schedule, torch.Generator().manual_seed(seed))

    # Replay the documented first draw (u) and recompute the expected counts from the closed form.
    u = torch.rand(len(lengths), generator=torch.Generator().manual_seed(seed))
    n_maskable = torch.tensor(lengths)
    ratio = mask_ratio(u, schedule)
    expected = torch.round(n_maskable * ratio).long().clamp(min=1)
    expected = torch.where(n_maskable == 0, 0, torch.minimum(expected, n_maskable))

    is_masked = masked == MASK
    assert torch.equal(is_masked.sum(1), expected)
    assert not is_masked[tokens == PAD].any()
    assert not is_masked[tokens == CLS].any()
    assert torch.equal(labels[is_masked], tokens[is_masked])
    assert (labels[~is_masked] == -100).all()
    assert torch.equal(masked[~is_masked], tokens[~is_masked])
    assert len(set(expected.tolist())) > 3


def test_random_mask_never_masks_interior_pad_or_cls():
    # A pad in the middle would be picked by the paper's single argsort; the double argsort must skip it.
    tokens = torch.tensor([[CLS, PAD, 7, 8, PAD, 9, CLS, 10]] * 200)
    masked, labels = random_mask(tokens, "linear", torch.Generator().manual_seed(1))
    specials = (tokens == PAD) | (tokens == CLS)
    assert torch.equal(masked[specials], tokens[specials])
    assert (labels[specials] == -100).all()
    # Every maskable position gets chosen in some row: the choice covers all of them.
    assert (masked == MASK).any(0).tolist() == (~specials[0]).tolist()


def test_random_mask_positions_uniform():
    tokens = torch.arange(3, 13).repeat(4000, 1)
    masked, _ = random_mask(tokens, "cosine", torch.Generator().manual_seed(2))
    freq = (masked == MASK).float().mean(0)
    assert (freq - freq.mean()).abs().max() < 0.04


def test_random_mask_reproducible_and_seed_dependent():
    tokens = torch.arange(3, 43).repeat(16, 1)
    a = random_mask(tokens, "cosine", torch.Generator().manual_seed(5))
    b = random_mask(tokens, "cosine", torch.Generator().manual_seed(5))
    c = random_mask(tokens, "cosine", torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_random_mask_custom_ids():
    tokens = torch.tensor([[5, 7, 8, 9, 4, 4]])
    masked, labels = random_mask(
        tokens, "linear", torch.Generator().manual_seed(0), pad_id=4, cls_id=5, mask_id=6, ignore_index=-1
    )
    assert masked[0, 0] == 5 and (masked[0, 4:] == 4).all()
    assert ((masked == 6) == (labels != -1)).all()
    assert 1 <= (masked == 6).sum() <= 3


def test_random_mask_rejects_1d():
    with pytest.raises(SctraceInputError, match="batch, length"):
        random_mask(torch.arange(5), "cosine")


def test_n_tokens_to_mask_clamps():
    n = torch.tensor([0, 10, 10, 10, 3])
    ratio = torch.tensor([0.5, 0.0, 0.26, 1.0, 0.01])
    assert n_tokens_to_mask(n, ratio).tolist() == [0, 1, 3, 10, 1]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_unmask_count_schedule(schedule):
    length = torch.tensor([1, 7, 100, 647])
    total = 19
    counts = torch.stack([unmask_count_schedule(s, total, length, schedule) for s in range(total)])
    assert counts.dtype == torch.int64 and counts.shape == (total, 4)
    assert (counts[-1] == 0).all()
    assert (counts[1:] <= counts[:-1]).all()
    assert (counts <= length).all()
    for s in range(total):
        gamma = mask_ratio(torch.tensor((s + 1) / total, dtype=torch.float64), schedule).item()
        assert counts[s].tolist() == [math.floor(n * gamma) for n in length.tolist()]


def test_unmask_count_schedule_rejects_bad_step():
    with pytest.raises(SctraceInputError):
        unmask_count_schedule(5, 5, torch.tensor([3]), "cosine")
