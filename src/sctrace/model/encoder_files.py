"""The files beside a Geneformer-format encoder: its token dictionary and gene medians, read safely, and our genes
mapped onto its vocabulary (:mod:`sctrace.model.pretrained` builds the encoder from them).

Pickles are read by a restricted unpickler that builds only dicts, strings, numbers and numpy numeric scalars.
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
from typing import Any, overload

import numpy as np
import pandas as pd

from sctrace._errors import SctraceInputError

__all__ = [
    "EncoderFiles",
    "SpecialTokens",
    "find_encoder_files",
    "gene_entries",
    "geneformer_medians_for",
    "load_gene_medians",
    "load_token_dictionary",
    "map_genes",
    "special_tokens",
]

TABLE_SUFFIXES = (".json", ".pkl", ".pickle", ".csv", ".tsv")

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


def gene_entries(token_dictionary: Mapping[str, int]) -> dict[str, int]:
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
    entries = gene_entries(token_dictionary)
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
