"""Model-ready features from the integrated history (no Dagster, no torch): the panel.

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

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bi_pipeline.forecasting.calendar import calendar_features, pandas_freq
from bi_pipeline.forecasting.features import PROFILE_SEASON, FeatureSpec, seasonal_profile
from bi_pipeline.forecasting.metrics import SERIES

DEFAULT_CONTEXT = {"D": 56, "W": 52, "M": 48}


DEFAULT_PATCH = {"D": 7, "W": 4, "M": 4}


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
    history = history.sort_values([*SERIES, "date"])
    # Series numbered in their sorted order from the keys' own codes: text keys for every row (54M at M5 scale) would
    # take gigabytes; only the n keys are turned into text.
    row = history.groupby(SERIES, observed=True, sort=False).ngroup().to_numpy()
    keys = history[SERIES].drop_duplicates().astype(str).reset_index(drop=True)
    freq = pandas_freq(history, spec.frequency)
    start, end = pd.Timestamp(history["date"].min()), pd.Timestamp(history["date"].max())
    dates = pd.date_range(start, periods=len(pd.date_range(start, end, freq=freq)) + horizon, freq=freq)
    n, t = len(keys), len(dates)
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
    factors = month_turn_factors(spec, dates)
    if factors is not None:
        values = (values / factors[None, :]).astype("float32")

    frame = history
    if future is not None and len(future):
        later = future[future["date"] > end].dropna(axis=1, how="all")
        frame = pd.concat([history, later], ignore_index=True) if len(later) else history
        # Only the history's series (vectorised: a row-wise apply is minutes at M5 scale).
        frame = frame[pd.MultiIndex.from_frame(frame[SERIES].astype(str)).isin(pd.MultiIndex.from_frame(keys))]
    if frame is history:
        f_row, f_col = row, col
    else:
        f_row = pd.MultiIndex.from_frame(keys).get_indexer(pd.MultiIndex.from_frame(frame[SERIES].astype(str)))
        f_col = dates.get_indexer(pd.DatetimeIndex(frame["date"]))
    keep = (f_row >= 0) & (f_col >= 0)
    if not keep.all():  # (a copy of every row otherwise)
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
    future_arr = np.concatenate(parts, axis=2, dtype="float32")  # one n x t x features array, no second copy

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


def month_turn_factors(spec: FeatureSpec, dates: pd.DatetimeIndex) -> np.ndarray | None:
    """Each date's month-turn factor (:mod:`bi_pipeline.forecasting.month_turn`): a panel's values are the sales
    divided by it, and the network's forecasts are multiplied by it. None where the spec has no adjustment."""
    adjustment = spec.month_turn_adjustment
    return None if adjustment is None else adjustment.factors(pd.DatetimeIndex(dates))


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


def subsample(windows: Windows, size: int, seed: int = 0) -> Windows:
    """At most ``size`` of the windows, a fixed draw in their original order (all of them when there are fewer)."""
    if size <= 0 or len(windows) <= size:
        return windows
    keep = np.sort(np.random.default_rng(seed).choice(len(windows), size, replace=False))
    return Windows(windows.series[keep], windows.start[keep], windows.step_begin, windows.step_end)


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
    factors = month_turn_factors(panel.spec, panel.dates)  # the frame holds sales as they landed
    rows, cols = np.nonzero((grid >= panel.first[:, None]) & (grid <= panel.last[:, None]))
    # Keys and split as categoricals, static codes as int32: at M5 scale (54M rows) the frame is a third smaller.
    keys = {c: pd.Categorical(panel.keys[c].astype(str)) for c in ("store_id", "item_id")}
    out = pd.DataFrame(
        {
            "store_id": pd.Categorical.from_codes(keys["store_id"].codes[rows], keys["store_id"].categories),
            "item_id": pd.Categorical.from_codes(keys["item_id"].codes[rows], keys["item_id"].categories),
            "date": panel.dates[cols],
            "target": panel.values[rows, cols] * (1.0 if factors is None else factors[cols]),
            "observed": panel.observed[rows, cols],
        }
    )
    for j, name in enumerate(panel.spec.future_names):
        out[f"future_{name}"] = panel.future[rows, cols, j]
    for j, name in enumerate(list(panel.spec.static_categorical)[: panel.static_cat.shape[1]]):
        out[f"static_{name}"] = panel.static_cat[rows, j].astype(np.int32)
    for j, name in enumerate(panel.spec.static_numeric[: panel.static_num.shape[1]]):
        out[f"static_{name}"] = panel.static_num[rows, j]
    if split_at:
        code = (cols >= split_at["validation"]).astype(np.int8) + (cols >= split_at["test"])
        out["split"] = pd.Categorical.from_codes(code, ["train", "validation", "test"])
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
    # Series numbered in order of first appearance from the keys' own codes (not every row's key as text).
    row = frame.groupby(SERIES, observed=True, sort=False).ngroup().to_numpy()
    keys = frame[SERIES].drop_duplicates().astype(str).reset_index(drop=True)
    n, t = len(keys), len(dates)
    col = dates.get_indexer(pd.DatetimeIndex(frame["date"]))
    values = np.full((n, t), np.nan, dtype="float32")
    values[row, col] = frame["target"].to_numpy(dtype="float32")
    observed = np.zeros((n, t), dtype=bool)
    observed[row, col] = frame["observed"].to_numpy(dtype=bool)
    present = np.zeros((n, t), dtype=bool)
    present[row, col] = True
    frame_last = np.where(present.any(1), t - 1 - present[:, ::-1].argmax(1), -1)
    factors = month_turn_factors(spec, dates)
    if factors is not None:
        values = (values / factors[None, :]).astype("float32")
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


@dataclass(frozen=True)
class Split:
    """Where a features frame's periods split (typed, read off its ``split`` column): the last training date, the
    holdout's length and the validation periods before the cutoff."""

    frequency: str
    cutoff: pd.Timestamp
    horizon: int
    validation_periods: int


def split_of(frame: pd.DataFrame) -> Split:
    """The :class:`Split` of a :func:`panel_frame` frame made with ``split_at``."""
    if "split" not in frame.columns:
        raise ValueError("the features frame has no `split` column: it was built without a holdout")
    spec = json.loads(frame.attrs["feature_spec"])
    dates = frame.drop_duplicates("date").set_index("date")["split"].sort_index()
    counts = dates.value_counts()
    cutoff = pd.Timestamp(dates.index[dates != "test"].max())
    return Split(spec["frequency"], cutoff, int(counts.get("test", 0)), int(counts.get("validation", 0)))
