"""The one model interface (no Dagster): fit on a panel of series, predict quantiles for a horizon, save and load.

Every model the pipeline compares implements it: the transformer, seasonal naive, AutoETS, LightGBM and the ensemble
(:mod:`bi_pipeline.forecasting.models`). The backtest, the candidate a training proposes and the assets iterate over
models by name through :data:`MODELS`, so adding a baseline is one class and one entry there.

A panel is the integrated history in long form: ``store_id``, ``item_id``, ``date``, ``sales`` and covariate columns.
A forecast is one row per series and date: ``store_id``, ``item_id``, ``date``, ``mean`` and ``q0.1`` … ``q0.9``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd

from bi_pipeline.forecasting.metrics import SEASON_LENGTH

# Every model a comparison can report (built by bi_pipeline.forecasting.catalog), in the order it reports them; the
# ensemble last, as it blends the two fitted before it.
MODELS = ("transformer", "seasonal_naive", "auto_ets", "lightgbm", "ensemble")
# Periods forecast when no horizon is set, by frequency.
DEFAULT_HORIZON = {"D": 28, "W": 13, "M": 12}


@dataclass(frozen=True)
class Task:
    """What a model is asked to forecast: typed values, the same for every model of a comparison."""

    frequency: str  # D, W or M
    horizon: int  # periods after the history's last date
    season_length: int | None = None  # MASE's season (and the seasonal models'); None: by frequency
    # Continuous covariates LightGBM reads (the transformer reads the calendar and flag covariates its spec keeps).
    covariates: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.frequency not in SEASON_LENGTH:
            raise ValueError(f"frequency must be one of {', '.join(SEASON_LENGTH)}, got {self.frequency!r}")
        if self.horizon < 1:
            raise ValueError(f"horizon must be at least 1, got {self.horizon}")

    @property
    def season(self) -> int:
        return self.season_length or SEASON_LENGTH[self.frequency]


class ForecastModel(ABC):
    """Fit on a panel, then forecast the ``task.horizon`` periods after a history's last date."""

    name: ClassVar[str]

    task: Task | None = None
    # What fitting and forecasting measured (seconds, throughput): the backtest reports it beside the scores.
    info: dict[str, float]

    @abstractmethod
    def fit(self, train: pd.DataFrame, task: Task, future: pd.DataFrame | None = None) -> ForecastModel:
        """Learn from ``train`` (nothing later); ``future`` may hold the known-future covariates of the ``horizon``
        periods after it (planned promotions, holidays), never their sales. Returns the model."""

    @abstractmethod
    def predict(self, history: pd.DataFrame, future: pd.DataFrame | None = None) -> pd.DataFrame:
        """Quantile forecasts for the ``horizon`` periods after the last date of ``history`` (the training panel, or a
        newer one: models read newer periods without refitting)."""

    def save(self, path: Path) -> None:
        """Write the fitted model to the directory ``path`` in a format that loads without unpickling."""
        raise NotImplementedError(f"{self.name} is refitted on every history: there is nothing to save")

    @classmethod
    def load(cls, path: Path) -> ForecastModel:
        raise NotImplementedError(f"{cls.__name__} is refitted on every history: there is nothing to load")

    def _require_task(self) -> Task:
        if self.task is None:
            raise RuntimeError(f"{self.name}: call fit() before predict()")
        return self.task
