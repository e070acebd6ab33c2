"""Run the asset graph from the command line against the persistent instance under ``$BI_PIPELINE_HOME``.

What `bi-pipeline demo` and `bi-pipeline run` use: every landed period is registered as a partition and all
stages run in one run (a single-run backfill), so the result shows up in the Dagster UI afterwards.
"""

from dataclasses import dataclass, field

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from bi_pipeline.config import Settings, prepare_dagster_home
from bi_pipeline.contract import scan_sales_dir
from bi_pipeline.definitions import build_defs
from bi_pipeline.defs.collection import sales_periods


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
    job_name: str = "pipeline_job",
    log_level: str = "INFO",
) -> RunSummary:
    prepare_dagster_home(settings)
    instance = instance or dg.DagsterInstance.get()
    keys, rejected = register_periods(instance, settings)
    if not keys:
        raise SystemExit(
            f"no sales files in {settings.landing / 'sales'}: run `bi-pipeline generate` or land files first"
        )
    job = build_defs(settings).resolve_job_def(job_name)
    # Partition order is the order periods were added; the range covers every one of them.
    tags = {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    result = job.execute_in_process(instance=instance, tags=tags, run_config=run_config, raise_on_error=False)
    summary = RunSummary(success=result.success, run_id=result.run_id, partitions=len(keys), rejected_files=rejected)
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        name = materialization.asset_key.to_user_string()
        summary.materialized[name] = {k: _plain(v) for k, v in materialization.metadata.items()}
    for event in result.get_asset_check_evaluations():
        summary.checks[f"{event.asset_key.to_user_string()}:{event.check_name}"] = {
            "passed": event.passed,
            "severity": event.severity.value,
            "description": event.description,
        }
    if not result.success:
        failures = [e for e in result.all_events if e.is_step_failure]
        summary.error = "; ".join(
            f"{e.step_key}: {e.step_failure_data.error.message.strip() if e.step_failure_data.error else ''}"
            for e in failures
        )
    return summary
