"""Run the asset graph from the command line against the persistent instance under ``$BI_PIPELINE_HOME``.

What `bi-pipeline demo` and `bi-pipeline run` use: every landed period is registered as a partition and all
stages run in one run (a single-run backfill), so the result shows up in the Dagster UI afterwards.
"""

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg
import pandas as pd

from bi_pipeline.config import ForecastSettings, Settings, TrainingSettings, prepare_dagster_home
from bi_pipeline.defs.build import build_defs
from bi_pipeline.defs.collection import RANGE_END_TAG, RANGE_START_TAG, chunks, sales_periods
from bi_pipeline.defs.jobs import INVENTORY_ASSETS, ingest_job, integrate_job, inventory_job, pipeline_job, train_job
from bi_pipeline.ingest import landing_scan
from bi_pipeline.state import locked, read_json, record_removal, write_json
from bi_pipeline.storage import StoragePath, read_bytes
from bi_pipeline.storage import files as stored_files


@dataclass
class RunSummary:
    success: bool
    run_id: str
    partitions: int
    rejected_files: list[str] = field(default_factory=list)
    pending_files: list[str] = field(default_factory=list)
    materialized: dict[str, dict] = field(default_factory=dict)  # asset -> metadata (plain values)
    checks: dict[str, dict] = field(default_factory=dict)  # check -> {passed, description}
    error: str | None = None


def register_periods(
    instance: dg.DagsterInstance, settings: Settings, assume_complete: bool = False
) -> tuple[list[str], list[str], list[str]]:
    """Add a partition for each complete sales file (two scans a settle time apart, as the sensor's ticks, unless
    ``assume_complete``); returns (all partition keys, rejected-file messages, files still pending)."""
    existing = instance.get_dynamic_partitions(sales_periods.name)
    scan = landing_scan(settings, known_keys=existing, assume_complete=assume_complete, wait=True)
    new = sorted({f.key for f in scan.ready} - set(existing))
    if new:
        instance.add_dynamic_partitions(sales_periods.name, new)
    rejected = [str(e) for e in scan.rejected] + scan.removed
    return list(instance.get_dynamic_partitions(sales_periods.name)), rejected, scan.pending


def register_snapshots(instance: dg.DagsterInstance, settings: Settings, assume_complete: bool = False) -> list[str]:
    """Add a partition for each complete stock snapshot in inventory/; returns the snapshots to read: the new ones
    and any whose file changed since it was read."""
    from bi_pipeline.contract import scan_until_stable
    from bi_pipeline.decisions.stock import INVENTORY_DIR
    from bi_pipeline.defs.inventory import inventory_periods

    scan = scan_until_stable(
        settings.landing, settings.settle_seconds, assume_complete=assume_complete, subdir=INVENTORY_DIR
    )
    existing = set(instance.get_dynamic_partitions(inventory_periods.name))
    new = sorted({f.key for f in scan.ready} - existing)
    if new:
        instance.add_dynamic_partitions(inventory_periods.name, new)
    read = settings.state_dir / "inventory_read.json"
    with locked(read):
        seen = read_json(read, {})
    return sorted(f.key for f in scan.ready if seen.get(f.relpath) != f.sha256)


def _mark_snapshots_read(settings: Settings, keys: list[str]) -> None:
    from bi_pipeline.contract import scan_sales_dir
    from bi_pipeline.decisions.stock import INVENTORY_DIR

    scan = scan_sales_dir(settings.landing, assume_complete=True, subdir=INVENTORY_DIR)
    read = settings.state_dir / "inventory_read.json"
    with locked(read):
        seen = read_json(read, {})
        seen.update({f.relpath: f.sha256 for f in scan.ready if f.key in keys})
        write_json(read, seen)


def _plain(value) -> object:
    inner = getattr(value, "value", value)
    return inner if isinstance(inner, (int, float, str, bool, dict, list)) or inner is None else str(inner)


def run_pipeline(
    settings: Settings,
    instance: dg.DagsterInstance | None = None,
    log_level: str = "INFO",
    forecast: ForecastSettings | None = None,
    assume_complete: bool = False,
    training: TrainingSettings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RunSummary:
    """Every stage over every landed period: one run when the history fits in one (``PERIODS_PER_RUN``), otherwise
    an ingest run per range of periods, then one run for the integrated view and one for training and forecasts."""
    prepare_dagster_home(settings)
    instance = instance or dg.DagsterInstance.get()
    keys, rejected, pending = register_periods(instance, settings, assume_complete)
    if not keys:
        waiting = "".join(f"\n  waiting: {p}" for p in pending[:10])
        raise SystemExit(
            f"no complete sales files in {settings.landing / 'sales'}: run `bi-pipeline generate` or land files "
            f"first (`--complete` takes files as they are){waiting}"
        )
    defs = build_defs(settings, forecast, training)
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    summary = RunSummary(success=True, run_id="", partitions=len(keys), rejected_files=rejected, pending_files=pending)
    # Partition order is the order periods were added; each range covers consecutive ones.
    ranges = chunks(keys)
    plan = [(pipeline_job, ranges[0])] if len(ranges) == 1 else [(ingest_job, r) for r in ranges]
    if len(ranges) > 1:
        plan += [(integrate_job, []), (train_job, [])]
    # Stock snapshots first, each in its own partition, so that the orders of the runs below read the newest.
    snapshots = register_snapshots(instance, settings, assume_complete)
    plan = [(inventory_job, [key]) for key in snapshots] + plan
    for done, (job, part) in enumerate(plan):
        if progress:
            progress(done, len(plan))
        if job is inventory_job:
            result = defs.resolve_job_def(job.name).execute_in_process(
                instance=instance,
                partition_key=part[0],
                run_config=run_config,
                raise_on_error=False,
                asset_selection=[dg.AssetKey(name) for name in INVENTORY_ASSETS],
            )
            if result.success:
                _mark_snapshots_read(settings, part)
        else:
            tags = {RANGE_START_TAG: part[0], RANGE_END_TAG: part[-1]} if part else {}
            result = defs.resolve_job_def(job.name).execute_in_process(
                instance=instance, tags=tags, run_config=run_config, raise_on_error=False
            )
        summary.run_id = result.run_id if not summary.run_id else f"{summary.run_id}, {result.run_id}"
        _collect(summary, result)
        if not result.success:
            summary.success = False
            break
    if progress and summary.success:
        progress(len(plan), len(plan))
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


STORED_PER_PERIOD = ("raw_sales", "clean_sales", "sales_quarantine")


def _stored_partition(settings: Settings, asset: str, key: str) -> StoragePath:
    return settings.asset_dir / asset / f"{key}.parquet"


def _source_file(path: StoragePath) -> tuple[str, str] | None:
    """(file, sha256) a stored ``raw_sales`` partition was read from, kept in its Parquet metadata."""
    attrs = pd.read_parquet(io.BytesIO(read_bytes(path)), columns=["source_row"]).attrs
    return (
        (attrs["source_file"], attrs["source_sha256"])
        if attrs.get("source_file") and attrs.get("source_sha256")
        else None
    )


def remove_period(
    settings: Settings, key: str, reason: str, instance: dg.DagsterInstance | None = None, rebuild: bool = True
) -> dict:
    """Remove one period on purpose: its partition and stored rows go, the removal is recorded (who, when, why and
    which file content), and that content is not ingested again; the landed file itself is left as it is. With
    ``rebuild`` the integrated view is rebuilt without the period."""
    if not reason.strip():
        raise ValueError("say why the period is removed (--reason): it is recorded with the removal")
    prepare_dagster_home(settings)
    instance = instance or dg.DagsterInstance.get()
    if key not in instance.get_dynamic_partitions(sales_periods.name):
        raise ValueError(f"{key} is not an ingested period (see the sales_periods partitions in the UI)")
    files: dict[str, str] = {}
    raw = _stored_partition(settings, "raw_sales", key)
    source = _source_file(raw) if raw.exists() else None
    if source is not None:
        files[source[0]] = source[1]
    deleted = []
    for asset in STORED_PER_PERIOD:
        path = _stored_partition(settings, asset, key)
        if path.exists():
            path.unlink()
            deleted.append(str(path))
    instance.delete_dynamic_partition(sales_periods.name, key)
    entry = record_removal(settings.removals_path, key, files, reason.strip())
    result = {**entry, "deleted": deleted, "integrated_view": "not rebuilt"}
    if rebuild and instance.get_dynamic_partitions(sales_periods.name):
        run = (
            build_defs(settings)
            .resolve_job_def(integrate_job.name)
            .execute_in_process(instance=instance, raise_on_error=False)
        )
        outcome = "rebuilt" if run.success else "rebuild FAILED"
        result["integrated_view"] = f"{outcome} (run {run.run_id})"
    return result


def rebuild_state(settings: Settings) -> dict:
    """Rebuild ``state/ingested.json`` from the stored ``raw_sales`` partitions (each records the file content it
    was read from) and drop the landing-scan cache (the next scans rebuild it). The landed files are not touched."""
    manifest: dict[str, str] = {}
    folder = settings.asset_dir / "raw_sales"
    for path in stored_files(folder, "*.parquet"):
        source = _source_file(path)
        if source is not None:
            manifest[source[0]] = source[1]
    with locked(settings.manifest_path):
        write_json(settings.manifest_path, manifest)
    settings.scan_state_path.unlink(missing_ok=True)
    return {"manifest": str(settings.manifest_path), "files": len(manifest), "scan_cache": "cleared"}
