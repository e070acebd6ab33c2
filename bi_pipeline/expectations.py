"""Great Expectations 1.x suites for the landing-zone tables, run on pandas frames.

A file data context under ``$BI_PIPELINE_HOME/gx`` keeps suites, validation results and the Data Docs site.
GX is imported lazily: it takes seconds to import and only the validating steps need it.
"""

from __future__ import annotations

import fcntl
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bi_pipeline.config import Settings
from bi_pipeline.quality import (
    CleanBatch,
    period_end,
    period_start_array,
)

VALIDATION_COLUMNS = ("date", "store_id", "item_id", "sales", "price", "period_offset", "row_key")

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


def validation_frame(
    period: np.ndarray,
    dates: np.ndarray,
    store: pd.Categorical,
    item: pd.Categorical,
    sales: np.ndarray,
    price: np.ndarray,
    frequency: str,
    known_stores: set[str] | None = None,
    known_items: set[str] | None = None,
) -> pd.DataFrame:
    """The sales rules as columns GX checks in one cheap pass each.

    GX's pandas engine is fast on float64/int64 columns and slow on pair and compound expectations (about 1 s per
    million rows each here), so the period rule becomes ``period_offset`` (0 inside the period, days before it
    negative, days after it positive), the key rule one number per (date, store_id, item_id), and the known-id
    rules a per-row flag ``store_in_master`` / ``item_in_master`` (null where the id itself is missing).
    """
    start = period_start_array(period, frequency)
    end = period_end(start, frequency)
    day = dates.astype("datetime64[D]")
    before = (day - start).astype("timedelta64[D]").astype("float64")
    after = (day - end).astype("timedelta64[D]").astype("float64") + 1
    offset = np.where(before < 0, before, np.where(after > 0, after, 0.0))
    offset[np.isnat(day)] = np.nan
    codes = store.codes.astype(np.int64) * max(len(item.categories), 1) + item.codes
    key = (
        day.view("int64").astype("float64") * float(max(len(store.categories), 1) * max(len(item.categories), 1))
        + codes
    )
    key[np.isnat(day) | (store.codes < 0) | (item.codes < 0)] = np.nan
    frame = pd.DataFrame(
        {
            "date": dates.astype("datetime64[ns]"),
            "store_id": store,
            "item_id": item,
            "sales": np.asarray(sales, dtype="float64"),
            "price": np.asarray(price, dtype="float64"),
            "period_offset": offset,
            "row_key": key,
        }
    )
    for column, values, known in (("store_in_master", store, known_stores), ("item_in_master", item, known_items)):
        if known is not None:
            frame[column] = _membership(values, known)
    return frame


def _membership(values: pd.Categorical, known: set[str]) -> pd.arrays.BooleanArray:
    """Whether each row's id is in the master file, through the categories (one lookup per distinct id)."""
    per_category = np.asarray(values.categories.astype(str).isin(list(known)))
    codes = values.codes
    flags = per_category[np.maximum(codes, 0)] if len(per_category) else np.zeros(len(codes), dtype=bool)
    return pd.arrays.BooleanArray(flags, codes < 0)


def batch_validation_frames(
    batch: CleanBatch, frequency: str, known_stores: set[str] | None = None, known_items: set[str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every landed row, the kept rows) typed for GX, from the values the rules already parsed."""
    store, item = batch.store, batch.item
    # A blank id is a missing key: null for GX.
    store = store.remove_categories([""]) if "" in store.categories else store
    item = item.remove_categories([""]) if "" in item.categories else item
    landed = validation_frame(
        batch.period, batch.dates, store, item, batch.sales, batch.price, frequency, known_stores, known_items
    )
    return landed, landed[batch.kept].reset_index(drop=True)


def sales_suite_spec(
    settings: Settings, known_stores: bool = False, known_items: bool = False
) -> list[tuple[str, dict[str, Any]]]:
    """The row rules as (GX expectation class name, kwargs); mirrors ``quality.ROW_RULES``."""
    columns = list(VALIDATION_COLUMNS) + ["store_in_master"] * known_stores + ["item_in_master"] * known_items
    spec: list[tuple[str, dict[str, Any]]] = [
        ("ExpectTableColumnsToMatchSet", {"column_set": columns, "exact_match": True}),
        # Types of the typed view (a column-level check, no pass over the rows).
        ("ExpectColumnValuesToBeOfType", {"column": "date", "type_": "datetime64[ns]"}),
        ("ExpectColumnValuesToBeOfType", {"column": "sales", "type_": "float64"}),
        ("ExpectColumnValuesToBeOfType", {"column": "price", "type_": "float64"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "date"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "store_id"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "item_id"}),
        ("ExpectColumnValuesToNotBeNull", {"column": "sales"}),
        ("ExpectColumnValuesToBeBetween", {"column": "period_offset", "min_value": 0, "max_value": 0}),
        ("ExpectColumnValuesToBeUnique", {"column": "row_key"}),
        (
            "ExpectColumnValuesToBeBetween",
            {"column": "price", "min_value": settings.price_min, "max_value": settings.price_max},
        ),
    ]
    if not settings.allow_returns:
        spec.append(("ExpectColumnValuesToBeBetween", {"column": "sales", "min_value": 0}))
    if known_stores:
        spec.append(("ExpectColumnValuesToBeInSet", {"column": "store_in_master", "value_set": [True]}))
    if known_items:
        spec.append(("ExpectColumnValuesToBeInSet", {"column": "item_in_master", "value_set": [True]}))
    return spec


def validate_sales(validator: Validator, name: str, frame: pd.DataFrame, settings: Settings) -> SuiteOutcome:
    """The sales suite on a frame from ``validation_frame`` (its known-id columns say which id rules apply)."""
    spec = sales_suite_spec(settings, "store_in_master" in frame.columns, "item_in_master" in frame.columns)
    return validator.run(name, frame, spec)


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
        # Checkpoints already stored in the context, by name and spec: storing them again costs a file write each.
        self._checkpoints: dict[tuple[str, str], Any] = {}

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
        # The file context is not safe for concurrent writers: one validation at a time, across threads and the
        # processes of concurrent runs.
        self.gx_dir.mkdir(parents=True, exist_ok=True)
        with _LOCK, (self.gx_dir / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            checkpoint = self._checkpoint(name, spec)
            result = checkpoint.run(batch_parameters={"dataframe": frame})
        return self._outcome(name, frame, result)

    def _checkpoint(self, name: str, spec: list[tuple[str, dict[str, Any]]]):
        import great_expectations as gx
        import great_expectations.expectations as gxe

        cache_key = (name, repr(spec))
        if cache_key in self._checkpoints:
            return self._checkpoints[cache_key]
        context = self.context
        try:
            source = context.data_sources.get("bi_pipeline")
        except (KeyError, LookupError, ValueError):
            # Added once: replacing it would drop the assets of checkpoints made earlier in this process.
            source = context.data_sources.add_pandas("bi_pipeline")
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
        self._checkpoints = {k: v for k, v in self._checkpoints.items() if k[0] != name}
        self._checkpoints[cache_key] = checkpoint
        return checkpoint

    def _outcome(self, name: str, frame: pd.DataFrame, result) -> SuiteOutcome:
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
