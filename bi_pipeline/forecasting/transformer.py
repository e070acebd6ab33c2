"""Forecasting with a trained network: the quantile frame for the periods after an origin, with the model's
calibration and per-series feedback."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bi_pipeline.forecasting.feedback import adjusted_forecasts
from bi_pipeline.forecasting.metrics import QUANTILES, quantile_column
from bi_pipeline.forecasting.modeling import (
    BIForecaster,
)
from bi_pipeline.forecasting.panel import Panel, month_turn_factors


def forecast(
    model: BIForecaster, panel: Panel, origin: int, series: np.ndarray | None = None, batch_size: int = 1024
) -> pd.DataFrame:
    """Quantile forecasts for the ``horizon`` periods after date index ``origin``: store_id, item_id, date, mean
    (the median, the point forecast that minimises absolute error) and q0.1 … q0.9, in sales units. With fitted
    level feedback and error spread, each series' level follows the model's recent errors on it
    (:func:`recent_level_ratio`) and its distances from the median its past errors (:func:`past_error_ratio`)."""
    cfg = model.config
    if series is None:
        series = np.flatnonzero(panel.first <= origin)
    horizon = cfg.horizon
    if origin + horizon >= len(panel.dates):
        raise ValueError(f"the panel's date grid ends before origin + horizon ({origin} + {horizon})")
    values = adjusted_forecasts(model, panel, series, origin, batch_size=batch_size)
    n = len(series)
    dates = panel.dates[origin + 1 : origin + 1 + horizon]
    factors = month_turn_factors(panel.spec, dates)
    if factors is not None:  # the network forecasts month-turn-adjusted sales
        values = values * factors[None, :, None]
    out = pd.DataFrame(
        {
            "store_id": np.repeat(panel.keys["store_id"].to_numpy()[series], horizon),
            "item_id": np.repeat(panel.keys["item_id"].to_numpy()[series], horizon),
            "date": np.tile(dates.to_numpy(), n),
        }
    )
    flat = values.reshape(n * horizon, len(cfg.quantiles))
    for j, q in enumerate(cfg.quantiles):
        out[quantile_column(q)] = flat[:, j].astype("float64")
    out["mean"] = out[quantile_column(0.5)]
    out = out[["store_id", "item_id", "date", *FORECAST_COLUMNS]]
    if cfg.feature_spec.get("nonnegative", False):
        out.attrs["clipped_quantiles"] = floor_at_zero(out)
    return out


FORECAST_COLUMNS = ["mean", *[quantile_column(q) for q in QUANTILES]]


def floor_at_zero(frame: pd.DataFrame) -> int:
    """Clips the forecast columns of a non-negative measure at zero, in place; returns how many values were below.
    A last guard, counted: the network's quantiles already keep to that support (modeling.smooth_floor), but the
    per-series feedback and a blend's spread can still move a low quantile below it."""
    values = frame[FORECAST_COLUMNS].to_numpy(dtype="float64")
    below = int((values < 0).sum())
    if below:
        frame[FORECAST_COLUMNS] = np.maximum(values, 0.0)
    return below
