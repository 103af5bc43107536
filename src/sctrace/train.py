"""Lightning training plan: masked-token loss + count loss, two optimiser groups, seeded masking."""

from __future__ import annotations

import math

import lightning as L
import torch

from sctrace.config import TraceConfig
from sctrace.model.module import TraceNet


class TracePlan(L.LightningModule):
    """Trains a :class:`TraceNet`; each training batch reconstructs one randomly chosen later time point."""

    def __init__(self, net: TraceNet, config: TraceConfig, seed: int = 0):
        super().__init__()
        self.net, self.config, self.seed = net, config, seed
        self._generator: torch.Generator | None = None
        # Planned optimiser steps (set by TRACE.fit with a step budget): warm-up and cosine decay span them.
        self.total_steps: int | None = None

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
            self.config.mask_schedule,
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
        draw = {"generator": self._generator, "device": self._generator.device}  # a CUDA generator draws on CUDA
        target_index = int(torch.randint(1, n_times, (1,), **draw))
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
        rate = self.config.context_dropout
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
        optimizer = torch.optim.AdamW(
            [
                {"params": other, "lr": self.config.lr, "weight_decay": self.config.weight_decay},
                {"params": count_params, "lr": self.config.count_lr, "weight_decay": self.config.count_weight_decay},
            ]
        )
        if not self.total_steps:
            return optimizer
        total = self.total_steps
        warmup = max(1, total // 20)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
