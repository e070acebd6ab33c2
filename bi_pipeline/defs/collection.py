"""Collection: master data and the raw sales of each period, and the sensor that notices new or re-landed files."""

import hashlib
import json
from datetime import date

import dagster as dg
import pandas as pd
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from bi_pipeline.contract import (
    ContractError,
    LandedFile,
    infer_frequency,
    load_manifest,
    raw_frame,
    read_master,
    read_period,
    scan_sales_dir,
    update_manifest,
)
from bi_pipeline.defs.checks import gx_check_result
from bi_pipeline.defs.resources import PipelineResource
from bi_pipeline.expectations import (
    Validator,
    calendar_suite_spec,
    master_suite_spec,
)

GROUP = "collection"
sales_periods = dg.DynamicPartitionsDefinition(name="sales_periods")
# A run over many periods (a backfill, a bulk drop) takes up to this many: years of history load in a few runs
# rather than a run per period, and the periods a run holds in memory together stay a few GB even at M5 scale.
PERIODS_PER_RUN = 250
BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=PERIODS_PER_RUN)


def chunks(keys: list[str], size: int | None = None) -> list[list[str]]:
    size = size or PERIODS_PER_RUN
    return [keys[i : i + size] for i in range(0, len(keys), size)]


def partition_frequency(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> str:
    """The configured frequency, or the one the landed period dates show."""
    settings = pipeline.settings()
    if settings.frequency:
        return settings.frequency
    keys = context.instance.get_dynamic_partitions(sales_periods.name)
    return infer_frequency([date.fromisoformat(k) for k in keys])


def _master_asset(name: str, key: str, description: str):
    check_name = f"{name}_expectations"

    @dg.asset(
        name=name,
        group_name=GROUP,
        description=description,
        check_specs=[dg.AssetCheckSpec(check_name, asset=name, blocking=True, description=f"GX suite on {name}")],
        kinds={"pandas", "csv"},
    )
    def _asset(context: dg.AssetExecutionContext, pipeline: PipelineResource):
        settings = pipeline.settings()
        try:
            frame = read_master(settings.landing, name)
        except ContractError as exc:
            raise dg.Failure(str(exc), metadata={"file": str(settings.landing / exc.file)}) from None
        present = frame is not None
        if frame is None:
            # Absent optional file: no information, not an error (and no id rule downstream).
            frame = pd.DataFrame({key: pd.Series(dtype=str), "source_row": pd.Series(dtype="int64")})
        yield dg.Output(
            frame,
            metadata={
                "present": present,
                "rows": len(frame),
                "columns": ", ".join(c for c in frame.columns if c != "source_row"),
                "preview": dg.MetadataValue.md(frame.head(10).to_markdown(index=False)) if present else "absent",
            },
        )
        if not present:
            yield dg.AssetCheckResult(check_name=check_name, passed=True, metadata={"present": False})
            return
        spec = calendar_suite_spec("store_id" in frame.columns) if name == "calendar" else master_suite_spec(key)
        check_frame = frame.replace({"": None})
        outcome = Validator(settings.gx_dir).run(name, check_frame, spec)
        yield gx_check_result(check_name, outcome, f"{name}.csv")

    return _asset


stores = _master_asset("stores", "store_id", "Store master data from stores.csv (absent file: no store attributes).")
items = _master_asset("items", "item_id", "Item master data from items.csv (absent file: no item attributes).")
calendar = _master_asset(
    "calendar", "date", "Known-in-advance covariates from calendar.csv (store_id rows: store-specific)."
)


@dg.asset(
    partitions_def=sales_periods,
    backfill_policy=BACKFILL_POLICY,
    group_name=GROUP,
    kinds={"pandas", "csv"},
)
def raw_sales(context: dg.AssetExecutionContext, pipeline: PipelineResource):
    """Every row of each period's sales file as text, with source file and row; unreadable lines kept as rows with
    ``read_error`` set. The landed file is never modified."""
    settings = pipeline.settings()
    frequency = partition_frequency(context, pipeline)
    keys = context.partition_keys
    frames: dict[str, pd.DataFrame] = {}
    manifest: dict[str, str] = {}
    for i, key in enumerate(keys, start=1):
        read = read_period(settings.landing, key)
        manifest[read.relpath] = read.sha256
        frames[key] = raw_frame(read)
        if len(read.issues):
            first = read.issues.iloc[0]
            context.log.warning(
                f"{first['source_file']}: {len(read.issues)} unreadable line(s)/file issue(s), "
                f"first at row {first['source_row']}: {first['reason']}: {first['detail']}"
            )
        if i % 50 == 0 or i == len(keys):
            context.log.info(f"collected {i}/{len(keys)} periods")
    update_manifest(settings.manifest_path, manifest)
    rows = sum(len(f) for f in frames.values())
    unreadable = sum(int((f["read_error"].astype(str) != "").sum()) for f in frames.values())
    return dg.Output(
        frames,
        metadata={
            "partitions": len(keys),
            "rows": rows,
            "unreadable_rows": unreadable,
            "frequency": frequency,
            "files": dg.MetadataValue.md(
                "\n".join(f"- `{k}`: {len(frames[k])} rows" for k in keys[:20]) + ("\n- ..." if len(keys) > 20 else "")
            ),
        },
    )


CURSOR_VERSION = 1


def _file_request(landed: LandedFile, reason: str) -> dg.RunRequest:
    return dg.RunRequest(
        # Path and content: a re-landed file with new content is a new run, the same bytes never are.
        run_key=f"{landed.relpath}@{landed.sha256[:16]}",
        partition_key=landed.key,
        tags={"bi_pipeline/file": landed.relpath, "bi_pipeline/sha256": landed.sha256, "bi_pipeline/reason": reason},
    )


@dg.sensor(
    name="landing_zone_sensor",
    description="Requests a run for each new or re-landed (changed) sales file in the landing zone.",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    job_name="ingest_job",
)
def landing_zone_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource) -> dg.SensorResult:
    settings = pipeline.settings()
    state = json.loads(context.cursor) if context.cursor else {}
    # A fresh sensor starts from what runs already ingested (e.g. by `bi-pipeline demo`), not from nothing.
    seen: dict[str, str] = state["files"] if "files" in state else load_manifest(settings.manifest_path)
    warned: dict[str, str] = state.get("warned", {})
    scan = scan_sales_dir(settings.landing, settings.settle_seconds)
    for error in scan.rejected:
        # Warn once per file and problem; the sensor keeps running whatever lands.
        if warned.get(error.file) != error.rule:
            context.log.warning(f"not ingested: {error}")
            warned[error.file] = error.rule
    if scan.pending:
        context.log.info(f"waiting for {len(scan.pending)} file(s) still being written: {', '.join(scan.pending[:5])}")
    existing = set(context.instance.get_dynamic_partitions(sales_periods.name))
    new_files: list[LandedFile] = []
    requests: list[dg.RunRequest] = []
    for landed in scan.ready:
        previous = seen.get(landed.relpath)
        if previous == landed.sha256:
            continue
        if landed.key in existing:  # a period ingested before: re-run just it
            requests.append(_file_request(landed, "changed" if previous else "new"))
        else:
            new_files.append(landed)
        seen[landed.relpath] = landed.sha256
        warned.pop(landed.relpath, None)
    changed = len(requests)
    new_keys = sorted(f.key for f in new_files)
    if len(new_files) == 1:
        requests.append(_file_request(new_files[0], "new"))
    elif new_files:
        # Many new periods at once (first start, a bulk drop): a run per range of periods, not a run per file. New
        # keys are appended to the partitions in date order, so each range holds exactly them.
        by_key = {f.key: f for f in new_files}
        for part in chunks(new_keys):
            content = "".join(f"{by_key[k].relpath}@{by_key[k].sha256};" for k in part)
            requests.append(
                dg.RunRequest(
                    run_key=f"sales/{part[0]}..{part[-1]}@{hashlib.sha256(content.encode()).hexdigest()[:16]}",
                    tags={
                        ASSET_PARTITION_RANGE_START_TAG: part[0],
                        ASSET_PARTITION_RANGE_END_TAG: part[-1],
                        "bi_pipeline/files": str(len(part)),
                        "bi_pipeline/reason": "new",
                    },
                )
            )
    cursor = json.dumps({"version": CURSOR_VERSION, "files": seen, "warned": warned}, sort_keys=True)
    if not requests:
        return dg.SensorResult(skip_reason="no new or changed sales files", cursor=cursor)
    context.log.info(
        f"requesting {len(requests)} run(s) for {len(new_files)} new period(s) and {changed} re-landed file(s)"
    )
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[sales_periods.build_add_request(new_keys)] if new_keys else [],
        cursor=cursor,
    )
