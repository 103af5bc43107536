"""A pretrained Geneformer-format BERT as TRACE's source-cell encoder.

Geneformer (Theodoris et al., 2023) is a BERT pretrained on rank-value encoded cells, the same sentences sctrace
builds, but over its own gene vocabulary. A Geneformer-format directory holds

* ``config.json``: a Hugging Face BERT config (``model_type`` ``bert``);
* ``model.safetensors`` (or a sharded ``model.safetensors.index.json``): the weights, of a ``BertModel`` or of a
  model with a ``bert.`` body such as ``BertForMaskedLM``. ``pytorch_model.bin`` is refused: unpickling a ``.bin``
  file can run code, safetensors cannot;
* a token dictionary ``token_dictionary*.{json,pkl,pickle,csv,tsv}``: gene id -> token id, with the special entries
  ``<pad>``, ``<mask>`` and, in Geneformer V2, ``<cls>`` and ``<eos>``;
* a median table ``*median*.{json,pkl,pickle,csv,tsv}``: gene id -> non-zero median of normalised expression, the
  denominator Geneformer ranked its corpus by (pass it to ``prepare_corpus(gene_medians=...)`` through
  :func:`geneformer_medians_for` so our sentences are ranked like its pretraining ones).

Geneformer ships the two tables beside the package rather than beside each model (e.g.
``geneformer/token_dictionary_gc104M.pkl`` and ``geneformer/gene_median_dictionary_gc104M.pkl``): copy them into the
model directory or pass their paths to :func:`sctrace.model.encoder_files.find_encoder_files`, which reads them
(pickles through a restricted unpickler).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from sctrace._errors import SctraceInputError
from sctrace.data.tokenize import CLS_ID, MASK_ID, N_SPECIAL, PAD_ID
from sctrace.model.embeddings import sinusoidal_time_encoding
from sctrace.model.encoder_files import find_encoder_files, gene_entries, load_token_dictionary, map_genes, special_tokens

if TYPE_CHECKING:
    from transformers import BertConfig, BertModel

__all__ = ["PretrainedEncoder"]

MODES = ("frozen", "finetune")


# ------------------------------------------------------------------------------------------------------ encoder


def _bert_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    """Tensors of a single or sharded safetensors checkpoint, with a task model's ``bert.`` prefix removed."""
    from safetensors.torch import load_file

    if weights.name.endswith(".index.json"):
        shards = sorted(set(json.loads(weights.read_text())["weight_map"].values()))
        tensors = {key: value for shard in shards for key, value in load_file(weights.parent / shard).items()}
    else:
        tensors = load_file(weights)
    if any(key.startswith("bert.") for key in tensors):
        return {key.removeprefix("bert."): value for key, value in tensors.items() if key.startswith("bert.")}
    return tensors


def _bert_config(config: BertConfig | Mapping[str, Any]) -> BertConfig:
    from transformers import BertConfig

    if isinstance(config, BertConfig):
        return config
    config = dict(config)
    if config.get("model_type", "bert") != "bert":
        raise SctraceInputError(
            f"the pretrained encoder's config.json has model_type {config['model_type']!r}; sctrace loads BERT "
            "(Geneformer-format) encoders only."
        )
    return BertConfig.from_dict(config)


class PretrainedEncoder(nn.Module):
    """Source-cell encoder built on a pretrained Geneformer-format BERT, a drop-in for ``TraceNet.encode``.

    Our sentence (``[CLS]`` then genes in rank order, our vocabulary) is translated to Geneformer's: ``[CLS]`` ->
    ``<cls>`` when the dictionary has one, genes through ``token_map``, and ``<eos>`` appended after the last gene
    when the dictionary has one, as in Geneformer V2's pretraining input. Genes outside Geneformer's vocabulary are
    dropped from BERT's input, closing the gap: Geneformer's own tokenizer never sees such genes, so the remaining
    genes keep consecutive rank positions as in pretraining. Their output slots are marked as padding, so the
    output keeps the input's positions (the decoder's memory layout is unchanged) while nothing attends to them.

    Without ``<cls>`` (Geneformer V1) the ``[CLS]`` slot gets the projected mean of the gene states (V1's own cell
    embedding) plus a learned vector that marks the slot.

    BERT's hidden states are projected to ``d_model`` and the sinusoidal encoding of the source time is added,
    with time scaled as in :class:`sctrace.model.embeddings.CellEmbedding`.

    Parameters
    ----------
    bert
        A loaded ``transformers.BertModel`` (see :meth:`from_directory`), or its config (``BertConfig`` or a dict
        as :meth:`to_config` saves it): a fresh BERT is built then, to be filled by ``load_state_dict``.
    token_map
        ``(vocab_size,)`` Geneformer token id of each of our token ids, -1 for tokens BERT does not see. Entry
        ``PAD_ID`` is Geneformer's ``<pad>`` (required), entry ``CLS_ID`` its ``<cls>`` or -1.
    d_model
        Output size.
    eos_id
        Geneformer's ``<eos>`` id, appended to every sentence; None to append nothing.
    mode
        ``frozen``: BERT is not trained, runs without gradient and always in eval mode (no dropout); only the
        projection (and the V1 ``[CLS]`` vector) train. ``finetune``: BERT trains as well.
    time_origin, time_span, time_scale
        Time scaling, as in :class:`sctrace.model.embeddings.CellEmbedding`.
    """

    token_map: torch.Tensor  # buffer: the token_map argument, int64

    def __init__(
        self,
        bert: BertModel | BertConfig | Mapping[str, Any],
        token_map: Sequence[int] | np.ndarray,
        d_model: int,
        *,
        eos_id: int | None = None,
        mode: str = "frozen",
        time_origin: float = 0.0,
        time_span: float = 1.0,
        time_scale: float = 100.0,
    ):
        super().__init__()
        from transformers import BertModel

        if mode not in MODES:
            raise SctraceInputError(f"pretrained encoder mode must be one of {', '.join(MODES)}, got {mode!r}.")
        self.bert = bert if isinstance(bert, BertModel) else BertModel(_bert_config(bert), add_pooling_layer=False)
        config = self.bert.config
        ids = torch.as_tensor(np.asarray(token_map, dtype=np.int64))
        if ids.ndim != 1 or len(ids) < N_SPECIAL or int(ids[PAD_ID]) < 0:
            raise SctraceInputError("token_map must give one Geneformer id per sctrace token id, with <pad> at PAD_ID.")
        if int(ids.max()) >= config.vocab_size or (eos_id is not None and eos_id >= config.vocab_size):
            raise SctraceInputError(
                f"the token dictionary has ids up to {max(int(ids.max()), eos_id or 0)} but the encoder's "
                f"vocabulary has {config.vocab_size} tokens; use the token dictionary that belongs to this model."
            )
        self.register_buffer("token_map", ids, persistent=False)
        self.pad_id = int(ids[PAD_ID])
        self.eos_id = eos_id
        self.mode = mode
        self.d_model = d_model
        self.time_origin = float(time_origin)
        self.time_span = float(time_span) if time_span > 0 else 1.0
        self.time_scale = float(time_scale)
        self.has_cls = int(ids[CLS_ID]) >= 0
        # Longest gene sentence (without [CLS]) that fits BERT's position table with the special tokens around it.
        self.max_genes = config.max_position_embeddings - int(self.has_cls) - int(eos_id is not None)
        self.projection = nn.Linear(config.hidden_size, d_model)
        self.cls_vector = None if self.has_cls else nn.Parameter(torch.randn(d_model) * config.initializer_range)
        if mode == "frozen":
            self.bert.requires_grad_(False)
            self.bert.eval()

    @classmethod
    def from_directory(
        cls,
        directory,
        genes: Sequence[str],
        d_model: int,
        *,
        mode: str = "frozen",
        token_dictionary=None,
        gene_medians=None,
        min_mapped_fraction: float = 0.1,
        time_origin: float = 0.0,
        time_span: float = 1.0,
        time_scale: float = 100.0,
    ) -> PretrainedEncoder:
        """Load config, safetensors weights and token dictionary from a local directory (never downloads).

        Parameters
        ----------
        genes
            Our genes in vocabulary order (``CorpusSpec.genes``): gene ``i`` is token ``N_SPECIAL + i``.
        token_dictionary, gene_medians
            Explicit table paths (see :func:`find_encoder_files`; the medians are not used here, but a directory
            without them cannot tokenize cells the way the encoder was pretrained on).
        min_mapped_fraction
            Below this fraction of genes found in Geneformer's vocabulary the gene identifiers are taken to be of
            the wrong kind, and an error is raised.
        time_origin, time_span, time_scale
            Time scaling, as in :class:`sctrace.model.embeddings.CellEmbedding`.
        """
        files = find_encoder_files(directory, token_dictionary=token_dictionary, gene_medians=gene_medians)
        dictionary = load_token_dictionary(files.token_dictionary)
        specials = special_tokens(dictionary)
        gene_ids, n_mapped = map_genes(genes, dictionary)
        if n_mapped < min_mapped_fraction * len(genes) or n_mapped == 0:
            example = next(iter(gene_entries(dictionary)), "?")
            raise SctraceInputError(
                f"only {n_mapped} of {len(genes)} genes are in the Geneformer vocabulary (keyed like {example!r}); "
                "check the gene identifiers: set gene_key to a var column of matching ids (e.g. Ensembl gene ids)."
            )
        special_ids = {PAD_ID: specials.pad, MASK_ID: specials.mask, CLS_ID: specials.cls}
        token_map = np.concatenate(
            [[-1 if special_ids[token] is None else special_ids[token] for token in range(N_SPECIAL)], gene_ids]
        )
        encoder = cls(
            _read_config(files.config), token_map, d_model, eos_id=specials.eos, mode=mode,
            time_origin=time_origin, time_span=time_span, time_scale=time_scale,
        )
        encoder._load_bert_weights(files.weights)
        return encoder

    def _load_bert_weights(self, weights: Path) -> None:
        state = _bert_state_dict(weights)
        expected = self.bert.state_dict()
        missing = sorted(set(expected) - set(state))
        if missing:
            raise SctraceInputError(
                f"{weights} lacks {len(missing)} BERT encoder weights (e.g. {missing[0]}); pass the safetensors file "
                "that belongs to this config.json."
            )
        mismatched = [key for key in expected if state[key].shape != expected[key].shape]
        if mismatched:
            key = mismatched[0]
            raise SctraceInputError(
                f"{weights}: weight {key} has shape {tuple(state[key].shape)} but config.json implies "
                f"{tuple(expected[key].shape)}; pass the config.json and weights of the same model."
            )
        self.bert.load_state_dict({key: state[key] for key in expected})

    def to_config(self) -> dict[str, Any]:
        """JSON-able arguments that rebuild this module (without weights): ``PretrainedEncoder(**config)``."""
        return {
            "bert": json.loads(self.bert.config.to_json_string(use_diff=False)),
            "token_map": self.token_map.tolist(),
            "d_model": self.d_model,
            "eos_id": self.eos_id,
            "mode": self.mode,
            "time_origin": self.time_origin,
            "time_span": self.time_span,
            "time_scale": self.time_scale,
        }

    @property
    def n_genes(self) -> int:
        return len(self.token_map) - N_SPECIAL

    @property
    def n_mapped(self) -> int:
        return int((self.token_map[N_SPECIAL:] >= 0).sum())

    def summary(self) -> str:
        return f"mapped {self.n_mapped} of {self.n_genes} genes to the Geneformer vocabulary"

    def train(self, mode: bool = True) -> PretrainedEncoder:
        """Set train/eval mode; a frozen BERT stays in eval mode so its dropout never fires."""
        super().train(mode)
        if self.mode == "frozen":
            self.bert.eval()
        return self

    def forward(self, source: torch.Tensor, time: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode source sentences.

        Parameters
        ----------
        source
            (batch, length) int64 our token ids, ``[CLS]`` first, ``[PAD]`` after the genes.
        time
            (batch,) or scalar source time.

        Returns
        -------
        z0
            (batch, length, d_model) float, aligned with ``source``.
        pad
            (batch, length) bool, True at ``[PAD]`` and at genes outside Geneformer's vocabulary.
        """
        batch, length = source.shape
        theirs = self.token_map[source]
        # Tokens BERT gets: mapped genes, and [CLS] when Geneformer has <cls> (token_map[PAD_ID] only fills).
        seen = (theirs >= 0) & (source != PAD_ID)
        n_seen = seen.sum(1)
        n_input = n_seen + int(self.eos_id is not None)
        width = max(1, int(n_input.max()))
        if width > self.bert.config.max_position_embeddings:
            raise SctraceInputError(
                f"sentences of {width} tokens exceed the pretrained encoder's "
                f"{self.bert.config.max_position_embeddings} positions; lower max_len to at most {self.max_genes}."
            )
        # Close the gaps left by dropped tokens: each seen token goes to slot (number of seen tokens before it).
        slot = seen.cumsum(1) - 1
        rows = torch.arange(batch, device=source.device)[:, None].expand(batch, length)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long, device=source.device)
        input_ids[rows[seen], slot[seen]] = theirs[seen]
        if self.eos_id is not None:
            input_ids[torch.arange(batch, device=source.device), n_seen] = self.eos_id
        positions = torch.arange(width, device=source.device)
        # A row with nothing to attend to (an empty cell without <cls>) attends to one pad token instead of
        # none, which would make attention's softmax undefined; its states are not used.
        attention = positions[None, :] < n_input.clamp(min=1)[:, None]

        grad = contextlib.nullcontext() if self.mode == "finetune" else torch.no_grad()
        with grad:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention.long()).last_hidden_state
        projected = self.projection(hidden)  # (batch, width, d_model)
        z0 = projected.gather(1, slot.clamp(min=0)[..., None].expand(-1, -1, self.d_model)) * seen[..., None]
        if self.cls_vector is not None:
            genes = (positions[None, :] < n_seen[:, None]).unsqueeze(-1)
            mean = (projected * genes).sum(1) / n_seen.clamp(min=1)[:, None]
            z0 = torch.where((source == CLS_ID)[..., None], (mean + self.cls_vector)[:, None, :], z0)
        time = torch.as_tensor(time, dtype=torch.float32, device=source.device).expand(batch)
        scaled = (time - self.time_origin) / self.time_span * self.time_scale
        z0 = z0 + sinusoidal_time_encoding(scaled, self.d_model)[:, None, :]
        pad = ~seen & (source != CLS_ID)
        return z0, pad


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SctraceInputError(
            f"{path} is not valid JSON ({error}); pass the model's Hugging Face config.json."
        ) from None
