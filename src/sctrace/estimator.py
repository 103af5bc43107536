"""The user-facing estimator: AnnData in, fitted TRACE model, AnnData out (scvi-tools style façade)."""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import anndata as ad
import numpy as np
import pandas as pd
import torch

from sctrace._errors import SctraceInputError, option, option_name
from sctrace.calibrate import decoded_time
from sctrace.config import (
    CHOICES,
    DEFAULT_PRESET,
    TraceConfig,
    flatten_overrides,
    load_config,
)
from sctrace.data.corpus import Corpus, CorpusSpec, prepare_corpus, tokenize_with_spec
from sctrace.data.io import (
    TimeCourse,
    parse_time,
    read_h5ad,
    read_timecourse,
    resolve_count_kind,
)
from sctrace.data.pairing import check_pairing
from sctrace.data.preprocess import read_gene_choice
from sctrace.generate import library_values, predict_cells, warn_if_far
from sctrace.model.module import N_SPECIAL
from sctrace.model.sampling import GeneCopula
from sctrace.network import build_net, geneformer_medians, pretrained_encoder
from sctrace.persistence import load_trace, write_description, write_extrapolation, write_weights
from sctrace.rundir import (  # noqa: F401  (re-exported: the run-directory API, as before)
    _OWN_ENTRIES,
    _RESUMABLE_KEYS,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    COPULA_FILE,
    CORPUS_DIR,
    ENCODER_FILE,
    INPUTS_FILE,
    LOG_DIR,
    RUN_FORMAT,
    RUN_MARKER,
    SCRATCH_OWNER,
    SCRATCH_PREFIX,
    WEIGHTS_FILE,
    _check_checkpoint,
    _check_config_keys,
    _describe_difference,
    _discard_unfinished,
    _exchange,
    check_resume,
    check_run_dir,
    fit_inputs,
    is_rank_zero,
    prepare_run_dir,
    remove_entries,
    remove_orphaned_corpora,
    scratch_corpus_dir,
    stage_run_dir,
    staging_dir,
    swap_in_run,
)

# Lightning precisions fit accepts; "auto" picks bf16 autocast on a GPU and fp32 on CPU.
PRECISIONS = ("auto", "32-true", "bf16-mixed")


class TRACE:
    """TRACE on an AnnData time course: ``fit`` → ``predict(time=...)`` / ``embed`` → ``save`` / ``load``.

    Parameters
    ----------
    adata
        AnnData or path to an ``.h5ad`` with raw counts in ``X`` (or ``layer``) and a time column. A path (or a
        backed AnnData) is read a block of cells at a time and the tokenized corpus goes to a temporary directory
        (linked into ``run_dir/corpus`` by ``fit``), so memory does not grow with the number of cells.
    time_key
        obs column holding the time (numbers, or labels parsed by :func:`sctrace.data.io.parse_time` or mapped
        by ``time_map``).
    task, holdout
        ``auto`` (the default: ``none`` without ``holdout``, ``extrapolate`` when it is the last observed time,
        else ``interpolate``; :func:`sctrace.data.corpus.resolve_task`), ``interpolate`` (hold out a middle
        time), ``extrapolate`` (hold out the last and anything later) or ``none`` (train on every time point).
        Held-out cells are removed before anything is fitted.
    stratify
        obs columns for stratified pairing (the pairing becomes ``stratified``).
    preset, config
        A preset name and optionally a YAML file, or the same keys as a mapping (``config={"max_epochs": 5}``) or
        a :class:`~sctrace.config.TraceConfig`; ``overrides`` are applied last, flat (``max_epochs=5``) or by
        section (``training={"max_epochs": 5}``). The result is ``self.config``, read by section
        (``model.config.training.max_epochs``).
    """

    def __init__(
        self,
        adata: ad.AnnData | str | os.PathLike,
        time_key: str = "time",
        *,
        task: str = "auto",
        holdout: float | str | None = None,
        layer: str | None = None,
        time_map: Mapping[str, float] | None = None,
        stratify: Sequence[str] = (),
        count_kind: str | None = "auto",
        preset: str = DEFAULT_PRESET,
        config: str | os.PathLike | Mapping[str, Any] | TraceConfig | None = None,
        seed: int = 0,
        **overrides,
    ):
        if stratify and "pairing" not in flatten_overrides(overrides, "overrides"):  # flat or under data
            overrides["pairing"] = "stratified"
        self.config = load_config(preset, config, **overrides)
        check_pairing(self.config.data.pairing, stratify)
        self.seed = seed
        # Data on disk stay there: the matrix is read a block of cells at a time and the corpus is written to a
        # directory of its own and read back by rows, so memory does not grow with the number of cells.
        on_disk = not isinstance(adata, ad.AnnData) or adata.isbacked
        if not isinstance(adata, ad.AnnData):
            adata = read_h5ad(adata, backed=True)
        # What the matrix holds, read from its values unless the caller says, and the likelihood that follows.
        count_kind, likelihood = resolve_count_kind(adata, layer, count_kind, self.config.counts.likelihood)
        self.config = self.config.update({"likelihood": likelihood})
        self.timecourse: TimeCourse | None = read_timecourse(
            adata, time_key, layer=layer, time_map=time_map, stratify=stratify, count_kind=count_kind, backed=on_disk
        )
        corpus_dir = None
        if on_disk:
            corpus_dir = scratch_corpus_dir()
            weakref.finalize(self, shutil.rmtree, corpus_dir, ignore_errors=True)
        holdout_value = None if holdout is None else parse_time(holdout)
        gene_medians = None
        if self.config.network.encoder == "geneformer":
            gene_medians = geneformer_medians(self.config, self.timecourse.gene_names())
        self.corpus: Corpus = prepare_corpus(
            self.timecourse,
            task=task,
            holdout=holdout_value,
            n_top_genes=self.config.data.n_top_genes,
            genes=read_gene_choice(self.config.data.genes),
            max_len=self.config.data.max_len,
            pairing=self.config.data.pairing,
            min_rows=self.config.data.min_rows,
            seed=seed,
            gene_medians=gene_medians,
            directory=corpus_dir,
            val_fraction=self.config.training.val_fraction,
        )
        self._prepare_network()

    def _prepare_network(self) -> None:
        """The network and what is fitted from the corpus before training (marginals, offsets, copula)."""
        seed = self.seed
        assert self.timecourse is not None  # built from data, not loaded
        self.inputs: dict | None = fit_inputs(self.timecourse, self.corpus.spec, seed)
        torch.manual_seed(seed)
        self.net = build_net(self.corpus.spec, self.config)
        if self.net.count_decoder.quantile_marginal:
            self.net.count_decoder.fit_marginals(self.corpus.counts, seed=seed)
        if self.net.count_decoder.sentence_offsets and self.corpus.counts is not None:
            self.net.count_decoder.fit_sentence_offsets(self.corpus.counts, self.corpus.tokens, seed=seed)
        self.copula: GeneCopula | None = None if self.corpus.counts is None else GeneCopula.fit(
            self.corpus.counts, self.corpus.cell_times, self.spec.time_values, self.spec.count_kind, seed=seed)
        self.is_trained = False
        self.history: pd.DataFrame | None = None
        self.extrapolation: dict | None = None  # set by calibrate_extrapolation (sctrace.calibrate)

    # ------------------------------------------------------------------ properties
    @property
    def spec(self) -> CorpusSpec:
        return self.corpus.spec

    def __repr__(self) -> str:
        spec, encoder = self.spec, pretrained_encoder(self.net)
        return (
            f"TRACE({spec.n_genes} genes, times {spec.time_values}, task={spec.task}, holdout={spec.holdout}, "
            f"{len(self.corpus.pairs)} pairs, trained={self.is_trained}"
            + (f", encoder: {encoder.summary()} ({self.config.network.encoder_mode})" if encoder is not None else "")
            + (", encoder: random, frozen at initialisation" if self.config.network.encoder == "random" else "")
            + ")"
        )

    # ------------------------------------------------------------------ training
    def fit(
        self,
        max_epochs: int | None = None,
        run_dir: str | os.PathLike | None = None,
        *,
        overwrite: bool = False,
        resume: bool = False,
        progress: bool = True,
        accelerator: str = "auto",
        devices: int | str = 1,
        num_nodes: int = 1,
        strategy: str = "auto",
        max_steps: int | None = None,
        precision: str = "auto",
        calibrate_extrapolation: bool | None = None,
    ) -> TRACE:
        """Train with early stopping on the count loss of validation cells held aside at every training time
        (config ``val_fraction``; no training row holds them); checkpoints go to ``run_dir/checkpoints``.

        With ``resume=True`` training continues from ``run_dir/checkpoints/last.ckpt``. After training the
        best checkpoint's weights are loaded and, when ``run_dir`` is given, the run is saved there.
        ``max_steps`` stops training after that many optimiser steps even within an epoch (for smoke tests and
        benchmarks); validation runs only at the end of an epoch, so a run stopped earlier keeps its last weights.

        ``accelerator``, ``devices``, ``num_nodes`` and ``strategy`` go to Lightning's ``Trainer``: with more than
        one process (e.g. ``devices=2, strategy="ddp"``) each rank trains on its own share of the pairs
        (Lightning's ``DistributedSampler``), gradients are averaged, and only rank 0 writes the run directory,
        which must then be on a file system every node sees.

        ``precision``: Lightning's training precision; ``"auto"`` is bf16 autocast (``"bf16-mixed"``) on a GPU and
        fp32 (``"32-true"``) on CPU. Weights stay fp32 either way, and so do the saved ones.

        ``calibrate_extrapolation``: measure, with one more fit that leaves out the last training time, how far
        past the last observed time the model's prediction should move (:mod:`sctrace.calibrate`); default: when
        the task is ``extrapolate``. Without it, ``predict`` past the last time decodes at the time asked.
        """
        from sctrace.train import TrainPrecision, run_training

        if self.corpus.counts is None:
            raise SctraceInputError(
                "this model was loaded from a run directory, which keeps no training counts, so it cannot train; "
                "build TRACE from the data to fit it (with resume=True and that run_dir to continue the run)."
            )
        if max_epochs is not None:
            self.config = self.config.update({"max_epochs": max_epochs})
        if self.config.training.max_epochs < 1:
            raise SctraceInputError(
                f"{option_name('max_epochs')} must be at least 1, got {self.config.training.max_epochs}.")
        if precision not in PRECISIONS:
            raise SctraceInputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
        if precision == "auto":
            precision = "bf16-mixed" if torch.cuda.is_available() and accelerator != "cpu" else "32-true"
        if max_steps is not None and max_steps < 1:
            raise SctraceInputError(f"max_steps must be at least 1, got {max_steps}; leave it out to train whole epochs.")
        scratch = None
        new_dir = run_dir is not None and not Path(run_dir).exists()
        if run_dir is None:
            scratch = tempfile.TemporaryDirectory(prefix="sctrace_")
            root = Path(scratch.name)
        else:
            root = stage_run_dir(run_dir, overwrite=overwrite, resume=resume)
            if is_rank_zero():
                if resume:
                    assert self.inputs is not None  # None only in a loaded model, which fit refuses (no counts)
                    check_resume(root, self.inputs, self.config)
                write_description(self, root)
        ckpt_path = str(root / CHECKPOINT_DIR / "last.ckpt") if resume else None

        def discard_unfinished() -> None:
            if run_dir is not None and is_rank_zero():
                _discard_unfinished(root, Path(run_dir), created=new_dir)

        trained = run_training(
            self.net, self.corpus, self.config, self.seed, root, ckpt_path=ckpt_path, max_steps=max_steps,
            accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
            precision=cast(TrainPrecision, precision), progress=progress, on_failure=discard_unfinished,
        )
        self.net = trained.net
        self.is_trained = True
        self.history = trained.history
        if calibrate_extrapolation is None:
            calibrate_extrapolation = self.spec.task == "extrapolate"
        if calibrate_extrapolation and trained.is_global_zero:
            from sctrace.calibrate import calibrate_extrapolation as calibrate

            calibrate(self, progress=progress, accelerator=accelerator, precision=precision)
            if scratch is None:
                write_extrapolation(self, root)
        if scratch is not None:
            scratch.cleanup()
        elif trained.is_global_zero:
            assert run_dir is not None  # no scratch directory: the run has one
            write_weights(self.net, root)
            swap_in_run(root, Path(run_dir))
        return self

    # ------------------------------------------------------------------ generation
    def _require_trained(self, verb: str) -> None:
        if not self.is_trained:
            raise SctraceInputError(f"the model is not trained; call fit() (or TRACE.load(run_dir)) before {verb}().")

    def predict(
        self,
        time: float | str,
        n_cells: int | None = None,
        *,
        seed: int = 0,
        length: int | None = None,
        temperature: float | None = None,
        n_iter: int | None = None,
        batch_size: int = 128,
        source: ad.AnnData | None = None,
        layer: str | None = None,
        library_size: float | Sequence[float] | np.ndarray | None = None,
        sampling: str | None = None,
    ) -> ad.AnnData:
        """Generate cells at a real time value (held out, in between, or past the last observed time).

        Each generated cell starts from a training source cell and the cells paired with it at the observed
        time points (the context); the target time itself is never part of the context. Sequence length
        defaults to the mean observed length around ``time`` and library sizes are drawn from the observed
        neighbouring time points (:meth:`CorpusSpec.sample_library_sizes`): nothing of the held-out cells is used.

        Returns an AnnData over the model's genes: ``X`` sampled counts, ``layers['<likelihood>_mean']`` the
        expected value, ``obsm['X_sctrace']`` the [CLS] cell embedding, ``obsm['sctrace_tokens']`` the generated
        sentences, ``obs`` with ``time``, ``source_cell`` and ``library_size``.

        ``source``: cells to start from instead of the training source cells (e.g. held-out cells of the source
        time point, for imputation); one generated cell per source cell (``n_cells`` is ignored), with ``X``
        (or ``layer``) holding the same kind of values as at fit and the model's genes. Their context cells are
        drawn from the training pairs.

        ``library_size``: the sequencing depth (total counts over the model's genes) to generate at, when it is
        known: one number for every cell, or values to draw each cell's depth from (e.g. the depths of a planned
        run). Depth is technical, and a held-out sample's cannot be inferred from its neighbours: Klein 2015's
        day 4 was sequenced at about half the depth of days 2 and 7 (BENCHMARKS.md). Count likelihoods only.

        ``sampling``: ``iid`` draws every value on its own; ``stratified`` draws each gene's values across the
        ``n_cells`` cells of this call (in blocks of 4,096 cells) as a Latin hypercube
        (:class:`sctrace.model.sampling.StratifiedLevels`): each cell's draw keeps its distribution, the
        population's per-gene spread carries less sampling noise; ``copula`` draws the same stratified levels
        and re-orders each gene's across the cells so that genes co-vary as in the training cells of the nearest
        observed times (:mod:`sctrace.model.sampling`).
        Default: the config's ``count_sampling``.
        """
        self._require_trained("predict")
        time = parse_time(time)
        if source is None and n_cells is not None and n_cells < 1:
            raise SctraceInputError(
                f"{option_name('n_cells')} must be at least 1, got {n_cells}; leave it out for one cell per source cell."
            )
        warn_if_far(self.spec, time)
        starts, source_names = None, None
        if source is not None:
            if source.n_obs == 0:
                raise SctraceInputError("the source AnnData has no cells; pass at least one source cell.")
            matrix = source.layers[layer] if layer is not None else source.X
            starts = tokenize_with_spec(self.spec, matrix, source.var_names)
            source_names = np.asarray(source.obs_names).astype(str)
            n_cells = source.n_obs
        depths = None if library_size is None else library_values(library_size, self.config.counts.likelihood)
        sampling = sampling or self.config.generation.count_sampling
        if sampling not in CHOICES["count_sampling"]:
            raise SctraceInputError(f"unknown sampling {sampling!r}; choose one of {', '.join(CHOICES['count_sampling'])}.")
        if sampling == "copula" and self.copula is None:
            raise SctraceInputError("this run has no gene copula (copula.safetensors; runs fitted before sampling "
                                    f"'copula' existed lack it); re-fit it, or pass {option('sampling', 'stratified')}.")
        decoded = decoded_time(self.extrapolation, self.spec.time_values, time)
        out = predict_cells(
            self.net, self.corpus, self.config, self.copula, decoded, n_cells, seed=seed, length=length,
            temperature=temperature, n_iter=n_iter, batch_size=batch_size, starts=starts, source_names=source_names,
            depths=depths, sampling=sampling,
        )
        if self.extrapolation is not None and decoded != time:  # the cells are for the time asked; the network was asked for the calibrated one
            out.obs["time"] = time
            out.uns["sctrace"].update({"time": time, "decoded_time": decoded, "extrapolation_step": self.extrapolation["step"]})
        return out

    def gene_embeddings(self) -> np.ndarray:
        """(n_genes, d) rows of the decoder's token table, in ``spec.genes`` order."""
        return self.net.target_embedding.token.weight[N_SPECIAL:].detach().cpu().numpy()

    def embed(self, adata: ad.AnnData | str | os.PathLike, time_key: str | None = None, layer: str | None = None,
              batch_size: int = 256) -> ad.AnnData:
        """Cell embeddings (``obsm['X_sctrace']``) and gene embeddings (``varm['sctrace_genes']``) for any AnnData.

        A cell's embedding is the encoder's [CLS] state of the cell at its own time (``time_key``, default the
        model's), which the AnnData must hold: embedding every cell at one time would silently mislabel them.
        The values get the checks ``fit`` ran (raw counts for a counts model). Gene rows of genes the model does
        not know are NaN.
        """
        from sctrace.embed import embed_cells

        self._require_trained("embed")
        return embed_cells(self, adata, time_key, layer, batch_size)

    # ------------------------------------------------------------------ persistence (sctrace.persistence)
    def save(self, run_dir: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write weights (safetensors), config (YAML) and the tokenized corpus; enough to predict later."""
        self._require_trained("save")
        root = stage_run_dir(run_dir, overwrite=overwrite)
        write_description(self, root)
        write_weights(self.net, root)
        swap_in_run(root, Path(run_dir))
        return Path(run_dir)

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> TRACE:
        """Load a saved run without the training data (no pickle is read: safetensors + JSON/YAML + .npy)."""
        return load_trace(cls, run_dir)

