"""The models behind :class:`~bi_pipeline.forecasting.interface.ForecastModel` (no Dagster): the transformer, seasonal
naive, AutoETS and LightGBM; the ensemble is :class:`bi_pipeline.forecasting.ensemble.Forecaster`. :data:`MODELS`
names them in the order every comparison reports them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bi_pipeline.forecasting.baselines import statistical_forecast
from bi_pipeline.forecasting.configuration import Progress, TrainConfig, TrainResult
from bi_pipeline.forecasting.distributed import train_distributed
from bi_pipeline.forecasting.features import FeatureSpec, fit_spec, seasonal_profile_lag
from bi_pipeline.forecasting.interface import ForecastModel, Task
from bi_pipeline.forecasting.lightgbm import LightGBMModel, fit_lightgbm, predict_lightgbm
from bi_pipeline.forecasting.modeling import BIForecaster
from bi_pipeline.forecasting.panel import Panel, build_panel
from bi_pipeline.forecasting.transformer import forecast

TASK_FILE = "task.json"


class StatisticalModel(ForecastModel):
    """A statsforecast model (seasonal naive or AutoETS with additive errors), fitted on every history it forecasts
    from, as local models are: what is saved is the task, and a loaded model forecasts any history."""

    def __init__(self, task: Task | None = None) -> None:
        self.task, self.info = task, {}

    def fit(self, train: pd.DataFrame, task: Task, future: pd.DataFrame | None = None) -> StatisticalModel:
        self.task = task
        return self

    def predict(self, history: pd.DataFrame, future: pd.DataFrame | None = None) -> pd.DataFrame:
        task = self._require_task()
        started = time.perf_counter()
        out = statistical_forecast(history, task.horizon, task.frequency, task.season, names=(self.name,))
        self.info["fit_seconds"] = time.perf_counter() - started
        return out[self.name]

    def save(self, path: Path) -> None:
        task = self._require_task()
        Path(path).mkdir(parents=True, exist_ok=True)
        fields = {"frequency": task.frequency, "horizon": task.horizon, "season_length": task.season_length}
        (Path(path) / TASK_FILE).write_text(json.dumps({"model": self.name, **fields}))

    @classmethod
    def load(cls, path: Path) -> StatisticalModel:
        saved = json.loads((Path(path) / TASK_FILE).read_text())
        if saved.pop("model") != cls.name:
            raise ValueError(f"{path} holds another model than {cls.name}")
        return cls(Task(**saved))


class SeasonalNaive(StatisticalModel):
    name = "seasonal_naive"


class AutoETS(StatisticalModel):
    name = "auto_ets"


class LightGBM(ForecastModel):
    """Recursive LightGBM through mlforecast (:mod:`bi_pipeline.forecasting.lightgbm`); reads newer periods than it
    was fitted on with the same trees."""

    name = "lightgbm"

    def __init__(self, seed: int = 0, model: LightGBMModel | None = None, task: Task | None = None) -> None:
        self.seed, self.model, self.task, self.info = seed, model, task, {}
        self._train: pd.DataFrame | None = None

    def fit(self, train: pd.DataFrame, task: Task, future: pd.DataFrame | None = None) -> LightGBM:
        self.task, self._train = task, train
        self.model = fit_lightgbm(train, task.horizon, task.frequency, list(task.covariates), self.seed)
        self.info["fit_seconds"] = self.model.fit_seconds
        return self

    def predict(self, history: pd.DataFrame, future: pd.DataFrame | None = None) -> pd.DataFrame:
        task = self._require_task()
        started = time.perf_counter()
        out = predict_lightgbm(self.model, history, task.horizon, future=future, fitted=history is self._train)
        self.info["predict_seconds"] = time.perf_counter() - started
        return out

    def save(self, path: Path) -> None:
        task = self._require_task()
        self.model.save(Path(path))
        fields = {"frequency": task.frequency, "horizon": task.horizon, "season_length": task.season_length}
        (Path(path) / TASK_FILE).write_text(json.dumps({**fields, "covariates": list(task.covariates)}))

    @classmethod
    def load(cls, path: Path) -> LightGBM:
        saved = json.loads((Path(path) / TASK_FILE).read_text())
        task = Task(**{**saved, "covariates": tuple(saved["covariates"])})
        return cls(model=LightGBMModel.load(Path(path)), task=task)


class Transformer(ForecastModel):
    """The fine-tuned transformer (:mod:`bi_pipeline.forecasting.modeling`), trained by
    :func:`~bi_pipeline.forecasting.trainer.train_forecaster`; saved with ``save_pretrained`` (safetensors)."""

    name = "transformer"

    def __init__(
        self,
        config: TrainConfig | None = None,
        network: BIForecaster | None = None,
        checkpoint_dir: Path | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.config = config or TrainConfig()
        self.network, self.checkpoint_dir, self.progress = network, checkpoint_dir, progress
        self.result: TrainResult | None = None
        self.panel: Panel | None = None
        self.cutoff: int | None = None
        self._train: pd.DataFrame | None = None  # the frame fit() built the panel from
        self.info = {}
        if network is not None:
            self.task = Task(network.config.feature_spec["frequency"], int(network.config.horizon))

    @property
    def spec(self) -> FeatureSpec:
        return FeatureSpec.from_dict(self.network.config.feature_spec)

    def fit(self, train: pd.DataFrame, task: Task, future: pd.DataFrame | None = None) -> Transformer:
        """Fits the encodings on ``train``, builds the panel with the horizon after it (``future``'s known-future
        covariates where given) and trains up to ``train``'s last date."""
        lag = seasonal_profile_lag(self.config.seasonal_profile, task.frequency, task.horizon, train)
        # The task's covariates are the candidates; the spec keeps the flag-like ones (holidays, events).
        candidates = list(task.covariates) or None
        effects, month_turn = self.config.calendar_effects, self.config.month_turn
        spec = fit_spec(
            train, task.frequency, candidates, profile_lag=lag, calendar_effects=effects, month_turn=month_turn
        )
        panel = build_panel(train, spec, future=future, horizon=task.horizon, reference_end=train["date"].max())
        self.fit_panel(panel, len(panel.dates) - task.horizon - 1, task)
        self._train = train
        return self

    def fit_panel(self, panel: Panel, cutoff: int, task: Task) -> Transformer:
        """Trains on the panel's periods up to date index ``cutoff`` (the features asset's panel)."""
        self.task, self._train = task, None
        # One process unless the settings ask for more (train_distributed trains in this process then).
        self.result = train_distributed(
            panel,
            task.horizon,
            cutoff,
            self.config,
            processes=self.config.processes,
            checkpoint_dir=self.checkpoint_dir,
            progress=self.progress,
            workers=self.config.loader_workers,
        )
        self.network, self.panel, self.cutoff = self.result.model, panel, cutoff
        self.info.update(
            fit_seconds=self.result.seconds,
            windows_per_second=self.result.windows_per_second,
            validation_periods=self.result.validation_periods,
        )
        return self

    def predict(self, history: pd.DataFrame, future: pd.DataFrame | None = None) -> pd.DataFrame:
        task = self._require_task()
        started = time.perf_counter()
        if history is self._train:
            panel, origin = self.panel, self.cutoff  # the training panel, with the future covariates fit() had
        else:
            panel = build_panel(history, self.spec, future=future, horizon=task.horizon)
            origin = len(panel.dates) - task.horizon - 1
        out = forecast(self.network, panel, origin)
        seconds = time.perf_counter() - started
        self.info.update(predict_seconds=seconds, series_per_second=panel.series / seconds if seconds else np.nan)
        self.info["clipped_quantiles"] = int(out.attrs.get("clipped_quantiles", 0))
        return out

    def holdout_forecast(self) -> pd.DataFrame:
        """The forecasts of the periods after the training cutoff from the training panel (the features asset's,
        which holds their known-future covariates)."""
        if self.result is None:
            raise RuntimeError("holdout_forecast() needs a model trained in this process")
        return forecast(self.network, self.panel, self.cutoff)

    def validation_forecast(self) -> pd.DataFrame:
        """The forecasts of its own validation periods from the origin before them (what the ensemble's weights are
        fitted on: never the holdout)."""
        if self.result is None:
            raise RuntimeError("validation_forecast() needs a model trained in this process")
        own = forecast(self.network, self.panel, self.cutoff - self.result.validation_periods)
        return own[own["date"] <= self.panel.dates[self.cutoff]]

    def save(self, path: Path) -> None:
        self.network.save_pretrained(Path(path))

    @classmethod
    def load(cls, path: Path) -> Transformer:
        # Safetensors only: a pickled ``pytorch_model.bin`` put beside it is never read.
        return cls(network=BIForecaster.from_pretrained(Path(path), use_safetensors=True))
