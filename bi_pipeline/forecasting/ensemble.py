"""The deployable forecaster: the transformer alone, or the transformer blended with LightGBM (no Dagster).

Two weights, both fitted on the validation periods before the holdout, never on the holdout: the point weight blends
the medians (chosen on MASE), the spread weight blends each model's distances from its own median (chosen on WQL).
A model whose medians help need not have intervals that help: on aus_retail LightGBM's intervals are far too wide,
and averaging them in made the blend's WQL worse than the transformer's alone. The grids include 1.0, so when
LightGBM does not help on validation the candidate is the transformer alone. A registered version is one directory:
the transformer's ``save_pretrained`` files (safetensors), and for an ensemble ``ensemble.json`` (the weights) and
``lightgbm/`` (the boosters in LightGBM's text format and the JSON recipe of the mlforecast pipeline around them, which
forecasts again from newer history with the same trees). Loading unpickles nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bi_pipeline.forecasting.baselines import attach_actuals
from bi_pipeline.forecasting.interface import ForecastModel, Task
from bi_pipeline.forecasting.lightgbm import LightGBMModel, lightgbm_forecast
from bi_pipeline.forecasting.metrics import QUANTILES, mase, mase_scales, quantile_column, wql
from bi_pipeline.forecasting.modeling import BIForecaster
from bi_pipeline.forecasting.models import LightGBM, Transformer

ENSEMBLE_FILE = "ensemble.json"
WEIGHTS = tuple(np.round(np.arange(0.0, 1.01, 0.1), 1))
KEYS = ["store_id", "item_id", "date"]
COLUMNS = ["mean", *[quantile_column(q) for q in QUANTILES]]


class Forecaster(ForecastModel):
    """The ensemble, and what a registered version holds and the ``forecasts`` asset runs: the transformer alone, or
    blended with LightGBM at the weights fitted on the validation periods."""

    name = "ensemble"

    def __init__(
        self,
        transformer: BIForecaster | None = None,
        lightgbm: LightGBMModel | None = None,
        weight: float = 1.0,
        spread_weight: float | None = None,
        parts: tuple[Transformer, LightGBM] | None = None,
    ) -> None:
        self.transformer, self.lightgbm = transformer, lightgbm  # the network and the boosters
        self.weight = weight  # the transformer's share of the blended median
        self.spread_weight = spread_weight  # its share of the blended distances from the median; None: ``weight``
        self.parts = parts
        self.info = {}
        self.task = Task(self.frequency, self.horizon) if transformer is not None else None

    @property
    def spread_share(self) -> float:
        return self.weight if self.spread_weight is None else self.spread_weight

    @property
    def kind(self) -> str:
        return "ensemble" if self.lightgbm is not None else "transformer"

    @property
    def horizon(self) -> int:
        return int(self.transformer.config.horizon)

    @property
    def frequency(self) -> str:
        return self.transformer.config.feature_spec["frequency"]

    def fit(self, train: pd.DataFrame, task: Task, future: pd.DataFrame | None = None) -> Forecaster:
        """Fits the parts not fitted yet (the transformer, LightGBM on the same periods), then the weights on the
        ``validation`` periods before the cutoff, never on what follows it: LightGBM refitted without them, the
        transformer from the origin before its own validation stretch."""
        transformer, lightgbm = self.parts or (Transformer(), LightGBM())
        if transformer.result is None:
            transformer.fit(train, task, future)
        if lightgbm.model is None:
            lightgbm.fit(train, task, future)
        started = time.perf_counter()
        self.weight, self.spread_weight = fit_weights(
            train, transformer.validation_forecast(), transformer.result.validation_periods, task
        )
        self.parts, self.task = (transformer, lightgbm), task
        self.info.update(weight=self.weight, spread_weight=self.spread_share)
        self.transformer, self.lightgbm = transformer.network, lightgbm.model
        self.info["fit_seconds"] = (
            transformer.info["fit_seconds"] + lightgbm.info["fit_seconds"] + time.perf_counter() - started
        )
        return self

    def deployable(self) -> Forecaster:
        """What a registered version holds: the blend when either weight is below 1, else the transformer alone."""
        if self.weight < 1.0 or self.spread_share < 1.0:
            return Forecaster(self.transformer, self.lightgbm, self.weight, self.spread_weight)
        return Forecaster(self.transformer)

    def predict(self, history: pd.DataFrame, future: pd.DataFrame | None = None) -> pd.DataFrame:
        transformer, lightgbm = self.parts or (
            Transformer(network=self.transformer),
            LightGBM(model=self.lightgbm, task=Task(self.frequency, self.horizon)) if self.lightgbm else None,
        )
        out = transformer.predict(history, future)
        seconds = transformer.info["predict_seconds"]
        if self.lightgbm is not None:
            out = blend(out, lightgbm.predict(history, future), self.weight, self.spread_share)
            seconds += lightgbm.info["predict_seconds"]
        self.info["predict_seconds"] = seconds
        return out

    def save(self, path: Path) -> None:
        path = Path(path)
        self.transformer.save_pretrained(path)
        if self.lightgbm is not None:
            self.lightgbm.save(path / "lightgbm")
            meta = {"kind": "ensemble", "transformer_weight": self.weight, "spread_weight": self.spread_share}
            (path / ENSEMBLE_FILE).write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: Path) -> Forecaster:
        path = Path(path)
        # Safetensors only: a pickled ``pytorch_model.bin`` put beside it is never read.
        transformer = BIForecaster.from_pretrained(path, use_safetensors=True)
        meta_file = path / ENSEMBLE_FILE
        if not meta_file.exists():
            return cls(transformer)
        meta = json.loads(meta_file.read_text())
        spread = meta.get("spread_weight")  # versions saved before the spread weight blend both alike
        return cls(
            transformer,
            LightGBMModel.load(path / "lightgbm"),
            float(meta["transformer_weight"]),
            None if spread is None else float(spread),
        )


def blend(first: pd.DataFrame, second: pd.DataFrame, weight: float, spread_weight: float | None = None) -> pd.DataFrame:
    """The point forecast and the median are weight·first + (1 − weight)·second; each quantile is that median plus
    spread_weight·(first's distance from its median) + (1 − spread_weight)·(second's). With ``spread_weight`` equal
    to ``weight`` (the default) that is the plain weighted average of every column. The quantiles stay monotone (each
    model's distances grow with the level). Every row of ``first`` is kept: where ``second`` has no forecast for a
    series and date, ``first``'s stands alone."""
    spread_weight = weight if spread_weight is None else spread_weight
    a = first.astype({"store_id": str, "item_id": str}).set_index(KEYS)[COLUMNS]
    b = second.astype({"store_id": str, "item_id": str}).set_index(KEYS)[COLUMNS].reindex(a.index)
    median = quantile_column(0.5)
    centre = a[median] * weight + b[median] * (1.0 - weight)
    mixed = a * weight + b * (1.0 - weight)
    for column in COLUMNS[1:]:
        mixed[column] = (
            centre + (a[column] - a[median]) * spread_weight + (b[column] - b[median]) * (1.0 - spread_weight)
        )
    return mixed.where(b.notna(), a).reset_index()


def fit_blend_weight(
    transformer_val: pd.DataFrame,
    lightgbm_val: pd.DataFrame,
    actual: pd.DataFrame,
    train: pd.DataFrame,
    season_length: int,
) -> float:
    """The transformer's share in the ensemble that minimises MASE over the validation periods (never the test);
    ties go to the weight nearest 0.5."""
    scales = mase_scales(train, season_length)
    losses = {}
    for w in WEIGHTS:
        blended = attach_actuals(blend(transformer_val, lightgbm_val, float(w)), actual).dropna(subset=["sales"])
        losses[float(w)] = mase(blended, scales)
    return min(losses, key=lambda w: (losses[w], abs(w - 0.5)))


def fit_spread_weight(
    transformer_val: pd.DataFrame, lightgbm_val: pd.DataFrame, actual: pd.DataFrame, weight: float
) -> float:
    """The transformer's share of the blended distances from the median that minimises WQL over the validation
    periods, the medians blended at ``weight``; ties go to ``weight`` (the plain blend)."""
    losses = {}
    for w in WEIGHTS:
        blended = blend(transformer_val, lightgbm_val, weight, float(w))
        losses[float(w)] = wql(attach_actuals(blended, actual).dropna(subset=["sales"]))
    return min(losses, key=lambda w: (losses[w], abs(w - weight)))


def fit_weights(train: pd.DataFrame, own_validation: pd.DataFrame, validation: int, task: Task) -> tuple[float, float]:
    """(the transformer's point weight, its spread weight), fitted on the ``validation`` periods at the end of
    ``train``: LightGBM refitted without them, against the transformer's forecasts of them (``own_validation``)."""
    dates = np.sort(train["date"].unique())
    inner_train = train[train["date"] <= dates[-validation - 1]]
    inner_test = train[train["date"] > dates[-validation - 1]]
    covariates = list(task.covariates)
    lgb_val = lightgbm_forecast(inner_train, inner_test, task.horizon, task.frequency, task.season, covariates)
    weight = fit_blend_weight(own_validation, lgb_val, inner_test, inner_train, task.season)
    return weight, fit_spread_weight(own_validation, lgb_val, inner_test, weight)
