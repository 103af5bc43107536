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
model directory or pass their paths to :func:`find_encoder_files`. Pickles are read by a restricted unpickler
that builds only dicts, strings, numbers and numpy numeric scalars.
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import pandas as pd
import torch
from torch import nn

from sctrace._errors import SctraceInputError
from sctrace.data.tokenize import CLS_ID, MASK_ID, N_SPECIAL, PAD_ID
from sctrace.model.embeddings import sinusoidal_time_encoding

if TYPE_CHECKING:
    from transformers import BertConfig, BertModel

__all__ = [
    "EncoderFiles",
    "PretrainedEncoder",
    "SpecialTokens",
    "find_encoder_files",
    "geneformer_medians_for",
    "load_gene_medians",
    "load_token_dictionary",
    "map_genes",
    "special_tokens",
]

TABLE_SUFFIXES = (".json", ".pkl", ".pickle", ".csv", ".tsv")
MODES = ("frozen", "finetune")

_ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*\d+)\.\d+$", re.IGNORECASE)
_SPECIAL_NAME = re.compile(r"^[<\[](pad|mask|cls|eos)[>\]]$", re.IGNORECASE)


# ----------------------------------------------------------------------------------------------- reading tables


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can only build plain containers, numbers, strings and numpy numeric scalars.

    Dicts, lists, strings, ints, floats, bools and None need no global at all. Geneformer's median table holds
    numpy float scalars, which pickle as ``numpy._core.multiarray.scalar(numpy.dtype(code), raw_bytes)`` (numpy < 2
    writes ``numpy.core``), and protocol-2 pickles spell the raw bytes as ``_codecs.encode(text, "latin1")``. Each
    of these is admitted through a wrapper that checks its arguments, so no other callable is ever reached.
    """

    def find_class(self, module: str, name: str):
        if (module, name) in (("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar")):
            return _numeric_scalar
        if (module, name) == ("numpy", "dtype"):
            return _numeric_dtype
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def _numeric_dtype(code: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if not isinstance(code, str):
        raise pickle.UnpicklingError("numpy dtype code must be a string")
    dtype = np.dtype(code, align=bool(align), copy=bool(copy))
    _check_numeric(dtype)
    return dtype


def _numeric_scalar(dtype: Any, data: Any = None) -> np.generic:
    # The dtype's state was restored (BUILD) after _numeric_dtype checked it, so check it again here.
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes):
        raise pickle.UnpicklingError("numpy scalar needs a dtype and raw bytes")
    _check_numeric(dtype)
    if len(data) != dtype.itemsize:
        raise pickle.UnpicklingError("numpy scalar bytes do not match its dtype")
    return np.frombuffer(data, dtype=dtype)[0]


def _check_numeric(dtype: np.dtype) -> None:
    if dtype.kind not in "biuf" or dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise pickle.UnpicklingError(f"numpy dtype {dtype} is not a plain numeric type")


def _latin1_bytes(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("only latin1-encoded byte strings are allowed")
    return text.encode("latin1")


def _load_mapping(path: Path, what: str) -> dict[str, Any]:
    """A ``{key: value}`` table from JSON, a two-column CSV/TSV (header optional) or a pickled dict.

    Values are returned as read (numbers from JSON and pickles, strings from CSV/TSV); the caller parses them.
    """
    path = Path(path)
    if not path.is_file():
        raise SctraceInputError(f"{what} file {path} does not exist; pass the path of an existing file.")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            table = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise SctraceInputError(
                f"{what} {path} is not valid JSON ({error}); write it as one JSON object."
            ) from None
    elif suffix in (".pkl", ".pickle"):
        try:
            with path.open("rb") as handle:
                table = _RestrictedUnpickler(handle).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError) as error:
            raise SctraceInputError(
                f"{what} pickle {path} is not a plain dict of names and numbers ({error}); sctrace refuses other "
                "pickled objects because unpickling them can run code: convert the file to JSON or CSV."
            ) from None
    elif suffix in (".csv", ".tsv"):
        return _read_two_columns(path, "\t" if suffix == ".tsv" else ",", what)
    else:
        raise SctraceInputError(
            f"{what} {path} has an unknown suffix {path.suffix!r}; use one of {', '.join(TABLE_SUFFIXES)}."
        )
    if not isinstance(table, dict) or not all(isinstance(key, str) for key in table):
        raise SctraceInputError(
            f"{what} {path} must hold one mapping from gene names to values (a dict / JSON object)."
        )
    return table


def _read_two_columns(path: Path, sep: str, what: str) -> dict[str, str]:
    try:
        frame = pd.read_csv(path, sep=sep, header=None, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise SctraceInputError(f"{what} {path} is not a readable two-column table ({error}); fix the file.") from None
    if frame.shape[1] != 2:
        raise SctraceInputError(
            f"{what} {path} has {frame.shape[1]} columns; write two: the gene id and its value "
            "(a header row is optional)."
        )
    keys, values = frame[0].str.strip().tolist(), frame[1].str.strip().tolist()
    # A header is told apart from data by its value cell, which is not a number.
    if keys and not _is_number(values[0]):
        keys, values = keys[1:], values[1:]
    return dict(zip(keys, values, strict=True))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@overload
def _parse_value(value: Any, kind: type[int], key: str, path: Path, what: str) -> int: ...
@overload
def _parse_value(value: Any, kind: type[float], key: str, path: Path, what: str) -> float: ...
def _parse_value(value: Any, kind: type, key: str, path: Path, what: str) -> int | float:
    """``value`` as a finite int (``kind=int``) or float, or a one-line error naming the entry."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SctraceInputError(f"{what} {path}: entry {key!r} has non-numeric value {value!r}; fix that entry.")
    if not math.isfinite(value) or (kind is int and float(value) != int(value)):
        raise SctraceInputError(f"{what} {path}: entry {key!r} has value {value!r}, expected a finite {kind.__name__}.")
    return int(value) if kind is int else float(value)


def load_token_dictionary(path) -> dict[str, int]:
    """Read a Geneformer token dictionary: gene id (or special token) -> non-negative token id.

    Parameters
    ----------
    path
        ``.json`` (one object), ``.csv``/``.tsv`` (two columns, header optional) or ``.pkl``/``.pickle`` (a pickled
        dict, read without running code).
    """
    path = Path(path)
    table = _load_mapping(path, "token dictionary")
    dictionary = {key: _parse_value(value, int, key, path, "token dictionary") for key, value in table.items()}
    if not dictionary:
        raise SctraceInputError(f"token dictionary {path} is empty; point to Geneformer's token dictionary.")
    negative = [key for key, token in dictionary.items() if token < 0]
    if negative:
        raise SctraceInputError(f"token dictionary {path} has negative token ids (e.g. {negative[0]!r}); fix the file.")
    return dictionary


def load_gene_medians(path) -> pd.Series:
    """Read a median table: gene id -> non-zero median of normalised expression (float64, finite, > 0).

    Accepts the same formats as :func:`load_token_dictionary`.
    """
    path = Path(path)
    table = _load_mapping(path, "gene median table")
    medians = pd.Series(
        {key: _parse_value(value, float, key, path, "gene median table") for key, value in table.items()},
        dtype=np.float64,
        name="gene_median",
    )
    if medians.empty:
        raise SctraceInputError(f"gene median table {path} is empty; point to Geneformer's gene median dictionary.")
    if not (medians > 0).all():
        bad = medians.index[~(medians > 0)][0]
        raise SctraceInputError(
            f"gene median table {path}: gene {bad!r} has median {medians[bad]}, but medians must be > 0."
        )
    return medians


# ------------------------------------------------------------------------------------------------ finding files


@dataclass(frozen=True)
class EncoderFiles:
    """Paths of a Geneformer-format encoder: BERT config, safetensors weights, token dictionary, median table."""

    config: Path
    weights: Path
    token_dictionary: Path
    gene_medians: Path


def find_encoder_files(directory, *, token_dictionary=None, gene_medians=None) -> EncoderFiles:
    """Locate the files of a Geneformer-format encoder in ``directory`` (not its subfolders).

    Parameters
    ----------
    directory
        Holds ``config.json`` and ``model.safetensors`` (or ``model.safetensors.index.json`` with its shards).
    token_dictionary, gene_medians
        Explicit paths; by default the one file of the directory whose name matches ``token_dictionary*`` (resp.
        contains ``median``) with a suffix in ``.json .pkl .pickle .csv .tsv`` (case-insensitive).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise SctraceInputError(
            f"pretrained encoder directory {directory} does not exist; pass a local model directory."
        )
    config = directory / "config.json"
    if not config.is_file():
        raise SctraceInputError(
            f"{directory} has no config.json; pass a Hugging Face BERT model directory (Geneformer format)."
        )
    candidates = [directory / "model.safetensors", directory / "model.safetensors.index.json"]
    weights = next((path for path in candidates if path.is_file()), None)
    if weights is None:
        if any(directory.glob("*.bin")):
            raise SctraceInputError(
                f"{directory} has only PyTorch .bin weights; sctrace loads safetensors only (a .bin is a pickle "
                "that can run code): use the model's model.safetensors, or convert once with "
                "transformers' save_pretrained(..., safe_serialization=True)."
            )
        raise SctraceInputError(f"{directory} has no model.safetensors; pass a directory with safetensors weights.")
    if token_dictionary is None:
        token_dictionary = _find_table(
            directory, lambda name: name.startswith("token_dictionary"), "token dictionary (token_dictionary*)"
        )
    if gene_medians is None:
        gene_medians = _find_table(directory, lambda name: "median" in name, "gene median table (*median*)")
    return EncoderFiles(config, weights, Path(token_dictionary), Path(gene_medians))


def _find_table(directory: Path, matches, what: str) -> Path:
    found = sorted(
        path for path in directory.iterdir()
        if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES and matches(path.name.lower())
    )
    if len(found) == 1:
        return found[0]
    if not found:
        raise SctraceInputError(
            f"{directory} has no {what} with a suffix in {' '.join(TABLE_SUFFIXES)}; copy Geneformer's file "
            "into it or pass its path explicitly."
        )
    raise SctraceInputError(
        f"{directory} has several candidates for the {what}: {', '.join(path.name for path in found)}; pass the one "
        "that belongs to this model explicitly."
    )


# -------------------------------------------------------------------------------------------------- gene mapping


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids of a dictionary's special entries (``<pad>`` or ``[PAD]``, any case); None when absent."""

    pad: int
    mask: int | None
    cls: int | None
    eos: int | None


def special_tokens(token_dictionary: Mapping[str, int]) -> SpecialTokens:
    """Find ``<pad>``, ``<mask>``, ``<cls>``, ``<eos>`` (Geneformer V1 has only the first two); ``<pad>`` is needed."""
    found: dict[str, int] = {}
    for key, token in token_dictionary.items():
        match = _SPECIAL_NAME.match(key)
        if match:
            found[match.group(1).lower()] = int(token)
    if "pad" not in found:
        raise SctraceInputError(
            "the token dictionary has no <pad> entry; pass Geneformer's token dictionary (it maps '<pad>' to 0)."
        )
    return SpecialTokens(pad=found["pad"], mask=found.get("mask"), cls=found.get("cls"), eos=found.get("eos"))


def _normalise_gene(gene: str) -> str:
    """Ensembl ids lose their version suffix (``ENSG00000141510.16`` -> ``ENSG00000141510``); all is upper-cased."""
    gene = gene.strip()
    match = _ENSEMBL_VERSION.match(gene)
    return (match.group(1) if match else gene).upper()


def _match_keys(genes: Sequence[str] | np.ndarray, keys) -> list[str | None]:
    """For each gene, the key of ``keys`` it names: exactly, else after :func:`_normalise_gene` on both sides.

    A normalised form shared by several keys (symbols that differ only in case) matches none of them, since
    which one is meant cannot be told.
    """
    exact = set(keys)
    normalised: dict[str, str | None] = {}
    for key in keys:
        norm = _normalise_gene(key)
        normalised[norm] = None if norm in normalised and normalised[norm] != key else key
    return [gene if gene in exact else normalised.get(_normalise_gene(gene)) for gene in map(str, genes)]


def _gene_entries(token_dictionary: Mapping[str, int]) -> dict[str, int]:
    return {key: token for key, token in token_dictionary.items() if not _SPECIAL_NAME.match(key)}


def map_genes(genes: Sequence[str] | np.ndarray, token_dictionary: Mapping[str, int]) -> tuple[np.ndarray, int]:
    """Geneformer token id of each of our genes.

    Ensembl ids match with or without a version suffix; symbols (for a dictionary keyed by symbols) match
    case-insensitively. Special entries never match.

    Returns
    -------
    ids
        ``(len(genes),)`` int64 token ids, -1 for genes not in the dictionary.
    n_mapped
        Number of ids that are not -1.
    """
    entries = _gene_entries(token_dictionary)
    keys = _match_keys(genes, entries)
    ids = np.array([-1 if key is None else entries[key] for key in keys], dtype=np.int64)
    return ids, int((ids >= 0).sum())


def geneformer_medians_for(genes: Sequence[str] | np.ndarray, medians: pd.Series,
                           token_dictionary: Mapping[str, int]) -> pd.Series:
    """Geneformer's medians for our genes, ready for ``prepare_corpus(gene_medians=...)``.

    Only genes the encoder knows (in the token dictionary) and that have a median are included, indexed by our gene
    names; the others keep the medians computed on the training cells. Genes are matched to the median table as in
    :func:`map_genes`.
    """
    ids, _ = map_genes(genes, token_dictionary)
    known = [gene for gene, token in zip(map(str, genes), ids, strict=True) if token >= 0]
    table = dict(zip(medians.index.astype(str), medians.to_numpy(dtype=np.float64), strict=True))
    keys = _match_keys(known, table)
    pairs = [(gene, table[key]) for gene, key in zip(known, keys, strict=True) if key is not None]
    return pd.Series(dict(pairs), dtype=np.float64, name="gene_median")


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
            example = next(iter(_gene_entries(dictionary)), "?")
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
