"""The TRACE network: encoder for the source cell, decoder with cross-attention to the time-point context."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sctrace.data.sentences import add_cls, gather_sentences, sentence_ranks
from sctrace.data.tokenize import CLS_ID, MASK_ID, N_SPECIAL, PAD_ID
from sctrace.model.counts import CountDecoder
from sctrace.model.embeddings import CellEmbedding
from sctrace.model.masking import random_mask
from sctrace.model.transformer import DecoderLayer, EncoderLayer, Stack

__all__ = ["CLS_ID", "COUNT_POOLINGS", "MASK_ID", "N_SPECIAL", "PAD_ID", "TraceNet", "add_cls", "gather_sentences"]

COUNT_POOLINGS = ("cls", "cls+mean")


class TraceNet(nn.Module):
    """Plain ``nn.Module`` of TRACE; knows nothing of AnnData (see :class:`sctrace.TRACE` for that).

    Parameters
    ----------
    vocab_size
        Genes + 3 special tokens.
    n_genes
        Genes modelled by the count decoder (the HVGs, in vocabulary order).
    max_len
        Longest gene sentence (without [CLS]).
    time_origin, time_span
        Observed time range, used to scale real time values before the sinusoidal encoding.
    time_steps
        Observed time points minus one; places each time's block in ``rank_encoding="unified"``.
    count_pooling
        What the count decoder reads: ``cls``, the decoder's [CLS] state, or ``cls+mean``, that state next to
        the mean of the gene positions' states (each L2-normalised). With [CLS] alone, two of three seeds on
        the simulator decoded generated sentences of both lineages into counts of one; the gene positions carry
        the sentence's genes directly.
    zinb_mean
        How the ZINB's NB mean relates to the decoded scale (see :class:`sctrace.model.counts.CountDecoder`).
    count_sentence
        The count decoder reads the cell's own sentence: each gene in it is offset by a per-gene level plus a
        slope in log rank, each gene outside it by another level (:class:`sctrace.model.counts.CountDecoder`).
    pretrained
        A source encoder with the signature of :meth:`encode` (e.g.
        :class:`sctrace.model.pretrained.PretrainedEncoder`) replacing the from-scratch one.
    """

    def __init__(
        self,
        vocab_size: int,
        n_genes: int,
        max_len: int,
        *,
        d_model: int = 64,
        n_heads: int = 4,
        head_dim: int = 16,
        n_encoder_layers: int = 2,
        n_decoder_layers: int = 2,
        dropout: float = 0.1,
        rank_encoding: str = "learnable",
        time_origin: float = 0.0,
        time_span: float = 1.0,
        time_scale: float = 100.0,
        time_steps: int = 1,
        count_hidden: int = 128,
        count_dropout: float = 0.1,
        likelihood: str = "zinb",
        zinb_mean: str = "nb",
        count_pooling: str = "cls",
        hurdle_marginal: str = "gaussian",
        pretrained: nn.Module | None = None,
        count_sentence: bool = False,
    ):
        super().__init__()
        if count_pooling not in COUNT_POOLINGS:
            raise ValueError(f"count_pooling must be one of {', '.join(COUNT_POOLINGS)}, got {count_pooling!r}")
        self.count_pooling = count_pooling
        self.vocab_size, self.n_genes, self.max_len = vocab_size, n_genes, max_len
        embed_args: dict[str, Any] = dict(rank_encoding=rank_encoding, time_origin=time_origin, time_span=time_span,
                                          time_scale=time_scale, time_steps=time_steps)
        # The source cell and the target/context cells get their own embeddings: they play different roles.
        # Created in this order so that a seed gives the same initial weights as before the pretrained option.
        self.pretrained = pretrained
        if pretrained is None:
            self.source_embedding = CellEmbedding(vocab_size, d_model, max_len, dropout=dropout, **embed_args)
        self.target_embedding = CellEmbedding(vocab_size, d_model, max_len, dropout=dropout, **embed_args)
        if pretrained is None:
            self.encoder = Stack(EncoderLayer, n_encoder_layers, d_model, n_heads, head_dim, dropout)
        self.decoder = Stack(DecoderLayer, n_decoder_layers, d_model, n_heads, head_dim, dropout)
        self.token_head = nn.Linear(d_model, vocab_size)
        self.count_decoder = CountDecoder(
            d_model * (1 if count_pooling == "cls" else 2),
            n_genes,
            n_hidden=count_hidden,
            dropout=count_dropout,
            likelihood=likelihood,
            zinb_mean=zinb_mean,
            hurdle_marginal=hurdle_marginal,
            sentence_offsets=count_sentence,
        )

    @staticmethod
    def _times(time: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
        time = torch.as_tensor(time, dtype=torch.float32, device=device)
        return time.expand(batch) if time.ndim == 0 else time

    def encode(self, source: torch.Tensor, time: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """source: (batch, length) with [CLS] first. Returns Z_0 (batch, length, d) and its pad mask."""
        if self.pretrained is not None:
            return self.pretrained(source, self._times(time, source.shape[0], source.device))
        pad = source == PAD_ID
        x = self.source_embedding(source, self._times(time, source.shape[0], source.device))
        return self.encoder(x, pad), pad

    def decode(
        self,
        target: torch.Tensor,
        time: torch.Tensor | float,
        memory: torch.Tensor,
        memory_pad: torch.Tensor,
        memory_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """target: (batch, length) with [CLS] first (may hold [MASK]). Returns hidden states (batch, length, d).

        memory_kv: ``self.decoder.project_memory(memory)``, passed by callers that decode against the same
        memory many times (generation), so its keys and values are projected once.
        """
        pad = target == PAD_ID
        x = self.target_embedding(target, self._times(time, target.shape[0], target.device))
        return self.decoder(x, pad, memory, memory_pad, memory_kv=memory_kv)

    def count_state(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The count decoder's input for complete sentences: hidden (batch, length, d) from :meth:`decode` of
        ``tokens`` (batch, length). [CLS] state, or [CLS] next to the mean over gene positions (``cls+mean``)."""
        cls = hidden[:, 0]
        if self.count_pooling == "cls":
            return cls
        genes = (tokens >= N_SPECIAL).unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * genes).sum(1) / genes.sum(1).clamp(min=1.0)
        return torch.cat([F.normalize(cls, dim=-1), F.normalize(mean, dim=-1)], dim=-1)

    def count_params(self, state: torch.Tensor, library_size: torch.Tensor | None,
                     tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The count decoder's parameters for cells with decoder state ``state``; ``tokens`` (batch, length), the
        cells' sentences with [CLS] first, are read by a decoder built with ``count_sentence``."""
        ranks = None
        if self.count_decoder.sentence_offsets:
            if tokens is None:
                raise ValueError("this network's count decoder reads the sentence; pass tokens.")
            ranks = self.sentence_ranks(tokens)
        return self.count_decoder(state, library_size, ranks)

    def sentence_ranks(self, tokens: torch.Tensor) -> torch.Tensor:
        """(batch, n_genes) each gene's rank in the sentence (1 for the gene after [CLS]), 0 where it is absent."""
        return sentence_ranks(tokens, self.n_genes)

    @torch.no_grad()
    def build_context(
        self, z0: torch.Tensor, z0_pad: torch.Tensor, context: Sequence[tuple[torch.Tensor, torch.Tensor | float]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """C_t = decoder(Y_t | Z_0, C_<t) in time order, without gradient; returns the concatenated memory and
        its pad mask.

        context: (tokens with [CLS] (batch, length), time) for every context time point, in time order.
        """
        memory, memory_pad = [z0.detach()], [z0_pad]
        for tokens, time in context:
            hidden = self.decode(tokens, time, torch.cat(memory, 1), torch.cat(memory_pad, 1))
            memory.append(hidden)
            memory_pad.append(tokens == PAD_ID)
        return torch.cat(memory, 1), torch.cat(memory_pad, 1)

    def training_losses(
        self,
        sentences: torch.Tensor,
        times: torch.Tensor,
        target_index: int,
        target_counts: torch.Tensor,
        library_size: torch.Tensor,
        schedule: str,
        generator: torch.Generator | None = None,
        context_keep: Sequence[bool] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Masked-token and count losses for one batch.

        Parameters
        ----------
        sentences
            (batch, n_times, length) int64 paired sentences with [CLS] first, one cell per training time.
        times
            (n_times,) real time values.
        target_index
            Which time point is reconstructed (not 0, the source: the first time, as at generation); the others
            become context.
        target_counts
            (batch, n_genes) counts (or log-normalised values) of the target cells.
        library_size
            (batch,) total counts of the target cells over the modelled genes.
        context_keep
            (n_times,) which time points may serve as context (default: all); the target and the source never do.

        The count decoder reads a second pass over the complete target sentence, as at generation, where the
        sentence is fully generated.
        """
        source_index = 0
        if target_index == source_index:
            raise ValueError("the target time point cannot be the source")
        z0, z0_pad = self.encode(sentences[:, source_index], times[source_index])
        n_times = sentences.shape[1]
        keep = [True] * n_times if context_keep is None else list(context_keep)
        context = [(sentences[:, k], times[k]) for k in range(n_times) if k not in (source_index, target_index) and keep[k]]
        memory, memory_pad = self.build_context(z0, z0_pad, context)
        # Z_0 keeps its gradient in the memory so the encoder learns; only the C_t are detached.
        memory = torch.cat([z0, memory[:, z0.shape[1]:]], 1)
        target_tokens, target_time = sentences[:, target_index], times[target_index]
        masked, labels = random_mask(target_tokens, schedule, generator)
        hidden = self.decode(masked, target_time, memory, memory_pad)
        chosen = labels != -100
        logits = self.token_head(hidden[chosen])
        token_loss = F.cross_entropy(logits, labels[chosen])
        accuracy = (logits.argmax(-1) == labels[chosen]).float().mean()
        state = self.count_state(self.decode(target_tokens, target_time, memory, memory_pad), target_tokens)
        params = self.count_params(state, library_size, tokens=target_tokens)
        count_loss = self.count_decoder.loss(params, target_counts)
        return {"token_loss": token_loss, "count_loss": count_loss, "masked_accuracy": accuracy}
