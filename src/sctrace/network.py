"""The network a run's config describes: TraceNet built from a corpus spec and a TraceConfig, with a pretrained
Geneformer-format encoder where the config names one (shared by fitting, loading and the benchmarks)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd

from sctrace._errors import SctraceInputError, option
from sctrace.config import TraceConfig
from sctrace.data.corpus import CorpusSpec
from sctrace.model.module import TraceNet

if TYPE_CHECKING:
    from sctrace.model.pretrained import PretrainedEncoder

__all__ = ["build_net", "encoder_dir", "geneformer_medians", "pretrained_encoder"]


def geneformer_medians(config: TraceConfig, gene_names: np.ndarray) -> pd.Series:
    """The pretrained encoder's gene medians for the data's genes: sentences must be ranked as it was trained."""
    from sctrace.model.encoder_files import (
        find_encoder_files,
        geneformer_medians_for,
        load_gene_medians,
        load_token_dictionary,
    )

    files = find_encoder_files(encoder_dir(config))
    return geneformer_medians_for(gene_names, load_gene_medians(files.gene_medians), load_token_dictionary(files.token_dictionary))


def encoder_dir(config: TraceConfig) -> Path:
    if not config.network.encoder_path:
        raise SctraceInputError(f"encoder 'geneformer' needs its directory; pass {option('encoder_path', 'DIR')}.")
    path = Path(config.network.encoder_path)
    if not path.is_dir():
        raise SctraceInputError(f"pretrained encoder directory {path} does not exist; pass the folder holding its config.json.")
    return path


def build_net(spec: CorpusSpec, config: TraceConfig, encoder_config: dict | None = None) -> TraceNet:
    """The network for a corpus; ``encoder_config`` rebuilds a saved pretrained encoder without its directory."""
    times = spec.time_values
    pretrained = None
    if config.network.encoder == "geneformer":
        from sctrace.model.pretrained import PretrainedEncoder

        if encoder_config is not None:
            pretrained = PretrainedEncoder(**encoder_config)
        else:
            pretrained = PretrainedEncoder.from_directory(
                encoder_dir(config), spec.genes, config.network.d_model, mode=config.network.encoder_mode,
                time_origin=times[0], time_span=times[-1] - times[0], time_scale=config.network.time_scale,
            )
        if spec.max_len > pretrained.max_genes:
            raise SctraceInputError(
                f"sentences of {spec.max_len} genes are longer than the pretrained encoder takes ({pretrained.max_genes}); "
                "lower max_len."
            )
    net = TraceNet(
        spec.vocab_size,
        spec.n_genes,
        spec.max_len,
        d_model=config.network.d_model,
        n_heads=config.network.n_heads,
        head_dim=config.network.head_dim,
        n_encoder_layers=config.network.n_encoder_layers,
        n_decoder_layers=config.network.n_decoder_layers,
        dropout=config.network.dropout,
        rank_encoding=config.network.rank_encoding,
        time_origin=times[0],
        time_span=times[-1] - times[0],
        time_scale=config.network.time_scale,
        time_steps=len(times) - 1,
        count_hidden=config.counts.count_hidden,
        count_dropout=config.counts.count_dropout,
        likelihood=config.counts.likelihood,
        zinb_mean=config.counts.zinb_mean,
        count_pooling=config.counts.count_pooling,
        hurdle_marginal=config.counts.hurdle_marginal,
        count_sentence=config.counts.count_sentence,
        pretrained=pretrained,
    )
    if config.network.encoder == "random":
        # Left out of the optimiser (train.py keeps only parameters that require a gradient); saved with the rest.
        net.source_embedding.requires_grad_(False)
        net.encoder.requires_grad_(False)
    return net


def pretrained_encoder(net: TraceNet) -> PretrainedEncoder | None:
    """The network's pretrained source encoder: :func:`build_net` gives it a PretrainedEncoder or none."""
    return cast("PretrainedEncoder | None", net.pretrained)
