"""source_time_target: the source time is a training target too, decoded as another source-time cell."""

import pytest
import torch

from sctrace.config import TraceConfig
from sctrace.model.module import TraceNet
from sctrace.train import TracePlan


def _net() -> TraceNet:
    torch.manual_seed(0)
    return TraceNet(40, 37, 16, d_model=16, n_heads=2, head_dim=8, n_encoder_layers=1, n_decoder_layers=1,
                    time_origin=0.0, time_span=4.0, time_steps=2, count_hidden=16, likelihood="zinb")


def _batch(n: int = 6) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    sentences = torch.randint(3, 40, (n, 3, 10), generator=generator)
    sentences[:, :, 0] = 1  # [CLS]
    counts = torch.randint(0, 5, (n, 3, 37), generator=generator).float()
    return {"sentences": sentences, "counts": counts, "library_size": counts.sum(-1),
            "times": torch.tensor([0.0, 2.0, 4.0])}


def test_the_source_time_as_target_needs_other_source_cells():
    net, batch = _net(), _batch()
    args = (batch["sentences"], batch["times"], 0, batch["counts"][:, 0], batch["library_size"][:, 0], "cosine")
    with pytest.raises(ValueError, match="source_partner"):
        net.training_losses(*args)
    losses = net.training_losses(*args, source_partner=torch.roll(batch["sentences"][:, 0], 1, 0))
    assert all(torch.isfinite(v) for v in losses.values())


def test_the_partner_is_another_row_not_the_cell_the_encoder_reads(monkeypatch):
    module = TracePlan(_net(), TraceConfig().update({"source_time_target": True}))
    seen = {}

    def record(sentences, times, target_index, counts, library_size, *args, source_partner=None, **kwargs):
        seen.update(target=target_index, partner=source_partner, counts=counts, sources=sentences[:, 0])
        zero = torch.zeros(())
        return {"token_loss": zero, "count_loss": zero, "masked_accuracy": zero}

    monkeypatch.setattr(module.net, "training_losses", record)
    batch = _batch()
    module._losses(batch, 0, torch.Generator().manual_seed(0))
    assert seen["target"] == 0
    assert torch.equal(seen["partner"], torch.roll(seen["sources"], 1, 0))
    assert not torch.equal(seen["partner"], seen["sources"])
    assert torch.equal(seen["counts"], torch.roll(batch["counts"][:, 0], 1, 0))
    module._losses(batch, 2, torch.Generator().manual_seed(0))
    assert seen["partner"] is None and torch.equal(seen["counts"], batch["counts"][:, 2])


@pytest.mark.parametrize("enabled", [True, False])
def test_target_times_drawn_include_the_source_only_when_enabled(monkeypatch, enabled):
    module = TracePlan(_net(), TraceConfig().update({"source_time_target": enabled, "context_dropout": 0.0}))
    drawn = []

    def record(batch, target_index, generator, context_keep=None):
        drawn.append(target_index)
        zero = torch.zeros((), requires_grad=True)
        return {"loss": zero, "token_loss": zero, "count_loss": zero, "masked_accuracy": zero}

    monkeypatch.setattr(module, "_losses", record)
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    monkeypatch.setattr(module, "log_dict", lambda *a, **k: None)
    for step in range(60):
        module.training_step(_batch(), step)
    assert (0 in drawn) == enabled and set(drawn) - {0} == {1, 2}


def test_fit_predict_with_source_time_target(small_timecourse, tiny_fast_config, tmp_path):
    from sctrace.estimator import TRACE

    model = TRACE(small_timecourse, "time", holdout=1.0, seed=0,
                  **{**tiny_fast_config, "source_time_target": True, "max_epochs": 1})
    model.fit(run_dir=tmp_path / "run", progress=False)
    generated = model.predict(1.0, n_cells=6, seed=1)
    assert generated.shape[0] == 6
