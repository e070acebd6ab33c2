"""The deployable forecaster: the transformer alone, or the transformer blended with LightGBM (no Dagster).

The blend weight is fitted on the validation periods before the holdout, never on the holdout; the weight grid
includes 1.0, so when LightGBM does not help on validation the candidate is the transformer alone. A registered
version is one directory: the transformer's ``save_pretrained`` files, and for an ensemble ``ensemble.json`` (the
weight) and ``lightgbm/`` (the fitted mlforecast model, which forecasts again from newer history with the same trees).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bi_pipeline.baselines import LightGBMModel, attach_actuals, lightgbm_forecast
from bi_pipeline.evaluation import QUANTILES, mase, mase_scales, quantile_column
from bi_pipeline.models import BIForecaster

ENSEMBLE_FILE = "ensemble.json"
WEIGHTS = tuple(np.round(np.arange(0.0, 1.01, 0.1), 1))
KEYS = ["store_id", "item_id", "date"]
COLUMNS = ["mean", *[quantile_column(q) for q in QUANTILES]]


@dataclass
class Forecaster:
    """What a registered version holds and the ``forecasts`` asset runs."""

    transformer: BIForecaster
    lightgbm: LightGBMModel | None = None
    weight: float = 1.0  # the transformer's share of the blend

    @property
    def kind(self) -> str:
        return "ensemble" if self.lightgbm is not None else "transformer"

    @property
    def horizon(self) -> int:
        return int(self.transformer.config.horizon)

    @property
    def frequency(self) -> str:
        return self.transformer.config.feature_spec["frequency"]

    def save(self, path: Path) -> None:
        path = Path(path)
        self.transformer.save_pretrained(path)
        if self.lightgbm is not None:
            self.lightgbm.save(path / "lightgbm")
            (path / ENSEMBLE_FILE).write_text(json.dumps({"kind": "ensemble", "transformer_weight": self.weight}))

    @classmethod
    def load(cls, path: Path) -> Forecaster:
        path = Path(path)
        transformer = BIForecaster.from_pretrained(path)
        meta_file = path / ENSEMBLE_FILE
        if not meta_file.exists():
            return cls(transformer)
        meta = json.loads(meta_file.read_text())
        return cls(transformer, LightGBMModel.load(path / "lightgbm"), float(meta["transformer_weight"]))


def blend(first: pd.DataFrame, second: pd.DataFrame, weight: float) -> pd.DataFrame:
    """weight·first + (1 − weight)·second, point and quantiles alike (averaged quantiles stay monotone). Every row
    of ``first`` is kept: where ``second`` has no forecast for a series and date, ``first``'s stands alone."""
    a = first.astype({"store_id": str, "item_id": str}).set_index(KEYS)[COLUMNS]
    b = second.astype({"store_id": str, "item_id": str}).set_index(KEYS)[COLUMNS].reindex(a.index)
    mixed = a * weight + b * (1.0 - weight)
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


def ensemble_forecast(
    train: pd.DataFrame,
    transformer: pd.DataFrame,
    lightgbm: pd.DataFrame,
    own_validation: pd.DataFrame,
    validation: int,
    horizon: int,
    frequency: str,
    season_length: int,
    covariates: list[str] | None,
) -> tuple[pd.DataFrame, float, float]:
    """(blend of the transformer and LightGBM, the transformer's weight, seconds spent fitting the weight).

    The weight comes from the ``validation`` periods just before the cutoff, never from the test: LightGBM refitted
    without them, the transformer from the origin before its own validation stretch (``own_validation``)."""
    dates = np.sort(train["date"].unique())
    inner_train = train[train["date"] <= dates[-validation - 1]]
    inner_test = train[train["date"] > dates[-validation - 1]]
    lgb_val = lightgbm_forecast(inner_train, inner_test, horizon, frequency, season_length, covariates)
    weight = fit_blend_weight(own_validation, lgb_val, inner_test, inner_train, season_length)
    return blend(transformer, lightgbm, weight), weight, lgb_val.attrs["timing"]["fit_seconds"]
