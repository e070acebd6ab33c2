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
from bi_pipeline.contract import infer_frequency, read_master, read_period, scan_sales_dir
from bi_pipeline.evaluation import SEASON_LENGTH, score
from bi_pipeline.integration import integrate
from bi_pipeline.quality import clean_periods, known_ids

METRICS = ("MASE", "WAPE", "WQL", "coverage_80", "bias")


def load_history(landing: Path, settings: Settings | None = None) -> tuple[pd.DataFrame, str, list[str]]:
    """(integrated history, frequency, calendar covariate names) of a landing zone, through the quality rules."""
    settings = settings or Settings(home=landing.parent, landing=landing)
    keys = sorted(f.key for f in scan_sales_dir(landing, settle_seconds=0).ready)
    if not keys:
        raise ValueError(f"{landing}: no sales files in sales/")
    frequency = settings.frequency or infer_frequency(keys)
    stores, items, calendar = (read_master(landing, name) for name in ("stores", "items", "calendar"))
    batch = {}
    for key in keys:
        read = read_period(landing, key)
        batch[key] = (read.rows, read.issues)
    results = clean_periods(batch, frequency, settings, known_ids(stores, "store_id"), known_ids(items, "item_id"))
    history = integrate([r.clean for r in results.values()], frequency, keys, stores, items, calendar)
    covariates = [
        c for c in (calendar.columns if calendar is not None else []) if c not in ("date", "store_id", "source_row")
    ]
    numeric = [c for c in covariates if c in history.columns and pd.api.types.is_numeric_dtype(history[c])]
    return history, frequency, numeric


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
) -> dict:
    """The JSON of `bi-pipeline backtest`: per model the averaged metrics and the fit/predict seconds."""
    season_length = season_length or SEASON_LENGTH[frequency]
    per_model: dict[str, list[dict]] = {}
    timing: dict[str, dict[str, float]] = {}
    for index, (train, test) in enumerate(windows_of(history, horizon, windows), start=1):
        if progress:
            progress(
                f"window {index}/{windows}: train to {pd.Timestamp(train['date'].max()).date()}, {len(test)} test rows"
            )
        forecasts, seconds = statistical_forecast(train, horizon, frequency, season_length)
        forecasts["lightgbm"] = lightgbm_forecast(train, test, horizon, frequency, season_length, covariates)
        seconds["lightgbm"] = forecasts["lightgbm"].attrs["timing"]
        for name, spent in seconds.items():
            total = timing.setdefault(name, {"fit_seconds": 0.0, "predict_seconds": 0.0})
            for key, value in spent.items():
                total[key] += value
        for name, forecast in forecasts.items():
            per_model.setdefault(name, []).append(score(attach_actuals(forecast, test), train, season_length))
    models = {}
    for name, scores in per_model.items():
        models[name] = {m: float(np.mean([s[m] for s in scores])) for m in METRICS}
        models[name].update({k: round(v, 3) for k, v in timing[name].items()})
    series = history.groupby(["store_id", "item_id"], observed=True).ngroups
    return {
        "horizon": horizon,
        "series": int(series),
        "windows": windows,
        "season_length": season_length,
        "frequency": frequency,
        "models": models,
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
