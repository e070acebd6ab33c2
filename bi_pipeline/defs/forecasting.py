"""Forecasting: features → forecaster (trained, tracked in MLflow, promoted only when better) → forecasts, and the
backtest that compares the forecaster with strong baselines on the same holdout."""

import json
import math
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from bi_pipeline.accuracy import archive_forecasts
from bi_pipeline.baselines import attach_actuals, lightgbm_forecast, pandas_freq, statistical_forecast
from bi_pipeline.continual import group_mase, promotion_gate, series_groups, update_forecaster
from bi_pipeline.defs.checks import master_or_none
from bi_pipeline.defs.collection import partition_frequency
from bi_pipeline.defs.resources import ForecastingResource, MLflowResource, PipelineResource
from bi_pipeline.ensemble import Forecaster, ensemble_forecast
from bi_pipeline.evaluation import METRICS, QUANTILES, SERIES, quantile_column, score, season_length_for
from bi_pipeline.features import (
    FeatureSpec,
    build_panel,
    fit_spec,
    panel_frame,
    panel_from_frame,
    seasonal_profile_lag,
    unused_columns,
    validation_length,
)
from bi_pipeline.forecasting import (
    DEFAULT_HORIZON,
    forecast_latest,
    future_covariates,
    holdout_forecast,
    lineage_of,
    load_champion,
    make_candidate,
)
from bi_pipeline.plots import figure, png_base64
from bi_pipeline.privacy import redact_uri
from bi_pipeline.tracking import CHAMPION
from bi_pipeline.training import clear_checkpoints, train_forecaster

GROUP = "forecasting"


def _horizon(forecasting: ForecastingResource, frequency: str) -> int:
    return forecasting.horizon or DEFAULT_HORIZON[frequency]


def _season(forecasting: ForecastingResource, frequency: str, features: pd.DataFrame) -> int:
    training_periods = int((pd.to_datetime(features["date"].unique()) <= pd.Timestamp(features.attrs["cutoff"])).sum())
    return season_length_for(frequency, training_periods, forecasting.season_length)


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
    spec = fit_spec(train, frequency, profile_lag=lag, calendar_effects=forecasting.calendar_effects)
    unused = unused_columns(train, spec)
    if unused:
        context.log.info("columns the model does not read: " + "; ".join(f"{c}: {why}" for c, why in unused.items()))
    panel = build_panel(integrated_sales, spec, reference_end=cutoff_date)
    cutoff = int(panel.dates.get_loc(cutoff_date))
    history_len = int(np.median(cutoff + 1 - panel.first))
    validation = validation_length(horizon, history_len, forecasting.validation_horizons)
    frame = panel_frame(panel, split_at={"validation": cutoff + 1 - validation, "test": cutoff + 1})
    frame.attrs.update(
        horizon=str(horizon), cutoff=str(cutoff_date.date()), validation_periods=str(validation), frequency=frequency
    )
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
    settings = pipeline.settings()
    frequency = features.attrs["frequency"]
    horizon, validation = int(features.attrs["horizon"]), int(features.attrs["validation_periods"])
    season = _season(forecasting, frequency, features)
    cutoff_date = pd.Timestamp(features.attrs["cutoff"])
    panel = panel_from_frame(features, upto=cutoff_date)
    cutoff = int(panel.dates.get_loc(cutoff_date))
    train_config = forecasting.train_config()
    train_config.validation_periods = validation
    checkpoints = run_checkpoints(Path(forecasting.checkpoint_dir), context.run)

    def report(record: dict) -> None:
        stage = record.get("stage")
        if stage == "train":
            context.log.info(
                f"epoch {record['epoch']}/{record['epochs']}: train loss {record['train_loss']:.4f}, "
                f"validation loss {record['validation_loss']:.4f}{' (best)' if record['best'] else ''}"
            )
        elif stage == "pretrain":
            context.log.info(f"pretrain member {record['member']} epoch {record['epoch']}: loss {record['loss']:.4f}")
        elif stage == "pretrain_corpus":
            context.log.info(
                f"pretraining on the synthetic corpus (first use, then reused: {record['checkpoint']}), "
                f"epoch {record['epoch']}/{record['epochs']}: validation loss {record['loss']:.4f}"
            )
        elif stage == "resume":
            context.log.info(f"resuming from the checkpoint after epoch {record['epoch']} ({checkpoints})")
        elif stage == "resume_skipped":
            context.log.warning(
                f"checkpoint {record['checkpoint']} not resumed from, training from scratch: {record['error']}"
            )
        elif stage == "calibrate":
            context.log.info(
                f"calibrated on validation: level ×{record['level_scale']}, median swing ×{record['shape_scale']}, "
                f"quantile spread ×{record['spread_scale']}"
                f" × (width / {record['spread_reference']:.4g}) ^ {record['spread_power']}"
            )
        elif stage == "calibrate_level_feedback":
            context.log.info(
                f"calibrated on validation: each series' level × (its recent actual / forecast ratio) ^ "
                f"{record['level_feedback_power']} over its last {record['level_feedback_origins']} origins"
            )
        elif stage == "calibrate_error_spread":
            context.log.info(
                f"calibrated on validation: each series' spread × (its past error ratio / "
                f"{record['error_spread_reference']:.4g}) ^ {record['error_spread_power']} over its last "
                f"{record['error_spread_windows']} forecasts; quantile spread now ×{record['spread_scale']:.4g}"
            )

    history = integrated_sales
    tracker = mlflow_tracking.tracker()
    champion_version = tracker.alias_version(CHAMPION)
    # An unreadable champion is not a reason to stop training: it cannot be warm-started from or compared with.
    champion = load_champion(tracker, champion_version, context.log.warning) if champion_version else None
    mode = config.mode
    result = None
    if mode == "incremental":
        if champion is None:
            context.log.warning("incremental training requested but there is no champion yet: training from scratch")
        else:
            spec = FeatureSpec.from_dict(champion.transformer.config.feature_spec)
            champion_panel = build_panel(history, spec, reference_end=cutoff_date)
            champion_cutoff = int(champion_panel.dates.get_loc(cutoff_date))
            try:
                result = update_forecaster(
                    champion.transformer,
                    champion_panel,
                    horizon,
                    champion_cutoff,
                    train_config,
                    forecasting.incremental_config(),
                    series_groups(history),
                    checkpoint_dir=checkpoints,
                    progress=report,
                )
                panel, cutoff = champion_panel, champion_cutoff
                context.log.info(
                    f"incremental update of champion v{champion_version}: {result.train_windows} windows "
                    f"(new periods after {champion.transformer.config.training_targets_end} and a replay sample)"
                )
            except ValueError as exc:
                context.log.warning(f"incremental update not possible ({exc}): training from scratch")
    if result is None:
        mode = "full"
        result = train_forecaster(panel, horizon, cutoff, train_config, checkpoint_dir=checkpoints, progress=report)
    model = result.model
    train = history[history["date"] <= cutoff_date]
    covariates = fit_spec(train, frequency, continuous_covariates=True).covariates
    candidate = make_candidate(
        result, panel, cutoff, history, frequency, horizon, season, covariates, ensemble=forecasting.ensemble
    )
    scores = candidate.own_scores
    floor = float(candidate.seasonal_naive.get("MASE", math.nan))
    for name, values in {**candidate.scores, "seasonal_naive": candidate.seasonal_naive}.items():
        context.log.info(f"holdout {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    if forecasting.ensemble:
        context.log.info(
            f"candidate: {candidate.kind} (transformer weight {candidate.weight:.1f}, fitted on {validation} "
            "validation periods)"
        )

    lineage = {**lineage_of(history, cutoff_date, horizon), "dagster_run_id": context.run_id}
    params = {
        **train_config.to_dict(),
        "init_from": result.init_from or "",
        "mode": mode,
        "reason": config.reason,
        "warm_start_from": champion_version if mode == "incremental" else "",
        "horizon": horizon,
        "frequency": frequency,
        "season_length": season,
        "kind": candidate.kind,
        "transformer_weight": candidate.weight,
        "transformer_spread_weight": candidate.spread_weight,
        "train_windows": result.train_windows,
        "validation_windows": result.validation_windows,
        "best_epoch": result.best_epoch,
        "device": result.device,
        "spread_scale": model.config.spread_scale,
        "level_scale": model.config.level_scale,
        "shape_scale": model.config.shape_scale,
        "spread_power": model.config.spread_power,
        "spread_reference": model.config.spread_reference,
        "error_spread_power": model.config.error_spread_power,
        "error_spread_reference": model.config.error_spread_reference,
        "error_spread_windows": model.config.error_spread_windows,
        "level_feedback_power": model.config.level_feedback_power,
        "level_feedback_origins": model.config.level_feedback_origins,
        "future_features": ",".join(panel.spec.future_names),
        "lightgbm_covariates": ",".join(covariates) if candidate.kind == "ensemble" else "",
    }
    model_dir = settings.home / "models" / context.run_id  # one per run: two trainings never write the same one
    try:
        candidate.model.save(model_dir)
        run_id, version = tracker.log_training(
            model_dir,
            params,
            result.history,
            scores,
            lineage,
            run_name=context.run_id,
            components=candidate.scores,
            version_tags={"kind": candidate.kind, "transformer_weight": candidate.weight, "mode": mode},
        )
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)  # the registered copy lives in MLflow's artifact store
    champion_scores, gate = None, None
    if champion is not None:
        try:
            champion_scores, gate = _compare_with_champion(
                candidate, champion, history, season, horizon, forecasting.group_tolerance
            )
        except Exception as exc:  # whatever fails, the challenger is judged against seasonal naive alone
            context.log.warning(
                f"champion v{champion_version} could not be scored on this holdout "
                f"({type(exc).__name__}: {redact_uri(str(exc))})"
            )
    decision = tracker.decide(
        version,
        scores["MASE"],
        champion_scores["MASE"] if champion_scores else None,
        floor_score=floor,
        margin=forecasting.promotion_margin,
        vetoes=gate.vetoes if gate else None,
    )
    if gate is not None:
        run_of_version = tracker.run_of(version)
        if gate.older:
            tracker.client.log_metric(run_of_version, "older_window_MASE", gate.older["challenger"])
            tracker.client.log_metric(run_of_version, "champion_older_window_MASE", gate.older["champion"])
        # The numbers behind the decision, beside the run: every group compared, the vetoes, the older window.
        tracker.client.log_dict(
            run_of_version,
            {
                "champion_version": champion_version,
                "champion_holdout": champion_scores,
                "challenger_holdout": scores,
                "seasonal_naive_holdout": candidate.seasonal_naive,
                "margin": forecasting.promotion_margin,
                "group_tolerance": forecasting.group_tolerance,
                "vetoes": gate.vetoes,
                "older_window_MASE": gate.older,
                "groups": gate.compared.to_dict(orient="records"),
                "decision": "promoted" if decision.promoted else "kept",
                "reason": decision.reason,
            },
            "promotion_gate.json",
        )
    context.log.info(
        f"model version {version} ({candidate.kind}): "
        f"{'promoted to champion' if decision.promoted else 'kept as challenger'} — {decision.reason}"
    )
    clear_checkpoints(checkpoints)
    value = pd.concat(
        [
            *(frame.assign(kind="holdout", model=name) for name, frame in candidate.holdout.items()),
            candidate.validation.assign(kind="validation", model="transformer"),
        ],
        ignore_index=True,
    )
    value["model_version"] = version
    value.attrs["transformer_weight"] = str(candidate.weight)
    epochs = pd.DataFrame(result.history)
    return dg.Output(
        value,
        metadata={
            "model_version": version,
            "mode": mode,
            "reason": config.reason,
            "model_kind": candidate.kind,
            "transformer_weight": candidate.weight,
            "transformer_spread_weight": candidate.spread_weight,
            "champion_version": tracker.alias_version(CHAMPION),
            "decision": "promoted" if decision.promoted else "kept",
            "decision_reason": decision.reason,
            **mlflow_metadata(mlflow_tracking.tracking_uri, mlflow_tracking.experiment, run_id, version),
            **{f"holdout_{k}": float(v) for k, v in scores.items()},
            "seasonal_naive_holdout_MASE": floor,
            **({f"champion_holdout_{k}": float(v) for k, v in champion_scores.items()} if champion_scores else {}),
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
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "epochs": _md_table(epochs.drop(columns=[c for c in ("best",) if c in epochs]), 4),
        },
    )


def run_checkpoints(checkpoint_dir: Path, run: dg.DagsterRun) -> Path:
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


def _compare_with_champion(
    candidate, champion: Forecaster, history: pd.DataFrame, season: int, horizon: int, tolerance: float
):
    """The champion's holdout scores (with its own encodings and parts), and the promotion gate: per store and item
    group on the holdout, and both models on the older window before it (the forgetting check)."""
    champion_fc, train, test = holdout_forecast(champion, history)
    champion_scores = score(attach_actuals(champion_fc, test), train, season)
    groups = series_groups(history)
    challenger_groups = group_mase(candidate.holdout[candidate.kind], test, train, season, groups)
    champion_groups = group_mase(champion_fc, test, train, season, groups)
    older = {}
    if history["date"].nunique() > 3 * horizon + 2:
        for name, model in (("challenger", candidate.model), ("champion", champion)):
            fc, old_train, old_test = holdout_forecast(model, history, back=horizon)
            older[name] = score(attach_actuals(fc, old_test), old_train, season)["MASE"]
    gate = promotion_gate(challenger_groups, champion_groups, older.get("challenger"), older.get("champion"), tolerance)
    return champion_scores, gate


def _plot(history: pd.DataFrame, forecasts: pd.DataFrame, title: str) -> str:
    """A PNG (base64) of the recent history, the median forecast and its 80% band."""
    fig, ax = figure()
    ax.plot(history["date"], history["sales"], color="#333333", lw=1.2, label="history")
    ax.fill_between(forecasts["date"], forecasts["q0.1"], forecasts["q0.9"], color="#4c72b0", alpha=0.25, label="80%")
    ax.plot(forecasts["date"], forecasts["q0.5"], color="#4c72b0", lw=1.5, label="forecast (P50)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    return png_base64(fig)


@dg.asset(group_name=GROUP, kinds={"pandas", "parquet"}, deps=[forecaster])
def forecasts(
    context: dg.AssetExecutionContext,
    pipeline: PipelineResource,
    forecasting: ForecastingResource,
    mlflow_tracking: MLflowResource,
    integrated_sales: pd.DataFrame,
    calendar: pd.DataFrame,
) -> dg.Output:
    """P10…P90 and the point forecast for every active series over the horizon after the last landed period, from
    the champion model, with its version and the cutoff date."""
    tracker = mlflow_tracking.tracker()
    version = tracker.alias_version(CHAMPION)
    if version is None:
        raise dg.Failure(
            "no champion model yet: materialize `forecaster` first. A training becomes champion only when its holdout "
            "MASE is finite and beats seasonal naive's; the forecaster's `decision_reason` says why one was not"
        )
    model = Forecaster.load(tracker.model_dir(version))
    history = integrated_sales
    future = future_covariates(master_or_none(calendar), history, model.horizon, pandas_freq(history, model.frequency))
    out = forecast_latest(model, history, future)
    out["model_version"] = version
    archived = archive_forecasts(pipeline.settings().home / "forecast_archive", out)
    context.log.info(
        f"{out[SERIES].drop_duplicates().shape[0]} series forecast from champion v{version} ({model.kind})"
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
            "archived_as": dg.MetadataValue.path(str(archived)),
            "rows": len(out),
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
    holdout, and their ensemble whose weight is fitted on the validation periods before it (the forecaster's own
    parts, so the table shows exactly what competed for champion)."""
    frequency = features.attrs["frequency"]
    horizon, validation = int(features.attrs["horizon"]), int(features.attrs["validation_periods"])
    season = _season(forecasting, frequency, features)
    cutoff_date = pd.Timestamp(features.attrs["cutoff"])
    history = integrated_sales
    train, test = history[history["date"] <= cutoff_date], history[history["date"] > cutoff_date]
    forecasts_by_model, _ = statistical_forecast(train, horizon, frequency, season)
    holdout = forecaster[forecaster["kind"] == "holdout"]
    for name, frame in holdout.groupby("model"):
        forecasts_by_model[str(name)] = frame.drop(columns=["kind", "model", "model_version"])
    weight = float(forecaster.attrs.get("transformer_weight", "nan"))
    if "ensemble" not in forecasts_by_model:
        # The forecaster ran without its ensemble (BI_PIPELINE_ENSEMBLE=0): fit LightGBM and the blend here.
        covariates = fit_spec(train, frequency, continuous_covariates=True).covariates
        forecasts_by_model["lightgbm"] = lightgbm_forecast(train, test, horizon, frequency, season, covariates)
        own = forecaster[forecaster["kind"] == "validation"].drop(columns=["kind", "model", "model_version"])
        forecasts_by_model["ensemble"], weight, _, _ = ensemble_forecast(
            train,
            forecasts_by_model["transformer"],
            forecasts_by_model["lightgbm"],
            own,
            validation,
            horizon,
            frequency,
            season,
            covariates,
        )
    rows = []
    for name in ("transformer", "seasonal_naive", "auto_ets", "lightgbm", "ensemble"):
        metrics = score(attach_actuals(forecasts_by_model[name], test), train, season)
        rows.append({"model": name, **metrics})
    table = pd.DataFrame(rows)
    naive = float(table.loc[table["model"] == "seasonal_naive", "MASE"].iloc[0])
    table["skill"] = table["MASE"] / naive
    best = table.loc[table["MASE"].idxmin(), "model"]
    context.log.info(f"backtest over {horizon} periods from {test['date'].min().date()}: best {best}")
    return dg.Output(
        table,
        metadata={
            "comparison": _md_table(table[["model", "MASE", "skill", "WAPE", "WQL", "coverage_80", "bias"]]),
            "best_model": str(best),
            "ensemble_transformer_weight": weight,
            "holdout_start": str(pd.Timestamp(test["date"].min()).date()),
            "horizon": horizon,
            "season_length": season,
            "model_version": str(forecaster["model_version"].iloc[0]),
            **{f"transformer_{m}": float(table.loc[table["model"] == "transformer", m].iloc[0]) for m in METRICS},
        },
    )
