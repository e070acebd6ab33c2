"""Stock snapshots: ``inventory/<YYYY-MM-DD>.csv`` partitioned by period and sensed like sales files; bad rows
quarantined with their rule. Wiring around :mod:`bi_pipeline.decisions.stock`."""

import json

import dagster as dg
import pandas as pd

from bi_pipeline.contract import ContractError, scan_sales_dir
from bi_pipeline.decisions.stock import INVENTORY_DIR, QUARANTINE_COLUMNS, read_snapshot
from bi_pipeline.defs.collection import warn_rejected
from bi_pipeline.defs.jobs import inventory_job, running_sensor
from bi_pipeline.defs.resources import PipelineResource
from bi_pipeline.privacy import preview_markdown

GROUP = "decisions"
inventory_periods = dg.DynamicPartitionsDefinition(name="inventory_periods")
CURSOR_VERSION = 1


@dg.multi_asset(
    outs={
        "inventory": dg.AssetOut(
            description="Stock at the end of each period: store_id, item_id, on_hand, on_order (rows that passed).",
            kinds={"pandas", "csv"},
        ),
        "inventory_quarantine": dg.AssetOut(
            description="Stock rows set aside, as landed, with the rule they broke and their file and row.",
            kinds={"pandas"},
        ),
    },
    partitions_def=inventory_periods,
    group_name=GROUP,
    check_specs=[
        dg.AssetCheckSpec(
            "inventory_bad_row_rate",
            asset="inventory",
            blocking=True,
            description="The snapshot's share of quarantined rows stays under max_bad_row_rate",
        )
    ],
)
def inventory(context: dg.AssetExecutionContext, pipeline: PipelineResource):
    """Each period's stock snapshot read as text and checked row by row (ids present, on_hand a number ≥ 0, on_order
    empty or a number ≥ 0, one row per store_id and item_id); a file that cannot be a snapshot fails, naming it."""
    settings = pipeline.settings()
    period = context.partition_key
    candidates = (settings.landing / INVENTORY_DIR / f"{period}{suffix}" for suffix in (".csv", ".parquet"))
    found = [path for path in candidates if path.exists()]
    if not found:
        raise dg.Failure(f"{INVENTORY_DIR}/{period}: no stock snapshot for this period in the landing zone")
    try:
        snapshot = read_snapshot(found[0], settings.landing, period, settings.max_file_bytes)
    except ContractError as exc:
        raise dg.Failure(str(exc)) from None
    rate = len(snapshot.quarantine) / snapshot.rows if snapshot.rows else 0.0
    reasons = snapshot.quarantine["reason"].value_counts().to_dict()
    context.log.info(
        f"{INVENTORY_DIR}/{found[0].name}: {len(snapshot.stock)} rows kept, {len(snapshot.quarantine)} set aside"
    )
    yield dg.Output(
        snapshot.stock,
        output_name="inventory",
        metadata={
            "rows": len(snapshot.stock),
            "on_hand_total": float(snapshot.stock["on_hand"].sum()),
            "on_order_total": float(snapshot.stock["on_order"].sum()),
            "preview": dg.MetadataValue.md(preview_markdown(snapshot.stock.head(8), settings.pii_columns)),
        },
    )
    yield dg.Output(
        snapshot.quarantine,
        output_name="inventory_quarantine",
        metadata={
            "rows": len(snapshot.quarantine),
            "by_reason": dg.MetadataValue.json({str(k): int(v) for k, v in reasons.items()}),
            "sample": dg.MetadataValue.md(
                preview_markdown(snapshot.quarantine.head(20)[list(QUARANTINE_COLUMNS)], settings.pii_columns)
            )
            if len(snapshot.quarantine)
            else "nothing quarantined",
        },
    )
    yield dg.AssetCheckResult(
        check_name="inventory_bad_row_rate",
        passed=rate <= settings.max_bad_row_rate,
        metadata={"bad_row_rate": round(rate, 4), "threshold": settings.max_bad_row_rate, "rows": snapshot.rows},
        description=f"{rate:.1%} of {snapshot.rows} rows quarantined (limit {settings.max_bad_row_rate:.1%})",
    )


def latest_snapshot(snapshots: dict[str, pd.DataFrame]) -> tuple[str | None, pd.DataFrame | None]:
    """(period, stock) of the newest snapshot among loaded partitions, or (None, None) when none has landed."""
    if not snapshots:
        return None, None
    period = max(snapshots)
    return period, snapshots[period]


@running_sensor(
    inventory_job,
    30,
    "Requests a run for each new or re-landed stock snapshot in inventory/ once it is complete: the snapshot, then "
    "the orders, alerts, BI tables and report that read it.",
)
def inventory_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource) -> dg.SensorResult:
    settings = pipeline.settings()
    state = json.loads(context.cursor) if context.cursor else {}
    files: dict[str, str] = state.get("files", {})
    seen: dict[str, dict] = state.get("seen", {})
    warned: dict[str, str] = state.get("warned", {})
    scan = scan_sales_dir(settings.landing, settings.settle_seconds, previous=seen, subdir=INVENTORY_DIR)
    warn_rejected(context, scan.rejected, warned, "not read")
    existing = set(context.instance.get_dynamic_partitions(inventory_periods.name))
    new_keys, requests = [], []
    for landed in scan.ready:
        if files.get(landed.relpath) == landed.sha256:
            continue
        files[landed.relpath] = landed.sha256
        if landed.key not in existing:
            new_keys.append(landed.key)
        run_key = f"{landed.relpath}@{landed.sha256[:16]}"
        requests.append(
            dg.RunRequest(run_key=run_key, partition_key=landed.key, tags={"bi_pipeline/file": landed.relpath})
        )
    cursor = json.dumps(
        {"version": CURSOR_VERSION, "files": files, "seen": scan.seen, "warned": warned}, sort_keys=True
    )
    if not requests:
        return dg.SensorResult(skip_reason="no new or changed stock snapshots", cursor=cursor)
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[inventory_periods.build_add_request(sorted(new_keys))] if new_keys else [],
        cursor=cursor,
    )
