"""Rolling-origin backtests on any landing zone in the contract (no Dagster): clean → integrate → fit → score.

The same core code the assets run. Each window holds out the next ``horizon`` periods after its cutoff; the last
window ends at the last landed period. Metrics are computed per window and averaged over windows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from bi_pipeline.baselines import attach_actuals, lightgbm_forecast, statistical_forecast
from bi_pipeline.config import Settings
from bi_pipeline.ensemble import ensemble_forecast
from bi_pipeline.evaluation import METRICS, MODELS, score, season_length_for
from bi_pipeline.ingest import ingest_landing


def load_history(
    landing: Path, settings: Settings | None = None, report: Callable[[str], None] | None = None
) -> tuple[pd.DataFrame, str, list[str]]:
    """(integrated history, frequency, calendar covariate names) of a landing zone, through the contract, the rules
    and the bad-row gate (``bi_pipeline.ingest``); ``report`` receives what was quarantined or not ingested."""
    ingested = ingest_landing(landing, settings or Settings.from_env(landing=Path(landing).resolve()))
    if report:
        report(ingested.summary())
    return ingested.history, ingested.frequency, ingested.covariates


def windows_of(history: pd.DataFrame, horizon: int, windows: int) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """(train, test) per rolling origin, oldest first; the last test ends at the last period."""
    dates = np.sort(history["date"].unique())
    if len(dates) <= horizon * windows + 1:
        raise ValueError(
            f"{len(dates)} periods cannot hold {windows} window(s) of horizon {horizon} and a training set"
        )
    out = []
    for w in range(windows, 0, -1):
        cutoff = dates[len(dates) - horizon * w - 1]
        end = dates[len(dates) - horizon * (w - 1) - 1]
        out.append((history[history["date"] <= cutoff], history[(history["date"] > cutoff) & (history["date"] <= end)]))
    return out


def transformer_forecast(
    train: pd.DataFrame,
    test: pd.DataFrame,
    horizon: int,
    frequency: str,
    covariates: list[str] | None,
    config,
    use_covariates: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The transformer trained up to the window's cutoff: (test forecasts, forecasts over its own validation periods
    from the origin before them, timing)."""
    from bi_pipeline.forecasting import train_with_holdout, validation_forecast

    def report(record: dict) -> None:
        if progress and record.get("stage") == "pretrain_corpus":
            progress(
                f"  pretraining on the synthetic corpus (first use; kept in {record['checkpoint']}), "
                f"epoch {record['epoch']}/{record['epochs']}: validation loss {record['loss']:.4f}"
            )
        elif progress and record.get("stage") in ("train", "pretrain", "refit"):
            loss = record.get("validation_loss", record.get("loss"))
            progress(f"  transformer {record['stage']} epoch {record['epoch']}: loss {loss:.4f}")

    trained = train_with_holdout(
        pd.concat([train, test], ignore_index=True),
        frequency,
        horizon,
        season_length=1,
        config=config,
        covariates=covariates,
        use_covariates=use_covariates,
        progress=report,
    )
    result, panel, cutoff = trained.result, trained.panel, trained.cutoff
    validation = result.validation_periods
    own = validation_forecast(result, panel, cutoff)
    timing = {
        "fit_seconds": result.seconds,
        "predict_seconds": trained.predict_seconds,
        "windows_per_second": result.windows_per_second,
        "series_per_second": panel.series / trained.predict_seconds if trained.predict_seconds else float("nan"),
        "validation_periods": validation,
    }
    return trained.holdout.drop(columns="sales"), own, timing


def run_backtest(
    history: pd.DataFrame,
    frequency: str,
    horizon: int,
    season_length: int | None = None,
    windows: int = 1,
    covariates: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
    models: tuple[str, ...] = MODELS,
    train_config=None,
    use_covariates: bool = True,
) -> dict:
    """The JSON of `bi-pipeline backtest`: per model the averaged metrics and the fit/predict seconds."""
    from bi_pipeline.training import TrainConfig

    training_periods = history["date"].nunique() - horizon * windows
    season_length = season_length_for(frequency, training_periods, season_length)
    train_config = train_config or TrainConfig()
    per_model: dict[str, list[dict]] = {}
    timing: dict[str, dict[str, float]] = {}
    weights = []
    for index, (train, test) in enumerate(windows_of(history, horizon, windows), start=1):
        if progress:
            progress(
                f"window {index}/{windows}: train to {pd.Timestamp(train['date'].max()).date()}, {len(test)} test rows"
            )
        forecasts: dict[str, pd.DataFrame] = {}
        seconds: dict[str, dict[str, float]] = {}
        if {"seasonal_naive", "auto_ets"} & set(models):
            stats, stat_seconds = statistical_forecast(train, horizon, frequency, season_length)
            for name in ("seasonal_naive", "auto_ets"):
                if name in models:
                    forecasts[name], seconds[name] = stats[name], stat_seconds[name]
        if {"lightgbm", "ensemble"} & set(models):
            forecasts["lightgbm"] = lightgbm_forecast(train, test, horizon, frequency, season_length, covariates)
            seconds["lightgbm"] = forecasts["lightgbm"].attrs["timing"]
        if {"transformer", "ensemble"} & set(models):
            if progress:
                progress("  training the transformer")
            forecasts["transformer"], own_validation, seconds["transformer"] = transformer_forecast(
                train, test, horizon, frequency, covariates, train_config, use_covariates, progress
            )
        if "ensemble" in models:
            validation = int(seconds["transformer"]["validation_periods"])
            forecasts["ensemble"], weight, spread_weight, weight_seconds = ensemble_forecast(
                train,
                forecasts["transformer"],
                forecasts["lightgbm"],
                own_validation,
                validation,
                horizon,
                frequency,
                season_length,
                covariates,
            )
            weights.append((weight, spread_weight))
            seconds["ensemble"] = {
                "fit_seconds": seconds["transformer"]["fit_seconds"]
                + seconds["lightgbm"]["fit_seconds"]
                + weight_seconds,
                "predict_seconds": seconds["transformer"]["predict_seconds"] + seconds["lightgbm"]["predict_seconds"],
            }
            if progress:
                progress(
                    f"  ensemble weights on the transformer: {weight:.1f} of the median, {spread_weight:.1f} of the "
                    f"spread (fitted on {validation} periods)"
                )
        for name, spent in seconds.items():
            total = timing.setdefault(name, {})
            for key, value in spent.items():
                total[key] = total.get(key, 0.0) + float(value)
        for name in models:
            per_model.setdefault(name, []).append(score(attach_actuals(forecasts[name], test), train, season_length))
    result_models = {}
    for name in (m for m in MODELS if m in models):
        scores = per_model[name]
        result_models[name] = {m: float(np.mean([s[m] for s in scores])) for m in METRICS}
        spent = timing[name]
        result_models[name]["fit_seconds"] = round(spent["fit_seconds"], 3)
        result_models[name]["predict_seconds"] = round(spent["predict_seconds"], 3)
        if name == "transformer":
            result_models[name]["train_windows_per_second"] = round(spent["windows_per_second"] / windows, 1)
            result_models[name]["inference_series_per_second"] = round(spent["series_per_second"] / windows, 1)
        if name == "ensemble":
            result_models[name]["transformer_weight"] = float(np.mean([w for w, _ in weights]))
            result_models[name]["transformer_spread_weight"] = float(np.mean([s for _, s in weights]))
    series = history.groupby(["store_id", "item_id"], observed=True).ngroups
    return {
        "horizon": horizon,
        "series": int(series),
        "windows": windows,
        "season_length": season_length,
        "frequency": frequency,
        "models": result_models,
        "transformer_config": train_config.to_dict() if {"transformer", "ensemble"} & set(models) else None,
    }


def table(result: dict) -> str:
    """The result as a terminal table, with skill (MASE ÷ seasonal naive's MASE)."""
    naive = result["models"].get("seasonal_naive", {}).get("MASE")
    lines = [f"{'model':<16}{'MASE':>8}{'skill':>8}{'WAPE':>8}{'WQL':>8}{'cov80':>8}{'bias':>8}{'fit s':>8}"]
    for name, m in result["models"].items():
        skill = m["MASE"] / naive if naive else float("nan")
        lines.append(
            f"{name:<16}{m['MASE']:>8.3f}{skill:>8.3f}{m['WAPE']:>8.3f}{m['WQL']:>8.3f}{m['coverage_80']:>8.3f}"
            f"{m['bias']:>8.3f}{m['fit_seconds']:>8.1f}"
        )
    return "\n".join(lines)
