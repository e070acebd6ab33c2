"""Per-series feedback from the model's own past forecasts: each series' level follows its recent errors (level
feedback) and its spread its past errors (error spread), both fitted on the validation periods; and, where the context
is shorter than a year, its spread follows last year's seasonal level (seasonal spread) (docs/model.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bi_pipeline.forecasting.inference import actuals, past_forecasts, quantile_forecasts
from bi_pipeline.forecasting.modeling import (
    SPREAD_LIMITS,
    BIForecaster,
)
from bi_pipeline.forecasting.panel import (
    Panel,
)

ERROR_POWER_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


ERROR_SCALE_GRID = tuple(np.round(np.arange(0.5, 1.501, 0.05), 2))


def past_error_ratio(model: BIForecaster, panel: Panel, origin: int, series: np.ndarray, windows: int) -> np.ndarray:
    """Per series: the model's mean absolute error of the median over its own forecasts from the ``windows``
    origins before ``origin`` (``origin`` − H, − 2H, …, so every target lies at or before ``origin``), divided by
    the mean width of their 10–90% intervals; NaN where a series has no such forecast.

    What a per-series model such as ETS reads from its own residuals, and a global model trained on scaled windows
    cannot know: how predictable this particular series has been. On aus_retail the model's intervals for the large,
    smooth state series were twice as wide as their errors warranted (docs/accuracy.md)."""
    median = list(model.config.quantiles).index(0.5)
    error, width = np.zeros(len(series)), np.zeros(len(series))
    for rows, quantiles, actual, usable in past_forecasts(model, panel, origin, series, windows, model.config.horizon):
        error[rows] += np.where(usable, np.abs(actual - quantiles[..., median]), 0.0).sum(1)
        width[rows] += np.where(usable, quantiles[..., -1] - quantiles[..., 0], 0.0).sum(1)
    with np.errstate(all="ignore"):
        return np.where(width > 0, error / width, np.nan)


def error_spread_factor(ratio: np.ndarray, reference: float, power: float) -> np.ndarray:
    """Per series: (its past error ratio / the reference ratio) ** ``power``, within the spread factor's limits;
    1 where the ratio is unknown (a series too new to have past forecasts)."""
    with np.errstate(all="ignore"):
        factor = np.clip((ratio / reference) ** power, *SPREAD_LIMITS)
    return np.where(np.isfinite(factor), factor, 1.0)


def respread(quantiles: np.ndarray, factor: np.ndarray, median: int) -> np.ndarray:
    centre = quantiles[..., median : median + 1]
    return centre + (quantiles - centre) * factor[:, None, None]


def fit_error_spread(model: BIForecaster, panel: Panel, cutoff: int, validation: int, windows: int) -> dict:
    """The per-series error spread (power and reference of :func:`error_spread_factor`) and a common factor on the
    spread, chosen together to minimise the weighted quantile loss (WQL) of the forecast from the origin before the
    validation periods, scored on those periods only (never later ones). Ties go to no change."""
    cfg = model.config
    origin = cutoff - validation
    median = list(cfg.quantiles).index(0.5)
    series = np.flatnonzero((panel.first + cfg.patch_length <= origin + 1) & (panel.last > origin))
    off = {"error_spread_power": 0.0, "error_spread_reference": 1.0, "error_spread_windows": windows}
    if not len(series):
        return off
    quantiles = adjusted_forecasts(model, panel, series, origin, spread=False).astype("float64")
    actual, usable = actuals(panel, series, origin, cfg.horizon, cutoff)
    ratio = past_error_ratio(model, panel, origin, series, windows)
    known = np.isfinite(ratio) & (ratio > 0)
    reference = float(np.median(ratio[known])) if known.any() else 1.0
    levels = np.asarray(cfg.quantiles)[None, None, :]
    weight = usable[..., None]
    denominator = max(float(np.abs(actual[usable]).sum()), 1e-12)

    def loss(power: float, scale: float) -> float:
        spread = respread(quantiles, error_spread_factor(ratio, reference, power) * scale, median)
        diff = actual[..., None] - spread
        return float((np.maximum(levels * diff, (levels - 1.0) * diff) * weight).sum() / denominator)

    losses = {(p, float(c)): loss(p, float(c)) for p in ERROR_POWER_GRID for c in ERROR_SCALE_GRID}
    power, scale = min(losses, key=lambda f: (losses[f], f[0] + abs(f[1] - 1.0)))
    # The common factor is folded into spread_scale, so every later interval, the past ones whose ratio is read at
    # forecast time included, is that much wider: their error ratios that much smaller. The reference follows, so
    # the factor applied is the one fitted here.
    return {
        "error_spread_power": power,
        "error_spread_reference": reference / scale if power else 1.0,
        "error_spread_windows": windows,
        "spread_scale": float(cfg.spread_scale) * scale,
    }


# A year in periods, for :func:`seasonal_spread_ratio` (daily: 52 weeks, so that weekdays stay aligned).
YEAR = {"D": 364, "W": 52, "M": 12}
# Of each window last year: at least this share of the periods observed, or the ratio is not read.
YEAR_COVERED = 0.9


def seasonal_spread_ratio(
    panel: Panel, origin: int, series: np.ndarray, context: int, horizon: int, frequency: str
) -> np.ndarray:
    """Per series: its store's median sales per period a year before the ``horizon`` periods forecast, over their
    median over the ``context`` periods before them (the store's sales: the sum over its series), within
    :data:`LEVEL_RATIO_LIMITS`; 1 where the context already holds a year or the history does not reach a year and a
    context back. A series whose windows last year are mostly unobserved takes its store's ratio and adds nothing to
    it; a store with no such series, or whose median is zero, gets 1. Every period it reads lies before ``origin``, a
    year before the periods forecast.

    The network scales each window by its context's mean (``BIForecaster.scale``), so its intervals are as wide as
    the context's level says. A daily context (8 weeks) holds no season of a year: the network learns the level a
    season brings from the calendar, but its widths stay those of the context. Ahead of December, when a store × item
    sells three quarters of its autumn level, the intervals stayed as wide as in the autumn (docs/accuracy.md).
    The store's sales, not each series' own: a slow mover's few sales in 4 weeks say little about its season. Their
    median, not their mean: a store closed for a few days last year did not have a season then. A context of a year or
    more shows the season: left as it is."""
    year = YEAR.get(frequency, 0)
    ratio = np.ones(len(series))
    start = origin - year - context + 1
    if context >= year or start < 0 or not len(series):
        return ratio
    end = origin - year + 1 + horizon
    # Only last year's two windows: the whole panel is read at every forecast origin, and can be millions of cells.
    window = np.where(panel.observed[:, start:end], np.abs(panel.values[:, start:end]), np.nan)
    usable = (np.isfinite(window[:, :context]).mean(1) >= YEAR_COVERED) & (
        np.isfinite(window[:, context:]).mean(1) >= YEAR_COVERED
    )
    store = pd.factorize(panel.keys["store_id"].to_numpy())[0]
    totals = np.zeros((store.max() + 1, window.shape[1]))
    np.add.at(totals, store[usable], np.nan_to_num(window[usable].astype("float64")))
    before, during = np.median(totals[:, :context], axis=1), np.median(totals[:, context:], axis=1)
    with np.errstate(all="ignore"):
        pooled = np.where((before > 0) & (during > 0), during / before, 1.0)
    return np.clip(pooled[store[series]], *LEVEL_RATIO_LIMITS)


LEVEL_POWER_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


LEVEL_RATIO_LIMITS = (0.5, 2.0)


def level_feedback_step(horizon: int) -> int:
    """Periods between the origins whose errors level feedback reads: a fifth of the horizon (8 weeks at 39)."""
    return max(1, -(-horizon // 5))


def recent_level_ratio(model: BIForecaster, panel: Panel, origin: int, series: np.ndarray, origins: int) -> np.ndarray:
    """Per series: Σ actual ÷ Σ median over the model's own forecasts from the ``origins`` origins before ``origin``
    (spaced :func:`level_feedback_step` apart), counting only their targets at or before ``origin``; 1 where a
    series has none. Above 1: the model has been under-forecasting this series lately.

    A global model reads each series' level from its context and shares one idea of how levels move; a store whose
    sales drift away from that (Walmart's store 36, falling for two years) is forecast from the shared idea for the
    whole horizon. Per-series models correct such drift through their residuals; this is that correction."""
    median, step = list(model.config.quantiles).index(0.5), level_feedback_step(model.config.horizon)
    actual_sum, forecast_sum = np.zeros(len(series)), np.zeros(len(series))
    for rows, quantiles, actual, usable in past_forecasts(model, panel, origin, series, origins, step):
        actual_sum[rows] += np.where(usable, actual, 0.0).sum(1)
        forecast_sum[rows] += np.where(usable, quantiles[..., median], 0.0).sum(1)
    with np.errstate(all="ignore"):
        ratio = np.where((forecast_sum > 0) & (actual_sum > 0), actual_sum / forecast_sum, 1.0)
    return np.clip(ratio, *LEVEL_RATIO_LIMITS)


def adjusted_forecasts(
    model: BIForecaster,
    panel: Panel,
    series: np.ndarray,
    origin: int,
    spread: bool = True,
    batch_size: int = 1024,
) -> np.ndarray:
    """:func:`quantile_forecasts` with the model's level feedback and (with ``spread``) its error spread."""
    cfg = model.config
    values = quantile_forecasts(model, panel, series, origin, batch_size)
    if not len(series):
        return values
    level = getattr(cfg, "level_feedback_power", 0.0)
    if level:
        ratio = recent_level_ratio(model, panel, origin, series, int(cfg.level_feedback_origins))
        values = values * (ratio**level)[:, None, None]
    power = getattr(cfg, "error_spread_power", 0.0)
    if spread and power:
        ratio = past_error_ratio(model, panel, origin, series, int(cfg.error_spread_windows))
        factor = error_spread_factor(ratio, cfg.error_spread_reference, power)
        values = respread(values, factor, list(cfg.quantiles).index(0.5))
    if spread and getattr(cfg, "seasonal_spread", False):
        frequency = cfg.feature_spec.get("frequency", "")  # unknown: no year to read back
        factor = seasonal_spread_ratio(panel, origin, series, int(cfg.context_length), cfg.horizon, frequency)
        if (factor != 1.0).any():
            widened = respread(values, factor, list(cfg.quantiles).index(0.5))
            if cfg.feature_spec.get("nonnegative", False):
                # A factor above 1 must not take a quantile the network kept at or above zero below it.
                widened = np.where((widened < 0) & (values >= 0), 0.0, widened)
            values = widened
    return values


def fit_level_feedback(model: BIForecaster, panel: Panel, cutoff: int, validation: int, origins: int) -> dict:
    """The power on :func:`recent_level_ratio` that minimises the median's error on the validation periods, forecast
    from the origin before them (never later periods): the mean over series of the absolute error divided by the
    series' mean absolute one-step change before that origin, as MASE weighs series. Ties go to no feedback."""
    cfg = model.config
    origin = cutoff - validation
    median = list(cfg.quantiles).index(0.5)
    series = np.flatnonzero((panel.first + cfg.patch_length <= origin + 1) & (panel.last > origin))
    off = {"level_feedback_power": 0.0, "level_feedback_origins": origins}
    if not len(series):
        return off
    forecast_median = quantile_forecasts(model, panel, series, origin)[..., median].astype("float64")
    actual, usable = actuals(panel, series, origin, cfg.horizon, cutoff)
    history = panel.values[series, : origin + 1].astype("float64")
    with np.errstate(all="ignore"):
        scale = np.nanmean(np.abs(np.diff(history, axis=1)), axis=1)
    keep = np.isfinite(scale) & (scale > 0) & usable.any(1)
    if not keep.any():
        return off
    ratio = recent_level_ratio(model, panel, origin, series, origins)

    def loss(power: float) -> float:
        error = np.where(usable, np.abs(actual - forecast_median * (ratio**power)[:, None]), 0.0).sum(1)
        per_series = error[keep] / usable[keep].sum(1) / scale[keep]
        return float(per_series.mean())

    losses = {p: loss(p) for p in LEVEL_POWER_GRID}
    power = min(losses, key=lambda p: (losses[p], p))
    return {"level_feedback_power": power, "level_feedback_origins": origins}
