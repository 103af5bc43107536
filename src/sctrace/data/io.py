"""Read a time-course AnnData and check, once and up front, everything later steps rely on.

Every problem a user can fix is raised as :class:`~sctrace._errors.SctraceInputError` with one sentence that
names the problem and the fix. Expression values are checked in chunks (stored values of a sparse matrix,
row blocks of a dense one) so a large or backed matrix is never densified or loaded whole; later steps read
it the same way, a block of cells at a time, through :class:`MatrixRows`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import scipy.sparse
from anndata.abc import CSCDataset, CSRDataset

from sctrace._errors import SctraceInputError, in_words, option, option_name
from sctrace.data.timecourse import MatrixRows, TimeCourse
from sctrace.data.times import _format_names, _format_times, _times_from_column, parse_time

__all__ = ["COUNT_KINDS", "MatrixRows", "TimeCourse", "check_expression", "check_holdout", "detect_count_kind", "parse_time",
           "read_h5ad", "read_timecourse", "resolve_count_kind"]

COUNT_KINDS = ("counts", "lognorm")
"""What the expression matrix holds: raw integer ``counts``, or already log-normalised values (``lognorm``)."""

# Values per chunk when scanning a matrix: 4 Mi float64 values is 32 MiB, small next to any real data set.
_CHUNK_VALUES = 1 << 22
# A log-normalised matrix rarely exceeds ~10; all-integer values above this look like raw counts.
_LOGNORM_MAX_PLAUSIBLE = 50.0
# Above this a value cannot be log-normalised: expm1 of it overflows float32 (HVG selection needs expm1).
_LOGNORM_MAX = 88.0


def read_timecourse(
    data: str | os.PathLike | anndata.AnnData,
    time_key: str = "time",
    *,
    layer: str | None = None,
    time_map: Mapping[str, float] | None = None,
    stratify: Sequence[str] = (),
    gene_key: str | None = None,
    count_kind: str = "counts",
    backed: bool = False,
) -> TimeCourse:
    """Read a time-course AnnData and validate it.

    Parameters
    ----------
    data
        Path to an ``.h5ad`` file, or an AnnData (used as is, not copied).
    time_key
        ``obs`` column with each cell's time. Numeric columns are used as they are; string or categorical
        labels are mapped with ``time_map`` when given, otherwise parsed with :func:`parse_time`.
    layer
        ``layers`` key of the expression matrix; ``None`` uses ``X``.
    time_map
        Label -> real time value. With a numeric time column, keys are matched to the numbers
        (``{"1": 0.5}`` maps cells at time 1 to 0.5).
    stratify
        ``obs`` columns whose combined value a source cell's partners must share during pairing.
    gene_key
        ``var`` column with gene identifiers; ``None`` uses ``var_names``.
    count_kind
        One of :data:`COUNT_KINDS`. ``"counts"`` requires non-negative integers; ``"lognorm"`` requires
        non-negative values and warns if they look like raw counts.
    backed
        Open an ``.h5ad`` path read-only in backed mode (``X`` stays on disk; anndata still reads ``obs``,
        ``var`` and any ``layers`` into memory, so keep large counts in ``X``). Ignored for an AnnData input.

    Returns
    -------
    TimeCourse
        The AnnData with the validated time of every cell.

    Raises
    ------
    SctraceInputError
        For any problem the user can fix; the message says what to change.
    """
    if count_kind not in COUNT_KINDS:
        raise SctraceInputError(f"unknown count_kind {count_kind!r}; choose one of {_format_names(COUNT_KINDS)}.")
    if isinstance(stratify, str):
        stratify = (stratify,)
    adata = data if isinstance(data, anndata.AnnData) else read_h5ad(data, backed=backed)

    obs_columns = list(adata.obs.columns)
    if time_key not in adata.obs.columns:
        raise SctraceInputError(
            f"time column {time_key!r} is not in adata.obs; pass {option_name('time_key')} as one of the obs columns "
            f"{_format_names(obs_columns)}."
        )
    for key in stratify:
        _check_stratify_column(adata.obs, key)
    if gene_key is not None and gene_key not in adata.var.columns:
        raise SctraceInputError(
            f"gene column {gene_key!r} is not in adata.var; pass gene_key as one of the var columns "
            f"{_format_names(list(adata.var.columns))} or gene_key=None to use var_names."
        )
    _check_matrix_present(adata, layer)

    times = _times_from_column(adata.obs[time_key], time_key, time_map)
    time_course = TimeCourse(
        adata=adata,
        time_key=time_key,
        times=times,
        layer=layer,
        stratify_keys=tuple(stratify),
        count_kind=count_kind,
        gene_key=gene_key,
    )
    _check_gene_names(time_course.gene_names(), gene_key)
    try:
        _check_expression(time_course.expression(), layer, count_kind, list(adata.layers))
    except OSError as err:  # a backed matrix whose file is damaged past the header
        raise _unreadable(Path(adata.filename or "data"), "input file", err) from err
    return time_course


def _check_matrix_present(adata: anndata.AnnData, layer: str | None) -> None:
    """The layer asked for exists, or X is not empty."""
    if layer is not None and layer not in adata.layers:
        raise _missing_layer(layer, list(adata.layers))
    if layer is None and adata.X is None:
        raise SctraceInputError(
            f"adata.X is empty; pass {option_name('layer')} as one of {_format_names(list(adata.layers))} to use a "
            "layer instead."
        )


def check_expression(adata: anndata.AnnData, layer: str | None, count_kind: str) -> None:
    """The checks :func:`read_timecourse` runs on the matrix, for data read without a time course (``embed``)."""
    _check_matrix_present(adata, layer)
    _check_expression(adata.X if layer is None else adata.layers[layer], layer, count_kind, list(adata.layers))


def check_holdout(tc: TimeCourse, holdout: float | str) -> float:
    """Match a held-out time to one of the observed time values.

    Parameters
    ----------
    tc
        The validated time course.
    holdout
        The time to hold out; a number, or a label :func:`parse_time` accepts.

    Returns
    -------
    float
        The observed time value equal to ``holdout`` (within :func:`numpy.isclose` tolerance).

    Raises
    ------
    SctraceInputError
        If no observed time value matches; the message lists the observed ones.
    """
    observed = tc.time_values
    matches = np.flatnonzero(np.isclose(observed, parse_time(holdout)))
    if matches.size == 0:
        raise SctraceInputError(
            f"held-out time {holdout!r} is not an observed time point; choose one of {_format_times(observed)}."
        )
    return float(observed[matches[0]])


def read_h5ad(path: str | os.PathLike, *, backed: bool = False, what: str = "input file") -> anndata.AnnData:
    """Open an ``.h5ad`` file, telling a missing file apart from a file that is not AnnData.

    ``what`` names the file in the message (e.g. "prediction file"), for callers reading several.
    """
    path = Path(path)
    if not path.exists():
        raise SctraceInputError(f"{what} {str(path)!r} does not exist; check the path.")
    # An .h5ad is an HDF5 file with at least obs and var groups; checking first gives a clear message
    # instead of anndata's KeyError or h5py's "file signature not found".
    try:
        is_anndata = path.is_file() and h5py.is_hdf5(path)
        if is_anndata:
            with h5py.File(path, "r") as handle:
                is_anndata = "obs" in handle and "var" in handle
        if is_anndata:
            return anndata.read_h5ad(path, backed="r" if backed else None)
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as err:  # h5py/anndata on a damaged file
        raise _unreadable(path, what, err) from err
    raise SctraceInputError(
        f"{what} {str(path)!r} is not an AnnData .h5ad file; save your data with adata.write_h5ad(path)."
    )


def _unreadable(path: Path, what: str, err: Exception) -> SctraceInputError:
    """One sentence for an .h5ad that h5py or anndata cannot read (a truncated copy, a half-written file)."""
    reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
    return SctraceInputError(
        f"{what} {str(path)!r} cannot be read ({reason}); it is truncated or corrupt, so copy or write it again."
    )


def _check_stratify_column(obs: pd.DataFrame, key: str) -> None:
    """A stratification column must exist and give every cell a value."""
    if key not in obs.columns:
        raise SctraceInputError(
            f"stratify column {key!r} is not in adata.obs; choose {option_name('stratify')} columns from "
            f"{_format_names(list(obs.columns))}."
        )
    n_missing = int(obs[key].isna().sum())
    if n_missing:
        raise SctraceInputError(
            f"stratify column {key!r} has no value for {n_missing} cells; fill them (e.g. with 'unknown') "
            "or remove those cells."
        )


def _check_gene_names(names: np.ndarray, gene_key: str | None) -> None:
    """Gene identifiers must be unique, since genes become vocabulary tokens."""
    source = "adata.var_names" if gene_key is None else f"adata.var[{gene_key!r}]"
    unique, counts = np.unique(names, return_counts=True)
    duplicated = unique[counts > 1]
    if duplicated.size:
        fix = (
            "call adata.var_names_make_unique() first"
            if gene_key is None
            else f"make adata.var[{gene_key!r}] unique or pass gene_key=None to use var_names"
        )
        raise SctraceInputError(
            f"{source} has {duplicated.size} duplicated gene names (e.g. {_format_names(list(duplicated[:5]))}); {fix}."
        )


def _check_expression(matrix, layer: str | None, count_kind: str, layers: list[str]) -> None:
    """Check the expression values chunk by chunk: finite, non-negative, and integer when counts are required."""
    where = "X" if layer is None else f"layer {layer!r}"
    dtype = np.dtype(matrix.dtype)
    exact_integers = np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_)
    n_nonfinite = n_negative = n_noninteger = 0
    max_value = 0.0
    for values in _value_chunks(matrix):
        if values.size == 0:
            continue
        if not exact_integers:
            finite = np.isfinite(values)
            n_nonfinite += values.size - int(np.count_nonzero(finite))
            n_noninteger += int(np.count_nonzero(finite & (np.modf(values)[0] != 0)))
        n_negative += int(np.count_nonzero(values < 0))
        max_value = max(max_value, float(np.max(values, initial=0.0, where=np.isfinite(values))))

    if n_nonfinite:
        raise SctraceInputError(
            f"{where} holds {n_nonfinite} NaN or infinite values; replace them with finite expression values "
            "or choose another layer."
        )
    if n_negative:
        raise SctraceInputError(
            f"{where} holds {n_negative} negative values, but expression must be non-negative (raw counts or "
            f"log-normalised values, not scaled or centred data); pass a layer with raw counts, e.g. {option('layer', 'counts')}."
        )
    if count_kind == "counts" and n_noninteger:
        looks = f": they look log-normalised (max {max_value:g})" if max_value <= _LOGNORM_MAX_PLAUSIBLE else ""
        lognorm_fix = option("count_kind", "lognorm")
        raise SctraceInputError(
            f"{where} holds non-integer values ({n_noninteger} of them), but raw counts are required; pass "
            f"{option('layer', 'counts')} if raw counts are in a layer (available layers: "
            f"{_format_names(layers) if layers else 'none'}), or {lognorm_fix}{looks}."
        )
    if count_kind == "lognorm" and max_value > _LOGNORM_MAX:
        read_as = option("count_kind", "lognorm")
        counts_fix = option("count_kind", "counts")
        raise SctraceInputError(
            f"{where} holds values up to {max_value:g}, far above any log-normalised expression, but is read as "
            f"log-normalised ({read_as}); for raw counts use {counts_fix}, or log-normalise the matrix first."
        )
    if count_kind == "lognorm" and n_noninteger == 0 and max_value > _LOGNORM_MAX_PLAUSIBLE:
        warnings.warn(
            f"{where} holds only integers (max {max_value:g}), which looks like raw counts rather than "
            f"log-normalised values; pass {option('count_kind', 'counts')} if these are raw counts.",
            UserWarning,
            stacklevel=3,
        )


def _value_chunks(matrix) -> Iterator[np.ndarray]:
    """Yield the stored values of a matrix in chunks, never densifying a sparse matrix.

    Sparse matrices (in memory or backed) yield slices of their stored-value array, which holds every
    value that is not an implicit zero; dense arrays (numpy or an on-disk h5py dataset) yield row blocks.
    """
    if isinstance(matrix, (CSRDataset, CSCDataset)):
        stored = matrix.group["data"]
    elif scipy.sparse.issparse(matrix):
        if matrix.format not in ("csr", "csc", "coo"):
            matrix = matrix.tocsr()  # lil/dok/dia/bsr have no flat array of exactly the stored values
        stored = matrix.data
    else:
        n_rows, n_cols = matrix.shape
        rows_per_chunk = max(1, _CHUNK_VALUES // max(n_cols, 1))
        for start in range(0, n_rows, rows_per_chunk):
            yield np.asarray(matrix[start : start + rows_per_chunk])
        return
    for start in range(0, stored.shape[0], _CHUNK_VALUES):
        yield np.asarray(stored[start : start + _CHUNK_VALUES])


def _missing_layer(layer: str, layers: list[str]) -> SctraceInputError:
    use_x = in_words("layer=None", "leave out --layer")
    if not layers:
        return SctraceInputError(f"layer {layer!r} is not in adata.layers, which is empty; {use_x} to use X.")
    return SctraceInputError(
        f"layer {layer!r} is not in adata.layers; pass {option_name('layer')} as one of {_format_names(layers)} "
        f"or {use_x} to use X."
    )


def detect_count_kind(matrix) -> str:
    """What an expression matrix holds, read from its values: ``counts``, ``lognorm`` or ``values``.

    Non-negative integers are raw counts; non-integers no larger than a log-normalised value can plausibly be
    (``log1p`` of 1e4-scaled counts stays below ~12, :data:`_LOGNORM_MAX_PLAUSIBLE` leaves room) are
    log-normalised; larger non-integers are depth-scaled values such as FPKM or TPM. Scanned chunk by chunk, as
    :func:`read_timecourse` checks values, so a backed matrix is never loaded whole.
    """
    dtype = np.dtype(matrix.dtype)
    if np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_):
        return "counts"
    integer, max_value = True, 0.0
    for values in _value_chunks(matrix):
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        integer = integer and not bool(np.any(np.modf(values)[0] != 0))
        max_value = max(max_value, float(values.max()))
    if integer:
        return "counts"
    return "lognorm" if max_value <= _LOGNORM_MAX_PLAUSIBLE else "values"


def resolve_count_kind(adata: anndata.AnnData, layer: str | None, count_kind: str | None,
                       likelihood: str) -> tuple[str, str]:
    """What the matrix holds and the likelihood that reads it: the one place both are decided.

    ``count_kind`` ``auto`` (or None) reads it from the values (:func:`detect_count_kind`); ``likelihood``
    ``auto`` follows it: ``zinb`` for raw counts, the hurdle for log-normalised values. A likelihood named
    explicitly must fit the data. Values that are neither (FPKM, TPM) are refused with the fix: their log1p is
    log-normalised-like and is read as such.
    """
    from sctrace.config import DEFAULT_LOGNORM_LIKELIHOOD, LOGNORM_LIKELIHOODS

    kind = count_kind or "auto"
    if kind not in ("auto", *COUNT_KINDS):
        raise SctraceInputError(f"unknown {option_name('count_kind')} {kind!r}; choose auto or one of "
                                f"{_format_names(COUNT_KINDS)}.")
    where = "X" if layer is None else f"layer {layer!r}"
    if kind == "auto":
        _check_matrix_present(adata, layer)
        try:
            kind = detect_count_kind(adata.X if layer is None else adata.layers[layer])
        except OSError as err:  # a backed matrix whose file is damaged past the header
            raise _unreadable(Path(adata.filename or "data"), "input file", err) from err
        if kind == "values":
            store = in_words("adata.X = np.log1p(adata.X)", "a layer with log1p of them, passed as --layer NAME")
            raise SctraceInputError(
                f"{where} holds values that are neither raw counts nor log-normalised (non-integers above "
                f"{_LOGNORM_MAX_PLAUSIBLE:g}, e.g. FPKM or TPM); give their log1p ({store}), which is read as "
                "log-normalised."
            )
    if likelihood == "auto":
        return kind, DEFAULT_LOGNORM_LIKELIHOOD if kind == "lognorm" else "zinb"
    if kind == "lognorm" and likelihood not in LOGNORM_LIKELIHOODS:
        raise SctraceInputError(
            f"{where} holds log-normalised values, and likelihood '{likelihood}' models raw counts; use "
            + in_words("likelihood='hurdle' or 'gaussian'", "--likelihood hurdle or gaussian")
            + f" (or leave it out), or {option('count_kind', 'counts')} if these are raw counts."
        )
    if kind == "counts" and likelihood in LOGNORM_LIKELIHOODS:
        raise SctraceInputError(
            f"likelihood '{likelihood}' models log-normalised values, and {where} holds raw counts; use zinb or nb "
            f"(or leave it out), or {option('count_kind', 'lognorm')} if these are log-normalised."
        )
    return kind, likelihood
