"""Great Expectations 1.x suites for the landing-zone tables, run on pandas frames.

A file data context under ``$BI_PIPELINE_HOME/gx`` keeps suites, validation results and the Data Docs site.
GX is imported lazily: it takes seconds to import and only the validating steps need it.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bi_pipeline.config import Settings
from bi_pipeline.docs_site import make_offline, site_dir
from bi_pipeline.quality import (
    CleanBatch,
    period_end,
    period_start_array,
)
from bi_pipeline.storage import StoragePath, is_local, pull, push

VALIDATION_COLUMNS = ("date", "store_id", "item_id", "sales", "price", "period_offset", "key_repeat")

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

    @property
    def label(self) -> str:
        return f"{self.expectation}({self.column})"


@dataclass
class SuiteOutcome:
    suite: str
    success: bool
    rows: int
    outcomes: list[ExpectationOutcome] = field(default_factory=list)
    # This validation's Data Docs page: its path, and its path inside the site (for the served URL).
    data_docs: str | None = None
    docs_page: str | None = None

    def failed(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def unexpected(self) -> dict[str, int]:
        """``expectation(column)`` -> unexpected count, for the expectations that found any."""
        return {o.label: o.unexpected_count for o in self.outcomes if o.unexpected_count}

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
    key_repeat: bool = True,
) -> pd.DataFrame:
    """The sales rules as columns GX checks in one cheap pass each (``key_repeat`` False leaves that column NaN, for
    a frame GX will not validate).

    GX's pandas engine is fast on float64/int64 columns and slow on pair and compound expectations (about 1 s per
    million rows each here), so the period rule becomes ``period_offset`` (0 inside the period, days before it
    negative, days after it positive), the key rule ``key_repeat`` (see ``key_repeats``), and the known-id rules a
    per-row flag ``store_in_master`` / ``item_in_master`` (null where the id itself is missing).
    """
    start = period_start_array(period, frequency)
    end = period_end(start, frequency)
    day = dates.astype("datetime64[D]")
    before = (day - start).astype("timedelta64[D]").astype("float64")
    after = (day - end).astype("timedelta64[D]").astype("float64") + 1
    offset = np.where(before < 0, before, np.where(after > 0, after, 0.0))
    offset[np.isnat(day)] = np.nan
    frame = pd.DataFrame(
        {
            "date": dates.astype("datetime64[ns]"),
            "store_id": store,
            "item_id": item,
            "sales": np.asarray(sales, dtype="float64"),
            "price": np.asarray(price, dtype="float64"),
            "period_offset": offset,
            "key_repeat": key_repeats(period, day, store.codes, item.codes) if key_repeat else np.nan,
        }
    )
    for column, values, known in (("store_in_master", store, known_stores), ("item_in_master", item, known_items)):
        if known is not None:
            frame[column] = _membership(values, known)
    return frame


def key_repeats(period: np.ndarray, day: np.ndarray, store_codes: np.ndarray, item_codes: np.ndarray) -> np.ndarray:
    """1 where an earlier row has the same (period, date, store_id, item_id), 0 for a key's first row.

    Expecting 0 makes GX's unexpected count the number of duplicate rows (its uniqueness expectation counts every
    member of a duplicate group). The period is part of the key because the rules judge duplicates per file: a row
    dated into another period is that rule's defect, not a duplicate of that period's row. NaN where a key part is
    missing (the not-null expectations count those). One hash pass over a combined integer key.
    """
    out = np.full(len(day), np.nan)
    valid = ~np.isnat(day) & (np.asarray(store_codes) >= 0) & (np.asarray(item_codes) >= 0)
    rows = np.flatnonzero(valid)
    if not len(rows):
        return out
    parts = [
        period.astype("datetime64[D]").view("int64")[rows],
        day.view("int64")[rows],
        np.asarray(store_codes, dtype=np.int64)[rows],
        np.asarray(item_codes, dtype=np.int64)[rows],
    ]
    parts = [p - p.min() for p in parts]
    sizes = [int(p.max()) + 1 for p in parts]
    if float(np.prod(np.array(sizes, dtype=np.float64))) < 2.0**62:
        key = parts[0]
        for part, size in zip(parts[1:], sizes[1:], strict=True):
            key = key * size + part
        repeated = pd.Series(key).duplicated(keep="first")
    else:  # too many distinct values for one int64 key: hash the four columns
        repeated = pd.DataFrame(dict(enumerate(parts))).duplicated(keep="first")
    out[rows] = repeated.to_numpy(dtype="float64")
    return out


def _membership(values: pd.Categorical, known: set[str]) -> pd.arrays.BooleanArray:
    """Whether each row's id is in the master file, through the categories (one lookup per distinct id)."""
    per_category = np.asarray(values.categories.astype(str).isin(list(known)))
    codes = values.codes
    flags = per_category[np.maximum(codes, 0)] if len(per_category) else np.zeros(len(codes), dtype=bool)
    return pd.arrays.BooleanArray(flags, codes < 0)


def batch_validation_frames(
    batch: CleanBatch,
    frequency: str,
    known_stores: set[str] | None = None,
    known_items: set[str] | None = None,
    landed_max_rows: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every landed row, the kept rows) typed for GX, from the values the rules already parsed. Over
    ``landed_max_rows`` the landed rows are not validated by GX, so their repeat count is not worked out."""
    store, item = batch.store, batch.item
    # A blank id is a missing key: null for GX.
    store = store.remove_categories([""]) if "" in store.categories else store
    item = item.remove_categories([""]) if "" in item.categories else item
    repeats = landed_max_rows is None or len(batch.period) <= landed_max_rows
    landed = validation_frame(
        batch.period, batch.dates, store, item, batch.sales, batch.price, frequency, known_stores, known_items, repeats
    )
    kept = landed[batch.kept].reset_index(drop=True)
    # Repeats among the kept rows alone: a corrected key keeps its last line, a repeat on the landed rows.
    day = batch.dates.astype("datetime64[D]")
    # Written into the existing float column: a new column would split the frame's blocks, and GX's many boolean
    # selections would then consolidate them again each time (a third of the validation's time at 1M rows).
    kept.loc[:, "key_repeat"] = key_repeats(
        batch.period[batch.kept],
        day[batch.kept],
        kept["store_id"].cat.codes.to_numpy(),
        kept["item_id"].cat.codes.to_numpy(),
    )
    return landed, kept


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
    ]
    # Transactions grain: many lines per key are legitimate (summed later), so no key rule.
    if settings.sales_grain == "rows":
        spec.append(("ExpectColumnValuesToBeBetween", {"column": "key_repeat", "min_value": 0, "max_value": 0}))
    spec.append(
        (
            "ExpectColumnValuesToBeBetween",
            {"column": "price", "min_value": settings.price_min, "max_value": settings.price_max},
        )
    )
    if not settings.allow_returns:
        spec.append(("ExpectColumnValuesToBeBetween", {"column": "sales", "min_value": 0}))
    if known_stores:
        spec.append(("ExpectColumnValuesToBeInSet", {"column": "store_in_master", "value_set": [True]}))
    if known_items:
        spec.append(("ExpectColumnValuesToBeInSet", {"column": "item_in_master", "value_set": [True]}))
    return spec


def validate_sales(validator: Validator, name: str, frame: pd.DataFrame, settings: Settings) -> SuiteOutcome:
    """The sales suite on a frame from ``validation_frame`` (its known-id columns say which id rules apply)."""
    return validator.run(name, frame, sales_spec_for(frame, settings))


def sales_spec_for(frame: pd.DataFrame, settings: Settings) -> list[tuple[str, dict[str, Any]]]:
    return sales_suite_spec(settings, "store_in_master" in frame.columns, "item_in_master" in frame.columns)


def _snake(class_name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", class_name).lower()


def unexpected_rows(
    frame: pd.DataFrame, spec: list[tuple[str, dict[str, Any]]], labels: set[str] | None = None
) -> dict[str, np.ndarray]:
    """``expectation(column)`` -> the rows it finds unexpected, for the column-map expectations of a suite.

    GX gives counts; this says which rows (to name the files they came from). Only the kinds the sales suite uses;
    table-level expectations have no rows. ``labels`` limits the work to the expectations that failed.
    """
    masks: dict[str, np.ndarray] = {}
    for cls_name, kwargs in spec:
        column = kwargs.get("column")
        label = f"{_snake(cls_name)}({column})"
        if column is None or column not in frame.columns or (labels is not None and label not in labels):
            continue
        values = frame[column]
        present = values.notna().to_numpy()
        if cls_name == "ExpectColumnValuesToNotBeNull":
            masks[label] = ~present
        elif cls_name == "ExpectColumnValuesToBeBetween":
            numbers = values.to_numpy(dtype="float64", na_value=np.nan)
            low, high = kwargs.get("min_value"), kwargs.get("max_value")
            outside = np.zeros(len(frame), dtype=bool)
            if low is not None:
                outside |= numbers < low
            if high is not None:
                outside |= numbers > high
            masks[label] = present & outside
        elif cls_name == "ExpectColumnValuesToBeInSet":
            masks[label] = present & ~values.isin(kwargs["value_set"]).to_numpy(dtype=bool, na_value=False)
        elif cls_name == "ExpectColumnValuesToBeUnique":
            masks[label] = present & values.duplicated(keep=False).to_numpy()
    return masks


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


def _local_only(relative: str) -> bool:
    """Lock files belong to the local copy, never to the store."""
    return relative == ".lock" or relative.endswith(".lock")


class Validator:
    """Runs suites through a GX file context under the storage root and keeps its Data Docs site up to date.

    GX's file context needs a real directory: with a remote root (``BI_PIPELINE_STORAGE=s3://…``), ``gx_dir`` is a
    local copy of ``store`` that each validation first brings up to date (suites, checkpoints and the results other
    workers stored) and then writes its own files back to, Data Docs included.
    """

    def __init__(self, gx_dir: Path, data_docs: bool = True, store: StoragePath | None = None) -> None:
        self.gx_dir = Path(gx_dir)
        self.data_docs = data_docs
        self.store = store
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
        return site_dir(self.gx_dir) / "index.html"

    @classmethod
    def for_settings(cls, settings: Settings, data_docs: bool = True) -> Validator:
        """The validator of ``settings``' storage root: in place on a local root, through a local copy otherwise."""
        store = None if is_local(settings.gx_store) else settings.gx_store
        return cls(settings.gx_dir, data_docs=data_docs, store=store)

    def pull(self) -> None:
        """With a remote store, bring the local copy up to date: suites, checkpoints, the results other workers stored
        and the Data Docs site."""
        if self.store is not None:
            pull(self.store, self.gx_dir, skip=_local_only)

    def run(self, name: str, frame: pd.DataFrame, spec: list[tuple[str, dict[str, Any]]]) -> SuiteOutcome:
        # The file context is not safe for concurrent writers: one validation at a time, across threads and the
        # processes of concurrent runs.
        self.gx_dir.mkdir(parents=True, exist_ok=True)
        with _LOCK, (self.gx_dir / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            started = time.time()
            self.pull()
            checkpoint = self._checkpoint(name, spec)
            result = checkpoint.run(batch_parameters={"dataframe": frame})
            page = self._docs_page(name, result) if self.data_docs else None
            if self.store is not None:
                # Files are stamped to the second on some filesystems: a second's slack never misses one.
                push(self.gx_dir, self.store, since=started - 1.0, skip=_local_only)
        return self._outcome(name, frame, result, page)

    def _docs_page(self, name: str, result) -> Path | None:
        """This validation's page, after making the pages GX just wrote readable offline (see ``docs_site``)."""
        from urllib.parse import unquote, urlparse

        site = site_dir(self.gx_dir)
        identifier = next(iter(result.run_results))
        page = None
        for entry in self.context.get_docs_sites_urls(resource_identifier=identifier, site_name="local_site"):
            url = entry.get("site_url") or ""
            if url.startswith("file://"):
                page = Path(unquote(urlparse(url).path))
        suite_page = site / "expectations" / f"{name}.html"
        make_offline(site, [p for p in (site / "index.html", page, suite_page) if p is not None])
        return page if page is not None and page.exists() else None

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

    def _outcome(self, name: str, frame: pd.DataFrame, result, page: Path | None = None) -> SuiteOutcome:
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
        index = self.docs_index()
        docs = page if page is not None else index if self.data_docs and index.exists() else None
        return SuiteOutcome(
            suite=name,
            success=bool(result.success),
            rows=len(frame),
            outcomes=outcomes,
            data_docs=str(docs) if docs is not None else None,
            docs_page=docs.relative_to(site_dir(self.gx_dir)).as_posix() if docs is not None else None,
        )
