"""Strong baselines from statsforecast, on the integrated history (no Dagster): seasonal naive and AutoETS (with
additive errors: multiplicative-error models can pick 39-step intervals that explode). Every model returns the same
frame: store_id, item_id, date, mean and the quantiles q0.1 … q0.9; LightGBM lives in
:mod:`bi_pipeline.forecasting.lightgbm`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bi_pipeline.forecasting.calendar import pandas_freq
from bi_pipeline.forecasting.metrics import QUANTILES, SERIES, quantile_column

# Central interval levels whose bounds are the quantiles 0.1..0.4 and 0.6..0.9.
LEVELS = (20, 40, 60, 80)


def series_id(frame: pd.DataFrame) -> pd.Series:
    return frame["store_id"].astype(str) + "|" + frame["item_id"].astype(str)


def to_nixtla(history: pd.DataFrame) -> pd.DataFrame:
    """unique_id, ds, y — missing sales interpolated inside each series (the libraries need complete series)."""
    frame = pd.DataFrame(
        {"unique_id": series_id(history), "ds": history["date"].to_numpy(), "y": history["sales"].astype("float64")}
    )
    frame["y"] = frame.groupby("unique_id")["y"].transform(lambda s: s.interpolate(limit_direction="both"))
    frame["y"] = frame["y"].fillna(0.0)
    return frame.sort_values(["unique_id", "ds"]).reset_index(drop=True)


def _from_intervals(predictions: pd.DataFrame, model: str) -> pd.DataFrame:
    """Library output (model, model-lo-80, …) as mean and quantile columns, keyed by store_id and item_id."""
    ids = predictions["unique_id"].astype(str).str.split("|", n=1, expand=True)
    out = pd.DataFrame({"store_id": ids[0], "item_id": ids[1], "date": predictions["ds"].to_numpy()})
    out["mean"] = predictions[model].to_numpy(dtype="float64")
    for level in QUANTILES:
        if level == 0.5:
            out[quantile_column(level)] = out["mean"]
            continue
        width = int(round(abs(level - 0.5) * 200))
        side = "lo" if level < 0.5 else "hi"
        column = f"{model}-{side}-{width}"
        out[quantile_column(level)] = (
            predictions[column].to_numpy(dtype="float64") if column in predictions else out["mean"]
        )
    # Quantiles never cross: sort each row's quantile values.
    columns = [quantile_column(q) for q in QUANTILES]
    out[columns] = np.sort(out[columns].to_numpy(), axis=1)
    return out


STATISTICAL = {"seasonal_naive": "SeasonalNaive", "auto_ets": "AutoETS"}


def statistical_forecast(
    history: pd.DataFrame,
    horizon: int,
    frequency: str,
    season_length: int,
    names: tuple[str, ...] = tuple(STATISTICAL),
) -> dict[str, pd.DataFrame]:
    """Seasonal naive and AutoETS (additive error) forecasts with quantiles, per series (those in ``names``)."""
    from statsforecast import StatsForecast
    from statsforecast.models import AutoETS, Naive, SeasonalNaive

    data = to_nixtla(history)
    build = {
        "seasonal_naive": lambda: SeasonalNaive(season_length=season_length),
        "auto_ets": lambda: AutoETS(season_length=season_length, model="AZZ"),
    }
    models = [build[name]() for name in names]
    # A series too short for ETS (a new item with a few periods) gets the naive forecast instead of failing all.
    engine = StatsForecast(models=models, freq=pandas_freq(history, frequency), n_jobs=1, fallback_model=Naive())
    engine.fit(df=data)
    predictions = engine.predict(h=horizon, level=list(LEVELS))
    predictions = predictions.reset_index() if "unique_id" not in predictions.columns else predictions
    # A series shorter than one season has no seasonal-naive forecast: it gets the naive one (its last value).
    last = data.groupby("unique_id")["y"].last()
    out = {}
    for name in names:
        model = STATISTICAL[name]
        frame = _from_intervals(predictions, model)
        fallback = (frame["store_id"] + "|" + frame["item_id"]).map(last)
        columns = ["mean", *[quantile_column(q) for q in QUANTILES]]
        for column in columns:
            frame[column] = frame[column].fillna(fallback)
        out[name] = frame
    return out


def split_last(history: pd.DataFrame, horizon: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train on all but the last ``horizon`` periods of the whole history; test on those periods."""
    dates = np.sort(history["date"].unique())
    cutoff = dates[-horizon - 1]
    return history[history["date"] <= cutoff], history[history["date"] > cutoff]


def attach_actuals(forecast: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    actual = test[[*SERIES, "date", "sales"]].astype({"store_id": str, "item_id": str})
    return forecast.astype({"store_id": str, "item_id": str}).merge(actual, on=[*SERIES, "date"], how="inner")
