"""count_standardise: the count decoder's input standardised by running statistics over batches of every time."""

import torch

from sctrace.model.counts import CountDecoder, RunningStandardise


def test_running_statistics_keep_the_difference_between_single_time_batches():
    torch.manual_seed(0)
    # Two "times" whose states differ by 0.03 in one feature, each batch holding one time (as in training).
    early = 1.0 + 0.01 * torch.randn(32, 4)
    late = early.clone()
    late[:, 0] += 0.03
    norm = RunningStandardise(4, momentum=0.1).train()
    for _ in range(50):
        norm(early)
        norm(late)
    norm.eval()
    gap = (norm(late)[:, 0].mean() - norm(early)[:, 0].mean()).item()
    # The gap now reads at the scale of the spread across both times' cells: about 2 standard deviations.
    assert 1.5 < gap < 2.5
    # BatchNorm in training mode, one time per batch, would centre each batch on itself and erase the gap.
    batch_norm = torch.nn.BatchNorm1d(4, affine=False).train()
    assert abs((batch_norm(late)[:, 0].mean() - batch_norm(early)[:, 0].mean()).item()) < 1e-4


def test_statistics_move_only_in_training_and_are_saved_with_the_weights():
    norm = RunningStandardise(3)
    norm.eval()
    before = norm.mean.clone()
    norm(torch.randn(8, 3) + 5.0)
    assert torch.equal(norm.mean, before)
    norm.train()
    norm(torch.randn(8, 3) + 5.0)
    assert norm.mean.mean() > 4.0  # the first batch is taken whole
    assert {"mean", "mean_square", "n_batches"} <= set(norm.state_dict())


def test_the_decoder_reads_standardised_states_only_when_built_so():
    assert CountDecoder(8, 5, n_hidden=8).standardise is None
    decoder = CountDecoder(8, 5, n_hidden=8, standardise=True).eval()
    params = decoder(torch.randn(2, 8), torch.full((2,), 10.0))
    assert params["mu"].shape == (2, 5) and torch.isfinite(params["mu"]).all()


def test_fit_predict_save_load_with_count_standardise(small_timecourse, tiny_fast_config, tmp_path):
    from sctrace.estimator import TRACE

    model = TRACE(small_timecourse, "time", holdout=4.0, seed=0,
                  **{**tiny_fast_config, "count_standardise": True, "max_epochs": 1})
    model.fit(run_dir=tmp_path / "run", progress=False)
    assert model.net.count_decoder.standardise.n_batches > 0
    first = model.predict(4.0, n_cells=6, seed=1)
    again = TRACE.load(tmp_path / "run").predict(4.0, n_cells=6, seed=1)
    assert (first.X != again.X).nnz == 0
