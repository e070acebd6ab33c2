"""The jobs, referenced as objects by the sensors, schedules and the runner. Selected by asset key, so this module
imports no stage module and every stage module may import it."""

import dagster as dg

INGEST_ASSETS = ("stores", "items", "calendar", "raw_sales", "clean_sales", "sales_quarantine")

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.assets(*INGEST_ASSETS),
    description="Master data, then collection and validated cleaning of the requested periods.",
)
integrate_job = dg.define_asset_job(
    "integrate_job",
    selection=dg.AssetSelection.assets("integrated_sales"),
    description="The integrated view from every ingested period.",
)
train_job = dg.define_asset_job(
    "train_job",
    selection=dg.AssetSelection.assets(
        "features",
        "forecaster",
        "forecasts",
        "backtest",
        "forecast_accuracy",
        "orders",
        "alerts",
        "drivers",
        "bi_tables",
        "insights",
    ),
    description="Features, training (full or incremental; MLflow, champion/challenger), forecasts from the champion, "
    "the backtest, live accuracy, orders, alerts, drivers, the BI tables and the insights report.",
)
forecast_job = dg.define_asset_job(
    "forecast_job",
    selection=dg.AssetSelection.assets(
        "forecasts", "forecast_accuracy", "orders", "alerts", "drivers", "bi_tables", "insights"
    ),
    description="Forecasts from the champion on the latest data, live accuracy, orders, alerts, the BI tables and the "
    "insights report.",
)
INVENTORY_ASSETS = ("inventory", "inventory_quarantine")
inventory_job = dg.define_asset_job(
    "inventory_job",
    selection=dg.AssetSelection.assets(
        *INVENTORY_ASSETS, "forecast_accuracy", "orders", "alerts", "drivers", "bi_tables", "insights"
    ),
    description="A stock snapshot (partitioned by its period), then the orders, alerts, BI tables and report that "
    "read it.",
)
pipeline_job = dg.define_asset_job(
    "pipeline_job",
    # Stock snapshots have partitions of their own: `bi-pipeline run` reads them first with inventory_job.
    selection=dg.AssetSelection.all() - dg.AssetSelection.assets(*INVENTORY_ASSETS),
    description="Every stage end to end (what `bi-pipeline demo` runs); stock snapshots are read by inventory_job.",
)
JOBS = (ingest_job, integrate_job, train_job, forecast_job, inventory_job, pipeline_job)


def running_sensor(job, every: int, description: str):
    """A sensor decorator for ``job``: on by default (the daemon runs it), evaluated every ``every`` seconds; the
    sensor is named after its function."""
    return dg.sensor(
        job=job, minimum_interval_seconds=every, default_status=dg.DefaultSensorStatus.RUNNING, description=description
    )
