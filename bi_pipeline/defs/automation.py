"""Automation: declarative conditions for the data stages, the retrain sensor, the forecast refresh and the full
retrain schedules. Every request is idempotent (a run key per champion and data state) and says why in its tags."""

import math

import dagster as dg
import pandas as pd
from dagster import DagsterRunStatus

from bi_pipeline.config import ForecastSettings
from bi_pipeline.defs.collection import sales_periods
from bi_pipeline.defs.jobs import forecast_job, running_sensor, train_job
from bi_pipeline.defs.resources import ForecastingResource, MLflowResource
from bi_pipeline.forecasting.continual import retrain_decision
from bi_pipeline.forecasting.live import LiveEvidence
from bi_pipeline.forecasting.registry import CHAMPION

TRAINING_TAG = "bi_pipeline/training"  # full | incremental; dagster.yaml queues one such run at a time
REASON_TAG = "bi_pipeline/reason"
TRIGGER_TAG = "bi_pipeline/trigger"
IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


def training_request(mode: str, reason: str, trigger: str, run_key: str) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=run_key,
        run_config={"ops": {"forecaster": {"config": {"mode": mode, "reason": reason}}}},
        tags={TRAINING_TAG: mode, REASON_TAG: reason[:250], TRIGGER_TAG: trigger},
    )


def training_in_flight(instance: dg.DagsterInstance) -> bool:
    """A training queued or running: requesting another would only pile up behind it."""
    records = instance.get_run_records(
        dg.RunsFilter(tags={TRAINING_TAG: ["full", "incremental"]}, statuses=IN_FLIGHT), limit=1
    )
    return bool(records)


def _latest_metadata(instance: dg.DagsterInstance, key: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    if event is None or event.asset_materialization is None:
        return {}
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _live_evidence(accuracy: dict) -> LiveEvidence | None:
    """The champion's live accuracy as ``forecast_accuracy`` recorded it (None before any period was scored)."""
    if "live_periods" not in accuracy:
        return None
    se = float(accuracy["live_MASE_se"])
    periods, mase = int(accuracy["live_periods"]), float(accuracy["live_MASE"])
    return LiveEvidence(str(accuracy["live_version"]), periods, mase, se if se >= 0 else math.inf)


def new_periods_since(instance: dg.DagsterInstance, last_period: str, integrated_until: str) -> int:
    """Periods of ``sales_periods`` after ``last_period`` (the champion's data end) that the integrated view already
    holds: a period still on its way through cleaning does not count until the training could read it."""
    start, end = pd.Timestamp(last_period), pd.Timestamp(integrated_until)
    return sum(1 for key in instance.get_dynamic_partitions(sales_periods.name) if start < pd.Timestamp(key) <= end)


@running_sensor(
    train_job,
    120,
    "Requests a training: the first one when there is no champion, an incremental one after K new periods "
    "since the champion's data or when its live accuracy degrades past the threshold.",
)
def retrain_sensor(
    context: dg.SensorEvaluationContext, forecasting: ForecastingResource, mlflow_tracking: MLflowResource
):
    if training_in_flight(context.instance):
        return dg.SkipReason("a training is already queued or running")
    integrated = _latest_metadata(context.instance, "integrated_sales")
    if not integrated:
        return dg.SkipReason("no integrated view yet")
    tracker = mlflow_tracking.tracker()
    champion = tracker.alias_version(CHAMPION)
    new_periods, champion_mase = 0, None
    if champion is not None:
        lineage = tracker.lineage(champion)
        new_periods = new_periods_since(context.instance, lineage["last_period"], str(integrated["last_date"]))
        champion_mase = tracker.holdout_metrics(champion).get("MASE")
    live = _live_evidence(_latest_metadata(context.instance, "forecast_accuracy"))
    request = retrain_decision(
        champion,
        new_periods,
        forecasting.retrain_after_periods,
        live,
        champion_mase,
        forecasting.degradation_threshold,
        forecasting.degradation_min_periods,
    )
    if request is None:
        evidence = (
            f"{live.describe()} (judged from {forecasting.degradation_min_periods})"
            if live is not None and live.version == champion
            else "no scored period yet"
        )
        return dg.SkipReason(
            f"champion v{champion}: {new_periods} new period(s) (retrain after {forecasting.retrain_after_periods}),"
            f" live accuracy within the threshold: {evidence}"
        )
    context.log.info(f"requesting a {request.mode} training: {request.reason}")
    # One request per champion, data end and trigger: ticks after a restart or a pause ask for it only once.
    run_key = f"{request.mode}:{request.trigger}:v{champion}:{integrated.get('last_date')}"
    return training_request(request.mode, request.reason, request.trigger, run_key)


def forecast_request(instance: dg.DagsterInstance, mlflow_tracking: MLflowResource) -> dg.RunRequest | dg.SkipReason:
    """Forecasts from the champion when a period has landed since the last publication or the champion changed; one
    run key per champion and data end, so the sensor and the schedule never publish the same thing twice."""
    integrated = _latest_metadata(instance, "integrated_sales")
    if not integrated:
        return dg.SkipReason("no integrated view yet")
    champion = mlflow_tracking.tracker().alias_version(CHAMPION)
    if champion is None:
        return dg.SkipReason("no champion model yet")
    published = _latest_metadata(instance, "forecasts")
    last = str(integrated.get("last_date"))
    if published.get("model_version") == champion and published.get("cutoff") == last:
        return dg.SkipReason(f"forecasts from v{champion} after {last} are current")
    return dg.RunRequest(
        run_key=f"forecasts:v{champion}:{last}",
        tags={REASON_TAG: f"new data up to {last} or new champion v{champion}"},
    )


@running_sensor(
    forecast_job,
    60,
    "Publishes forecasts from the champion as soon as a landed period reaches the integrated view (the "
    "daily forecast_refresh_schedule is the fallback).",
)
def forecast_sensor(context: dg.SensorEvaluationContext, mlflow_tracking: MLflowResource):
    if training_in_flight(context.instance):
        # The training run publishes forecasts from the champion it leaves behind.
        return dg.SkipReason("a training is queued or running")
    return forecast_request(context.instance, mlflow_tracking)


def build_schedules(forecast: ForecastSettings) -> list[dg.ScheduleDefinition]:
    @dg.schedule(
        name="forecast_refresh_schedule",
        cron_schedule=forecast.forecast_cron,
        job=forecast_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Publishes forecasts from the champion when a period has landed since the last publication "
        "(the fallback of forecast_sensor).",
    )
    def forecast_refresh_schedule(context: dg.ScheduleEvaluationContext, mlflow_tracking: MLflowResource):
        return forecast_request(context.instance, mlflow_tracking)

    @dg.schedule(
        name="full_retrain_schedule",
        cron_schedule=forecast.full_retrain_cron,
        job=train_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="A full retrain from scratch on a slow cadence (incremental updates drift; this resets them).",
    )
    def full_retrain_schedule(context: dg.ScheduleEvaluationContext):
        if training_in_flight(context.instance):
            return dg.SkipReason("a training is already queued or running")
        tick = context.scheduled_execution_time
        stamp = tick.strftime("%Y-%m-%dT%H:%M") if tick else "manual"
        return training_request("full", f"scheduled full retrain ({stamp})", "schedule", f"full:schedule:{stamp}")

    return [forecast_refresh_schedule, full_retrain_schedule]


automation_sensor = dg.AutomationConditionSensorDefinition(
    "automation_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the assets' automation conditions: the integrated view and live accuracy follow new data.",
)
