"""Validated cleaning: rule-checked rows go on, the rest to ``sales_quarantine`` with a reason; GX gates the result."""

from collections.abc import Iterable

import dagster as dg
import numpy as np
import pandas as pd

from bi_pipeline.contract import empty_quarantine, split_raw
from bi_pipeline.defs.checks import master_or_none, sales_check_results
from bi_pipeline.defs.collection import BACKFILL_POLICY, partition_frequency, sales_periods
from bi_pipeline.defs.resources import PipelineResource
from bi_pipeline.defs.types import CLEAN_SALES
from bi_pipeline.expectations import Validator, batch_validation_frames
from bi_pipeline.privacy import preview_markdown, truncate
from bi_pipeline.quality import REASONS, CleanResult, clean_batch, known_ids, summarize_rejections
from bi_pipeline.state import update_manifest

GROUP = "cleaning"
SAMPLE_ROWS = 20
SAMPLE_COLUMNS = ["source_file", "source_row", "reason", "detail"]


def quarantine_sample(quarantine: pd.DataFrame, pii_columns: Iterable[str], rows: int = SAMPLE_ROWS) -> str:
    """The first quarantined rows for the metadata, PII columns masked. ``detail`` is a rule's own text or, for a
    line that could not be read, text from the line itself: that is truncated."""
    if not len(quarantine):
        return "nothing quarantined"
    sample = quarantine.head(rows)[SAMPLE_COLUMNS].copy()
    sample["detail"] = [
        str(detail) if str(detail) == REASONS.get(str(reason)) else truncate(detail)
        for reason, detail in zip(sample["reason"].astype(object), sample["detail"].astype(object), strict=True)
    ]
    return preview_markdown(sample, pii_columns, rows)


def kept_source_files(results: dict[str, CleanResult]) -> np.ndarray:
    """Each kept row's source file, in the order of the kept validation frame (periods in run order)."""
    parts = [np.asarray(r.clean["source_file"], dtype=object) for r in results.values()]
    return np.concatenate(parts) if parts else np.array([], dtype=object)


@dg.multi_asset(
    outs={
        "clean_sales": dg.AssetOut(
            description="Typed sales rows that passed every rule (date, store_id, item_id, sales, price, promo).",
            kinds={"pandas", "parquet"},
            # Checked on every run (a wrong frame fails, naming the column); the UI shows the core columns.
            dagster_type=CLEAN_SALES.dagster_type,
            metadata=CLEAN_SALES.definition_metadata(),
        ),
        "sales_quarantine": dg.AssetOut(
            description="Rows set aside, as landed, with reason code, rule text and source file/row.",
            kinds={"pandas", "parquet"},
        ),
    },
    partitions_def=sales_periods,
    backfill_policy=BACKFILL_POLICY,
    group_name=GROUP,
    check_specs=[
        dg.AssetCheckSpec(
            "landed_rows_expectations",
            asset="clean_sales",
            description="GX suite on the rows as landed: its unexpected counts are the defects the rules quarantine",
        ),
        dg.AssetCheckSpec(
            "clean_sales_expectations",
            asset="clean_sales",
            blocking=True,
            description="GX suite on the cleaned rows: every expectation must hold",
        ),
        dg.AssetCheckSpec(
            "bad_row_rate",
            asset="clean_sales",
            blocking=True,
            description="Each period's share of quarantined rows stays under max_bad_row_rate",
        ),
    ],
)
def clean_sales(
    context: dg.AssetExecutionContext,
    pipeline: PipelineResource,
    raw_sales: dict[str, pd.DataFrame],
    stores: pd.DataFrame,
    items: pd.DataFrame,
):
    settings = pipeline.settings()
    frequency = partition_frequency(context, pipeline)
    known_stores = known_ids(master_or_none(stores), "store_id")
    known_items = known_ids(master_or_none(items), "item_id")
    batch = {}
    for key in context.partition_keys:
        raw = raw_sales.get(key)
        if raw is None:
            raise dg.Failure(f"raw_sales has no data for period {key}; materialize raw_sales first")
        read = split_raw(raw, key)
        batch[key] = (read.rows, read.issues)
    # All periods of the run in one vectorised pass.
    cleaned = clean_batch(batch, frequency, settings, known_stores, known_items)
    results = cleaned.results
    del batch

    reason_totals: dict[str, int] = {}
    for result in results.values():
        for reason, count in result.reason_counts.items():
            reason_totals[reason] = reason_totals.get(reason, 0) + count
    rows_in = sum(r.rows_in for r in results.values())
    bad = sum(r.bad_rows for r in results.values())
    clean = {k: r.clean for k, r in results.items()}
    yield dg.Output(
        clean,
        output_name="clean_sales",
        metadata={
            "rows": rows_in - bad,
            "partitions": len(results),
            "frequency": frequency,
            **CLEAN_SALES.observed_metadata(clean),
        },
    )
    quarantine = {k: r.quarantine for k, r in results.items()}
    sample = pd.concat(list(quarantine.values()), ignore_index=True) if quarantine else empty_quarantine()
    yield dg.Output(
        quarantine,
        output_name="sales_quarantine",
        metadata={
            "rows": bad,
            "by_reason": dg.MetadataValue.json(dict(sorted(reason_totals.items()))),
            "sample": dg.MetadataValue.md(quarantine_sample(sample, settings.pii_columns)),
        },
    )

    landed, kept = batch_validation_frames(cleaned, frequency, known_stores, known_items, settings.gx_landed_max_rows)
    del cleaned
    landed_result, gate_result = sales_check_results(
        Validator.for_settings(settings), landed, kept, lambda: kept_source_files(results), sample, settings
    )
    del landed, kept, sample
    yield landed_result
    yield gate_result

    rejected = summarize_rejections(results, settings.max_bad_row_rate)
    # Seen is not ingested: only a period that passed the gate counts as ingested from its file's content (a fresh
    # landing-zone sensor starts from this record).
    update_manifest(
        settings.manifest_path,
        {
            raw_sales[k].attrs.get("source_file", ""): raw_sales[k].attrs.get("source_sha256", "")
            for k, r in results.items()
            if r.bad_row_rate <= settings.max_bad_row_rate
        },
    )
    rates = {k: round(r.bad_row_rate, 4) for k, r in results.items()}
    worst = max(rates.items(), key=lambda kv: kv[1]) if rates else ("", 0.0)
    yield dg.AssetCheckResult(
        check_name="bad_row_rate",
        asset_key=dg.AssetKey("clean_sales"),
        passed=not rejected,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            "\n".join(rejected)
            if rejected
            else f"all {len(results)} period(s) under {settings.max_bad_row_rate:.1%} "
            f"(worst {worst[0]}: {worst[1]:.2%})"
        ),
        metadata={
            "threshold": settings.max_bad_row_rate,
            "rows_in": rows_in,
            "quarantined": bad,
            "worst_period": worst[0],
            "worst_rate": worst[1],
            "by_reason": dg.MetadataValue.json(dict(sorted(reason_totals.items()))),
        },
    )
