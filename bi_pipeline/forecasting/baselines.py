"""Strong baselines from statsforecast, on the integrated history (no Dagster): seasonal naive and AutoETS (with
additive errors: multiplicative-error models can pick 39-step intervals that explode). Every model returns the same
frame: store_id, item_id, date, mean and the quantiles q0.1 … q0.9; LightGBM lives in
:mod:`bi_pipeline.forecasting.lightgbm`."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from bi_pipeline.forecasting.calendar import dates_after, pandas_freq
from bi_pipeline.forecasting.metrics import QUANTILES, SERIES, quantile_column

# Central interval levels whose bounds are the quantiles 0.1..0.4 and 0.6..0.9.
LEVELS = (20, 40, 60, 80)
SERIES_PER_PROCESS = 150


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


def _fitted(history: pd.DataFrame, frequency: str, season_length: int, names: tuple[str, ...]):
    """(the statsforecast engine fitted on ``history``, its nixtla frame)."""
    from statsforecast import StatsForecast
    from statsforecast.models import AutoETS, Naive, SeasonalNaive

    data = to_nixtla(history)
    build = {
        "seasonal_naive": lambda: SeasonalNaive(season_length=season_length),
        "auto_ets": lambda: AutoETS(season_length=season_length, model="AZZ"),
    }
    models = [build[name]() for name in names]
    # A series too short for ETS (a new item with a few periods) gets the naive forecast instead of failing all.
    # Every core from a few hundred series on (2,970 weekly AutoETS fits: 116 s on one core, 58 on two); below that
    # starting the processes costs more than it saves.
    jobs = max(1, min(os.cpu_count() or 1, data["unique_id"].nunique() // SERIES_PER_PROCESS))
    engine = StatsForecast(models=models, freq=pandas_freq(history, frequency), n_jobs=jobs, fallback_model=Naive())
    return engine.fit(df=data), data


def statistical_forecast(
    history: pd.DataFrame,
    horizon: int,
    frequency: str,
    season_length: int,
    names: tuple[str, ...] = tuple(STATISTICAL),
) -> dict[str, pd.DataFrame]:
    """Seasonal naive and AutoETS (additive error) forecasts with quantiles, per series (those in ``names``)."""
    engine, data = _fitted(history, frequency, season_length, names)
    predictions = engine.predict(h=horizon, level=list(LEVELS))
    return _frames(predictions, data, names)


def forecasts_from_origins(
    history: pd.DataFrame,
    origins: list[pd.Timestamp],
    horizon: int,
    frequency: str,
    season_length: int,
    name: str = "auto_ets",
) -> list[pd.DataFrame]:
    """``name``'s forecasts from each origin, each from the history up to it: fitted once at the first origin; at the
    later ones each series' fitted model reads the newer periods without being estimated again (statsforecast's
    ``forward``, as its ``cross_validation(refit=False)`` does). A series with no fitted model that can do so (it
    began after the first origin, or fell back to the naive model) is fitted at the origin."""
    engine, data = _fitted(history[history["date"] <= origins[0]], frequency, season_length, (name,))
    out = [_frames(engine.predict(h=horizon, level=list(LEVELS)), data, (name,))[name]]
    fitted = dict(zip(map(str, engine.uids), engine.fitted_[:, 0], strict=True))
    alias, freq = STATISTICAL[name], pandas_freq(history, frequency)
    levels = [f"{side}-{level}" for side in ("lo", "hi") for level in LEVELS]
    for origin in origins[1:]:
        part = history[history["date"] <= origin]
        data = to_nixtla(part)
        ids, ends, values, refit = [], [], [], []
        for uid, series in data.groupby("unique_id", sort=False):
            model = fitted.get(str(uid))
            try:
                if type(model).__name__ != alias:  # absent, or the naive fallback
                    raise LookupError(uid)
                result = model.forward(y=series["y"].to_numpy(), h=horizon, level=list(LEVELS))
            except Exception:  # noqa: BLE001 - a series the fitted model cannot read is fitted again below
                refit.append(uid)
                continue
            ids.append(uid)
            ends.append(series["ds"].iloc[-1])
            values.append(np.column_stack([result["mean"], *(result[key] for key in levels)]))
        frames = []
        if ids:  # one frame for every series at once
            rows = pd.DataFrame(np.concatenate(values), columns=[alias, *(f"{alias}-{key}" for key in levels)])
            rows.insert(0, "unique_id", np.repeat(ids, horizon))
            rows.insert(1, "ds", dates_after(np.array(ends), horizon, freq))
            frames.append(_frames(rows, data, (name,))[name])
        if refit:
            fresh = part[series_id(part).isin(refit)]
            frames.append(statistical_forecast(fresh, horizon, frequency, season_length, (name,))[name])
        out.append(pd.concat(frames, ignore_index=True))
    return out


def _frames(predictions: pd.DataFrame, data: pd.DataFrame, names: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """statsforecast's predictions as one frame per model (:func:`_from_intervals`), gaps filled."""
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
