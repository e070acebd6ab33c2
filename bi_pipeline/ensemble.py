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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bi_pipeline.baselines import LightGBMModel, attach_actuals, lightgbm_forecast
from bi_pipeline.evaluation import QUANTILES, mase, mase_scales, quantile_column, wql
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
    weight: float = 1.0  # the transformer's share of the blended median
    spread_weight: float | None = None  # its share of the blended distances from the median; None: ``weight``

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

    def blend(self, transformer: pd.DataFrame, lightgbm: pd.DataFrame) -> pd.DataFrame:
        return blend(transformer, lightgbm, self.weight, self.spread_share)


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
) -> tuple[pd.DataFrame, float, float, float]:
    """(blend of the transformer and LightGBM, the transformer's point weight and spread weight, seconds spent
    fitting them).

    The weights come from the ``validation`` periods just before the cutoff, never from the test: LightGBM refitted
    without them, the transformer from the origin before its own validation stretch (``own_validation``)."""
    dates = np.sort(train["date"].unique())
    inner_train = train[train["date"] <= dates[-validation - 1]]
    inner_test = train[train["date"] > dates[-validation - 1]]
    lgb_val = lightgbm_forecast(inner_train, inner_test, horizon, frequency, season_length, covariates)
    weight = fit_blend_weight(own_validation, lgb_val, inner_test, inner_train, season_length)
    spread_weight = fit_spread_weight(own_validation, lgb_val, inner_test, weight)
    seconds = lgb_val.attrs["timing"]["fit_seconds"]
    return blend(transformer, lightgbm, weight, spread_weight), weight, spread_weight, seconds
