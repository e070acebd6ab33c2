"""Integrated view: the whole history at the series' frequency, joined with master data and covariates."""

import dagster as dg
import pandas as pd

from bi_pipeline.defs.checks import master_or_none
from bi_pipeline.defs.collection import partition_frequency
from bi_pipeline.defs.resources import PipelineResource
from bi_pipeline.defs.types import INTEGRATED_SALES
from bi_pipeline.integration import integrate
from bi_pipeline.privacy import preview_markdown
from bi_pipeline.quality import stored_period_rates, summarize_rejections

GROUP = "integration"


@dg.asset(
    group_name=GROUP,
    kinds={"pandas", "parquet"},
    # Follows newly cleaned periods on its own, but never past a failed blocking check upstream.
    automation_condition=dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed(),
    # Checked on every run (a wrong frame fails, naming the column); the UI shows the core columns.
    dagster_type=INTEGRATED_SALES.dagster_type,
    metadata=INTEGRATED_SALES.definition_metadata(),
)
def integrated_sales(
    context: dg.AssetExecutionContext,
    pipeline: PipelineResource,
    clean_sales: dict[str, pd.DataFrame],
    sales_quarantine: dict[str, pd.DataFrame],
    stores: pd.DataFrame,
    items: pd.DataFrame,
    calendar: pd.DataFrame,
) -> dg.Output:
    """One row per series and period: sales (NaN = missing, kept apart from zero), observed flag, price, promo, store
    and item attributes, calendar covariates. Compact dtypes (categoricals, float32).

    The bad-row gate holds per period: while any stored period is over ``max_bad_row_rate`` the view keeps its last
    good state (this fails, naming the files), even when later periods are good."""
    settings = pipeline.settings()
    if not clean_sales:
        raise dg.Failure("no clean_sales partitions are materialized yet: land sales files and ingest them first")
    held = summarize_rejections(stored_period_rates(clean_sales, sales_quarantine), settings.max_bad_row_rate)
    if held:
        raise dg.Failure(
            f"{len(held)} period(s) failed the bad-row gate, so the integrated view keeps its last good state: fix and "
            "re-land each file (or remove the period on purpose with `bi-pipeline remove-period`):\n" + "\n".join(held),
            metadata={"held_by": dg.MetadataValue.json(held[:50])},
        )
    frequency = partition_frequency(context, pipeline)
    quarantine = pd.concat(list(sales_quarantine.values()), ignore_index=True) if sales_quarantine else None
    try:
        frame = integrate(
            [clean_sales[k] for k in sorted(clean_sales)],
            frequency=frequency,
            periods=sorted(clean_sales),
            stores=master_or_none(stores),
            items=master_or_none(items),
            calendar=master_or_none(calendar),
            quarantined=quarantine,
            implicit_zeros=settings.implicit_zeros,
            week_start=settings.week_start,
        )
    except ValueError as exc:
        raise dg.Failure(str(exc)) from None
    series = frame.groupby(["store_id", "item_id"], observed=True).ngroups
    missing = int(frame["sales"].isna().sum())
    context.log.info(f"integrated {len(frame)} rows, {series} series, {missing} missing values")
    return dg.Output(
        frame,
        metadata={
            "rows": len(frame),
            "series": series,
            "periods": int(frame["date"].nunique()),
            "first_date": str(frame["date"].min().date()),
            "last_date": str(frame["date"].max().date()),
            "frequency": frequency,
            "missing_sales": missing,
            "observed_share": float(frame["observed"].mean()),
            "memory_mb": round(float(frame.memory_usage(deep=True).sum()) / 2**20, 1),
            "dtypes": dg.MetadataValue.md(
                "| column | dtype |\n|---|---|\n"
                + "\n".join(f"| {c} | {t} |" for c, t in frame.dtypes.astype(str).items())
            ),
            "preview": dg.MetadataValue.md(preview_markdown(frame, settings.pii_columns)),
            **INTEGRATED_SALES.observed_metadata(frame),
        },
    )
