"""Lightning training plan: masked-token loss + count loss, two optimiser groups, seeded masking."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import lightning as L
import pandas as pd
import torch

from sctrace.config import TraceConfig
from sctrace.data.corpus import Corpus
from sctrace.model.module import TraceNet

# The precisions a fit trains in, once TRACE.fit has resolved "auto": fp32, or bf16 autocast.
TrainPrecision = Literal["32-true", "bf16-mixed"]


class TracePlan(L.LightningModule):
    """Trains a :class:`TraceNet`; each training batch reconstructs one randomly chosen time point from another."""

    def __init__(self, net: TraceNet, config: TraceConfig, seed: int = 0):
        super().__init__()
        self.net, self.config, self.seed = net, config, seed
        self._generator: torch.Generator | None = None

    def _losses(
        self,
        batch: dict[str, torch.Tensor],
        target_index: int,
        generator: torch.Generator,
        context_keep: list[bool] | None = None,
    ) -> dict[str, torch.Tensor]:
        counts, library_size = batch["counts"][:, target_index], batch["library_size"][:, target_index]
        losses = self.net.training_losses(
            batch["sentences"],
            batch["times"],
            target_index,
            counts,
            library_size,
            self.config.training.mask_schedule,
            generator,
            context_keep,
        )
        # Per-gene scale keeps the count term comparable to the token cross-entropy whatever the gene number.
        losses["count_loss"] = losses["count_loss"] / self.net.n_genes
        losses["loss"] = losses["token_loss"] + losses["count_loss"]
        return losses

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Save the random streams too, so a resumed fit continues them instead of restarting them from the seed."""
        streams = {"torch": torch.get_rng_state()}
        if self._generator is not None:
            streams["masking"] = self._generator.get_state()
        if self.device.type == "cuda":
            streams["cuda"] = torch.cuda.get_rng_state(self.device)
        checkpoint["sctrace_rng"] = streams

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._restored_rng = checkpoint.get("sctrace_rng")

    def on_train_start(self) -> None:
        streams = getattr(self, "_restored_rng", None)
        if not streams or self.trainer.world_size > 1:  # rank 0's streams would make every rank draw alike
            return
        torch.set_rng_state(streams["torch"])
        if "cuda" in streams and self.device.type == "cuda":
            torch.cuda.set_rng_state(streams["cuda"], self.device)
        if "masking" in streams:
            self._generator = torch.Generator(device=self.device)
            self._generator.set_state(streams["masking"])
        self._restored_rng = None

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self._generator is None:
            self._generator = torch.Generator(device=self.device).manual_seed(self.seed + 7919 * self.global_rank)
        n_times = batch["sentences"].shape[1]
        target_index = int(torch.randint(1, n_times, (1,), generator=self._generator, device=self._generator.device))
        losses = self._losses(batch, target_index, self._generator, self._context_keep(n_times))
        self.log_dict({f"train_{k}": v for k, v in losses.items() if k != "loss"}, prog_bar=False, batch_size=len(batch["sentences"]))
        # sync_dist: with several processes every rank must see the same monitored value, or checkpointing and
        # early stopping decide differently per rank and hang; a no-op in one process.
        self.log("train_loss", losses["loss"], prog_bar=True, on_step=False, on_epoch=True, batch_size=len(batch["sentences"]), sync_dist=True)
        return losses["loss"]

    def _context_keep(self, n_times: int) -> list[bool] | None:
        """Which time points may be context in this batch; each is dropped with probability context_dropout.

        Without it the target is the one time point always missing from the context, so the decoder can read the
        target from the gap instead of from its time code, and an unseen time (every observed one in context)
        gets the sentences of whichever time the gap pattern resembles (BENCHMARKS.md, time response).
        """
        rate = self.config.training.context_dropout
        if rate <= 0:
            return None
        assert self._generator is not None
        return (torch.rand(n_times, generator=self._generator, device=self._generator.device) >= rate).tolist()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # Fixed masks per batch and every target time point, so validation loss is comparable across epochs.
        generator = torch.Generator(device=self.device).manual_seed(1_000_003 + batch_idx)
        n_times = batch["sentences"].shape[1]
        per_target = [self._losses(batch, k, generator) for k in range(1, n_times)]
        mean = {key: torch.stack([losses[key] for losses in per_target]).mean() for key in per_target[0]}
        self.log_dict({f"val_{k}": v for k, v in mean.items() if k != "loss"}, batch_size=len(batch["sentences"]), sync_dist=True)
        self.log("val_loss", mean["loss"], prog_bar=True, batch_size=len(batch["sentences"]), sync_dist=True)

    def configure_optimizers(self):
        count_params = list(self.net.count_decoder.parameters())
        count_ids = {id(p) for p in count_params}
        # A frozen pretrained encoder's weights have requires_grad False and stay out of the optimiser.
        other = [p for p in self.net.parameters() if id(p) not in count_ids and p.requires_grad]
        training = self.config.training
        return torch.optim.AdamW(
            [
                {"params": other, "lr": training.lr, "weight_decay": training.weight_decay},
                {"params": count_params, "lr": training.count_lr, "weight_decay": training.count_weight_decay},
            ]
        )


GRADIENT_CLIP = 1.0  # gradient norm clipped at 1, as every preset trained (the knob had no other setting in use)


def build_trainer(config: TraceConfig, plan: TracePlan, datamodule, root: Path, *, max_steps: int | None,
                  accelerator: str, devices, num_nodes: int, strategy: str, precision: TrainPrecision, progress: bool):
    """The Lightning trainer for one fit, with its best/last checkpoints in ``root`` and early stopping.

    Returns the trainer and its checkpoint callback (whose best model the fit reloads).
    """
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from sctrace._errors import SctraceInputError, option_name
    from sctrace.rundir import CHECKPOINT_DIR, LOG_DIR

    has_val = len(datamodule.val_rows) > 0
    # The count loss of validation cells (held aside, sctrace.data.training_pairs.validation_cells) picks the best
    # checkpoint and stops training: on cells no training row holds, the masked-token loss stays near a guess from
    # gene frequencies and climbs as the token model learns the training cells by heart, so with it in the monitor
    # a small course stopped after a few dozen steps (Klein day 2: EMD 0.360 against 0.272; BENCHMARKS.md,
    # "Validation on cells held aside").
    monitor = "val_count_loss" if has_val else "train_loss"
    checkpoint = ModelCheckpoint(
        dirpath=root / CHECKPOINT_DIR, filename="best", monitor=monitor, save_last=True, save_weights_only=False
    )
    # Checked after validation (every epoch end) rather than at the end of the training epoch, so a run that
    # max_steps stops inside an epoch, before any validation, is not checked against a missing val_loss.
    stopping = EarlyStopping(monitor=monitor, patience=config.training.patience, check_on_train_epoch_end=not has_val)
    callbacks = [checkpoint, stopping]
    try:
        trainer = L.Trainer(
            max_epochs=config.training.max_epochs,
            max_steps=-1 if max_steps is None else max_steps,
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            strategy=strategy,
            precision=precision,
            logger=CSVLogger(root, name=LOG_DIR),  # a new version folder per fit, so resuming keeps old logs
            callbacks=callbacks,
            gradient_clip_val=GRADIENT_CLIP,
            enable_progress_bar=progress,
            enable_model_summary=False,
            deterministic=False,
            log_every_n_steps=10,
        )
    except Exception as err:  # Lightning's refusal of an accelerator, device count, strategy, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SctraceInputError(
            f"Lightning cannot train with these options ({reason}); check {option_name('accelerator')}, "
            f"{option_name('devices')}, {option_name('num_nodes')}, {option_name('strategy')} and "
            f"{option_name('precision')}."
        ) from err
    return trainer, checkpoint


@dataclasses.dataclass
class TrainedRun:
    """What :func:`run_training` hands back to ``TRACE.fit``, which then writes the run directory."""

    net: TraceNet  # the best checkpoint's weights, on the CPU, in eval mode
    history: pd.DataFrame | None  # metrics.csv of this fit (rank 0 only)
    is_global_zero: bool  # this process is rank 0, the one that writes the run


def run_training(net: TraceNet, corpus: Corpus, config: TraceConfig, seed: int, root: Path, *, ckpt_path: str | None,
                 max_steps: int | None, accelerator: str, devices: int | str, num_nodes: int, strategy: str,
                 precision: TrainPrecision, progress: bool, on_failure: Callable[[], None]) -> TrainedRun:
    """Train ``net`` on ``corpus`` into ``root`` (checkpoints, logs) and load the best checkpoint's weights.

    ``ckpt_path`` (a checked ``last.ckpt``) resumes a fit. ``on_failure`` runs when building the trainer or
    training raises, before the error goes on: the façade uses it to drop what the failed fit left on disk.
    """
    from sctrace.data.datamodule import TraceDataModule
    from sctrace.rundir import CHECKPOINT_DIR, _check_checkpoint

    L.seed_everything(seed, workers=True, verbose=False)
    datamodule = TraceDataModule(corpus, config.training.batch_size, config.training.val_fraction, seed)
    plan = TracePlan(net, config, seed)
    try:
        with _quiet_lightning():
            trainer, checkpoint = build_trainer(
                config, plan, datamodule, root, max_steps=max_steps, accelerator=accelerator, devices=devices,
                num_nodes=num_nodes, strategy=strategy, precision=precision, progress=progress,
            )
            fit_options = {}
            if ckpt_path is not None:
                _check_checkpoint(Path(ckpt_path), plan)
                if "weights_only" in inspect.signature(trainer.fit).parameters:  # Lightning >= 2.5
                    fit_options["weights_only"] = True  # never unpickle arbitrary objects, whatever torch's default
            trainer.fit(plan, datamodule=datamodule, ckpt_path=ckpt_path, **fit_options)
    except BaseException:
        on_failure()
        raise
    if trainer.interrupted:
        warnings.warn(f"training was interrupted; resume it with fit(resume=True) from {root / CHECKPOINT_DIR}.")
    best = checkpoint.best_model_path
    if best and Path(best).exists():
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        plan.load_state_dict(state)
    trainer.strategy.barrier("sctrace_best_loaded")  # every rank has read rank 0's checkpoint before cleanup
    metrics = Path(trainer.logger.log_dir) / "metrics.csv"
    history = pd.read_csv(metrics) if trainer.is_global_zero and metrics.exists() else None
    return TrainedRun(plan.net.cpu().eval(), history, trainer.is_global_zero)


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning's start-up chatter (GPU/TPU availability, tips) says nothing useful to our users."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        warnings.filterwarnings("ignore", ".*treespec.*")
        warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")  # resume, staging
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
