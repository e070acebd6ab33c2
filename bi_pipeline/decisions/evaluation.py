"""Decision value of forecasts, measured (no Dagster): every model's forecasts drive the same order-up-to policy over
the holdout on actual demand (:func:`bi_pipeline.decisions.inventory.simulate_policy`), and the backtest reports its
cost, fill rate and stock, and how well each model's cumulative-demand intervals cover."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bi_pipeline.config import DecisionSettings
from bi_pipeline.decisions.demand import Dependence, fit_dependence
from bi_pipeline.decisions.inventory import forecast_arrays, series_parameters, simulate_policy, tune_level_shift
from bi_pipeline.forecasting.baselines import attach_actuals, statistical_forecast
from bi_pipeline.forecasting.ensemble import steps_after
from bi_pipeline.forecasting.interface import Task
from bi_pipeline.forecasting.metrics import SERIES

STATISTICAL = ("seasonal_naive", "auto_ets")


def origin_rows(train: pd.DataFrame, task: Task, name: str, origins: list[pd.Timestamp]) -> pd.DataFrame | None:
    """A statistical model's forecasts at ``origins`` (the ensemble's validation origins) with their actuals, each
    scored on its periods up to ``train``'s end; None without origins."""
    end = pd.Timestamp(train["date"].max())
    frames = []
    for origin in origins:
        out = statistical_forecast(train[train["date"] <= origin], task.horizon, task.frequency, task.season, (name,))
        out = out[name]
        out = out[(out["date"] > origin) & (out["date"] <= end)].copy()
        out["origin"] = origin
        out["step"] = steps_after(out["date"], origin)
        frames.append(out)
    if not frames:
        return None
    return attach_actuals(pd.concat(frames, ignore_index=True).astype({"store_id": str, "item_id": str}), train)


def model_dependence(
    names: list[str],
    selection,
    train: pd.DataFrame,
    task: Task,
    floor: bool,
    economics: DecisionSettings | None = None,
    seed: int = 0,
) -> dict[str, Dependence]:
    """Each model's error dependence and order-level shift (tuned at ``economics``), from its forecasts at the
    ensemble's validation origins: the members' and the combination's as the ensemble made and fitted them, the
    statistical models' made here at the same origins; none fitted without an ensemble."""
    out: dict[str, Dependence] = {}
    validation = getattr(selection, "validation_rows", None) or {}
    fitted = getattr(selection, "dependence", None) or {}
    origins = [pd.Timestamp(o) for o in getattr(selection, "origins", None) or []]
    attributes = train.drop_duplicates(SERIES).assign(
        store_id=lambda f: f["store_id"].astype(str), item_id=lambda f: f["item_id"].astype(str)
    )
    for name in names:
        key = "combination" if name == "ensemble" else name
        rows = validation.get(key)
        if rows is None and name in STATISTICAL and origins:
            rows = origin_rows(train, task, name, origins)
        if rows is None:
            out[name] = fitted.get(key, Dependence())  # as the ensemble fitted it, or none
            continue
        dependence = fitted[key] if key in fitted else fit_dependence(rows, floor)
        parameters = series_parameters(rows[SERIES], task.frequency, economics, [attributes])
        out[name] = dependence.with_shift(tune_level_shift(rows, parameters, dependence, floor, seed))
    return out


def decisions_section(
    forecasts: dict[str, pd.DataFrame],
    train: pd.DataFrame,
    test: pd.DataFrame,
    frequency: str,
    dependence: dict[str, Dependence],
    economics: DecisionSettings | None = None,
    seed: int = 0,
) -> dict:
    """The policy's outcome per model on the series every model forecast and whose holdout is complete."""
    economics = economics or DecisionSettings()
    floor = bool((train["sales"] >= 0).all())
    actual = test.assign(store_id=test["store_id"].astype(str), item_id=test["item_id"].astype(str))
    wide = actual.pivot_table(index=SERIES, columns="date", values="sales", aggfunc="sum")
    complete = wide.dropna()
    dates = pd.DatetimeIndex(complete.columns)
    arrays = {name: forecast_arrays(frame, dates) for name, frame in forecasts.items()}
    common = complete.index
    for series, _, _ in arrays.values():
        common = common.intersection(pd.MultiIndex.from_frame(series))
    series = common.to_frame(index=False)
    demand = complete.loc[common].to_numpy(dtype="float64")
    attributes = train.drop_duplicates(SERIES).assign(
        store_id=lambda f: f["store_id"].astype(str), item_id=lambda f: f["item_id"].astype(str)
    )
    parameters = series_parameters(series, frequency, economics, [attributes])
    result: dict = {
        "economics": {
            "service_level": economics.service_level,
            "lead_time": int(parameters["lead_time"].median()) if len(parameters) else economics.lead_time,
            "review_period": int(parameters["review_period"].median()) if len(parameters) else economics.review_period,
            "priced_series": int((parameters["economics"] == "costs").sum()),
        },
        "series": int(len(series)),
        "series_left_out": int(len(wide) - len(series)),
        "models": {},
    }
    for name, (model_series, _, quantiles) in arrays.items():
        order = pd.MultiIndex.from_frame(model_series).get_indexer(common)
        outcome = simulate_policy(quantiles[order], demand, parameters, dependence[name], floor, seed)
        result["models"][name] = {
            **outcome.to_dict(),
            "dependence": list(dependence[name].to_dict()["lags"][:6]),
            "level_shift": dependence[name].level_shift,
        }
    if result["models"]:
        best = min(result["models"], key=lambda n: result["models"][n]["total_cost"])
        result["lowest_cost"] = best
        for values in result["models"].values():
            values["cost_vs_lowest"] = values["total_cost"] / result["models"][best]["total_cost"]
    return result


def average_sections(sections: list[dict]) -> dict:
    """The per-window decision sections of a rolling backtest, their numbers averaged."""
    if len(sections) == 1:
        return sections[0]
    out = dict(sections[-1])
    out["models"] = {}
    for name in sections[-1]["models"]:
        values = [s["models"][name] for s in sections]
        out["models"][name] = {
            k: float(np.mean([v[k] for v in values])) if isinstance(values[-1][k], (int, float)) else values[-1][k]
            for k in values[-1]
        }
    best = min(out["models"], key=lambda n: out["models"][n]["total_cost"])
    out["lowest_cost"] = best
    for values in out["models"].values():
        values["cost_vs_lowest"] = values["total_cost"] / out["models"][best]["total_cost"]
    return out


def decisions_table(section: dict) -> str:
    """The decisions section as a terminal table."""
    economics = section["economics"]
    lines = [
        f"decisions: order-up-to, review every {economics['review_period']}, lead time {economics['lead_time']}, "
        f"service level {economics['service_level']:.2f} where no price and cost ({section['series']} series)",
        f"{'model':<16}{'cost':>12}{'vs best':>9}{'fill':>8}{'stock':>12}{'cum cov80':>11}{'service':>9}{'shift':>7}",
    ]
    for name, m in section["models"].items():
        lines.append(
            f"{name:<16}{m['total_cost']:>12.4g}{m['cost_vs_lowest']:>9.3f}{m['fill_rate']:>8.3f}"
            f"{m['average_stock']:>12.4g}{m['cumulative_coverage_80']:>11.3f}{m['service_level_achieved']:>9.3f}"
            f"{m.get('level_shift', 0.0):>7.1f}"
        )
    return "\n".join(lines)
