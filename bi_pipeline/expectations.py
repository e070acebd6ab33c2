"""Great Expectations 1.x suites for the landing-zone tables, run on pandas frames.

A file data context under ``$BI_PIPELINE_HOME/gx`` keeps suites, validation results and the Data Docs site.
GX is imported lazily: it takes seconds to import and only the validating steps need it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bi_pipeline.config import Settings
from bi_pipeline.contract import period_bounds
from bi_pipeline.quality import parse_dates

# No usage statistics leave the machine.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

_LOCK = threading.Lock()


@dataclass
class ExpectationOutcome:
    expectation: str
    column: str
    success: bool
    unexpected_count: int
    unexpected_percent: float


@dataclass
class SuiteOutcome:
    suite: str
    success: bool
    rows: int
    outcomes: list[ExpectationOutcome] = field(default_factory=list)
    data_docs: str | None = None

    def failed(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def as_records(self) -> list[dict[str, Any]]:
        return [o.__dict__ for o in self.outcomes]

    def markdown(self) -> str:
        lines = ["| expectation | column | success | unexpected | unexpected % |", "|---|---|---|---|---|"]
        for o in self.outcomes:
            lines.append(
                f"| {o.expectation} | {o.column} | {'yes' if o.success else '**no**'} | {o.unexpected_count} "
                f"| {o.unexpected_percent:.3f} |"
            )
        return "\n".join(lines)


def sales_validation_frame(raw: pd.DataFrame, period: str, frequency: str) -> pd.DataFrame:
    """Raw text rows typed for GX: unparseable values become nulls, so GX counts them as the quarantine does."""
    start, end = period_bounds(date.fromisoformat(period), frequency)

    def text(column: str) -> pd.Series:
        values = raw[column].astype(object).str.strip()
        return values.where(values != "", None)

    sales = pd.to_numeric(raw["sales"].str.strip(), errors="coerce").astype("float64")
    sales = sales.where(np.isfinite(sales))
    return pd.DataFrame(
        {
            "date": pd.to_datetime(parse_dates(raw["date"])),
            "store_id": text("store_id"),
            "item_id": text("item_id"),
            "sales": sales,
            "price": pd.to_numeric(raw["price"].str.strip(), errors="coerce").astype("float64"),
            "period_start": pd.Timestamp(start),
            "period_end": pd.Timestamp(end),
        }
    )


def clean_validation_frame(clean: pd.DataFrame, frequency: str) -> pd.DataFrame:
    """Cleaned rows of any number of periods, with their period bounds."""
    period = pd.to_datetime(clean["period"])
    if frequency == "D":
        end = period + pd.Timedelta(days=1)
    elif frequency == "W":
        end = period + pd.Timedelta(days=7)
    else:
        end = period + pd.offsets.MonthBegin(1)
    return pd.DataFrame(
        {
            "date": clean["date"],
            "store_id": clean["store_id"].astype(object),
            "item_id": clean["item_id"].astype(object),
            "sales": clean["sales"].astype("float64"),
            "price": clean["price"].astype("float64"),
            "period_start": period,
            "period_end": end,
        }
    )


def sales_suite_spec(
    settings: Settings, known_stores: set[str] | None, known_items: set[str] | None
) -> list[tuple[str, dict[str, Any]]]:
    """The sales rules as (GX expectation class name, kwargs); mirrors ``quality.ROW_RULES``."""
    spec: list[tuple[str, dict[str, Any]]] = [
        (
            "ExpectTableColumnsToMatchSet",
            {"column_set": ["date", "store_id", "item_id", "sales"], "exact_match": False},
        ),
        ("ExpectColumnValuesToNotBeNull", {"column": "date"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "store_id"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "item_id"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "sales"}),
        (
            "ExpectColumnPairValuesAToBeGreaterThanB",
            {"column_A": "date", "column_B": "period_start", "or_equal": True},
        ),
        ("ExpectColumnPairValuesAToBeGreaterThanB", {"column_A": "period_end", "column_B": "date"}),
        ("ExpectCompoundColumnsToBeUnique", {"column_list": ["date", "store_id", "item_id"]}),
        (
            "ExpectColumnValuesToBeBetween",
            {"column": "price", "min_value": settings.price_min, "max_value": settings.price_max},
        ),
    ]
    if not settings.allow_returns:
        spec.append(("ExpectColumnValuesToBeBetween", {"column": "sales", "min_value": 0}))
    if known_stores is not None:
        spec.append(("ExpectColumnValuesToBeInSet", {"column": "store_id", "value_set": sorted(known_stores)}))
    if known_items is not None:
        spec.append(("ExpectColumnValuesToBeInSet", {"column": "item_id", "value_set": sorted(known_items)}))
    return spec


def master_suite_spec(key: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("ExpectColumnToExist", {"column": key}),
        ("ExpectColumnValuesToNotBeNull", {"column": key}),
        ("ExpectColumnValuesToBeUnique", {"column": key}),
    ]


def calendar_suite_spec(has_store: bool) -> list[tuple[str, dict[str, Any]]]:
    keys = ["date", "store_id"] if has_store else ["date"]
    return [
        ("ExpectColumnValuesToNotBeNull", {"column": "date"}),
        ("ExpectCompoundColumnsToBeUnique", {"column_list": keys})
        if has_store
        else ("ExpectColumnValuesToBeUnique", {"column": "date"}),
    ]


class Validator:
    """Runs suites through a GX file context under the home and keeps its Data Docs site up to date."""

    def __init__(self, gx_dir: Path, data_docs: bool = True) -> None:
        self.gx_dir = Path(gx_dir)
        self.data_docs = data_docs
        self._context = None

    @property
    def context(self):
        if self._context is None:
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

            self.gx_dir.mkdir(parents=True, exist_ok=True)
            context = gx.get_context(mode="file", project_root_dir=str(self.gx_dir))
            context.variables.progress_bars = ProgressBarsConfig(globally=False)
            self._context = context
        return self._context

    def docs_index(self) -> Path:
        return self.gx_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"

    def run(self, name: str, frame: pd.DataFrame, spec: list[tuple[str, dict[str, Any]]]) -> SuiteOutcome:
        import great_expectations as gx
        import great_expectations.expectations as gxe

        with _LOCK:  # the file context is not safe for concurrent writers within one process
            context = self.context
            source = context.data_sources.add_or_update_pandas("bi_pipeline")
            try:
                asset = source.get_asset(name)
            except LookupError:
                asset = source.add_dataframe_asset(name)
            try:
                batch = asset.get_batch_definition("whole")
            except (KeyError, LookupError):
                batch = asset.add_batch_definition_whole_dataframe("whole")
            suite = gx.ExpectationSuite(name=name)
            for cls_name, kwargs in spec:
                suite.add_expectation(getattr(gxe, cls_name)(**kwargs))
            suite = context.suites.add_or_update(suite)
            definition = context.validation_definitions.add_or_update(
                gx.ValidationDefinition(name=name, data=batch, suite=suite)
            )
            actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs")] if self.data_docs else []
            checkpoint = context.checkpoints.add_or_update(
                gx.Checkpoint(name=name, validation_definitions=[definition], actions=actions, result_format="SUMMARY")
            )
            result = checkpoint.run(batch_parameters={"dataframe": frame})
        run_result = next(iter(result.run_results.values()))
        outcomes = []
        for r in run_result.results:
            config = r.expectation_config
            kwargs = config.kwargs
            column = kwargs.get("column") or ",".join(
                kwargs.get("column_list") or [kwargs.get("column_A", ""), kwargs.get("column_B", "")]
            )
            if config.type == "expect_table_columns_to_match_set":
                column = ",".join(kwargs.get("column_set") or [])
            outcomes.append(
                ExpectationOutcome(
                    expectation=config.type,
                    column=column.strip(","),
                    success=bool(r.success),
                    unexpected_count=int(r.result.get("unexpected_count") or 0),
                    unexpected_percent=float(r.result.get("unexpected_percent") or 0.0),
                )
            )
        docs = str(self.docs_index()) if self.data_docs and self.docs_index().exists() else None
        return SuiteOutcome(
            suite=name, success=bool(result.success), rows=len(frame), outcomes=outcomes, data_docs=docs
        )
