"""Collection: master data and the raw sales of each period, and the sensor that notices new or re-landed files."""

import hashlib
import json
from datetime import date

import dagster as dg
import pandas as pd

from bi_pipeline.contract import ContractError, LandedFile, infer_frequency, raw_frame, sales_index
from bi_pipeline.defs.checks import gx_check_result
from bi_pipeline.defs.jobs import ingest_job, running_sensor
from bi_pipeline.defs.resources import PipelineResource
from bi_pipeline.expectations import (
    Validator,
    calendar_suite_spec,
    master_suite_spec,
)
from bi_pipeline.ingest import landing_scan
from bi_pipeline.privacy import preview_markdown, truncate
from bi_pipeline.readers import Limits, read_master, read_period
from bi_pipeline.state import load_manifest

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
            frame = read_master(settings.landing, name, Limits.of(settings))
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
                "preview": dg.MetadataValue.md(preview_markdown(frame, settings.pii_columns)) if present else "absent",
            },
        )
        if not present:
            yield dg.AssetCheckResult(check_name=check_name, passed=True, metadata={"present": False})
            return
        spec = calendar_suite_spec("store_id" in frame.columns) if name == "calendar" else master_suite_spec(key)
        check_frame = frame.replace({"": None})
        outcome = Validator.for_settings(settings).run(name, check_frame, spec)
        yield gx_check_result(check_name, outcome, f"{name}.csv", settings=settings)

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
    ``read_error`` set. The landed file is never modified. A period whose file is gone from the landing zone keeps
    the rows it was last ingested with (a re-run never erases history); removing a period is `bi-pipeline
    remove-period`."""
    settings = pipeline.settings()
    frequency = partition_frequency(context, pipeline)
    keys = context.partition_keys
    limits = Limits.of(settings)
    index = sales_index(settings.landing)  # one listing for the whole run
    stored = context.instance.get_materialized_partitions(context.asset_key)
    frames: dict[str, pd.DataFrame] = {}
    kept: list[str] = []
    for i, key in enumerate(keys, start=1):
        read = read_period(settings.landing, key, limits, index)
        if key in stored and list(read.issues["reason"]) == ["file_missing"]:
            kept.append(key)  # the IO manager leaves the stored partition as it is
        else:
            frames[key] = raw_frame(read)
        if len(read.issues):
            first = read.issues.iloc[0]
            context.log.warning(
                f"{first['source_file']}: {len(read.issues)} unreadable line(s)/file issue(s), "
                f"first at row {first['source_row']}: {first['reason']}: {truncate(first['detail'])}"
            )
        if i % 50 == 0 or i == len(keys):
            context.log.info(f"collected {i}/{len(keys)} periods")
    if kept:
        context.log.warning(
            f"{len(kept)} period(s) whose file is gone from the landing zone keep the rows they were ingested with: "
            + ", ".join(kept[:10])
            + (" ..." if len(kept) > 10 else "")
        )
    rows = sum(len(f) for f in frames.values())
    unreadable = sum(int((f["read_error"].astype(str) != "").sum()) for f in frames.values())
    return dg.Output(
        frames,
        metadata={
            "partitions": len(keys),
            "rows": rows,
            "unreadable_rows": unreadable,
            "frequency": frequency,
            "kept_previous": dg.MetadataValue.json(kept),
            "files": dg.MetadataValue.md(
                "\n".join(f"- `{k}`: {len(frames[k])} rows" for k in list(frames)[:20])
                + ("\n- ..." if len(frames) > 20 else "")
            ),
        },
    )


CURSOR_VERSION = 2
REQUEST_TAG = "bi_pipeline/request"  # the ingestion request a run answers (a retry answers the same one)
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
_FINISHED = {dg.DagsterRunStatus.SUCCESS: "succeeded", dg.DagsterRunStatus.FAILURE: "failed"}
_FINISHED[dg.DagsterRunStatus.CANCELED] = "was canceled"


def _request(request_id: str, keys: list[str], files: dict[str, str], reason: str, attempt: int) -> dg.RunRequest:
    """A run for one period or a range of consecutive new periods; a retry repeats it under a new run key."""
    tags = {REQUEST_TAG: request_id, "bi_pipeline/reason": reason, "bi_pipeline/attempt": str(attempt)}
    if len(files) == 1:
        rel, sha = next(iter(files.items()))
        tags.update({"bi_pipeline/file": rel, "bi_pipeline/sha256": sha})
    else:
        tags["bi_pipeline/files"] = str(len(files))
    run_key = request_id if attempt == 1 else f"{request_id}#attempt{attempt}"
    if len(keys) == 1:
        return dg.RunRequest(run_key=run_key, partition_key=keys[0], tags=tags)
    return dg.RunRequest(run_key=run_key, tags={**tags, RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]})


def _file_request_id(landed: LandedFile) -> str:
    # Path and content: a re-landed file with new content is a new request, the same bytes never are.
    return f"{landed.relpath}@{landed.sha256[:16]}"


def _follow_up(
    context: dg.SensorEvaluationContext, outstanding: dict[str, dict], attempts: int, ready: dict[str, str]
) -> list[dg.RunRequest]:
    """Seen is not ingested: a request whose run failed is made again, up to ``attempts`` runs in all, as long as its
    files are still complete and unchanged (``ready``: relpath -> sha256 of this scan); new content of a file is a
    new request once it is complete."""
    retries = []
    for request_id, request in list(outstanding.items()):
        records = context.instance.get_run_records(dg.RunsFilter(tags={REQUEST_TAG: request_id}), limit=1)
        if not records:
            continue  # not launched yet
        run = records[0].dagster_run
        outcome = _FINISHED.get(run.status)
        if outcome is None:
            continue  # queued or running
        files = ", ".join(sorted(request["files"])[:3]) + (" ..." if len(request["files"]) > 3 else "")
        if run.status == dg.DagsterRunStatus.SUCCESS:
            del outstanding[request_id]
        elif any(ready.get(rel) != sha for rel, sha in request["files"].items()):
            context.log.info(f"{files}: ingestion run {run.run_id} {outcome}; the file has changed since, not retried")
            del outstanding[request_id]
        elif request["attempt"] < attempts:
            request["attempt"] += 1
            context.log.warning(
                f"{files}: ingestion run {run.run_id} {outcome}; requesting it again "
                f"(attempt {request['attempt']} of {attempts})"
            )
            retries.append(_request(request_id, request["keys"], request["files"], "retry", request["attempt"]))
        else:
            context.log.error(
                f"{files}: ingestion run {run.run_id} {outcome} on attempt {request['attempt']} of {attempts}; not "
                "requested again until the file changes (fix it and land it again; the run's logs say why)"
            )
            del outstanding[request_id]
    return retries


def warn_rejected(
    context: dg.SensorEvaluationContext, rejected: list[ContractError], warned: dict[str, str], what: str
) -> None:
    """Warn once per file and problem (``warned`` remembers them in the cursor); the sensor keeps running whatever
    lands."""
    for error in rejected:
        if warned.get(error.file) != error.rule:
            context.log.warning(f"{what}: {error}")
            warned[error.file] = error.rule


@running_sensor(
    ingest_job,
    30,
    "Requests a run for each new or re-landed (changed) sales file once it is complete, and again "
    "(a bounded number of times) when its run failed.",
)
def landing_zone_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource) -> dg.SensorResult:
    settings = pipeline.settings()
    state = json.loads(context.cursor) if context.cursor else {}
    # A fresh sensor starts from what runs already ingested (e.g. by `bi-pipeline demo`), not from nothing.
    seen: dict[str, str] = state["files"] if "files" in state else load_manifest(settings.manifest_path)
    warned: dict[str, str] = state.get("warned", {})
    outstanding: dict[str, dict] = state.get("requests", {})
    existing = context.instance.get_dynamic_partitions(sales_periods.name)
    scan = landing_scan(settings, known_keys=existing)
    warn_rejected(context, scan.rejected, warned, "not ingested")
    for message in scan.removed:
        if warned.get(message.split(":")[0]) != "removed":
            context.log.info(f"not ingested: {message}")
            warned[message.split(":")[0]] = "removed"
    if scan.pending:
        context.log.info(f"waiting for {len(scan.pending)} file(s) to be complete: {'; '.join(scan.pending[:5])}")
    requests = _follow_up(context, outstanding, settings.ingest_attempts, {f.relpath: f.sha256 for f in scan.ready})
    retried = len(requests)
    existing_set = set(existing)
    new_files: list[LandedFile] = []
    changed = 0
    for landed in scan.ready:
        previous = seen.get(landed.relpath)
        if previous == landed.sha256:
            continue
        if landed.key in existing_set:  # a period ingested before: re-run just it
            request_id = _file_request_id(landed)
            reason = "changed" if previous else "new"
            requests.append(_request(request_id, [landed.key], {landed.relpath: landed.sha256}, reason, 1))
            outstanding[request_id] = {"keys": [landed.key], "files": {landed.relpath: landed.sha256}, "attempt": 1}
            changed += 1
        else:
            new_files.append(landed)
        seen[landed.relpath] = landed.sha256
        warned.pop(landed.relpath, None)
    new_keys = sorted(f.key for f in new_files)
    by_key = {f.key: f for f in new_files}
    # Many new periods at once (first start, a bulk drop): a run per range of periods, not a run per file. New keys
    # are appended to the partitions in date order, so each range holds exactly them.
    for part in chunks(new_keys):
        files = {by_key[k].relpath: by_key[k].sha256 for k in part}
        if len(part) == 1:
            request_id = _file_request_id(by_key[part[0]])
        else:
            content = "".join(f"{rel}@{sha};" for rel, sha in files.items())
            request_id = f"sales/{part[0]}..{part[-1]}@{hashlib.sha256(content.encode()).hexdigest()[:16]}"
        requests.append(_request(request_id, part, files, "new", 1))
        outstanding[request_id] = {"keys": part, "files": files, "attempt": 1}
    cursor = json.dumps(
        {"version": CURSOR_VERSION, "files": seen, "warned": warned, "requests": outstanding}, sort_keys=True
    )
    if not requests:
        return dg.SensorResult(skip_reason="no new, changed or failed sales files", cursor=cursor)
    context.log.info(
        f"requesting {len(requests)} run(s) for {len(new_files)} new period(s), {changed} re-landed file(s) and "
        f"{retried} retried request(s)"
    )
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[sales_periods.build_add_request(new_keys)] if new_keys else [],
        cursor=cursor,
    )
