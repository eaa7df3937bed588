"""Share of each pattern family per calendar period (day, week or month)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Sequence

import numpy as np
import pandas as pd

from fabml.errors import ConfigError, DataError

PERIODS = {"D": "day", "W": "week (Monday to Sunday)", "M": "month"}


def _parse_date(value: object, i: int) -> pd.Timestamp | None:
    """A timestamp (timezone-aware ones converted to naive UTC), or None for a missing date."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str) and not value.strip():
        return None
    if not isinstance(value, (str, date, datetime, pd.Timestamp, np.datetime64)):
        raise DataError(f"date {value!r} of map {i} is not a date: use ISO dates such as 2024-03-01")
    try:
        ts = pd.Timestamp(value.strip() if isinstance(value, str) else value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise DataError(f"date {value!r} of map {i} is not a date: use ISO dates such as 2024-03-01") from exc
    if ts is pd.NaT:
        return None
    return ts.tz_convert(None) if ts.tzinfo is not None else ts


def cluster_trend(
    dates: Sequence[object], labels: Sequence[int] | np.ndarray, period: str = "W"
) -> pd.DataFrame:
    """Share of each cluster among the maps of each period.

    Args:
        dates: one date per map (ISO strings, ``date``/``datetime`` objects; None, NaN or "" = missing).
        labels: one cluster id per map; -1 (noise, or "novel" from a novelty flag) is a column like any other.
        period: "D" (day), "W" (week, Monday to Sunday) or "M" (calendar month).
    Returns:
        DataFrame indexed by ``period`` (a pandas PeriodIndex, in time order, only periods with maps),
        one column per cluster id (ints, ascending, so -1 comes first), values = share of that period's
        maps in [0, 1]; each row sums to 1. ``df.attrs`` holds ``n_maps`` (maps per row, a list),
        ``dropped_no_date`` (maps left out for a missing date) and ``period``.
    """
    if period not in PERIODS:
        raise ConfigError(f"trend period {period!r} is unknown: use one of {', '.join(PERIODS)} (day, week, month)")
    lab = np.asarray(labels)
    if lab.ndim != 1 or len(lab) != len(dates):
        raise DataError(f"trend needs one cluster label per date: got {len(dates)} dates and {lab.size} labels")
    stamps = [_parse_date(d, i) for i, d in enumerate(dates)]
    keep = np.array([s is not None for s in stamps], dtype=bool)
    if not keep.any():
        raise DataError("no dates in the metadata: trend needs a 'date' column")
    periods = pd.DatetimeIndex([s for s in stamps if s is not None]).to_period(period)
    counts = pd.crosstab(np.asarray(periods), lab[keep].astype(np.int64))
    counts = counts.sort_index().reindex(columns=sorted(counts.columns))
    counts.index = pd.PeriodIndex(counts.index, freq=periods.freq, name="period")
    counts.columns = pd.Index([int(c) for c in counts.columns], name="cluster")
    totals = counts.sum(axis=1)
    shares = counts.div(totals, axis=0).astype(float)
    shares.attrs = {"n_maps": [int(t) for t in totals], "dropped_no_date": int((~keep).sum()), "period": period}
    return shares
