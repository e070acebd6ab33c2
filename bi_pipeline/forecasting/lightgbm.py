"""LightGBM through mlforecast (no Dagster): recursive, each series robust-scaled (median, MAD with a floor), lags and
rolling means that follow the frequency and the series' history lengths, calendar features, the store id as a
categorical and calendar covariates as known-future features; quantiles from quantile-loss models. Recursive forecasts
are bounded twice: each step inside the recursion by the range the scaled training targets span, and each series'
forecast by what its own history makes plausible (docs/model.md, "LightGBM"). Saved as LightGBM's text format and a
JSON recipe: loading unpickles nothing."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bi_pipeline.forecasting.baselines import series_id, to_nixtla
from bi_pipeline.forecasting.calendar import (
    calendar_names,
    dates_after,
    effect_names,
    effects_and_changes,
    pandas_freq,
)
from bi_pipeline.forecasting.metrics import QUANTILES, quantile_column

# LightGBM's calendar effects: the transformer's default (docs/model.md, "Calendar effects").
LIGHTGBM_EFFECTS = "easter"


# A saved LightGBM: each booster in LightGBM's own text format and ``lightgbm.json`` (the recipe that rebuilds the
# mlforecast pipeline around them). Nothing in it is unpickled; directories without a format were pickled mlforecast
# objects and are refused.
LIGHTGBM_FORMAT = 3


LIGHTGBM_META = "lightgbm.json"


# What MLForecast.predict(new_df=…) reads from the fitted series besides its recipe: the column names and fit options
# (the series' values and the robust scaler's statistics are fitted again on ``new_df``).
FITTED_SERIES_STATE = (
    "id_col",
    "time_col",
    "target_col",
    "static_features",
    "keep_last_n",
    "weight_col",
    "max_horizon",
    "_horizons",
    "as_numpy",
)


class UnsafeModelFormat(ValueError):
    """A saved model whose loading would unpickle it (a version saved before LightGBM's text format): not loaded."""


@dataclass
class LightGBMModel:
    """A fitted recursive LightGBM (mlforecast) and what it needs to forecast again from newer history: the same
    trees read the new periods' lags (``predict(new_df=…)``), as the transformer reads a newer context."""

    forecaster: object  # mlforecast.MLForecast
    frequency: str
    freq: str  # pandas offset alias
    covariates: list[str]
    fit_seconds: float = 0.0
    recipe: dict = field(default_factory=dict)  # plain values that configure the MLForecast (see _mlforecast)

    def save(self, path: Path) -> None:
        if not self.recipe:
            raise ValueError("a LightGBM model without its recipe cannot be saved: fit it with fit_lightgbm")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        names = list(self.forecaster.models_)
        for number, name in enumerate(names):
            self.forecaster.models_[name].booster.save_model(str(path / f"model_{number}.txt"))
        ts = self.forecaster.ts
        meta = {
            "format": LIGHTGBM_FORMAT,
            "frequency": self.frequency,
            "freq": self.freq,
            "covariates": self.covariates,
            "fit_seconds": self.fit_seconds,
            "recipe": self.recipe,
            "models": names,
            "features": list(ts.features_order_),
            "fitted": {name: getattr(ts, name) for name in FITTED_SERIES_STATE},
        }
        (path / LIGHTGBM_META).write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, path: Path) -> LightGBMModel:
        import lightgbm as lgb

        path = Path(path)
        meta_file = path / LIGHTGBM_META
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        if (path / "mlforecast").exists() or "format" not in meta:
            raise UnsafeModelFormat(
                f"the LightGBM model in {path} was saved in an unsafe format (pickled mlforecast objects) and is not "
                "loaded: retrain the model"
            )
        if meta["format"] != LIGHTGBM_FORMAT:
            raise ValueError(f"the LightGBM model in {path} has format {meta['format']!r}, not {LIGHTGBM_FORMAT}")
        boosters = {}
        for number, name in enumerate(meta["models"]):
            booster = lgb.Booster(model_file=str(path / f"model_{number}.txt"))
            if booster.feature_name() != meta["features"]:
                raise ValueError(f"the LightGBM model {name!r} in {path} was trained on other features than it lists")
            boosters[name] = Clipped(booster, *meta["recipe"]["scaled_bounds"])
        forecaster = _mlforecast(meta["recipe"], boosters)
        _attach_fitted(forecaster, boosters, meta["fitted"])
        return cls(
            forecaster,
            meta["frequency"],
            meta["freq"],
            list(meta["covariates"]),
            float(meta.get("fit_seconds", 0.0)),
            meta["recipe"],
        )


class CalendarEffect:
    """An mlforecast date feature: one column of the transformer's calendar effects (the Easter windows and their
    change against a season before, features.effects_and_changes), so LightGBM knows where Easter falls as the
    transformer does. Rebuilt from (frequency, column) when a saved model is loaded."""

    def __init__(self, frequency: str, column: int) -> None:
        self.frequency, self.column = frequency, column
        self.__name__ = calendar_names(frequency, LIGHTGBM_EFFECTS)[len(calendar_names(frequency)) + column]
        self.known: dict[np.datetime64, float] = {}  # the column's value per period computed so far

    def __call__(self, dates) -> np.ndarray:
        # mlforecast passes one date per row (every series), and asks again at every recursive step of every quantile
        # model: compute each distinct period once.
        unique, index = np.unique(pd.DatetimeIndex(dates).to_numpy(), return_inverse=True)
        missing = [d for d in unique if d not in self.known]
        if missing:
            values = effects_and_changes(pd.DatetimeIndex(missing), self.frequency, LIGHTGBM_EFFECTS)
            self.known.update(zip(missing, values[:, self.column].tolist(), strict=True))
        return np.array([self.known[d] for d in unique], dtype="float64")[index]


def calendar_effect_features(frequency: str) -> list[CalendarEffect]:
    return [CalendarEffect(frequency, j) for j in range(2 * len(effect_names(frequency, LIGHTGBM_EFFECTS)))]


def series_scales(frame: pd.DataFrame) -> pd.DataFrame:
    """Each series' (centre, scale) for the robust scaling: the median and the MAD, floored at half the mean absolute
    deviation from the median. A series whose MAD is 0 (a contract volume repeated most periods, an intermittent one
    with a median of 0) is otherwise left in raw units among series scaled to a few units, where one global model's
    leaves are meaningless and recursive forecasts explode."""
    grouped = frame.groupby("unique_id", observed=True)["y"]
    centre = grouped.median()
    deviation = (frame["y"] - frame["unique_id"].map(centre).to_numpy(dtype="float64")).abs()
    by_series = deviation.groupby(frame["unique_id"], observed=True)
    scale = np.maximum(by_series.median(), 0.5 * by_series.mean())
    return pd.DataFrame({"centre": centre, "scale": scale.where(scale > 0, 1.0)})


def plausible_range(frame: pd.DataFrame) -> pd.DataFrame:
    """Each series' (low, high) bound on its forecasts: its history's range widened by that range on either side, and
    never below 0 for a series that was never negative (a sales measure)."""
    grouped = frame.groupby("unique_id", observed=True)["y"]
    low, high = grouped.min(), grouped.max()
    span = (high - low).where(high > low, high.abs().clip(lower=1.0))
    return pd.DataFrame({"low": (low - span).where(low < 0, 0.0), "high": high + span})


class Clipped:
    """A fitted booster whose predictions are bounded to [low, high] (scaled units): mlforecast feeds each recursive
    step's prediction back as the next step's lag, so one absurd step would compound over the horizon."""

    def __init__(self, model, low: float, high: float) -> None:
        self.model, self.low, self.high = model, low, high

    @property
    def booster(self):
        return getattr(self.model, "booster_", self.model)

    def predict(self, features, **kwargs) -> np.ndarray:
        return np.clip(self.model.predict(features, **kwargs), self.low, self.high)


def _mlforecast(recipe: dict, models: dict):
    """The mlforecast pipeline a recipe describes (plain values only, so a saved model rebuilds it from JSON)."""
    from mlforecast import MLForecast
    from mlforecast.lag_transforms import RollingMean

    windows = recipe["rolling_mean_windows"]
    # The targets arrive scaled (series_scales): one global model for series of very different sizes (measured on
    # Walmart: MASE 0.691 unscaled, 0.640 standard-scaled, 0.612 robust-scaled).
    return MLForecast(
        models=models,
        freq=recipe["freq"],
        lags=[int(lag) for lag in recipe["lags"]],
        lag_transforms={1: [RollingMean(window_size=int(w)) for w in windows]} if windows else None,
        date_features=[
            *recipe["date_features"],
            *(CalendarEffect(frequency, int(column)) for frequency, column in recipe["calendar_effects"]),
        ],
    )


def _attach_fitted(forecaster, boosters: dict, fitted: dict) -> None:
    """Makes a rebuilt MLForecast forecast with saved boosters. mlforecast has no public call for this (its own
    ``load`` unpickles): ``predict(new_df=…)`` reads the fitted models from ``models_`` and, from the fitted series,
    only the attributes of FITTED_SERIES_STATE (it fits the series and the target scaler on ``new_df`` again), and
    ``_cs_df`` is None without conformal intervals."""
    forecaster.models_ = boosters
    forecaster._cs_df = None
    for name in FITTED_SERIES_STATE:
        setattr(forecaster.ts, name, fitted[name])


def _lightgbm_frame(history: pd.DataFrame, covariates: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the mlforecast frame with scaled targets, each series' centre, scale and plausible range)."""
    data = to_nixtla(history)
    extra = history.assign(unique_id=series_id(history))[["unique_id", "date", *covariates]].rename(
        columns={"date": "ds"}
    )
    data = data.merge(extra, on=["unique_id", "ds"], how="left")
    data["store"] = data["unique_id"].str.split("|").str[0].astype("category")
    stats = series_scales(data).join(plausible_range(data))
    rows = data["unique_id"]
    data["y"] = (data["y"] - rows.map(stats["centre"]).to_numpy()) / rows.map(stats["scale"]).to_numpy()
    return data, stats


def lags_for(frequency: str, lengths: np.ndarray, horizon: int) -> tuple[list[int], list[int]]:
    """(lags, rolling-mean windows) for the frequency that most series' histories can feed: each shorter than the
    25th percentile of the histories' lengths less the horizon, so that short series still train and forecast from
    real lags rather than missing ones."""
    if frequency == "W":
        lags = [1, 2, 3, 4, 8, 13, 26, 52]
    elif frequency == "M":
        # The reference protocol's lags with the monthly seasonal ones (6, 12, 24, 36) added: on aus_retail MASE
        # 1.048 against 1.120 with 1, 2, 3, 6, 12, and 1.140 against 1.246 on the window before (docs/accuracy.md).
        lags = [1, 2, 3, 4, 6, 8, 12, 13, 24, 26, 36, 52]
    else:
        lags = [1, 2, 3, 7, 14, 28]
    usable = int(np.quantile(lengths, 0.25)) - horizon if len(lengths) else 0
    return [lag for lag in lags if lag < usable] or [1], [w for w in (4, 13) if w < usable]


def fit_lightgbm(
    history: pd.DataFrame,
    horizon: int,
    frequency: str,
    covariates: list[str] | None = None,
    seed: int = 0,
) -> LightGBMModel:
    """Recursive LightGBM with lag/rolling/calendar features, a point model and quantile-loss models."""
    import lightgbm as lgb

    covariates = [c for c in (covariates or []) if c in history.columns]
    data, _ = _lightgbm_frame(history, covariates)
    lags, windows = lags_for(frequency, data.groupby("unique_id", observed=True).size().to_numpy(), horizon)
    params = {"n_estimators": 300, "learning_rate": 0.05, "num_leaves": 31, "verbosity": -1, "seed": seed}
    # Quantiles from quantile-loss models (conformal intervals need two held-out horizons, more than short histories
    # such as 104 weeks with H = 39 have). The point forecast is the median model's: a squared-error model chases the
    # largest scaled deviations (MASE on Walmart 0.615 against 0.588, aus_retail 1.057 against 1.032).
    models = {
        ("lightgbm" if q == 0.5 else f"lightgbm_{quantile_column(q)}"): lgb.LGBMRegressor(
            objective="quantile", alpha=q, **params
        )
        for q in QUANTILES
    }
    freq = pandas_freq(history, frequency)
    recipe = {
        "freq": freq,
        "lags": lags,
        "rolling_mean_windows": windows,
        "date_features": ["month", "week"] if frequency in ("D", "W") else ["month"],
        "calendar_effects": [[f.frequency, f.column] for f in calendar_effect_features(frequency)],
        "static_features": ["store"],
    }
    # Each recursive step within the scaled targets' range, widened by half of it on either side.
    low, high = float(data["y"].min()), float(data["y"].max())
    recipe["scaled_bounds"] = [low - 0.5 * (high - low), high + 0.5 * (high - low)]
    model = _mlforecast(recipe, models)
    started = time.perf_counter()
    with warnings.catch_warnings():
        # A series shorter than the longest lag trains no rows (it still forecasts, its missing lags read as such).
        warnings.filterwarnings("ignore", message="The following series were dropped", category=UserWarning)
        model.fit(data, static_features=recipe["static_features"])
    model.models_ = {name: Clipped(fitted, *recipe["scaled_bounds"]) for name, fitted in model.models_.items()}
    return LightGBMModel(model, frequency, freq, covariates, time.perf_counter() - started, recipe)


def predict_lightgbm(
    model: LightGBMModel,
    history: pd.DataFrame,
    horizon: int,
    future: pd.DataFrame | None = None,
    fitted: bool = False,
) -> pd.DataFrame:
    """Quantile forecasts for ``horizon`` periods after ``history``: newer periods than the fit are read by the same
    trees (``fitted``: ``history`` is the very frame the model was fitted on); ``future`` holds known-future
    covariates."""
    new_df, stats = _lightgbm_frame(history, model.covariates)
    new_df = None if fitted else new_df
    x_future = None
    if model.covariates:
        x_future = _future_covariates(history, future, model.covariates, horizon, model.freq)
    started = time.perf_counter()
    with warnings.catch_warnings():
        # Lags longer than a short series' history are missing for it: expected, and LightGBM reads them as such.
        warnings.filterwarnings("ignore", message="Found null values", category=UserWarning)
        predictions = model.forecaster.predict(h=horizon, X_df=x_future, new_df=new_df)
    predict_seconds = time.perf_counter() - started
    ids = predictions["unique_id"].astype(str).str.split("|", n=1, expand=True)
    out = pd.DataFrame({"store_id": ids[0], "item_id": ids[1], "date": predictions["ds"].to_numpy()})
    series = stats.reindex(predictions["unique_id"].astype(str))
    centre, scale = series["centre"].to_numpy(), series["scale"].to_numpy()
    low, high = series["low"].to_numpy()[:, None], series["high"].to_numpy()[:, None]
    for q in QUANTILES:
        source = "lightgbm" if q == 0.5 else f"lightgbm_{quantile_column(q)}"
        out[quantile_column(q)] = predictions[source].to_numpy(dtype="float64") * scale + centre
    columns = [quantile_column(q) for q in QUANTILES]
    out[columns] = np.clip(np.sort(out[columns].to_numpy(), axis=1), low, high)
    out.insert(3, "mean", out[quantile_column(0.5)])
    out.attrs["timing"] = {"fit_seconds": model.fit_seconds, "predict_seconds": predict_seconds}
    return out


def lightgbm_forecast(
    history: pd.DataFrame,
    future: pd.DataFrame | None,
    horizon: int,
    frequency: str,
    season_length: int,
    covariates: list[str] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Recursive LightGBM fitted on ``history``, forecasting the next ``horizon`` periods; ``future`` holds
    known-future covariates."""
    model = fit_lightgbm(history, horizon, frequency, covariates, seed)
    return predict_lightgbm(model, history, horizon, future, fitted=True)


def _future_covariates(
    history: pd.DataFrame, future: pd.DataFrame | None, covariates: list[str], horizon: int, freq: str
) -> pd.DataFrame:
    """Covariates for every series over the ``horizon`` dates after its last one (mlforecast needs each series'
    rows, also for series that ended early): the ``future`` frame's values where given, else the last known."""
    ids = series_id(history)
    last = history.assign(unique_id=ids).sort_values("date").groupby("unique_id", observed=True).tail(1)
    grid = pd.DataFrame(
        {
            "unique_id": np.repeat(last["unique_id"].to_numpy(), horizon),
            "ds": dates_after(last["date"].to_numpy(), horizon, freq),
        }
    )
    known = history.assign(unique_id=ids)[["unique_id", "date", *covariates]]
    if future is not None and len(future):
        # A covariate the future frame lacks is not given there: the last known value carries forward, as for an
        # empty one (the transformer's panel drops empty future columns alike).
        given = future.assign(unique_id=series_id(future)).reindex(columns=["unique_id", "date", *covariates])
        known = pd.concat([known, given])
    known = known.rename(columns={"date": "ds"}).drop_duplicates(["unique_id", "ds"], keep="last")
    missing = ~grid.set_index(["unique_id", "ds"]).index.isin(known.set_index(["unique_id", "ds"]).index)
    out = pd.concat([known, grid[missing]])
    out = out.sort_values(["unique_id", "ds"])
    out[covariates] = out.groupby("unique_id")[covariates].ffill()
    return out.merge(grid, on=["unique_id", "ds"], how="inner")


def median_contributions(
    model: LightGBMModel, history: pd.DataFrame, horizon: int, future: pd.DataFrame | None = None
) -> pd.DataFrame:
    """TreeSHAP of the median model's forecast for the ``horizon`` periods after ``history``: per series, period and
    feature, its contribution in sales units (LightGBM's ``pred_contrib`` at every recursive step, times the series'
    scale), and ``bias`` (the model's expected value, plus the series' centre). They add up to the median before it is
    bounded and sorted against the other quantiles."""
    new_df, stats = _lightgbm_frame(history, model.covariates)
    x_future = _future_covariates(history, future, model.covariates, horizon, model.freq) if model.covariates else None
    booster = model.forecaster.models_["lightgbm"].booster
    steps: list[pd.DataFrame] = []

    def capture(features: pd.DataFrame) -> pd.DataFrame:
        steps.append(features.copy())
        return features

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Found null values", category=UserWarning)
        predictions = model.forecaster.predict(h=horizon, X_df=x_future, new_df=new_df, before_predict_callback=capture)
    # The callback runs once per step for every model, in model order: the median model's steps come first.
    per_model = len(steps) // len(model.forecaster.models_)
    order = list(model.forecaster.models_).index("lightgbm")
    median_steps = steps[order * per_model : (order + 1) * per_model][:horizon]
    ids = predictions["unique_id"].astype(str).to_numpy()
    dates = predictions["ds"].to_numpy()
    frames = []
    for step, features in enumerate(median_steps):
        contrib = booster.predict(features, pred_contrib=True)
        rows = pd.DataFrame(contrib, columns=[*features.columns, "bias"])
        # Predictions come series by series, each with its horizon dates in order.
        rows["unique_id"] = ids[step::horizon]
        rows["date"] = dates[step::horizon]
        frames.append(rows)
    out = pd.concat(frames, ignore_index=True)
    series = stats.reindex(out["unique_id"])
    scale, centre = series["scale"].to_numpy(), series["centre"].to_numpy()
    features = [c for c in out.columns if c not in ("unique_id", "date")]
    out[features] = out[features].to_numpy() * scale[:, None]
    out["bias"] += centre
    split = out["unique_id"].str.split("|", n=1, expand=True)
    out.insert(0, "store_id", split[0])
    out.insert(1, "item_id", split[1])
    return out.drop(columns="unique_id").sort_values(["store_id", "item_id", "date"]).reset_index(drop=True)
