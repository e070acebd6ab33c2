"""Forecast accuracy metrics, by series and overall (plain numpy; no Dagster).

A forecast frame has one row per series and date with the actual ``sales``, the point forecast ``mean`` and the
quantile columns ``q0.1`` … ``q0.9``. Definitions (the backtest's JSON uses these names):

- MASE: per series, mean |y - ŷ| over the horizon divided by the in-sample mean absolute M-step difference
  (M = season length: 7 daily, 52 weekly, 12 monthly by default); averaged over series with a non-zero scale.
- RMSSE: per series, the root of mean (y - ŷ)² over the horizon divided by the in-sample mean squared one-step
  difference, averaged over series with a non-zero scale: M5's accuracy measure, made for intermittent demand, where
  MASE rewards a forecast of all zeros (the median of a series of mostly zeros) and RMSSE does not.
- WAPE: Σ|y - ŷ| / Σ|y|.
- WQL: the mean over the quantile levels of 2·Σ pinball_q / Σ|y|.
- coverage_80: share of actuals inside the 10–90% interval, a tie split (the randomized PIT of count data): where the
  actual sits on a point mass of the forecast (zero, with several quantiles at zero), it counts by the share of that
  mass between the 10% and 90% levels. Without ties it is the share inside [q0.1, q0.9]. A calibrated forecast of a
  count covers about 80% this way (as near as nine levels can tell its steps); the closed interval counts every zero
  at a lower quantile of zero as inside, so it covers more (a slow mover that is zero half the time: at least 90%).
- coverage_80_closed: share of actuals inside the closed interval [q0.1, q0.9] (utilsforecast's ``coverage``).
- bias: Σ(ŷ - y) / Σ|y| (positive: over-forecasting).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
METRICS = ("MASE", "RMSSE", "WAPE", "WQL", "coverage_80", "coverage_80_closed", "bias")
SEASON_LENGTH = {"D": 7, "W": 52, "M": 12}
SERIES = ["store_id", "item_id"]


def season_length_for(frequency: str, training_periods: int, configured: int | None = None) -> int:
    """The configured season length, else the frequency's default when the training history holds more than one
    season of it, else 1 (a history shorter than a season has no seasonal differences to scale by)."""
    if configured:
        return configured
    default = SEASON_LENGTH[frequency]
    return default if training_periods > default else 1


def quantile_column(level: float) -> str:
    return f"q{level:g}"


def pinball(y: np.ndarray, q: np.ndarray, level: float) -> np.ndarray:
    """Pinball (quantile) loss per element."""
    diff = y - q
    return np.maximum(level * diff, (level - 1.0) * diff)


def mase_scales(train: pd.DataFrame, season_length: int, target: str = "sales") -> pd.Series:
    """In-sample mean absolute ``season_length``-step difference per series (NaN when too short or missing)."""
    ordered = train.sort_values([*SERIES, "date"])
    lagged = ordered.groupby(SERIES, observed=True)[target].shift(season_length)
    diffs = (ordered[target] - lagged).abs()
    return diffs.groupby([ordered[c] for c in SERIES], observed=True).mean()


def mase(forecast: pd.DataFrame, scales: pd.Series, point: str = "mean") -> float:
    errors = (forecast["sales"] - forecast[point]).abs()
    per_series = errors.groupby([forecast[c] for c in SERIES], observed=True).mean()
    scale = scales.reindex(per_series.index)
    usable = scale.notna() & (scale > 0)
    return float((per_series[usable] / scale[usable]).mean())


def rmsse_scales(train: pd.DataFrame, target: str = "sales") -> pd.Series:
    """In-sample mean squared one-step difference per series (NaN when a series has a single period)."""
    ordered = train.sort_values([*SERIES, "date"])
    lagged = ordered.groupby(SERIES, observed=True)[target].shift(1)
    squared = (ordered[target] - lagged) ** 2
    return squared.groupby([ordered[c] for c in SERIES], observed=True).mean()


def rmsse(forecast: pd.DataFrame, scales: pd.Series, point: str = "mean") -> float:
    squared = (forecast["sales"] - forecast[point]) ** 2
    per_series = squared.groupby([forecast[c] for c in SERIES], observed=True).mean()
    scale = scales.reindex(per_series.index)
    usable = scale.notna() & (scale > 0)
    return float(np.sqrt(per_series[usable] / scale[usable]).mean())


def wape(forecast: pd.DataFrame, point: str = "mean") -> float:
    return float((forecast["sales"] - forecast[point]).abs().sum() / forecast["sales"].abs().sum())


def wql(forecast: pd.DataFrame, quantiles: tuple[float, ...] = QUANTILES) -> float:
    y = forecast["sales"].to_numpy(dtype="float64")
    denominator = np.abs(y).sum()
    losses = [
        2.0 * pinball(y, forecast[quantile_column(q)].to_numpy(dtype="float64"), q).sum() / denominator
        for q in quantiles
    ]
    return float(np.mean(losses))


def pit_bounds(
    quantiles: np.ndarray, y: np.ndarray, levels: tuple[float, ...] = QUANTILES
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, F(y−) and F(y) of the distribution a row of quantiles (rows, levels; read sorted) describes: its
    quantile function linear between the levels, the tails beyond the outermost levels continuous, except that a
    lowest quantile at or below zero holds the lower tail's mass (a floor at zero: the forecast of a count says
    "zero" that often). The two differ only where ``y`` sits on a point mass: equal quantiles, or that floor."""
    quantiles = np.sort(np.asarray(quantiles, dtype="float64"), axis=1)
    grid = np.asarray(levels, dtype="float64")
    actual = np.asarray(y, dtype="float64")
    start, end = quantiles[:, :-1], quantiles[:, 1:]  # each stretch of the quantile function between two levels
    low, high = grid[:-1], grid[1:]
    column = actual[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):  # flat stretches divide by 0, and are never read here
        crossing = low + (high - low) * np.clip((column - start) / (end - start), 0.0, 1.0)
    upper = np.where(end <= column, high, np.where(start <= column, crossing, 0.0)).max(1)
    lower = np.where(end < column, high, np.where(start < column, crossing, 0.0)).max(1)
    first, last = quantiles[:, 0], quantiles[:, -1]
    floor = first <= 0  # the lower tail's mass sits at the lowest quantile
    upper = np.maximum(upper, np.where(actual >= first, grid[0], 0.0))
    lower = np.maximum(lower, np.where((actual > first) | ((actual == first) & ~floor), grid[0], 0.0))
    above = actual > last
    return np.where(above, 1.0, lower), np.where(above, 1.0, upper)


def covered_share(quantiles: np.ndarray, y: np.ndarray, low: float = 0.1, high: float = 0.9) -> np.ndarray:
    """Per row, how much of the actual is inside the ``low``–``high`` interval: 1 or 0, or with a tie the share of
    the point mass it sits on that lies between the two levels (:func:`pit_bounds`). Columns: :data:`QUANTILES`."""
    lower, upper = pit_bounds(quantiles, y)
    mass = upper - lower
    shared = np.clip(np.minimum(upper, high) - np.maximum(lower, low), 0.0, None) / np.where(mass > 0, mass, 1.0)
    # Without a tie F(y) is one level, inside [low, high] exactly when q_low <= y <= q_high.
    return np.where(mass > 1e-12, shared, ((upper >= low - 1e-12) & (upper <= high + 1e-12)).astype("float64"))


def coverage(forecast: pd.DataFrame, low: float = 0.1, high: float = 0.9) -> float:
    """The share of actuals inside the ``low``–``high`` interval, ties split (module docstring: coverage_80)."""
    quantiles = forecast[[quantile_column(q) for q in QUANTILES]].to_numpy(dtype="float64")
    return float(covered_share(quantiles, forecast["sales"].to_numpy(dtype="float64"), low, high).mean())


def closed_coverage(forecast: pd.DataFrame, low: float = 0.1, high: float = 0.9) -> float:
    """The share of actuals inside the closed interval [q_low, q_high]."""
    y = forecast["sales"]
    inside = (y >= forecast[quantile_column(low)]) & (y <= forecast[quantile_column(high)])
    return float(inside.mean())


def bias(forecast: pd.DataFrame, point: str = "mean") -> float:
    return float((forecast[point] - forecast["sales"]).sum() / forecast["sales"].abs().sum())


def score(forecast: pd.DataFrame, train: pd.DataFrame, season_length: int) -> dict[str, float]:
    """Every metric of one model's forecasts against the actuals, MASE scaled on ``train``."""
    forecast = forecast.dropna(subset=["sales"])
    return {
        "MASE": mase(forecast, mase_scales(train, season_length)),
        "RMSSE": rmsse(forecast, rmsse_scales(train)),
        "WAPE": wape(forecast),
        "WQL": wql(forecast),
        "coverage_80": coverage(forecast),
        "coverage_80_closed": closed_coverage(forecast),
        "bias": bias(forecast),
    }
