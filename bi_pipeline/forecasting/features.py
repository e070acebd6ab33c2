"""How each column of the integrated history becomes a model input (no Dagster, no torch).

A :class:`FeatureSpec` is fitted on the training range only and saved with the model, so forecasting applies exactly
what training saw: category vocabularies, standardisation constants, which covariates are known in advance, and the
long-history seasonal profile input (off by default).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bi_pipeline.forecasting.calendar import calendar_names, effect_names
from bi_pipeline.forecasting.metrics import SERIES
from bi_pipeline.forecasting.month_turn import MonthTurn, fit_month_turn

CORE_COLUMNS = {"date", "store_id", "item_id", "sales", "observed", "price", "promo", "period", "source_file"}


# Static categoricals with more levels than this (descriptions, free text) carry no shareable signal.
MAX_STATIC_LEVELS = 64


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
    # The measure was never negative in the training range (sales): the network's quantiles keep to that support
    # (modeling.smooth_floor). Specs saved before it existed load as False.
    nonnegative: bool = False
    # The month-turn adjustment (month_turn.MonthTurn.to_list) the network's sales are divided by; None: none. Specs
    # saved before it existed load as None.
    month_turn: list | None = None

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
    def month_turn_adjustment(self) -> MonthTurn | None:
        return MonthTurn.from_list(self.month_turn)

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


def _numeric_covariates(history: pd.DataFrame, candidates: list[str] | None) -> list[str]:
    if candidates is not None:
        return [c for c in candidates if c in history.columns]
    return [
        c
        for c in history.columns
        if c not in CORE_COLUMNS and pd.api.types.is_numeric_dtype(history[c]) and not _is_static(history, c)
    ]


def _text_levels(values: pd.Series) -> list[str]:
    """The column's distinct values as text, sorted. Only the distinct values are turned into text: every row's
    (54M at M5 scale) would take gigabytes."""
    return sorted(set(pd.Series(values.dropna().unique()).astype(str)))


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
    month_turn: str = "auto",
) -> FeatureSpec:
    """Encodings fitted on ``history`` (the training range): which covariates and attributes, and their scales.

    By default only flag-like covariates (holidays, events: values 0/1) are used: continuous ones such as CPI,
    temperature or fuel price are not really known in advance, and on Walmart they made forecasts worse
    (docs/accuracy.md).
    ``continuous_covariates`` takes them too. ``month_turn`` (auto, off): whether weekly sales are adjusted for the
    month's first days where the panel shows that effect (:mod:`bi_pipeline.forecasting.month_turn`)."""
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
            levels = _text_levels(values)
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
        nonnegative=bool((history["sales"].dropna() >= 0).all()),
        month_turn=adjustment.to_list() if (adjustment := fit_month_turn(history, frequency, month_turn)) else None,
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
            levels = len(_text_levels(values))
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
