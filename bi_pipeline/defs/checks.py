"""Helpers shared by the stage modules: GX outcomes as asset check results, optional master data."""

import dagster as dg
import pandas as pd

from bi_pipeline.expectations import SuiteOutcome


def gx_check_result(
    check_name: str,
    outcome: SuiteOutcome,
    file: str,
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
    asset_key: dg.AssetKey | None = None,
) -> dg.AssetCheckResult:
    """Each expectation's result and unexpected count in the metadata, the failures named in the description."""
    failed = outcome.failed()
    description = (
        f"all {len(outcome.outcomes)} expectations met on {outcome.rows} rows"
        if outcome.success
        else f"{file}: " + "; ".join(f"{o.expectation}({o.column}): {o.unexpected_count} unexpected" for o in failed)
    )
    metadata = {
        "rows": outcome.rows,
        "expectations": dg.MetadataValue.md(outcome.markdown()),
        "results": dg.MetadataValue.json(outcome.as_records()),
        "unexpected_total": sum(o.unexpected_count for o in outcome.outcomes),
    }
    if outcome.data_docs:
        metadata["data_docs"] = dg.MetadataValue.url(f"file://{outcome.data_docs}")
    return dg.AssetCheckResult(
        check_name=check_name,
        asset_key=asset_key,
        passed=bool(outcome.success),
        severity=severity,
        description=description,
        metadata=metadata,
    )


def rules_check_result(check_name: str, reason_totals: dict[str, int], rows: int, limit: int) -> dg.AssetCheckResult:
    """The landed-rows check of a run too big for a second GX pass: the rules' own count of each defect."""
    quarantined = sum(reason_totals.values())
    return dg.AssetCheckResult(
        check_name=check_name,
        asset_key=dg.AssetKey("clean_sales"),
        passed=quarantined == 0,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"{rows} landed rows > BI_PIPELINE_GX_LANDED_MAX_ROWS={limit}: counted by the rules, not GX; "
            + (", ".join(f"{r} ({n})" for r, n in sorted(reason_totals.items())) or "nothing quarantined")
        ),
        metadata={"rows": rows, "validated_by": "rules", "by_reason": dg.MetadataValue.json(reason_totals)},
    )


def master_or_none(frame: pd.DataFrame) -> pd.DataFrame | None:
    """Master data as the rules see it: an absent (empty) file means no id rule."""
    return frame if frame is not None and len(frame) else None
