"""Calendar inputs (no Dagster, no torch): cyclic encodings of the period's position in the week and year, and
calendar effects that move between periods (Easter; for monthly data, the weekdays that occur five times)."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

# Days around Easter Sunday (inclusive offsets) whose share falls in a period: Easter moves between March and April
# (and between weeks), so a model that repeats last year's shape puts its effect in the wrong period otherwise.
EASTER_WINDOWS = {"easter_week": (-7, 0), "easter_holidays": (-2, 1)}


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


# easter: the Easter windows; all: also, for monthly data, the weekdays that occur five times (trading days); off.
CALENDAR_EFFECTS = ("easter", "all", "off")


# How far back "the same period last season" lies, for the calendar effects' change against it.
EFFECT_SEASON = {"D": pd.DateOffset(days=364), "W": pd.DateOffset(days=364), "M": pd.DateOffset(months=12)}


def calendar_names(frequency: str, effects: str = "off") -> list[str]:
    if frequency == "M":
        names = [f"month_{m}" for m in range(1, 13)]
    else:
        names = [f"year_{f}{k}" for k in (1, 2, 3) for f in ("sin", "cos")]
        if frequency == "D":
            names += [f"weekday_{d}" for d in range(7)]
    if effects != "off":
        own = effect_names(frequency, effects)
        names += own + [f"{name}_change" for name in own]
    return names


def calendar_features(dates: pd.DatetimeIndex, frequency: str, effects: str = "off") -> np.ndarray:
    """(T, K) encodings of the position in the year (and week for daily data); with ``effects`` (easter, all), also
    the calendar effects of each period (:func:`calendar_effects`) and their change against the same period a season
    before."""
    if frequency == "M":
        out = np.eye(12, dtype="float32")[dates.month.to_numpy() - 1]
    else:
        phase = 2 * np.pi * (dates.dayofyear.to_numpy() - 1) / 365.25
        columns = []
        for k in (1, 2, 3):
            columns += [np.sin(k * phase), np.cos(k * phase)]
        out = np.stack(columns, axis=1).astype("float32")
        if frequency == "D":
            out = np.concatenate([out, np.eye(7, dtype="float32")[dates.dayofweek.to_numpy()]], axis=1)
    if effects != "off":
        out = np.concatenate([out, effects_and_changes(dates, frequency, effects)], axis=1)
    return out


def effects_and_changes(dates: pd.DatetimeIndex, frequency: str, effects: str) -> np.ndarray:
    """(T, 2K): each calendar effect of :func:`calendar_effects` and its change against the same period a season
    before (364 days, 12 months), the columns :func:`calendar_names` lists after the encodings."""
    now = calendar_effects(dates, frequency, effects)
    before = calendar_effects(pd.DatetimeIndex(dates - EFFECT_SEASON[frequency]), frequency, effects)
    return np.concatenate([now, now - before], axis=1)


def effect_names(frequency: str, effects: str = "all") -> list[str]:
    if effects not in CALENDAR_EFFECTS:
        raise ValueError(f"calendar effects {effects!r}: choose one of {', '.join(CALENDAR_EFFECTS)}")
    if effects == "off":
        return []
    names = list(EASTER_WINDOWS)
    if frequency == "M" and effects == "all":
        names += [f"extra_{day}" for day in WEEKDAYS]
    return names


def easter_date(year: int) -> date:
    """Gregorian Easter Sunday (the anonymous Gregorian algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    m = (32 + 2 * e + 2 * i - h - k) % 7
    n = (a + 11 * h + 22 * m) // 451
    month, day = divmod(h + m - 7 * n + 114, 31)
    return date(year, month, day + 1)


def easter_sunday(years: np.ndarray) -> np.ndarray:
    """Easter Sunday of each year, as datetime64[D]."""
    cache = {int(y): easter_date(int(y)) for y in np.unique(years)}
    return np.array([cache[int(y)] for y in years], dtype="datetime64[D]")


def calendar_effects(dates: pd.DatetimeIndex, frequency: str, effects: str = "all") -> np.ndarray:
    """(T, K) calendar effects known years ahead, per period (a day, the 7 days from the date, or the date's month):
    the share of each Easter window (:data:`EASTER_WINDOWS`) inside the period, and for months the weekdays that occur
    five times rather than four (1/0 each: trading-day composition, which moves monthly retail by a few percent).
    These are what statistical agencies adjust retail series for, and what no context of past values can show."""
    if not effect_names(frequency, effects):
        return np.zeros((len(dates), 0), dtype="float32")
    start = dates.to_period("M").to_timestamp() if frequency == "M" else dates.normalize()
    start = start.to_numpy().astype("datetime64[D]")
    if frequency == "M":
        length = dates.days_in_month.to_numpy()
    else:
        length = np.full(len(dates), 7 if frequency == "W" else 1)
    end = start + length.astype("timedelta64[D]")  # exclusive
    columns = []
    # Easter falls between 22 March and 25 April: only a period's own year's can touch it.
    sunday = easter_sunday(dates.year.to_numpy())
    for low, high in EASTER_WINDOWS.values():
        first = sunday + np.timedelta64(low, "D")
        last = sunday + np.timedelta64(high + 1, "D")
        overlap = (np.minimum(end, last) - np.maximum(start, first)).astype("int64")
        columns.append(np.clip(overlap, 0, None) / (high - low + 1))
    if frequency == "M" and effects == "all":
        # Day 29, 30 and 31 of the month repeat the weekdays of days 1, 2 and 3.
        weekday = (start.astype("int64") + 3) % 7  # 1970-01-01 was a Thursday: 0 = Monday
        extra = length - 28
        for day in range(7):
            columns.append(((day - weekday) % 7 < extra).astype("float64"))
    return np.stack(columns, axis=1).astype("float32")


def pandas_freq(history: pd.DataFrame, frequency: str) -> str:
    """The pandas offset alias of the periods: weekly periods keep their weekday (Walmart weeks end Friday)."""
    if frequency == "W":
        return "W-" + pd.Timestamp(history["date"].min()).day_name()[:3].upper()
    return {"D": "D", "M": "MS"}[frequency]


def dates_after(ends: np.ndarray, horizon: int, freq: str) -> np.ndarray:
    """For each end date, the ``horizon`` period dates after it (at the pandas offset ``freq``), concatenated. Most
    series end on the same date: one date range is built per distinct end, not one per series."""
    ends = np.asarray(ends, dtype="datetime64[ns]")
    if not len(ends):
        return np.array([], dtype="datetime64[ns]")
    ranges = {end: pd.date_range(end, periods=horizon + 1, freq=freq)[1:].to_numpy() for end in set(ends)}
    return np.concatenate([ranges[end] for end in ends])
