"""The Definitions of the code location, built from settings (the environment's by default)."""

from __future__ import annotations

import os

import dagster as dg

from bi_pipeline.config import DecisionSettings, ForecastSettings, Settings, TrainingSettings, from_env
from bi_pipeline.defs.accuracy import forecast_accuracy
from bi_pipeline.defs.automation import automation_sensor, build_schedules, forecast_sensor, retrain_sensor
from bi_pipeline.defs.cleaning import clean_sales
from bi_pipeline.defs.collection import calendar, items, landing_zone_sensor, raw_sales, stores
from bi_pipeline.defs.decisions import alerts, bi_tables, drivers, insights, orders
from bi_pipeline.defs.forecasting import backtest, features, forecaster, forecasts
from bi_pipeline.defs.integration import integrated_sales
from bi_pipeline.defs.inventory import inventory, inventory_sensor
from bi_pipeline.defs.jobs import JOBS
from bi_pipeline.defs.resources import (
    DecisionResource,
    ForecastingResource,
    MLflowResource,
    ParquetIOManager,
    PipelineResource,
)

MLFLOW_URI_ENV = "BI_PIPELINE_MLFLOW_URI"


def _secret(value: str, env: str) -> str | dict:
    """A value read from the environment can hold a password: Dagster config gets the variable's name instead."""
    return {"env": env} if os.environ.get(env) and os.environ[env] == value else value


def build_executor(settings: Settings) -> dg.ExecutorDefinition:
    """The executor every job's runs use (``BI_PIPELINE_EXECUTOR``): steps in subprocesses on this machine by
    default, or queued to Celery workers on the broker (docs/production.md). ``bi-pipeline run`` and ``demo`` execute
    in process whatever this says; runs launched by the webserver, the daemon's sensors and schedules use it."""
    if settings.executor == "in_process":
        return dg.in_process_executor
    if settings.executor == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(
            {
                "broker": _secret(settings.celery_broker, "BI_PIPELINE_CELERY_BROKER"),
                "backend": _secret(settings.celery_backend, "BI_PIPELINE_CELERY_BACKEND"),
            },
            name="celery",
        )
    return dg.multiprocess_executor


def build_defs(
    settings: Settings | None = None,
    forecast: ForecastSettings | None = None,
    training: TrainingSettings | None = None,
    recipe: dict | None = None,
    decisions: DecisionSettings | None = None,
) -> dg.Definitions:
    """The code location's definitions; each settings object defaults to the environment's."""
    settings = settings or Settings.from_env()
    forecast = forecast or ForecastSettings.from_env()
    training = training or from_env(TrainingSettings)
    decisions = decisions or DecisionSettings.from_env()
    return dg.Definitions(
        assets=[
            *(stores, items, calendar, raw_sales, clean_sales, integrated_sales),
            *(features, forecaster, forecasts, backtest, forecast_accuracy),
            *(inventory, orders, alerts, drivers, bi_tables, insights),
        ],
        jobs=list(JOBS),
        sensors=[landing_zone_sensor, inventory_sensor, retrain_sensor, forecast_sensor, automation_sensor],
        schedules=build_schedules(forecast),
        executor=build_executor(settings),
        resources={
            "pipeline": PipelineResource.from_settings(settings),
            "forecasting": ForecastingResource.from_settings(settings, forecast, training, recipe),
            "mlflow_tracking": MLflowResource(
                # A URI from the environment can hold a password: Dagster gets the variable's name, never its value.
                tracking_uri=dg.EnvVar(MLFLOW_URI_ENV)
                if os.environ.get(MLFLOW_URI_ENV) and forecast.mlflow_tracking_uri == os.environ[MLFLOW_URI_ENV]
                else forecast.mlflow_tracking_uri or settings.mlflow_uri,
                artifact_location=str(settings.mlflow_artifacts),
            ),
            "decisions": DecisionResource.from_settings(decisions),
            "io_manager": ParquetIOManager(base_dir=str(settings.asset_dir)),
        },
    )
