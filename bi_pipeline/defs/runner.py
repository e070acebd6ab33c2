"""Run the asset graph from the command line against the persistent instance under ``$BI_PIPELINE_HOME``.

What `bi-pipeline demo` and `bi-pipeline run` use: every landed period is registered as a partition and all
stages run in one run (a single-run backfill), so the result shows up in the Dagster UI afterwards.
"""

from dataclasses import dataclass, field

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from bi_pipeline.config import ForecastSettings, Settings, prepare_dagster_home
from bi_pipeline.contract import scan_sales_dir
from bi_pipeline.definitions import build_defs
from bi_pipeline.defs.collection import chunks, sales_periods


@dataclass
class RunSummary:
    success: bool
    run_id: str
    partitions: int
    rejected_files: list[str] = field(default_factory=list)
    materialized: dict[str, dict] = field(default_factory=dict)  # asset -> metadata (plain values)
    checks: dict[str, dict] = field(default_factory=dict)  # check -> {passed, description}
    error: str | None = None


def register_periods(instance: dg.DagsterInstance, settings: Settings) -> tuple[list[str], list[str]]:
    """Add a partition for each ready sales file; returns (all partition keys, rejected-file messages)."""
    scan = scan_sales_dir(settings.landing, settle_seconds=0)
    existing = set(instance.get_dynamic_partitions(sales_periods.name))
    new = sorted({f.key for f in scan.ready} - existing)
    if new:
        instance.add_dynamic_partitions(sales_periods.name, new)
    return list(instance.get_dynamic_partitions(sales_periods.name)), [str(e) for e in scan.rejected]


def _plain(value) -> object:
    inner = getattr(value, "value", value)
    return inner if isinstance(inner, (int, float, str, bool, dict, list)) or inner is None else str(inner)


def run_pipeline(
    settings: Settings,
    instance: dg.DagsterInstance | None = None,
    log_level: str = "INFO",
    forecast: ForecastSettings | None = None,
) -> RunSummary:
    """Every stage over every landed period: one run when the history fits in one (``PERIODS_PER_RUN``), otherwise
    an ingest run per range of periods, then one run for the integrated view and one for training and forecasts."""
    prepare_dagster_home(settings)
    instance = instance or dg.DagsterInstance.get()
    keys, rejected = register_periods(instance, settings)
    if not keys:
        raise SystemExit(
            f"no sales files in {settings.landing / 'sales'}: run `bi-pipeline generate` or land files first"
        )
    defs = build_defs(settings, forecast)
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    summary = RunSummary(success=True, run_id="", partitions=len(keys), rejected_files=rejected)
    # Partition order is the order periods were added; each range covers consecutive ones.
    ranges = chunks(keys)
    plan = [("pipeline_job", ranges[0])] if len(ranges) == 1 else [("ingest_job", r) for r in ranges]
    if len(ranges) > 1:
        plan += [("integrate_job", []), ("train_job", [])]
    for job_name, part in plan:
        tags = {ASSET_PARTITION_RANGE_START_TAG: part[0], ASSET_PARTITION_RANGE_END_TAG: part[-1]} if part else {}
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, tags=tags, run_config=run_config, raise_on_error=False
        )
        summary.run_id = result.run_id if not summary.run_id else f"{summary.run_id}, {result.run_id}"
        _collect(summary, result)
        if not result.success:
            summary.success = False
            break
    return summary


def _collect(summary: RunSummary, result: dg.ExecuteInProcessResult) -> None:
    """Fold one run's materializations, checks and failures into the summary (counts add up across runs)."""
    latest: dict[str, dict] = {}  # a multi-period run reports the same run-level metadata for each period
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        latest[materialization.asset_key.to_user_string()] = {k: _plain(v) for k, v in materialization.metadata.items()}
    for name, metadata in latest.items():
        previous = summary.materialized.get(name)
        if previous is not None:
            for key in ("rows", "partitions"):
                if isinstance(metadata.get(key), int) and isinstance(previous.get(key), int):
                    metadata[key] += previous[key]
            if isinstance(metadata.get("by_reason"), dict) and isinstance(previous.get("by_reason"), dict):
                merged = dict(previous["by_reason"])
                for reason, count in metadata["by_reason"].items():
                    merged[reason] = merged.get(reason, 0) + count
                metadata["by_reason"] = dict(sorted(merged.items()))
        summary.materialized[name] = metadata
    for event in result.get_asset_check_evaluations():
        name = f"{event.asset_key.to_user_string()}:{event.check_name}"
        previous = summary.checks.get(name)
        if previous is not None and not previous["passed"]:
            continue  # keep the first failure
        summary.checks[name] = {
            "passed": event.passed,
            "severity": event.severity.value,
            "description": event.description,
        }
    if not result.success:
        failures = [e for e in result.all_events if e.is_step_failure]
        error = "; ".join(
            f"{e.step_key}: {e.step_failure_data.error.message.strip() if e.step_failure_data.error else ''}"
            for e in failures
        )
        summary.error = f"{summary.error}; {error}" if summary.error else error
