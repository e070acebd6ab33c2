"""Rolling-origin backtests on any landing zone in the contract (no Dagster): clean → integrate → fit → score.

The same core code the assets run. Each window holds out the next ``horizon`` periods after its cutoff; the last
window ends at the last landed period. Metrics are computed per window and averaged over windows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from bi_pipeline.config import DecisionSettings, Settings
from bi_pipeline.decisions.evaluation import average_sections, decisions_section, model_dependence
from bi_pipeline.forecasting.baselines import attach_actuals
from bi_pipeline.forecasting.catalog import MODELS, build_models
from bi_pipeline.forecasting.configuration import Progress, TrainConfig
from bi_pipeline.forecasting.interface import Task
from bi_pipeline.forecasting.metrics import METRICS, score, season_length_for
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


def run_backtest(
    history: pd.DataFrame,
    frequency: str,
    horizon: int,
    season_length: int | None = None,
    windows: int = 1,
    covariates: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
    models: tuple[str, ...] = MODELS,
    train_config: TrainConfig | None = None,
    seed: int = 0,
    train_progress: Progress | None = None,
    decisions: bool = True,
    economics: DecisionSettings | None = None,
) -> dict:
    """The JSON of `bi-pipeline backtest`: per model the averaged metrics and the fit/predict seconds. Every model is
    fitted on each window's training periods and forecasts its test periods through the one model interface.
    ``progress`` gets a line per window and model, ``train_progress`` the transformer's training records."""
    training_periods = history["date"].nunique() - horizon * windows
    season_length = season_length_for(frequency, training_periods, season_length)
    train_config = train_config or TrainConfig()
    task = Task(frequency, horizon, season_length, tuple(covariates or ()))
    per_model: dict[str, list[dict]] = {}
    info: dict[str, list[dict]] = {}
    sections: list[dict] = []  # the decisions section of each window
    for index, (train, test) in enumerate(windows_of(history, horizon, windows), start=1):
        if progress:
            progress(
                f"window {index}/{windows}: train to {pd.Timestamp(train['date'].max()).date()}, {len(test)} test rows"
            )
        future = test.drop(columns="sales")
        made: dict[str, pd.DataFrame] = {}  # this window's forecasts: the ensemble blends its members' as they are
        built = build_models(models, train_config, train_progress, seed)
        for name, model in built.items():
            if progress:
                progress(f"  {name}: fitting")
            model.fit(train, task, future)
            forecast = model.predict(train, future, made) if name == "ensemble" else model.predict(train, future)
            made[name] = forecast
            per_model.setdefault(name, []).append(score(attach_actuals(forecast, test), train, season_length))
            info.setdefault(name, []).append(dict(model.info))
            if name == "ensemble" and progress:
                factors = ", ".join(f"{f:.2f}" for f in model.step_factors)
                progress(f"  ensemble: {model.describe()}; interval factors by quarter of the horizon: {factors}")
        if decisions:
            selection = getattr(built.get("ensemble"), "selection", None)
            floor = bool((train["sales"] >= 0).all())
            dependence = model_dependence(list(made), selection, train, task, floor, economics, seed)
            sections.append(decisions_section(made, train, test, frequency, dependence, economics, seed))
    result_models = {}
    for name in (m for m in MODELS if m in models):
        scores, spent = per_model[name], info[name]
        result_models[name] = {m: float(np.mean([s[m] for s in scores])) for m in METRICS}
        for key in ("fit_seconds", "predict_seconds"):
            result_models[name][key] = round(float(sum(s.get(key, 0.0) for s in spent)), 3)
        if name == "transformer":
            speed = np.mean([s["windows_per_second"] for s in spent])
            result_models[name]["train_windows_per_second"] = round(float(speed), 1)
            result_models[name]["inference_series_per_second"] = round(
                np.mean([s["series_per_second"] for s in spent]), 1
            )
        if name == "ensemble":
            result_models[name]["transformer_weight"] = float(np.mean([s["weight"] for s in spent]))
            result_models[name]["transformer_spread_weight"] = float(np.mean([s["spread_weight"] for s in spent]))
            result_models[name]["members"] = [s["members"] for s in spent]
        clipped = [s.get("clipped_quantiles") for s in spent if s.get("clipped_quantiles") is not None]
        if clipped:
            result_models[name]["clipped_quantiles"] = int(sum(clipped))
    series = history.groupby(["store_id", "item_id"], observed=True).ngroups
    return {
        "horizon": horizon,
        "series": int(series),
        "windows": windows,
        "season_length": season_length,
        "frequency": frequency,
        "models": result_models,
        "transformer_config": train_config.to_dict() if {"transformer", "ensemble"} & set(models) else None,
        **({"decisions": average_sections(sections)} if sections else {}),
    }


def table(result: dict) -> str:
    """The result as a terminal table, with skill (MASE ÷ seasonal naive's MASE)."""
    naive = result["models"].get("seasonal_naive", {}).get("MASE")
    lines = [
        f"{'model':<16}{'MASE':>8}{'skill':>8}{'RMSSE':>8}{'WAPE':>8}{'WQL':>8}{'cov80':>8}{'bias':>8}{'fit s':>8}"
    ]
    for name, m in result["models"].items():
        skill = m["MASE"] / naive if naive else float("nan")
        lines.append(
            f"{name:<16}{m['MASE']:>8.3f}{skill:>8.3f}{m['RMSSE']:>8.3f}{m['WAPE']:>8.3f}{m['WQL']:>8.3f}"
            f"{m['coverage_80']:>8.3f}{m['bias']:>8.3f}{m['fit_seconds']:>8.1f}"
        )
    return "\n".join(lines)
