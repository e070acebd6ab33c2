"""Helpers shared by the stage modules: GX outcomes as asset check results, optional master data.

Descriptions and metadata hold counts, expectation names and file names, never landed values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dagster as dg
import numpy as np
import pandas as pd

from bi_pipeline.config import Settings
from bi_pipeline.docs_site import site_url
from bi_pipeline.expectations import SuiteOutcome, Validator, sales_spec_for, unexpected_rows, validate_sales

# A description names at most this many files; the metadata has them all.
MAX_FILES_NAMED = 50
_DEFAULT_DOCS_PORT = next(f.default for f in dataclasses.fields(Settings) if f.name == "docs_port")


@dataclass
class QuarantineSummary:
    """What the rules set aside in a run: rows per reason, rows per file, rows without a reason code."""

    by_reason: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    unexplained: int = 0

    @classmethod
    def of(cls, quarantine: pd.DataFrame) -> QuarantineSummary:
        if not len(quarantine):
            return cls()
        reason = quarantine["reason"].astype("string").str.strip()
        missing = reason.isna() | (reason == "")
        by_reason = reason[~missing].value_counts()
        files = quarantine["source_file"].astype("string").fillna("").value_counts()
        return cls(
            by_reason={str(k): int(v) for k, v in sorted(by_reason.items())},
            files={str(k): int(v) for k, v in sorted(files.items())},
            unexplained=int(missing.sum()),
        )

    @property
    def rows(self) -> int:
        return sum(self.by_reason.values()) + self.unexplained


def name_files(files: Iterable[str], limit: int = MAX_FILES_NAMED) -> str:
    names = sorted(set(files))
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _reasons(by_reason: dict[str, int]) -> str:
    return ", ".join(f"{r} ({n})" for r, n in sorted(by_reason.items()))


def _docs_metadata(outcome: SuiteOutcome, settings: Settings | None) -> dict[str, dg.MetadataValue]:
    """The validation's Data Docs page as served by ``bi-pipeline docs`` (browsers do not follow file:// links from
    the UI), and its path on disk."""
    if not outcome.data_docs:
        return {}
    port = settings.docs_port if settings is not None else _DEFAULT_DOCS_PORT
    return {
        "data_docs": dg.MetadataValue.url(site_url(port, outcome.docs_page)),
        "data_docs_path": dg.MetadataValue.path(outcome.data_docs),
    }


def gx_check_result(
    check_name: str,
    outcome: SuiteOutcome,
    file: str,
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
    asset_key: dg.AssetKey | None = None,
    settings: Settings | None = None,
) -> dg.AssetCheckResult:
    """Each expectation's result and unexpected count in the metadata, the failures named in the description."""
    failed = outcome.failed()
    description = (
        f"all {len(outcome.outcomes)} expectations met on {outcome.rows} rows"
        if outcome.success
        else f"{file}: " + "; ".join(f"{o.label}: {o.unexpected_count} unexpected" for o in failed)
    )
    metadata = {
        "rows": outcome.rows,
        "expectations": dg.MetadataValue.md(outcome.markdown()),
        "results": dg.MetadataValue.json(outcome.as_records()),
        "unexpected_total": sum(o.unexpected_count for o in outcome.outcomes),
        **_docs_metadata(outcome, settings),
    }
    return dg.AssetCheckResult(
        check_name=check_name,
        asset_key=asset_key,
        passed=bool(outcome.success),
        severity=severity,
        description=description,
        metadata=metadata,
    )


def failing_files(
    frame: pd.DataFrame, outcome: SuiteOutcome, settings: Settings, files: Callable[[], np.ndarray]
) -> list[str]:
    """The files of the rows that break the suite's failed expectations (``files()``: each row's file)."""
    failed = {o.label for o in outcome.failed()}
    if not failed:
        return []
    masks = unexpected_rows(frame, sales_spec_for(frame, settings), failed)
    if not masks:
        return []
    rows = np.logical_or.reduce(list(masks.values()))
    return sorted({str(f) for f in np.asarray(files())[rows]})


def _missed(kept: SuiteOutcome, quarantine: QuarantineSummary, kept_defect_files: list[str]) -> str | None:
    """What the rules let through (the kept rows' failed expectations, quarantined rows without a reason, and where),
    or None when every defect was set aside with a reason."""
    parts = [f"{o.label}: {o.unexpected_count} kept" for o in kept.failed()]
    if quarantine.unexplained:
        parts.append(f"{quarantine.unexplained} quarantined rows without a reason")
    if not parts:
        return None
    where = f" (in {name_files(kept_defect_files)})" if kept_defect_files else ""
    return "; ".join(parts) + where


def landed_check_result(
    landed: SuiteOutcome,
    kept: SuiteOutcome,
    quarantine: QuarantineSummary,
    kept_defect_files: list[str],
    settings: Settings | None = None,
    check_name: str = "landed_rows_expectations",
) -> dg.AssetCheckResult:
    """GX on the rows as landed, judged against what the rules did: it passes when every defect GX found was set
    aside with a reason (the kept rows meet every expectation), and fails (a warning) only on a defect the rules
    kept. The description and metadata give GX's count per expectation, the quarantine's count per reason and the
    files that had defects."""
    missed = _missed(kept, quarantine, kept_defect_files)
    passed = missed is None
    found = landed.unexpected()
    lines = []
    if not passed:
        lines.append(f"GX found defects on the landed rows that the rules did not quarantine: {missed}")
    elif found or quarantine.rows:
        lines.append(f"every defect GX found on the {landed.rows} landed rows was quarantined with a reason")
    else:
        lines.append(f"all {len(landed.outcomes)} expectations met on {landed.rows} landed rows; nothing quarantined")
    if found:
        lines.append("GX unexpected on the landed rows: " + "; ".join(f"{k}: {v}" for k, v in found.items()))
    if quarantine.rows:
        lines.append(f"quarantined {quarantine.rows} rows: {_reasons(quarantine.by_reason)}")
    return _landed_rows_result(
        check_name,
        passed,
        lines,
        quarantine,
        kept,
        {
            "rows": landed.rows,
            "validated_by": "gx",
            "expectations": dg.MetadataValue.md(landed.markdown()),
            "results": dg.MetadataValue.json(landed.as_records()),
            "unexpected_total": sum(o.unexpected_count for o in landed.outcomes),
            "unexpected_by_expectation": dg.MetadataValue.json(found),
            **_docs_metadata(landed, settings),
        },
    )


def _landed_rows_result(
    check_name: str, passed: bool, lines: list[str], quarantine: QuarantineSummary, kept: SuiteOutcome, metadata: dict
) -> dg.AssetCheckResult:
    """The landed-rows check's result, by GX or by the rules: its lines with the files that had defects, and what was
    quarantined and what the kept rows still show beside the path's own metadata."""
    if quarantine.files:
        lines.append(f"files with defects ({len(quarantine.files)}): {name_files(quarantine.files)}")
    return dg.AssetCheckResult(
        check_name=check_name,
        asset_key=dg.AssetKey("clean_sales"),
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        description="\n".join(lines),
        metadata={
            **metadata,
            "kept_unexpected": dg.MetadataValue.json(kept.unexpected()),
            "quarantined": quarantine.rows,
            "by_reason": dg.MetadataValue.json(quarantine.by_reason),
            "defect_files": dg.MetadataValue.json(quarantine.files),
        },
    )


def rules_check_result(
    check_name: str,
    quarantine: QuarantineSummary,
    rows: int,
    limit: int,
    kept: SuiteOutcome,
    kept_defect_files: list[str],
) -> dg.AssetCheckResult:
    """The landed-rows check of a run too big for a second GX pass: the rules' own count of each defect. It passes,
    as the GX version does, when the kept rows meet every expectation and every quarantined row has a reason."""
    missed = _missed(kept, quarantine, kept_defect_files)
    passed = missed is None
    lines = [
        f"{rows} landed rows > BI_PIPELINE_GX_LANDED_MAX_ROWS={limit}: counted by the rules, not GX; "
        + (_reasons(quarantine.by_reason) or "nothing quarantined")
    ]
    if not passed:
        lines.append(f"defects the rules did not quarantine: {missed}")
    return _landed_rows_result(check_name, passed, lines, quarantine, kept, {"rows": rows, "validated_by": "rules"})


def sales_check_results(
    validator: Validator,
    landed: pd.DataFrame,
    kept: pd.DataFrame,
    kept_files: Callable[[], np.ndarray],
    quarantine: pd.DataFrame,
    settings: Settings,
) -> tuple[dg.AssetCheckResult, dg.AssetCheckResult]:
    """(``landed_rows_expectations``, ``clean_sales_expectations``) for one run's validation frames.

    ``kept_files()`` gives each kept row's source file; it is called only when the gate fails, to name the files.
    """
    summary = QuarantineSummary.of(quarantine)
    # After the rules: the gate. Every expectation must hold on what goes downstream.
    outcome = validate_sales(validator, "clean_sales", kept, settings)
    bad_files = failing_files(kept, outcome, settings, kept_files)
    gate = gx_check_result(
        "clean_sales_expectations",
        outcome,
        name_files(bad_files) or "the kept rows",
        asset_key=dg.AssetKey("clean_sales"),
        settings=settings,
    )
    # Before the rules: GX's count of each defect in the rows as landed, judged against the quarantine.
    if len(landed) <= settings.gx_landed_max_rows:
        landed_outcome = validate_sales(validator, "landed_sales", landed, settings)
        return landed_check_result(landed_outcome, outcome, summary, bad_files, settings), gate
    return rules_check_result(
        "landed_rows_expectations", summary, len(landed), settings.gx_landed_max_rows, outcome, bad_files
    ), gate


def master_or_none(frame: pd.DataFrame) -> pd.DataFrame | None:
    """Master data as the rules see it: an absent (empty) file means no id rule."""
    return frame if frame is not None and len(frame) else None
