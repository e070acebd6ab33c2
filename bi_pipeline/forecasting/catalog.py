"""Every model a comparison can report, by name (no Dagster): the backtest, the candidate a training proposes and
the backtest asset build their models here, so adding one is a class and an entry in :func:`build_models`."""

from __future__ import annotations

from collections.abc import Callable

from bi_pipeline.forecasting.configuration import Progress, TrainConfig
from bi_pipeline.forecasting.ensemble import Forecaster
from bi_pipeline.forecasting.interface import MODELS, ForecastModel
from bi_pipeline.forecasting.models import AutoETS, LightGBM, SeasonalNaive, Transformer

__all__ = ["MODELS", "build_models"]


def build_models(
    names: tuple[str, ...] = MODELS,
    config: TrainConfig | None = None,
    progress: Progress | None = None,
    seed: int = 0,
) -> dict[str, ForecastModel]:
    """Fresh models by name, in :data:`MODELS` order. The ensemble combines the transformer, LightGBM and AutoETS of
    the same comparison (each fitted once, for both), whether or not they are reported themselves."""
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}: choose from {', '.join(MODELS)}")
    transformer, lightgbm, auto_ets = Transformer(config, progress=progress), LightGBM(seed), AutoETS()
    factories: dict[str, Callable[[], ForecastModel]] = {
        "transformer": lambda: transformer,
        "seasonal_naive": SeasonalNaive,
        "auto_ets": lambda: auto_ets,
        "lightgbm": lambda: lightgbm,
        "ensemble": lambda: Forecaster(parts={"transformer": transformer, "lightgbm": lightgbm, "auto_ets": auto_ets}),
    }
    return {name: factories[name]() for name in MODELS if name in names}
