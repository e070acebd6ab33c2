"""Model-ready features from the integrated history (no Dagster, no torch).

A :class:`Panel` holds every series on one regular date grid as arrays:

- ``values`` (N, T): sales, gaps inside a series' active span interpolated, NaN outside the span;
- ``observed`` (N, T): True where the sales value was landed (interpolated gaps and padding are False);
- ``future`` (N, T, F): covariates known in advance for every date: calendar encodings, numeric calendar covariates
  (holidays, events, …), promotion and the log price ratio to the series' reference price;
- ``static_cat`` (N, C) / ``static_num`` (N, S): store and item attributes from the master data.

How each column is encoded (category vocabularies, standardisation constants) is a :class:`FeatureSpec`, fitted on
the training range only and saved with the model, so forecasting applies exactly what training saw.

Windows are cut by time with no leakage: training targets end at ``train_end``, validation targets lie in
``(train_end, cutoff]``, and nothing after ``cutoff`` is touched.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd

from bi_pipeline.evaluation import SERIES

CORE_COLUMNS = {"date", "store_id", "item_id", "sales", "observed", "price", "promo", "period", "source_file"}
# Static categoricals with more levels than this (descriptions, free text) carry no shareable signal.
MAX_STATIC_LEVELS = 64
DEFAULT_CONTEXT = {"D": 56, "W": 52, "M": 48}
DEFAULT_PATCH = {"D": 7, "W": 4, "M": 4}
# The season the long-history profile input follows: the week for daily data, the year for weekly and monthly.
PROFILE_SEASON = {"D": 7, "W": 52, "M": 12}


@dataclass
class FeatureSpec:
    """How raw columns become model inputs; JSON-serialisable so it travels inside the model's config."""

    frequency: str
    covariates: list[str] = field(default_factory=list)
    covariate_mean: list[float] = field(default_factory=list)
    covariate_std: list[float] = field(default_factory=list)
    # Continuous covariates enter relative to their mean over the window's context (like the target's scaling), so
    # a store's CPI or temperature level cannot act as its identity; binary flags (holidays) stay as they are.
    covariate_relative: list[bool] = field(default_factory=list)
    use_promo: bool = False
    use_price: bool = False
    static_categorical: dict[str, list[str]] = field(default_factory=dict)
    static_numeric: list[str] = field(default_factory=list)
    static_numeric_mean: list[float] = field(default_factory=list)
    static_numeric_std: list[float] = field(default_factory=list)
    use_covariates: bool = True
    use_static: bool = True
    # The long-history seasonal profile as a known-future input (see seasonal_profile), read at least
    # ``profile_lag`` periods back so that no forecast sees its own targets; 0: off.
    profile_lag: int = 0
    # Which calendar effects join the calendar encodings (CALENDAR_EFFECTS, see calendar_effects); specs saved before
    # they existed load as "off".
    calendar_effects: str = "off"

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        # Pairs, not a mapping: transformers writes configs with sorted keys, and the order is the embeddings' order.
        data["static_categorical"] = [[name, levels] for name, levels in self.static_categorical.items()]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        categorical = values.get("static_categorical") or []
        values["static_categorical"] = dict(categorical) if isinstance(categorical, list) else dict(categorical)
        return cls(**values)

    @property
    def future_names(self) -> list[str]:
        names = calendar_names(self.frequency, self.calendar_effects)
        if not self.use_covariates:
            return names + (["seasonal_profile"] if self.profile_lag else [])
        names = names + list(self.covariates)
        if self.use_promo:
            names.append("promo")
        if self.use_price:
            names.append("log_price_ratio")
        return names + (["seasonal_profile"] if self.profile_lag else [])

    @property
    def relative_mask(self) -> list[bool]:
        """Per future feature: whether it is taken relative to its context mean."""
        mask = [False] * len(calendar_names(self.frequency, self.calendar_effects))
        if self.use_covariates:
            relative = self.covariate_relative or [False] * len(self.covariates)
            mask += list(relative) + [False] * (int(self.use_promo) + int(self.use_price))
        return mask + [False] * bool(self.profile_lag)

    @property
    def static_cardinalities(self) -> list[int]:
        # Index 0 is reserved for values unseen in training.
        return [len(v) + 1 for v in self.static_categorical.values()] if self.use_static else []

    @property
    def static_numeric_count(self) -> int:
        return len(self.static_numeric) if self.use_static else 0


@dataclass
class Panel:
    keys: pd.DataFrame
    dates: pd.DatetimeIndex
    values: np.ndarray
    observed: np.ndarray
    first: np.ndarray
    last: np.ndarray
    future: np.ndarray
    static_cat: np.ndarray
    static_num: np.ndarray
    spec: FeatureSpec

    @property
    def series(self) -> int:
        return len(self.keys)


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


def _numeric_covariates(history: pd.DataFrame, candidates: list[str] | None) -> list[str]:
    if candidates is not None:
        return [c for c in candidates if c in history.columns]
    return [
        c
        for c in history.columns
        if c not in CORE_COLUMNS and pd.api.types.is_numeric_dtype(history[c]) and not _is_static(history, c)
    ]


def _is_static(history: pd.DataFrame, column: str) -> bool:
    per_series = history.groupby(SERIES, observed=True)[column].nunique(dropna=False)
    return bool((per_series <= 1).all())


def fit_spec(
    history: pd.DataFrame,
    frequency: str,
    covariates: list[str] | None = None,
    use_covariates: bool = True,
    use_static: bool = True,
    continuous_covariates: bool = False,
    profile_lag: int = 0,
    calendar_effects: str = "easter",
) -> FeatureSpec:
    """Encodings fitted on ``history`` (the training range): which covariates and attributes, and their scales.

    By default only flag-like covariates (holidays, events: values 0/1) are used: continuous ones such as CPI,
    temperature or fuel price are not really known in advance, and on Walmart they made forecasts worse
    (docs/accuracy.md).
    ``continuous_covariates`` takes them too."""
    covariates = _numeric_covariates(history, covariates)
    if not continuous_covariates:
        covariates = [c for c in covariates if set(np.unique(history[c].dropna())).issubset({0.0, 1.0})]
    stats = history[covariates].astype("float64") if covariates else pd.DataFrame()
    mean = [float(stats[c].mean()) if stats[c].notna().any() else 0.0 for c in covariates]
    std = [float(stats[c].std()) if stats[c].notna().sum() > 1 else 1.0 for c in covariates]
    std = [s if np.isfinite(s) and s > 0 else 1.0 for s in std]
    relative = [not set(np.unique(stats[c].dropna())).issubset({0.0, 1.0}) for c in covariates]
    categorical: dict[str, list[str]] = {}
    numeric: list[str] = []
    for column in history.columns:
        if column in CORE_COLUMNS or column in covariates or not _is_static(history, column):
            continue
        values = history[column]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            if values.notna().any():
                numeric.append(column)
        else:
            levels = sorted(values.dropna().astype(str).unique())
            # One level per store or per item is an identifier in disguise (a description): it lets the model
            # memorise series instead of learning what they share.
            per_store = bool((history.groupby("store_id", observed=True)[column].nunique() <= 1).all())
            entities = history["store_id" if per_store else "item_id"].nunique()
            identifying = len(levels) > max(2, entities // 2)
            if 1 < len(levels) <= MAX_STATIC_LEVELS and not identifying:
                categorical[column] = levels
    per_series = history.groupby(SERIES, observed=True)[numeric].first().astype("float64") if numeric else None
    num_mean = [float(per_series[c].mean()) for c in numeric] if numeric else []
    num_std = [float(per_series[c].std()) if len(per_series) > 1 else 1.0 for c in numeric] if numeric else []
    num_std = [s if np.isfinite(s) and s > 0 else 1.0 for s in num_std]
    effect_names(frequency, calendar_effects)  # an unknown setting stops here, named
    return FeatureSpec(
        frequency=frequency,
        covariates=covariates,
        covariate_mean=mean,
        covariate_std=std,
        covariate_relative=relative,
        use_promo="promo" in history.columns and bool(history["promo"].fillna(0).ne(0).any()),
        use_price="price" in history.columns and bool(history["price"].notna().any()),
        static_categorical=categorical,
        static_numeric=numeric,
        static_numeric_mean=num_mean,
        static_numeric_std=num_std,
        use_covariates=use_covariates,
        use_static=use_static,
        profile_lag=int(profile_lag),
        calendar_effects=calendar_effects,
    )


def unused_columns(history: pd.DataFrame, spec: FeatureSpec) -> dict[str, str]:
    """Each column of the integrated history the model does not read, with the reason (shown in the ``features``
    metadata, so a covariate that was left out is never left out silently)."""
    used = {*spec.covariates, *spec.static_categorical, *spec.static_numeric}
    reasons = {}
    for column in history.columns:
        if column in CORE_COLUMNS or column in used:
            continue
        values = history[column]
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        if values.isna().all():
            reasons[column] = "no values"
        elif not _is_static(history, column):
            if numeric:
                reasons[column] = (
                    "a continuous covariate (not known in advance like a holiday flag): the transformer reads 0/1 "
                    "flags only; LightGBM reads it"
                )
            else:
                reasons[column] = "text that changes over time: known-future inputs are numbers or 0/1 flags"
        elif numeric:
            reasons[column] = "a constant"
        else:
            levels = values.dropna().astype(str).nunique()
            if levels <= 1:
                reasons[column] = "one value for every series"
            elif levels > MAX_STATIC_LEVELS:
                reasons[column] = f"{levels} values, more than {MAX_STATIC_LEVELS}: free text carries nothing shared"
            else:
                reasons[column] = "one value per store or item: an identifier in disguise (a description)"
    return reasons


PROFILE_SETTINGS = ("auto", "on", "off")
# "auto" turns the profile on when the median series has this many seasons of history beyond the lag: with one or
# two earlier seasons the profile only repeats what the context already shows (Walmart, docs/accuracy.md), with
# decades of them it carries what the context cannot (aus_retail).
PROFILE_MIN_SEASONS = 3


def seasonal_profile_lag(setting: str, frequency: str, horizon: int, history: pd.DataFrame) -> int:
    """The spec's ``profile_lag`` for a setting (auto, on, off) and the training history: 0 when off."""
    if setting not in PROFILE_SETTINGS:
        raise ValueError(f"seasonal profile {setting!r}: choose one of {', '.join(PROFILE_SETTINGS)}")
    lag = profile_lag_for(frequency, horizon)
    if setting == "off":
        return 0
    if setting == "on":
        return lag
    periods = float(history.groupby(SERIES, observed=True)["date"].nunique().median()) if len(history) else 0.0
    return lag if periods >= lag + PROFILE_MIN_SEASONS * PROFILE_SEASON[frequency] else 0


def profile_lag_for(frequency: str, horizon: int) -> int:
    """The smallest whole number of seasons that is at least the horizon: the profile then never reads a period a
    forecast could have as its target, and stays aligned with the season."""
    season = PROFILE_SEASON[frequency]
    return season * max(1, -(-horizon // season))


def seasonal_profile(values: np.ndarray, season: int, lag: int) -> np.ndarray:
    """(N, T) per series and date: the mean, over every earlier season at least ``lag`` periods back, of the log
    ratio of the value at the same position in the season to its trailing ``season``-period mean; 0 where there is
    no such history. What a per-series seasonal model reads from decades of history, and a context of a few seasons
    cannot: for a date t it averages the deviations at t − lag, t − lag − season, … (NaN values are skipped)."""
    n, t = values.shape
    if t < season or lag < season:
        return np.zeros((n, t), dtype="float32")
    filled = np.nan_to_num(values.astype("float64"), nan=0.0)
    present = (~np.isnan(values)).astype("float64")
    sums = np.cumsum(filled, axis=1)
    counts = np.cumsum(present, axis=1)
    trailing_sum = sums.copy()
    trailing_sum[:, season:] -= sums[:, :-season]
    trailing_count = counts.copy()
    trailing_count[:, season:] -= counts[:, :-season]
    # A full season of observed values behind each point, and a positive mean.
    mean = np.where(trailing_count >= season, trailing_sum / np.maximum(trailing_count, 1.0), np.nan)
    with np.errstate(all="ignore"):
        deviation = np.log((np.maximum(values, 0.0) + 0.05 * mean) / (1.05 * mean))
    deviation[~(mean > 0) | np.isnan(values)] = np.nan
    deviation = np.clip(deviation, -2.0, 2.0)
    # Fold the dates into rows of one season each (padded at the front), so a position's history is a column.
    pad = (-t) % season
    folded = np.concatenate([np.full((n, pad), np.nan), deviation], axis=1).reshape(n, -1, season)
    total = np.cumsum(np.nan_to_num(folded, nan=0.0), axis=1)
    count = np.cumsum(~np.isnan(folded), axis=1)
    back = lag // season
    profile = np.zeros_like(folded)
    with np.errstate(all="ignore"):
        profile[:, back:] = np.where(count[:, :-back] > 0, total[:, :-back] / count[:, :-back], 0.0)
    return profile.reshape(n, -1)[:, pad:].astype("float32")


def build_panel(
    history: pd.DataFrame,
    spec: FeatureSpec,
    future: pd.DataFrame | None = None,
    horizon: int = 0,
    reference_end: pd.Timestamp | None = None,
) -> Panel:
    """Arrays on one date grid for every series of ``history``; the grid runs ``horizon`` periods past its end, taking
    known-future covariates from ``future`` where given (planned promotions, holidays) and neutral values elsewhere.
    Price references use data up to ``reference_end`` only (the training range)."""
    from bi_pipeline.baselines import pandas_freq

    history = history.sort_values([*SERIES, "date"])
    keys = history[SERIES].astype(str).drop_duplicates().reset_index(drop=True)
    freq = pandas_freq(history, spec.frequency)
    start, end = pd.Timestamp(history["date"].min()), pd.Timestamp(history["date"].max())
    dates = pd.date_range(start, periods=len(pd.date_range(start, end, freq=freq)) + horizon, freq=freq)
    n, t = len(keys), len(dates)
    row = pd.MultiIndex.from_frame(keys).get_indexer(pd.MultiIndex.from_frame(history[SERIES].astype(str)))
    col = dates.get_indexer(pd.DatetimeIndex(history["date"]))
    if (col < 0).any():
        raise ValueError("history dates are not on a regular grid of the given frequency")
    values = np.full((n, t), np.nan, dtype="float32")
    values[row, col] = history["sales"].to_numpy(dtype="float32")
    observed = ~np.isnan(values)
    present = np.zeros((n, t), dtype=bool)
    present[row, col] = True
    first = np.where(present.any(1), present.argmax(1), 0)
    last = np.where(present.any(1), t - 1 - present[:, ::-1].argmax(1), -1)
    # Gaps inside a span are interpolated for the model's input; they never count in a loss (observed is False).
    values = _interpolate(values, first, last)

    frame = history
    if future is not None and len(future):
        later = future[future["date"] > end].dropna(axis=1, how="all")
        frame = pd.concat([history, later], ignore_index=True) if len(later) else history
        # Only the history's series (vectorised: a row-wise apply is minutes at M5 scale).
        frame = frame[pd.MultiIndex.from_frame(frame[SERIES].astype(str)).isin(pd.MultiIndex.from_frame(keys))]
    f_row = pd.MultiIndex.from_frame(keys).get_indexer(pd.MultiIndex.from_frame(frame[SERIES].astype(str)))
    f_col = dates.get_indexer(pd.DatetimeIndex(frame["date"]))
    keep = (f_row >= 0) & (f_col >= 0)
    f_row, f_col, frame = f_row[keep], f_col[keep], frame[keep]

    calendar = calendar_features(dates, spec.frequency, spec.calendar_effects)
    parts = [np.broadcast_to(calendar, (n, t, calendar.shape[1]))]
    if spec.use_covariates:
        for name, mean, std in zip(spec.covariates, spec.covariate_mean, spec.covariate_std, strict=True):
            grid = np.zeros((n, t), dtype="float32")
            if name in frame.columns:
                column = ((frame[name].astype("float64") - mean) / std).fillna(0.0).to_numpy(dtype="float32")
                grid[f_row, f_col] = column
            parts.append(grid[..., None])
        if spec.use_promo:
            grid = np.zeros((n, t), dtype="float32")
            grid[f_row, f_col] = frame["promo"].astype("float64").fillna(0.0).to_numpy(dtype="float32")
            parts.append(grid[..., None])
        if spec.use_price:
            price = np.full((n, t), np.nan, dtype="float64")
            price[f_row, f_col] = frame["price"].astype("float64").to_numpy()
            # Carry the last known price forward (into the horizon too): an unchanged price is the neutral plan.
            price = pd.DataFrame(price.T).ffill().to_numpy().T
            upto = t if reference_end is None else int(dates.searchsorted(reference_end, side="right"))
            with np.errstate(all="ignore"):
                reference = np.nanmedian(np.where(price[:, :upto] > 0, price[:, :upto], np.nan), axis=1)
                ratio = np.log(price / reference[:, None])
            parts.append(np.nan_to_num(ratio, nan=0.0, posinf=0.0, neginf=0.0).clip(-3, 3).astype("float32")[..., None])
    if spec.profile_lag:
        profile = seasonal_profile(values, PROFILE_SEASON[spec.frequency], spec.profile_lag)
        parts.append(profile[..., None])
    future_arr = np.concatenate(parts, axis=2).astype("float32")

    firsts = history.groupby(SERIES, observed=True, sort=False).first()
    firsts.index = pd.MultiIndex.from_arrays([firsts.index.get_level_values(c).astype(str) for c in SERIES])
    firsts = firsts.reindex(pd.MultiIndex.from_frame(keys))
    static_cat = np.zeros((n, len(spec.static_categorical) if spec.use_static else 0), dtype="int64")
    static_num = np.zeros((n, spec.static_numeric_count), dtype="float32")
    if spec.use_static:
        for j, (name, levels) in enumerate(spec.static_categorical.items()):
            if name in firsts.columns:
                lookup = {v: i + 1 for i, v in enumerate(levels)}
                static_cat[:, j] = [lookup.get(str(v), 0) for v in firsts[name].to_numpy()]
        for j, (name, mean, std) in enumerate(
            zip(spec.static_numeric, spec.static_numeric_mean, spec.static_numeric_std, strict=True)
        ):
            if name in firsts.columns:
                static_num[:, j] = ((firsts[name].astype("float64") - mean) / std).fillna(0.0).to_numpy()
    return Panel(keys, dates, values, observed, first, last, future_arr, static_cat, static_num, spec)


def _interpolate(values: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    out = values.copy()
    idx = np.arange(values.shape[1])
    for i in np.flatnonzero(np.isnan(values).any(1)):
        lo, hi = first[i], last[i]
        if hi < lo:
            continue
        segment = out[i, lo : hi + 1]
        known = ~np.isnan(segment)
        if not known.any():
            out[i, lo : hi + 1] = 0.0
            continue
        out[i, lo : hi + 1] = np.interp(idx[lo : hi + 1], idx[lo : hi + 1][known], segment[known])
    return out


@dataclass
class Windows:
    """Index arrays of forecast windows: series row, first forecast step, and which steps count in the loss."""

    series: np.ndarray
    start: np.ndarray
    step_begin: int  # targets at date indices in [step_begin, step_end) count in the loss
    step_end: int

    def __len__(self) -> int:
        return len(self.series)


def make_windows(
    panel: Panel, min_context: int, first_start: int | None, last_start: int, step_begin: int, step_end: int
) -> Windows:
    """Every (series, start) with ``min_context`` periods of history before ``start``, starts in
    [``first_start``, ``last_start``]; the loss counts targets at date indices in [``step_begin``, ``step_end``)."""
    series, starts = [], []
    for i in range(panel.series):
        lo = panel.first[i] + min_context
        if first_start is not None:
            lo = max(lo, first_start)
        hi = min(last_start, panel.last[i])
        if hi >= lo:
            starts.append(np.arange(lo, hi + 1))
            series.append(np.full(hi + 1 - lo, i))
    if not series:
        return Windows(np.zeros(0, "int64"), np.zeros(0, "int64"), step_begin, step_end)
    return Windows(np.concatenate(series), np.concatenate(starts), step_begin, step_end)


def validation_length(horizon: int, history_len: int, horizons: float = 2.0) -> int:
    """Periods held out before the cutoff for early stopping and the calibrations: ``horizons`` horizons, at most a
    fifth of the (median) history, at least one. Two horizons give the validation origins a whole horizon of their
    own targets to be scored on; a short history keeps four fifths for training (docs/accuracy.md: aus_retail,
    Walmart)."""
    return max(1, min(int(round(horizons * horizon)), history_len // 5))


def split_windows(
    panel: Panel, horizon: int, cutoff: int, min_context: int, validation: int
) -> tuple[Windows, Windows]:
    """Training windows (targets at indices < ``cutoff + 1 - validation``) and validation windows (targets in the
    last ``validation`` periods up to ``cutoff``), so that no validation target is ever a training target."""
    train_end = cutoff + 1 - validation
    train = make_windows(panel, min_context, None, train_end - 1, 0, train_end)
    # Validation windows may start before train_end; their loss counts only steps inside the validation period.
    valid = make_windows(panel, min_context, train_end - horizon + 1, cutoff, train_end, cutoff + 1)
    return train, valid


def panel_frame(panel: Panel, split_at: dict[str, int] | None = None) -> pd.DataFrame:
    """The panel as a long frame (the ``features`` asset's value): one row per series and date of its span, with the
    target, the observed flag, every future feature, the static codes, and ``split`` (train / validation / test) when
    ``split_at`` gives the first date index of validation and test. ``attrs`` carry the spec (saved in the Parquet
    file), so :func:`panel_from_frame` gives the same panel back."""
    n, t = panel.values.shape
    grid = np.arange(t)[None, :]
    rows, cols = np.nonzero((grid >= panel.first[:, None]) & (grid <= panel.last[:, None]))
    out = pd.DataFrame(
        {
            "store_id": panel.keys["store_id"].to_numpy()[rows],
            "item_id": panel.keys["item_id"].to_numpy()[rows],
            "date": panel.dates[cols],
            "target": panel.values[rows, cols],
            "observed": panel.observed[rows, cols],
        }
    )
    for j, name in enumerate(panel.spec.future_names):
        out[f"future_{name}"] = panel.future[rows, cols, j]
    for j, name in enumerate(list(panel.spec.static_categorical)[: panel.static_cat.shape[1]]):
        out[f"static_{name}"] = panel.static_cat[rows, j]
    for j, name in enumerate(panel.spec.static_numeric[: panel.static_num.shape[1]]):
        out[f"static_{name}"] = panel.static_num[rows, j]
    if split_at:
        split = np.full(len(out), "train", dtype=object)
        split[cols >= split_at["validation"]] = "validation"
        split[cols >= split_at["test"]] = "test"
        out["split"] = split
    out.attrs["feature_spec"] = json.dumps(panel.spec.to_dict())
    out.attrs["dates"] = json.dumps([str(d.date()) for d in panel.dates])
    return out


def panel_from_frame(frame: pd.DataFrame, upto: pd.Timestamp | None = None, horizon: int = 0) -> Panel:
    """The panel of a :func:`panel_frame` frame; targets after ``upto`` are hidden (a holdout stays unseen), and the
    grid runs ``horizon`` periods further (with covariates where the frame has them, calendar encodings always)."""
    spec = FeatureSpec.from_dict(json.loads(frame.attrs["feature_spec"]))
    dates = pd.DatetimeIndex(json.loads(frame.attrs["dates"]))
    if horizon:
        freq = pd.infer_freq(dates[-3:]) or (dates[-1] - dates[-2])
        extra = pd.date_range(dates[-1], periods=horizon + 1, freq=freq)[1:]
        dates = dates.append(extra[~extra.isin(dates)])
    keys = frame[SERIES].astype(str).drop_duplicates().reset_index(drop=True)
    n, t = len(keys), len(dates)
    row = pd.MultiIndex.from_frame(keys).get_indexer(pd.MultiIndex.from_frame(frame[SERIES].astype(str)))
    col = dates.get_indexer(pd.DatetimeIndex(frame["date"]))
    values = np.full((n, t), np.nan, dtype="float32")
    values[row, col] = frame["target"].to_numpy(dtype="float32")
    observed = np.zeros((n, t), dtype=bool)
    observed[row, col] = frame["observed"].to_numpy(dtype=bool)
    present = np.zeros((n, t), dtype=bool)
    present[row, col] = True
    frame_last = np.where(present.any(1), t - 1 - present[:, ::-1].argmax(1), -1)
    if upto is not None:
        hidden = dates > upto
        values[:, hidden], observed[:, hidden], present[:, hidden] = np.nan, False, False
    first = np.where(present.any(1), present.argmax(1), 0)
    last = np.where(present.any(1), t - 1 - present[:, ::-1].argmax(1), -1)
    names = spec.future_names
    future = np.zeros((n, t, len(names)), dtype="float32")
    calendar = calendar_features(dates, spec.frequency, spec.calendar_effects)
    future[:, :, : calendar.shape[1]] = calendar[None]
    for j, name in enumerate(names):
        future[row, col, j] = frame[f"future_{name}"].to_numpy(dtype="float32")
    if spec.use_price and "log_price_ratio" in names:
        # Beyond the frame the price stays where it was last.
        j = names.index("log_price_ratio")
        for i in np.flatnonzero((frame_last >= 0) & (frame_last < t - 1)):
            future[i, frame_last[i] + 1 :, j] = future[i, frame_last[i], j]
    firsts = frame.drop_duplicates(SERIES).set_index(SERIES)
    firsts.index = pd.MultiIndex.from_arrays([firsts.index.get_level_values(c).astype(str) for c in SERIES])
    firsts = firsts.reindex(pd.MultiIndex.from_frame(keys))
    cats = list(spec.static_categorical) if spec.use_static else []
    static_cat = (
        np.stack([firsts[f"static_{c}"].to_numpy(dtype="int64") for c in cats], 1)
        if cats
        else np.zeros((n, 0), dtype="int64")
    )
    nums = spec.static_numeric if spec.use_static else []
    static_num = (
        np.stack([firsts[f"static_{c}"].to_numpy(dtype="float32") for c in nums], 1)
        if nums
        else np.zeros((n, 0), dtype="float32")
    )
    return Panel(keys, dates, values, observed, first, last, future, static_cat, static_num, spec)
