"""Wafer-map labels with one or several patterns (mixed-pattern maps such as ``Center+Scratch``).

A map's label is always one string, so everything that expects one label per map (kNN voting,
per-class tables, cluster purity) keeps working. A map with several patterns carries the
*canonical joined label*: its pattern names, each once, sorted, joined by the separator
(:data:`LABEL_SEPARATOR`, ``"+"`` by default)::

    "Scratch + Center"          -> "Center+Scratch"
    ["Scratch", "Center"]       -> "Center+Scratch"
    [1, 0, 0, 0, 0, 0, 1, 0]    -> "Center+Scratch"   (multi-hot over MULTI_HOT_PATTERNS)
    [0, 0, 0, 0, 0, 0, 0, 0]    -> "None"             (no pattern)
    "none", "None+None"         -> "None"

Any spelling of "none" is the no-pattern name ``"None"``; next to a real pattern it is dropped
(a map with a Center pattern is not a no-pattern map). :func:`label_patterns` gives the set back.
The separator must not occur inside a pattern name: ``"-"`` would cut ``Edge-Loc`` in two.
"""

from __future__ import annotations

import re
from typing import Any, Collection, Iterable, Sequence

import numpy as np
import pandas as pd

from fabml.errors import ConfigError, DataError

LABEL_SEPARATOR = "+"
"""Default separator of a joined multi-pattern label (a setting of every reader: ``label_separator``)."""

NO_PATTERN = "None"
"""The canonical name of the no-pattern class (WM-811K's ``none``)."""

MULTI_HOT_PATTERNS = ("Center", "Donut", "Edge-Loc", "Edge-Ring", "Loc", "Near-full", "Scratch", "Random")
"""Pattern of each position of a multi-hot label vector: the order of MixedWM38 (C1..C8), in WM-811K spelling."""

_VECTOR_TEXT = re.compile(r"^[\[(]?\s*[01](?:\.0*)?(?:\s*[,; ]\s*[01](?:\.0*)?)+\s*[\])]?$")


def check_separator(separator: str) -> str:
    """``separator`` if usable (non-blank, no ``,`` ``;`` brackets or digits that vectors use), else ConfigError."""
    if not isinstance(separator, str) or not separator.strip() or any(ch in separator for ch in ",;[]()0123456789"):
        raise ConfigError(
            f"label separator must be a non-blank string without digits, commas, semicolons or brackets, "
            f"got {separator!r}; the default is {LABEL_SEPARATOR!r}"
        )
    return separator


def _is_number(value: Any) -> bool:
    return isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating))


def multi_hot_label(
    vector: Sequence[Any] | np.ndarray, names: Sequence[str] = MULTI_HOT_PATTERNS, separator: str = LABEL_SEPARATOR
) -> str:
    """A multi-hot vector [P] of 0/1 (ints, floats or booleans) -> canonical joined label; all zeros -> "None".

    ``names[i]`` is the pattern of position i; the vector must have exactly ``len(names)`` entries.
    """
    arr = np.asarray(vector, dtype=float).ravel()
    if len(arr) != len(names):
        raise DataError(
            f"multi-hot label has {len(arr)} entries but {len(names)} pattern names are set "
            f"({', '.join(names)}); give one 0/1 per pattern"
        )
    if not np.isin(arr, (0.0, 1.0)).all():
        raise DataError(f"multi-hot label {arr.tolist()} holds values other than 0 and 1")
    return join_patterns([name for name, on in zip(names, arr) if on], separator)


def join_patterns(patterns: Iterable[str], separator: str = LABEL_SEPARATOR) -> str:
    """Pattern names -> canonical label: each once, sorted, joined; none left (or only "none") -> "None"."""
    names = {NO_PATTERN if p.strip().lower() == "none" else p.strip() for p in patterns if p and p.strip()}
    real = sorted(names - {NO_PATTERN})
    return separator.join(real) if real else NO_PATTERN


def canonical_label(
    value: Any, separator: str = LABEL_SEPARATOR, names: Sequence[str] = MULTI_HOT_PATTERNS
) -> str | None:
    """Any label a reader meets -> canonical joined string, or ``None`` when unlabelled.

    Accepts a string (one name, a joined label ``"Scratch+Center"`` or a 0/1 vector written as text
    ``"[1, 0, 0, 0, 0, 0, 1, 0]"``), a list/tuple/array of names (LSWMD wraps one name as ``[['none']]``),
    or a numeric multi-hot vector over ``names``. ``None``, NaN, "" and empty arrays are unlabelled.
    A single number stays a name (``3`` -> ``"3"``): only vectors of two or more numbers are multi-hot.
    """
    if isinstance(value, (np.ndarray, list, tuple)):
        flat = np.asarray(value, dtype=object).ravel()
        if flat.size == 0:
            return None
        if flat.size == 1:
            return canonical_label(flat[0], separator, names)
        if all(_is_number(v) for v in flat):
            return multi_hot_label(flat.astype(float), names, separator)
        parts = [canonical_label(v, separator, names) for v in flat]
        known = [p for p in parts if p is not None]
        if not known:
            return None
        return join_patterns((name for p in known for name in p.split(separator)), separator)
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if not text:
        return None
    if _VECTOR_TEXT.match(text):
        return multi_hot_label([float(v) for v in re.findall(r"[01](?:\.0*)?", text)], names, separator)
    return join_patterns(text.split(separator), separator)


def label_patterns(
    label: str | None, separator: str = LABEL_SEPARATOR, no_pattern: Collection[str] = (NO_PATTERN,)
) -> frozenset[str]:
    """The patterns of a (canonical or joined) label; no-pattern names and unlabelled give an empty set."""
    if label is None:
        return frozenset()
    skip = no_pattern_set(no_pattern)
    return frozenset(p.strip() for p in str(label).split(separator) if p.strip() and p.strip() not in skip)


def no_pattern_set(value: str | Collection[str] | None) -> frozenset[str]:
    """The no-pattern label setting as a set: one name (``"None"``) or several (``{"None", "Normal"}``)."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset({value})
    return frozenset(str(v) for v in value)


def multi_hot_matrix(
    labels: Sequence[str | None],
    separator: str = LABEL_SEPARATOR,
    no_pattern: Collection[str] = (NO_PATTERN,),
    patterns: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Labels [N] -> (bool [N, P] pattern indicators, the P pattern names in column order).

    Columns are ``patterns`` when given (a pattern outside it is an error), else every pattern seen, sorted.
    """
    sets = [label_patterns(lab, separator, no_pattern) for lab in labels]
    names = list(patterns) if patterns is not None else sorted(set().union(*sets)) if sets else []
    column = {name: j for j, name in enumerate(names)}
    out = np.zeros((len(sets), len(names)), dtype=bool)
    for i, s in enumerate(sets):
        for name in s:
            if name not in column:
                raise DataError(f"label pattern {name!r} is not one of {', '.join(names)}")
            out[i, column[name]] = True
    return out, names
