"""Length-grouped batching: every row once per epoch, padding measured as the collator pads, and less of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sctrace.data.corpus import prepare_corpus
from sctrace.data.datamodule import (
    LengthGroupedSampler,
    PairCollator,
    TraceDataModule,
    padding_fraction,
    row_widths,
)
from sctrace.data.io import read_timecourse
from sctrace.data.tokenize import PAD_ID


@pytest.fixture(scope="module")
def corpus(small_timecourse):
    holdout = sorted(small_timecourse.obs["time"].unique())[2]
    # max_len above most cells' expressed-gene count, so sentence lengths vary and padding is real.
    return prepare_corpus(read_timecourse(small_timecourse, "time"), task="interpolate", holdout=holdout,
                          n_top_genes=200, max_len=150)


def test_sampler_visits_every_row_once_per_epoch_in_a_new_order():
    widths = np.random.default_rng(0).integers(1, 100, size=203)
    sampler = LengthGroupedSampler(widths, batch_size=8, seed=1, chunk_batches=4)
    first = list(sampler)
    assert sorted(first) == list(range(203))
    assert list(sampler) == first  # same epoch, same order
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(203)) and second != first
    # Only the last batch may be short, so the DataLoader's batches are the sampler's sorted groups.
    batches = [second[i : i + 8] for i in range(0, 203, 8)]
    spread = [np.ptp(widths[b]) for b in batches]
    random_spread = [np.ptp(widths[np.random.default_rng(2).permutation(203)[i : i + 8]]) for i in range(0, 203, 8)]
    assert np.mean(spread) < 0.5 * np.mean(random_spread)


def test_padding_fraction_matches_the_collated_batches_and_grouping_lowers_it(corpus):
    collate = PairCollator(corpus)
    plain = TraceDataModule(corpus, batch_size=16, val_fraction=0.0, seed=0)
    grouped = TraceDataModule(corpus, batch_size=16, val_fraction=0.0, seed=0, group_by_length=True)
    fractions = {}
    for name, module in (("plain", plain), ("grouped", grouped)):
        loader = module.train_dataloader()
        batches = [module.train_rows[np.asarray(indices)] for indices in loader.batch_sampler]  # one epoch's batches
        assert sorted(np.concatenate(batches)) == sorted(module.train_rows)
        # Reference: count PAD tokens in what the collator builds from those batches (the [CLS] column aside).
        pads = total = 0
        for rows in batches:
            genes = collate(rows.tolist())["sentences"][:, :, 1:]
            pads += int((genes == PAD_ID).sum())
            total += genes.numel()
        fractions[name] = padding_fraction(corpus, batches)
        assert fractions[name] == pytest.approx(pads / total, abs=1e-12)
    # A pair row's own cells differ in length, which no batching removes: the floor is one row per batch.
    floor = padding_fraction(corpus, [[row] for row in plain.train_rows])
    assert fractions["plain"] > floor + 0.05, "the fixture should have rows of different widths"
    assert fractions["grouped"] - floor < 0.3 * (fractions["plain"] - floor), (fractions, floor)


def test_grouping_survives_the_ddp_split(corpus):
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    rows = np.arange(len(corpus.pairs))
    widths = row_widths(corpus, rows)
    sampler = LengthGroupedSampler(widths, batch_size=8 * 2, seed=0)  # as TraceDataModule sizes it for 2 ranks
    per_rank = [list(DistributedSamplerWrapper(sampler, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert set(per_rank[0]) | set(per_rank[1]) == set(rows.tolist())
    for indices in per_rank:
        batches = [rows[indices[i : i + 8]] for i in range(0, len(indices), 8)]
        random = [rows[np.random.default_rng(3).permutation(len(rows))[i : i + 8]] for i in range(0, len(indices), 8)]
        floor = padding_fraction(corpus, [[row] for row in rows[indices]])
        assert padding_fraction(corpus, batches) - floor < 0.3 * (padding_fraction(corpus, random) - floor)


def test_grouped_batches_train(corpus):
    module = TraceDataModule(corpus, batch_size=16, val_fraction=0.1, seed=0, group_by_length=True)
    batch = next(iter(module.train_dataloader()))
    assert batch["sentences"].dtype == torch.int64 and batch["sentences"].shape[0] == 16
