"""Forecasting: features → forecaster (trained, tracked in MLflow, promoted only when better) → forecasts, and the
backtest that compares the forecaster with strong baselines on the same holdout. Each asset is wiring around a use
case of :mod:`bi_pipeline.forecasting.usecases`."""

import json

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from bi_pipeline.defs.checks import master_or_none
from bi_pipeline.defs.collection import partition_frequency
from bi_pipeline.defs.progress import training_reporter
from bi_pipeline.defs.resources import ForecastingResource, MLflowResource, PipelineResource
from bi_pipeline.defs.types import FORECASTS
from bi_pipeline.forecasting.baselines import attach_actuals
from bi_pipeline.forecasting.catalog import MODELS, build_models
from bi_pipeline.forecasting.checkpoint import clear_checkpoints
from bi_pipeline.forecasting.continual import IncrementalConfig
from bi_pipeline.forecasting.features import fit_spec, seasonal_profile_lag, unused_columns
from bi_pipeline.forecasting.interface import DEFAULT_HORIZON, Task
from bi_pipeline.forecasting.metrics import METRICS, QUANTILES, SERIES, quantile_column, score, season_length_for
from bi_pipeline.forecasting.panel import build_panel, panel_frame, panel_from_frame, split_of, validation_length
from bi_pipeline.forecasting.registry import CHAMPION
from bi_pipeline.forecasting.usecases import (
    NoChampion,
    Promotion,
    lightgbm_covariates,
    publish_forecasts,
    train_and_promote,
)
from bi_pipeline.plots import figure, png_base64
from bi_pipeline.privacy import redact_uri
from bi_pipeline.storage import StoragePath, storage_path
from bi_pipeline.synthetic import resolve_init_from

GROUP = "forecasting"


def _horizon(forecasting: ForecastingResource, frequency: str) -> int:
    return forecasting.horizon or DEFAULT_HORIZON[frequency]


def _task(forecasting: ForecastingResource, features: pd.DataFrame, history: pd.DataFrame) -> Task:
    """The forecasting task of a features frame: typed values read off its split, the season by the training range."""
    split = split_of(features)
    training_periods = int((pd.to_datetime(features["date"].unique()) <= split.cutoff).sum())
    season = season_length_for(split.frequency, training_periods, forecasting.season_length)
    covariates = lightgbm_covariates(history, split.cutoff, split.frequency)
    return Task(split.frequency, split.horizon, season, covariates)


def _reason_counts(skipped: pd.DataFrame) -> dict[str, int]:
    """Series not forecast per kind of reason (the text before its colon: ``ended``, ``no forecast from the model``)."""
    return {str(k): int(v) for k, v in skipped["reason"].str.split(":").str[0].value_counts().items()}


def _md_table(frame: pd.DataFrame, digits: int = 3) -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.round(digits).to_markdown(index=False))


@dg.asset(group_name=GROUP, kinds={"pandas", "parquet"})
def features(
    context: dg.AssetExecutionContext,
    pipeline: PipelineResource,
    forecasting: ForecastingResource,
    integrated_sales: pd.DataFrame,
) -> dg.Output:
    """Model-ready series: target (gaps interpolated, ``observed`` marks landed values), known-future covariates
    (calendar encodings and effects such as Easter, holiday/event flags, promotion, log price ratio), static
    attributes as codes, and ``split``: train, validation (early stopping), test (the holdout the forecaster is scored
    on). Encodings are fitted on the training range only."""
    frequency = partition_frequency(context, pipeline)
    horizon = _horizon(forecasting, frequency)
    dates = np.sort(integrated_sales["date"].unique())
    if len(dates) <= 2 * horizon + 4:
        raise dg.Failure(
            f"{len(dates)} periods of history are too few to train and hold out {horizon} (BI_PIPELINE_HORIZON)"
        )
    cutoff_date = pd.Timestamp(dates[-horizon - 1])
    train = integrated_sales[integrated_sales["date"] <= cutoff_date]
    lag = seasonal_profile_lag(forecasting.seasonal_profile, frequency, horizon, train)
    spec = fit_spec(
        train,
        frequency,
        profile_lag=lag,
        calendar_effects=forecasting.calendar_effects,
        month_turn=forecasting.month_turn,
    )
    unused = unused_columns(train, spec)
    if unused:
        context.log.info("columns the model does not read: " + "; ".join(f"{c}: {why}" for c, why in unused.items()))
    panel = build_panel(integrated_sales, spec, reference_end=cutoff_date)
    cutoff = int(panel.dates.get_loc(cutoff_date))
    history_len = int(np.median(cutoff + 1 - panel.first))
    validation = validation_length(horizon, history_len, forecasting.train_config().validation_horizons)
    frame = panel_frame(panel, split_at={"validation": cutoff + 1 - validation, "test": cutoff + 1})
    counts = frame["split"].value_counts().to_dict()
    context.log.info(
        f"features: {panel.series} series, {len(spec.future_names)} known-future features, "
        f"holdout from {panel.dates[cutoff + 1].date()} ({horizon} periods)"
    )
    return dg.Output(
        frame,
        metadata={
            "series": panel.series,
            "rows": len(frame),
            "horizon": horizon,
            "holdout_start": str(panel.dates[cutoff + 1].date()),
            "validation_periods": validation,
            "rows_by_split": json.dumps({k: int(v) for k, v in counts.items()}),
            "future_features": ", ".join(spec.future_names),
            "month_turn": spec.month_turn_adjustment.describe() if spec.month_turn_adjustment else "none",
            "static_features": ", ".join([*spec.static_categorical, *spec.static_numeric]) or "none",
            # Every column the model leaves out, and why: nothing is left out silently.
            "columns_not_used": dg.MetadataValue.md(
                "\n".join(f"- `{c}`: {why}" for c, why in unused.items()) or "none: every column is an input"
            ),
            "preview": dg.MetadataValue.md(frame.head(8).to_markdown(index=False)),
        },
    )


class TrainingConfig(dg.Config):
    """How this training starts (the retrain sensor and the full-retrain schedule set it, with the reason)."""

    mode: str = Field(
        default="full",
        description="full: from scratch; incremental: warm start from the champion on the new periods + replay",
    )
    reason: str = Field(default="manual", description="why this training was requested (shown in MLflow)")


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, pool="gpu")
def forecaster(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    pipeline: PipelineResource,
    forecasting: ForecastingResource,
    mlflow_tracking: MLflowResource,
    features: pd.DataFrame,
    integrated_sales: pd.DataFrame,
) -> dg.Output:
    """Trains the transformer (PatchTST backbone, quantile head with covariates) on the training split, early-stopped
    on validation — from scratch, or incrementally from the champion — scores it on the holdout, logs it to MLflow
    and registers it as ``challenger``; it becomes ``champion`` only if its holdout MASE is finite and beats seasonal
    naive's on the same holdout (the floor, which alone decides when there is no champion or it cannot be read), and
    beats the current champion's by the margin with no store or item group (nor an older window) regressing past the
    tolerance. The value is the holdout and validation forecasts (the backtest asset compares them with the
    baselines)."""
    if config.mode not in ("full", "incremental"):
        raise dg.Failure(f"training mode {config.mode!r}: use full or incremental")
    settings, forecast_settings = pipeline.settings(), forecasting.forecast_settings()
    task = _task(forecasting, features, integrated_sales)
    split = split_of(features)
    panel = panel_from_frame(features, upto=split.cutoff)
    train_config = forecasting.train_config(validation_periods=split.validation_periods)
    checkpoints = run_checkpoints(storage_path(forecasting.checkpoint_dir), context.run)
    reporter = training_reporter(context.log, checkpoints)
    # "synthetic": the checkpoint pretrained on the generator's corpus (built on first use, then reused).
    train_config = resolve_init_from(train_config, task.frequency, task.horizon, settings, reporter)
    promotion = Promotion(
        ensemble=forecast_settings.ensemble,
        margin=forecast_settings.promotion_margin,
        group_tolerance=forecast_settings.group_tolerance,
        incremental=IncrementalConfig(
            epochs=forecast_settings.incremental_epochs, replay_ratio=forecast_settings.replay_ratio
        ),
    )
    outcome = train_and_promote(
        integrated_sales,
        panel,
        int(panel.dates.get_loc(split.cutoff)),
        task,
        train_config,
        mlflow_tracking.tracker(),
        settings.home / "models",
        promotion,
        mode=config.mode,
        reason=config.reason,
        run_name=context.run_id,
        checkpoint_dir=checkpoints,
        progress=reporter,
        log=context.log.info,
        warn=context.log.warning,
    )
    clear_checkpoints(checkpoints)
    candidate, result, gate = outcome.candidate, outcome.transformer.result, outcome.gate
    value = pd.concat(
        [
            *(frame.assign(kind="holdout", model=name) for name, frame in candidate.holdout.items()),
            candidate.validation.assign(kind="validation", model="transformer"),
        ],
        ignore_index=True,
    )
    value["model_version"] = outcome.version
    value["transformer_weight"] = candidate.weight
    epochs = pd.DataFrame(result.history)
    return dg.Output(
        value,
        metadata={
            "model_version": outcome.version,
            "mode": outcome.mode,
            "reason": config.reason,
            "model_kind": candidate.kind,
            "members": candidate.model.describe(),
            "transformer_weight": candidate.weight,
            "transformer_spread_weight": candidate.spread_weight,
            "interval_step_factors": ", ".join(f"{f:.2f}" for f in candidate.model.step_factors) or "none",
            **(
                {
                    "validation_origins": ", ".join(candidate.selection.origins),
                    "validation_by_member": _md_table(
                        pd.DataFrame([{"member": k, **v} for k, v in candidate.selection.scores.items()]), 4
                    ),
                }
                if candidate.selection
                else {}
            ),
            "champion_version": mlflow_tracking.tracker().alias_version(CHAMPION),
            "decision": "promoted" if outcome.decision.promoted else "kept",
            "decision_reason": outcome.decision.reason,
            **mlflow_metadata(
                mlflow_tracking.tracking_uri, mlflow_tracking.experiment, outcome.run_id, outcome.version
            ),
            **{f"holdout_{k}": float(v) for k, v in candidate.own_scores.items()},
            "seasonal_naive_holdout_MASE": outcome.floor,
            **(
                {f"champion_holdout_{k}": float(v) for k, v in outcome.champion_scores.items()}
                if outcome.champion_scores
                else {}
            ),
            **(
                {
                    "gate_vetoes": "; ".join(gate.vetoes) or "none",
                    "group_regressions": _md_table(gate.regressions) if len(gate.regressions) else "none",
                    **{f"older_window_MASE_{k}": float(v) for k, v in gate.older.items()},
                }
                if gate is not None
                else {}
            ),
            "holdout_by_part": _md_table(
                pd.DataFrame([{"part": name, **values} for name, values in candidate.scores.items()])
            ),
            "device": result.device,
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "train_windows": result.train_windows,
            "train_windows_per_second": round(result.windows_per_second, 1),
            "training_seconds": round(result.seconds, 1),
            "parameters": int(sum(p.numel() for p in outcome.transformer.network.parameters())),
            "epochs": _md_table(epochs.drop(columns=[c for c in ("best",) if c in epochs]), 4),
        },
    )


def run_checkpoints(checkpoint_dir: StoragePath, run: dg.DagsterRun) -> StoragePath:
    """The training checkpoints of a run: a folder per run, so concurrent trainings never share one, keyed by the
    root run, so a retry of a failed run (a new run with the same root) resumes from its last epoch."""
    return checkpoint_dir / "forecaster" / (run.root_run_id or run.run_id)


def mlflow_metadata(tracking_uri: str, experiment: str, run_id: str, version: str) -> dict:
    """Where a training is in MLflow, for the asset's metadata: the tracking URI without its credentials."""
    uri = redact_uri(tracking_uri)
    return {
        "mlflow_run_id": run_id,
        "mlflow_tracking_uri": uri,
        "mlflow_ui": dg.MetadataValue.md(
            f"`mlflow ui --backend-store-uri {uri}` → experiment `{experiment}`, run `{run_id}`, "
            f"model `bi_pipeline_forecaster` v{version}"
        ),
    }


def _plot(history: pd.DataFrame, forecasts: pd.DataFrame, title: str) -> str:
    """A PNG (base64) of the recent history, the median forecast and its 80% band."""
    fig, ax = figure()
    ax.plot(history["date"], history["sales"], color="#333333", lw=1.2, label="history")
    ax.fill_between(forecasts["date"], forecasts["q0.1"], forecasts["q0.9"], color="#4c72b0", alpha=0.25, label="80%")
    ax.plot(forecasts["date"], forecasts["q0.5"], color="#4c72b0", lw=1.5, label="forecast (P50)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    return png_base64(fig)


@dg.asset(
    group_name=GROUP,
    kinds={"pandas", "parquet"},
    deps=[forecaster],
    dagster_type=FORECASTS.dagster_type,
    metadata=FORECASTS.definition_metadata(),
)
def forecasts(
    context: dg.AssetExecutionContext,
    pipeline: PipelineResource,
    mlflow_tracking: MLflowResource,
    integrated_sales: pd.DataFrame,
    calendar: pd.DataFrame,
) -> dg.Output:
    """P10…P90 and the point forecast for every active series over the horizon after the last landed period, from
    the champion model, with its version and the cutoff date."""
    history = integrated_sales
    try:
        published = publish_forecasts(
            history, master_or_none(calendar), mlflow_tracking.tracker(), pipeline.settings().archive_dir
        )
    except NoChampion as exc:
        raise dg.Failure(str(exc)) from None
    out, model, version = published.forecasts, published.model, published.version
    skipped = published.not_forecast
    context.log.info(
        f"{out[SERIES].drop_duplicates().shape[0]} series forecast from champion v{version} ({model.kind}); "
        f"{len(skipped)} not forecast"
        + (f" ({', '.join(f'{n} {r}' for r, n in _reason_counts(skipped).items())})" if len(skipped) else "")
    )
    volume = history.groupby(SERIES, observed=True)["sales"].sum().sort_values(ascending=False)
    recent = history[history["date"] > history["date"].max() - pd.Timedelta(days=int(3 * 365.25))]
    images = []
    total_hist = recent.groupby("date", as_index=False)["sales"].sum()
    total_fc = out.groupby("date", as_index=False)[[quantile_column(q) for q in QUANTILES]].sum()
    images.append(("Total (sum of the series' quantiles: an upper bound on the band)", total_hist, total_fc))
    for store_id, item_id in list(volume.index[:3]):
        mask = (recent["store_id"].astype(str) == str(store_id)) & (recent["item_id"].astype(str) == str(item_id))
        fc = out[(out["store_id"] == str(store_id)) & (out["item_id"] == str(item_id))]
        images.append((f"{store_id} / {item_id}", recent[mask], fc))
    plots = "\n\n".join(f"**{t}**\n\n![{t}](data:image/png;base64,{_plot(h, f, t)})" for t, h, f in images)
    return dg.Output(
        out,
        metadata={
            "model_version": version,
            "cutoff": str(pd.Timestamp(out["cutoff"].iloc[0]).date()) if len(out) else "",
            "series": int(out[SERIES].drop_duplicates().shape[0]),
            "horizon": model.horizon,
            "model_kind": model.kind,
            "members": model.describe(),
            "series_not_forecast": len(skipped),
            "not_forecast_by_reason": dg.MetadataValue.json(_reason_counts(skipped)),
            "not_forecast_series": _md_table(skipped.head(50)) if len(skipped) else "none",
            "clipped_negative_values": published.clipped_quantiles,
            "archived_as": dg.MetadataValue.path(str(published.archived)),
            "rows": len(out),
            **FORECASTS.observed_metadata(out),
            "preview": dg.MetadataValue.md(out.head(10).round(2).to_markdown(index=False)),
            "plots": dg.MetadataValue.md(plots),
        },
    )


@dg.asset(group_name=GROUP, kinds={"pandas"})
def backtest(
    context: dg.AssetExecutionContext,
    forecasting: ForecastingResource,
    features: pd.DataFrame,
    forecaster: pd.DataFrame,
    integrated_sales: pd.DataFrame,
) -> dg.Output:
    """The transformer against seasonal naive, AutoETS (statsforecast) and LightGBM (mlforecast) on the same
    holdout, and the ensemble: the combination of them the forecaster chose on validation origins before it (the
    forecaster's own members, so the table shows exactly what competed for champion). Every other model comes from
    the model catalog and is fitted here on the same training periods."""
    task = _task(forecasting, features, integrated_sales)
    cutoff_date = split_of(features).cutoff
    history = integrated_sales
    train, test = history[history["date"] <= cutoff_date], history[history["date"] > cutoff_date]
    holdout = forecaster[forecaster["kind"] == "holdout"]
    by_model = {
        str(name): frame.drop(columns=["kind", "model", "model_version", "transformer_weight"])
        for name, frame in holdout.groupby("model")
    }
    # Models the forecaster did not fit (seasonal naive, and the other members when it ran without its ensemble):
    # fitted here, through the one model interface. Without its ensemble the candidate is the transformer alone.
    missing = tuple(name for name in MODELS if name not in by_model and name not in ("transformer", "ensemble"))
    future = test.drop(columns="sales")
    for name, model in build_models(missing).items():
        by_model[name] = model.fit(train, task, future).predict(train, future)
    rows = [
        {"model": name, **score(attach_actuals(by_model[name], test), train, task.season)}
        for name in MODELS
        if name in by_model
    ]
    table = pd.DataFrame(rows)
    naive = float(table.loc[table["model"] == "seasonal_naive", "MASE"].iloc[0])
    table["skill"] = table["MASE"] / naive
    best = table.loc[table["MASE"].idxmin(), "model"]
    context.log.info(f"backtest over {task.horizon} periods from {test['date'].min().date()}: best {best}")
    return dg.Output(
        table,
        metadata={
            "comparison": _md_table(table[["model", "MASE", "skill", "RMSSE", "WAPE", "WQL", "coverage_80", "bias"]]),
            "best_model": str(best),
            "ensemble_transformer_weight": float(forecaster["transformer_weight"].iloc[0]),
            "holdout_start": str(pd.Timestamp(test["date"].min()).date()),
            "horizon": task.horizon,
            "season_length": task.season,
            "model_version": str(forecaster["model_version"].iloc[0]),
            **{f"transformer_{m}": float(table.loc[table["model"] == "transformer", m].iloc[0]) for m in METRICS},
        },
    )
