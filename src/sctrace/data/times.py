"""Time points read from an obs column (numbers, or labels like 'day 2', 'd2', '6h', or a time map); name lists in messages."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from sctrace._errors import SctraceInputError, in_words, option_name

# How many names an error message lists before summarising the rest.
_MAX_LISTED = 10


# Units parse_time recognises, mapped to a canonical name so mixed units in one column can be detected.
_TIME_UNITS = {
    "h": "hour", "hr": "hour", "hrs": "hour", "hour": "hour", "hours": "hour",
    "d": "day", "day": "day", "days": "day",
    "w": "week", "wk": "week", "wks": "week", "week": "week", "weeks": "week",
    "min": "minute", "mins": "minute", "minute": "minute", "minutes": "minute",
}  # fmt: skip


# Prefixes as in "day2", "d2", "h6" or "t3" ("t"/"time" carry no unit).
_TIME_PREFIXES = {
    "d": "day", "day": "day", "h": "hour", "hr": "hour", "hour": "hour", "w": "week", "wk": "week", "week": "week",
    "t": None, "time": None,
}  # fmt: skip


_TIME_PATTERN = re.compile(
    r"^(?:(?P<prefix>[a-z]+)[\s_]*)?"
    r"(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)"
    r"[\s_]*(?P<unit>[a-z]+)?$",
    re.IGNORECASE,
)


def parse_time(value: str | float) -> float:
    """Parse one time label into a number, in the unit the label gives.

    Accepted forms: a number (``6``, ``6.5``, ``"6"``, ``"-1"``), a number with a unit suffix (``"6h"``,
    ``"6 hr"``, ``"2d"``, ``"2 days"``, ``"3wk"``, ``"30min"``) or a unit prefix (``"day2"``, ``"d2"``,
    ``"day_2"``, ``"h6"``, ``"t3"``), case-insensitive. Units are NOT converted: ``"2d"`` gives 2.0 and
    ``"48h"`` gives 48.0, so labels of one column must share a unit (:func:`read_timecourse` refuses mixed
    units); use a ``time_map`` otherwise.

    Parameters
    ----------
    value
        The label, or a number.

    Returns
    -------
    float
        The number in the label.

    Raises
    ------
    SctraceInputError
        If the value is not one of the accepted forms or is not finite.
    """
    return _parse_time_with_unit(value)[0]


def _times_from_column(column: pd.Series, time_key: str, time_map: Mapping[str, float] | None) -> np.ndarray:
    """``(n_cells,) float64`` real time of each cell from the obs time column."""
    is_numeric = pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype)
    if isinstance(column.dtype, pd.CategoricalDtype):
        codes, labels = column.cat.codes.to_numpy(), list(column.cat.categories)
        cells_per_label = np.bincount(codes[codes >= 0], minlength=len(labels))
        empty = [label for label, n_cells in zip(labels, cells_per_label, strict=True) if n_cells == 0]
        if empty:
            raise SctraceInputError(
                f"time column {time_key!r} has categories with no cells: {_format_names(empty)}; remove them "
                f"with adata.obs[{time_key!r}] = adata.obs[{time_key!r}].cat.remove_unused_categories()."
            )
    elif is_numeric and time_map is None:
        codes, labels = None, []
    else:
        codes, uniques = pd.factorize(column, use_na_sentinel=True)
        labels = list(uniques)

    if codes is None:
        times = column.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        label_times = _label_times(labels, time_key, time_map)
        times = np.where(codes >= 0, label_times[np.maximum(codes, 0)], np.nan)

    n_missing = int(np.count_nonzero(~np.isfinite(times)))
    if n_missing:
        raise SctraceInputError(
            f"{n_missing} of {times.size} cells have no finite time in obs column {time_key!r}; remove those cells "
            f"(e.g. adata = adata[adata.obs[{time_key!r}].notna()]) or fill in their time."
        )
    time_values = np.unique(times)
    if time_values.size < 2:
        raise SctraceInputError(
            f"obs column {time_key!r} holds {time_values.size} time point(s) ({_format_times(time_values)}), but "
            f"a time course needs at least 2; check {option_name('time_key')}."
        )
    return times


def _label_times(labels: list, time_key: str, time_map: Mapping[str, float] | None) -> np.ndarray:
    """``(n_labels,) float64`` time of each label, from ``time_map`` or by parsing the labels."""
    if time_map is not None:
        by_name = {str(key).strip(): parse_time(value) for key, value in time_map.items()}
        by_number = {}
        for key, value in by_name.items():
            try:
                by_number[float(key)] = value
            except ValueError:
                continue  # a non-numeric key can only match a label by name
        times, missing = [], []
        for label in labels:
            if str(label).strip() in by_name:
                times.append(by_name[str(label).strip()])
            elif _is_real_number(label) and float(label) in by_number:
                times.append(by_number[float(label)])
            else:
                missing.append(label)
        if missing:
            raise SctraceInputError(
                f"time_map has no value for the time labels {_format_names(missing)} of obs column {time_key!r}; "
                f"add them to {in_words('time_map', '--time-map label=value')}."
            )
        return np.asarray(times, dtype=np.float64)

    parsed, unparsable = [], []
    for label in labels:
        try:
            parsed.append(_parse_time_with_unit(label))
        except SctraceInputError:
            unparsable.append(label)
    if unparsable:
        raise SctraceInputError(
            f"cannot read the time labels {_format_names(unparsable)} of obs column {time_key!r} as numbers; give "
            f"their real time values with {_time_map_words()}."
        )
    units = sorted({unit for _, unit in parsed if unit is not None})
    if len(units) > 1:
        raise SctraceInputError(
            f"the time labels of obs column {time_key!r} mix units ({', '.join(units)}) and parse_time does not "
            f"convert units; give their real time values with {_time_map_words()}."
        )
    return np.asarray([number for number, _ in parsed], dtype=np.float64)


def _parse_time_with_unit(value: str | float) -> tuple[float, str | None]:
    """Parse a time label into (number, canonical unit or None); see :func:`parse_time`."""
    error = SctraceInputError(f"cannot parse time value {value!r}; give a number such as 6 or 6.5.")
    if _is_real_number(value):
        number, unit = float(value), None
    elif isinstance(value, str) and (match := _TIME_PATTERN.match(value.strip())):
        prefix, suffix = match["prefix"], match["unit"]
        if prefix is not None and suffix is not None:
            raise error
        if prefix is not None:
            if prefix.lower() not in _TIME_PREFIXES:
                raise error
            unit = _TIME_PREFIXES[prefix.lower()]
        elif suffix is not None:
            if suffix.lower() not in _TIME_UNITS:
                raise error
            unit = _TIME_UNITS[suffix.lower()]
        else:
            unit = None
        number = float(match["number"])
    else:
        raise error
    if not np.isfinite(number):
        raise error
    return number, unit


def _is_real_number(value) -> bool:
    """True for int/float (numpy included), False for bool and everything else."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _time_map_words() -> str:
    return in_words("time_map={'label': value}", "--time-map label=value")


def _format_names(names: Sequence) -> str:
    """Quote up to a few names for an error message, summarising the rest."""
    shown = ", ".join(repr(str(name)) for name in names[:_MAX_LISTED])
    if len(names) > _MAX_LISTED:
        shown += f" (and {len(names) - _MAX_LISTED} more)"
    return shown or "(none)"


def _format_times(values: np.ndarray) -> str:
    """Time values as compact numbers for an error message."""
    return ", ".join(f"{value:g}" for value in values) or "(none)"
