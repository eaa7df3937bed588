"""cluster_trend against hand-computed shares."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from fabml.errors import ConfigError, DataError
from fabml.wafer.trend import cluster_trend

# 2024-01-01 is a Monday: weeks run Mon 1 - Sun 7 and Mon 8 - Sun 14
DATES = ["2024-01-01", "2024-01-02", "2024-01-07", "2024-01-08", None, "", "2024-02-03", float("nan")]
LABELS = [0, 1, -1, 0, 2, 2, 1, 0]


def test_weekly_shares_hand_computed():
    df = cluster_trend(DATES, LABELS, "W")
    assert list(df.columns) == [-1, 0, 1]  # cluster 2 only occurs without a date
    assert [str(p) for p in df.index] == ["2024-01-01/2024-01-07", "2024-01-08/2024-01-14", "2024-01-29/2024-02-04"]
    np.testing.assert_allclose(df.to_numpy(), [[1 / 3, 1 / 3, 1 / 3], [0, 1, 0], [0, 0, 1]])
    np.testing.assert_allclose(df.sum(axis=1), 1.0)
    assert df.attrs["n_maps"] == [3, 1, 1] and df.attrs["dropped_no_date"] == 3
    assert df.index.name == "period"


def test_monthly_and_daily():
    month = cluster_trend(DATES, LABELS, "M")
    assert [str(p) for p in month.index] == ["2024-01", "2024-02"]
    np.testing.assert_allclose(month.loc[pd.Period("2024-01", "M")].to_numpy(), [0.25, 0.5, 0.25])
    day = cluster_trend(DATES, LABELS, "D")
    assert len(day) == 5 and day.attrs["n_maps"] == [1, 1, 1, 1, 1]


def test_date_objects_and_timezones():
    dates = [dt.date(2024, 3, 1), dt.datetime(2024, 3, 2, 23, 0), "2024-03-03T23:30:00+02:00"]
    df = cluster_trend(dates, [4, 4, 5], "M")
    np.testing.assert_allclose(df.to_numpy(), [[2 / 3, 1 / 3]])


def test_bad_inputs():
    with pytest.raises(DataError, match="no dates in the metadata: trend needs a 'date' column"):
        cluster_trend([None, ""], [0, 1])
    with pytest.raises(DataError, match=r"date 'last tuesday' of map 1 is not a date"):
        cluster_trend(["2024-01-01", "last tuesday"], [0, 1])
    with pytest.raises(DataError, match="one cluster label per date"):
        cluster_trend(["2024-01-01"], [0, 1])
    with pytest.raises(ConfigError, match="period 'Q'"):
        cluster_trend(["2024-01-01"], [0], "Q")
