"""count_time: the count decoder reads the decoded time beside the decoder state."""

import pytest
import torch

from sctrace.model.counts import CountDecoder
from sctrace.model.module import TraceNet


def _net(count_time: bool) -> TraceNet:
    torch.manual_seed(0)
    return TraceNet(40, 37, 16, d_model=16, n_heads=2, head_dim=8, n_encoder_layers=1, n_decoder_layers=1,
                    time_origin=2.0, time_span=4.0, time_steps=2, count_hidden=16, likelihood="zinb",
                    count_time=count_time)


def test_the_decoded_population_moves_with_time_only_when_the_head_reads_it():
    state, library = torch.randn(5, 16), torch.full((5,), 1000.0)
    with_time, without = _net(True).eval(), _net(False).eval()
    early, late = (with_time.count_params(state, library, t)["mu"] for t in (2.0, 6.0))
    assert not torch.allclose(early, late)
    early, late = (without.count_params(state, library, t)["mu"] for t in (2.0, 6.0))
    assert torch.allclose(early, late)
    # The time is scaled to the observed span: the head's first layer takes one more input, nothing else changes.
    assert with_time.count_decoder.hidden[0].in_features == without.count_decoder.hidden[0].in_features + 1
    # A time per cell decodes each cell as at that time alone.
    per_cell = with_time.count_params(state, library, torch.tensor([2.0, 3.0, 4.0, 5.0, 6.0]))["mu"]
    assert torch.allclose(per_cell[0], with_time.count_params(state[:1], library[:1], 2.0)["mu"][0])
    assert torch.allclose(per_cell[4], with_time.count_params(state[4:], library[4:], 6.0)["mu"][0])


def test_a_decoder_built_with_time_features_refuses_to_run_without_them():
    decoder = CountDecoder(8, 5, n_hidden=8, n_time_features=1)
    with pytest.raises(ValueError, match="time features"):
        decoder(torch.randn(2, 8), torch.full((2,), 10.0))


def test_fit_predict_save_load_with_count_time(small_timecourse, tiny_fast_config, tmp_path):
    from sctrace.estimator import TRACE

    model = TRACE(small_timecourse, "time", holdout=4.0, seed=0, **{**tiny_fast_config, "count_time": True, "max_epochs": 1})
    model.fit(run_dir=tmp_path / "run", progress=False)
    first = model.predict(4.0, n_cells=6, seed=1)
    again = TRACE.load(tmp_path / "run").predict(4.0, n_cells=6, seed=1)
    assert (first.X != again.X).nnz == 0
