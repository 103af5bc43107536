"""Two-process training (Lightning DDP on CPU, gloo backend) through ``TRACE.fit``, as ``sctrace fit --devices 2`` runs it.

The run goes through a script in a fresh interpreter because Lightning's ``ddp`` launcher starts rank 1 by
re-running the script it was started from (here that must not be pytest). Each rank records what it ended
with by way of a ``TracePlan`` subclass the script installs.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    import torch

    torch.set_num_threads(1)

    import sctrace.train
    from sctrace.data.simulate import simulate_timecourse
    from sctrace.estimator import TRACE

    out, config = Path(sys.argv[1]), json.loads(sys.argv[2])


    class RecordingPlan(sctrace.train.TracePlan):
        \"\"\"Saves each rank's final weights, per-step losses and share of the training batches.\"\"\"

        step_losses = []

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.step_losses.append((self.current_epoch, float(loss.detach())))
            return loss

        def on_train_end(self):
            torch.save(
                {
                    "weights": {k: v.detach().clone() for k, v in self.net.state_dict().items()},
                    "step_losses": self.step_losses,
                    "n_batches": self.trainer.num_training_batches,
                    "n_train_rows": len(self.trainer.datamodule.train_rows),
                    "world_size": self.trainer.world_size,
                },
                out / f"rank{self.global_rank}.pt",
            )


    sctrace.train.TracePlan = RecordingPlan  # run_training looks it up at call time
    adata = simulate_timecourse(n_cells=600, n_genes=300, seed=0)
    holdout = sorted(adata.obs["time"].unique())[2]
    model = TRACE(adata, "time", holdout=holdout, seed=0, **config)
    model.fit(run_dir=out / "run", accelerator="cpu", devices=2, strategy="ddp", progress=False)
    """
)


@pytest.mark.slow
def test_two_cpu_processes_train_the_same_weights_on_split_data(tmp_path, tiny_fast_config):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    # Without cpu-small's context dropout: leaving context time points out at random makes the training loss of
    # 6 tiny epochs too noisy for the "it trains" check below, which is about DDP, not that option.
    config = dict(tiny_fast_config, max_epochs=6, patience=10, context_dropout=0.0)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID"):
        env.pop(key, None)  # a fresh single-node launch, whatever launched pytest
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path), json.dumps(config)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [rank["world_size"] for rank in ranks] == [2, 2]
    # Both ranks end with the same weights, bit for bit: same start, averaged gradients, same optimiser steps.
    weights0, weights1 = ranks[0]["weights"], ranks[1]["weights"]
    assert weights0.keys() == weights1.keys()
    different = [name for name in weights0 if not torch.equal(weights0[name], weights1[name])]
    assert not different, f"ranks differ in {different[:5]}"
    # Each rank trained on its half of the pairs (DistributedSampler), not on all of them.
    n_rows = ranks[0]["n_train_rows"]
    expected_batches = math.ceil(math.ceil(n_rows / 2) / config["batch_size"])
    assert [rank["n_batches"] for rank in ranks] == [expected_batches, expected_batches]
    assert expected_batches < math.ceil(n_rows / config["batch_size"])
    # The loss falls: on each rank's own batches, and on the validation pairs (fixed masks, averaged over ranks).
    last_epoch = config["max_epochs"] - 1
    for rank in ranks:
        by_epoch = {}
        for epoch, loss in rank["step_losses"]:
            by_epoch.setdefault(epoch, []).append(loss)
        assert sorted(by_epoch) == list(range(config["max_epochs"]))
        first, last = (sum(by_epoch[e]) / len(by_epoch[e]) for e in (0, last_epoch))
        assert last < 0.97 * first, f"mean training loss went from {first:.3f} to {last:.3f}"
    assert ranks[0]["step_losses"] != ranks[1]["step_losses"]  # different batches and masks per rank
    metrics = pd.read_csv(tmp_path / "run" / "logs" / "version_0" / "metrics.csv")
    val_loss = metrics.dropna(subset=["val_loss"]).set_index("epoch")["val_loss"]
    assert list(val_loss.index) == list(range(config["max_epochs"]))
    assert val_loss[last_epoch] < val_loss[0] - 0.3, f"validation loss went from {val_loss[0]:.3f} to {val_loss[last_epoch]:.3f}"
    # Rank 0 alone wrote the run: one weights file and one pair of checkpoints, loadable as usual.
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    from sctrace.estimator import TRACE

    loaded = TRACE.load(run)
    assert loaded.net.state_dict().keys() == weights0.keys()
