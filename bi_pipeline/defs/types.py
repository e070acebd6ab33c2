"""Dagster types for the pipeline's DataFrames, built on dagster-pandas column constraints.

Each type names an asset's core columns with their dtype and rules; Dagster checks the asset's value against it on
every materialization (a wrong frame fails the step, the message naming the column) and the UI shows the columns as
the asset's schema. Extra columns (covariates, store and item attributes) vary by data set: they are allowed, never
required, and listed with their dtypes in each materialization's column schema.

A partitioned asset hands over one DataFrame or ``{partition_key: DataFrame}`` (a run over many partitions): the
types accept both and check every frame.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from dagster_pandas.constraints import (
    ColumnConstraintViolationException,
    ColumnDTypeFnConstraint,
    ConstraintViolationException,
    DataFrameConstraint,
    DataFrameConstraintViolationException,
    InRangeColumnConstraint,
    NonNullableColumnConstraint,
)
from dagster_pandas.data_frame import create_dagster_pandas_dataframe_description
from dagster_pandas.validation import PandasColumn, validate_constraints
from pandas.api.types import is_bool_dtype, is_datetime64_dtype, is_integer_dtype, is_numeric_dtype, is_string_dtype

from bi_pipeline.forecasting.metrics import QUANTILES, quantile_column

COLUMN_SCHEMA = "dagster/column_schema"
RETURNS_SETTING = "BI_PIPELINE_ALLOW_RETURNS"
# Frames of a many-partition run are checked in concatenated chunks of about this many rows: a check per small frame
# costs ~1 ms of pandas overhead (seconds over a backfill), one whole concatenation doubles the memory.
CHUNK_ROWS = 1_000_000
SAMPLE = 5


def is_text_dtype(dtype: Any) -> bool:
    """Strings, or categoricals of strings: the ids are categoricals (compact at M5 scale), which dagster-pandas'
    ``string_column`` (``is_string_dtype``) rejects."""
    if isinstance(dtype, pd.CategoricalDtype):
        return is_string_dtype(dtype.categories.dtype)
    return is_string_dtype(dtype)


def is_naive_datetime_dtype(dtype: Any) -> bool:
    """Timezone-naive datetimes of any unit: dagster-pandas' ``datetime_column`` takes ``datetime64[ns]`` only, while
    pandas 2 and Parquet also give ``[us]``/``[ms]``."""
    return is_datetime64_dtype(dtype)


# kind: (the dtype rule, the type shown in the schema)
KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "text": (is_text_dtype, "string"),
    "datetime": (is_naive_datetime_dtype, "datetime64"),
    "number": (is_numeric_dtype, "numeric"),
    "integer": (is_integer_dtype, "int"),
    "bool": (is_bool_dtype, "bool"),
}


class NonNegativeColumnConstraint(InRangeColumnConstraint):
    """Values >= 0, missing values aside. Dropped when the run allows returns (negative sales)."""

    def __init__(self) -> None:
        super().__init__(0.0, float("inf"), ignore_missing_vals=True)
        self.error_description = self.markdown_description = (
            f"must be >= 0 (negative values are returns, allowed only with {RETURNS_SETTING})"
        )


class QuantilesNonDecreasingConstraint(DataFrameConstraint):
    """Each row's quantiles never cross: q0.1 <= q0.2 <= ... <= q0.9, up to float rounding."""

    def __init__(self, columns: Sequence[str], tolerance: float = 1e-6) -> None:
        self.columns = list(columns)
        self.tolerance = tolerance
        text = "per row " + " <= ".join(self.columns)
        super().__init__(error_description=text, markdown_description=text)

    def validate(self, dataframe: pd.DataFrame) -> None:
        values = dataframe[self.columns].to_numpy(dtype="float64")
        lower, upper = values[:, :-1], values[:, 1:]
        # A blend of two models can put a quantile a rounding error below the one before it: not a crossing.
        crossed = lower - upper > self.tolerance * np.maximum(1.0, np.abs(lower))
        if crossed.any():
            rows, pairs = np.nonzero(crossed)
            j = int(pairs[0])
            raise DataFrameConstraintViolationException(
                constraint_name=self.name,
                constraint_description=(
                    f'column "{self.columns[j + 1]}" is below column "{self.columns[j]}" in '
                    f"{int(crossed.any(axis=1).sum())} row(s); first offending rows (index): "
                    f"{list(dataframe.index[np.unique(rows)[:SAMPLE]])}"
                ),
            )


@dataclass(frozen=True)
class Column:
    """A core column: its dtype kind (a key of ``KINDS``), what it holds, and its rules."""

    name: str
    kind: str
    description: str
    nullable: bool = False
    non_negative: bool = False  # unless the run allows returns

    def constraints(self, allow_returns: bool) -> list[Any]:
        """The value rules (the dtype rule is apart: it is checked per frame, values per chunk)."""
        rules: list[Any] = [] if self.nullable else [NonNullableColumnConstraint()]
        if self.non_negative and not allow_returns:
            rules.append(NonNegativeColumnConstraint())
        return rules

    def table_column(self, dtype: str | None = None) -> dg.TableColumn:
        other = [f">= 0 unless {RETURNS_SETTING}"] if self.non_negative else []
        return dg.TableColumn(
            name=self.name,
            type=dtype or KINDS[self.kind][1],
            description=self.description,
            constraints=dg.TableColumnConstraints(nullable=self.nullable, other=other),
        )


def _pandas_column(name: str, constraints: list[Any], is_required: bool) -> PandasColumn:
    # PandasColumn is marked beta; the warning would repeat for every column of every type.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return PandasColumn(name, constraints=constraints, is_required=is_required)


class FrameSchema:
    """An asset's DataFrame contract: core columns (extras allowed), frame-wide rules, and the Dagster type."""

    def __init__(
        self,
        name: str,
        description: str,
        columns: Sequence[Column],
        frame_constraints: Sequence[DataFrameConstraint] = (),
    ) -> None:
        self.name = name
        self.columns = tuple(columns)
        self.by_name = {c.name: c for c in self.columns}
        self.frame_constraints = list(frame_constraints)
        self.dtype_columns = [
            _pandas_column(c.name, [ColumnDTypeFnConstraint(KINDS[c.kind][0])], True) for c in self.columns
        ]
        # Strict and with returns allowed; columns without a value rule are left out (nothing to check).
        self.value_columns = {
            allow: [_pandas_column(c.name, c.constraints(allow), False) for c in self.columns if c.constraints(allow)]
            for allow in (False, True)
        }
        self.table_schema = dg.TableSchema(
            columns=[c.table_column() for c in self.columns],
            constraints=dg.TableConstraints(
                other=[
                    "extra columns (covariates, attributes) vary by data set and are allowed",
                    *(k.markdown_description for k in self.frame_constraints),
                ]
            ),
        )
        # The type's page: dagster-pandas' column list (dtype rule, then each value rule) under the description.
        markdown = create_dagster_pandas_dataframe_description(
            description + "\n\nExtra columns are allowed.",
            [
                _pandas_column(c.name, [*d.constraints, *c.constraints(False)], True)
                for c, d in zip(self.columns, self.dtype_columns, strict=True)
            ],
        )
        self.dagster_type = dg.DagsterType(
            name=name,
            description=markdown,
            type_check_fn=self._type_check,
            # The sign rule follows the run's own setting, read from its `pipeline` resource.
            required_resource_keys={"pipeline"} if any(c.non_negative for c in self.columns) else None,
            metadata={COLUMN_SCHEMA: dg.MetadataValue.table_schema(self.table_schema)},
        )

    def definition_metadata(self) -> dict[str, Any]:
        """For the asset definition: the core columns shown in the UI before anything is materialized."""
        return {COLUMN_SCHEMA: dg.MetadataValue.table_schema(self.table_schema)}

    def observed_metadata(self, value: pd.DataFrame | Mapping[str, pd.DataFrame]) -> dict[str, Any]:
        """For a materialization: every column it has (extras included) with its dtype, core columns annotated."""
        frames = [value] if isinstance(value, pd.DataFrame) else list(value.values())
        if not frames:
            return {}
        frame = frames[0]  # one run's frames share their columns
        columns = [
            self.by_name[str(name)].table_column(str(dtype))
            if str(name) in self.by_name
            else dg.TableColumn(name=str(name), type=str(dtype), description="extra column (varies by data set)")
            for name, dtype in frame.dtypes.items()
        ]
        return {COLUMN_SCHEMA: dg.MetadataValue.table_schema(dg.TableSchema(columns=columns))}

    def check(self, value: Any, allow_returns: bool = False) -> dg.TypeCheck:
        """Check a DataFrame, or each DataFrame of ``{partition_key: DataFrame}``; a failure names the column (and
        the partition)."""
        if isinstance(value, pd.DataFrame):
            frames: dict[str | None, pd.DataFrame] = {None: value}
        elif isinstance(value, Mapping) and all(isinstance(f, pd.DataFrame) for f in value.values()):
            frames = {str(k): f for k, f in value.items()}
        else:
            return dg.TypeCheck(
                success=False,
                description=f"{self.name}: expected a pandas DataFrame or a dict of them by partition, got "
                f"{type(value).__name__}",
            )
        checked: set[tuple] = set()
        for key, frame in frames.items():
            missing = [c.name for c in self.columns if c.name not in frame.columns]
            if missing:
                return _failure(
                    self.name,
                    key,
                    f"missing required column(s) {', '.join(missing)} (has {', '.join(map(str, frame.columns))})",
                    column=missing[0],
                )
            # The frames of one run share their dtypes: each distinct set is checked once, on its first frame.
            signature = tuple(zip(frame.columns, frame.dtypes, strict=True))
            if signature not in checked:
                checked.add(signature)
                try:
                    validate_constraints(frame, pandas_columns=self.dtype_columns)
                except ConstraintViolationException as exc:
                    return _violation(self.name, _Chunk(frame, [key]), exc)
            if self.frame_constraints:
                try:
                    validate_constraints(frame, dataframe_constraints=self.frame_constraints)
                except ConstraintViolationException as exc:
                    return _failure(self.name, key, str(exc))
        for chunk in _chunks(frames):
            try:
                validate_constraints(chunk.frame, pandas_columns=self.value_columns[allow_returns])
            except ConstraintViolationException as exc:
                return _violation(self.name, chunk, exc)
        first = next(iter(frames.values()), None)
        extras = [str(c) for c in first.columns if str(c) not in self.by_name] if first is not None else []
        metadata: dict[str, Any] = {
            "rows": sum(len(f) for f in frames.values()),
            "extra_columns": ", ".join(extras) or "none",
        }
        if None not in frames:
            metadata["partitions"] = len(frames)
        return dg.TypeCheck(success=True, metadata=metadata)

    def _type_check(self, context: dg.TypeCheckContext, value: Any) -> dg.TypeCheck:
        return self.check(value, allow_returns=_allow_returns(context))


def _allow_returns(context: dg.TypeCheckContext) -> bool:
    """The run's ``allow_returns`` setting; outside a run (``check_dagster_type``) there is no ``pipeline`` resource
    and the strict rule applies."""
    pipeline = getattr(context.resources, "pipeline", None)
    return bool(getattr(pipeline, "allow_returns", False))


@dataclass(frozen=True)
class _Chunk:
    """Frames checked together: one as it is, or several concatenated (positional index) with where each starts."""

    frame: pd.DataFrame
    keys: list[str | None]
    parts: list[pd.DataFrame] = field(default_factory=list)
    starts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def locate(self, labels: Sequence[Any]) -> tuple[str | None, list[Any]]:
        """The first offending row's partition, and the rows as (partition, row) pairs (several partitions) or
        their own index labels (one)."""
        if len(self.keys) == 1:
            return self.keys[0], list(labels)
        found = []
        for position in labels:
            i = int(np.searchsorted(self.starts, position, side="right")) - 1
            label = self.parts[i].index[position - self.starts[i]]
            found.append((self.keys[i], label.item() if isinstance(label, np.generic) else label))
        return (found[0][0] if found else None), found


def _chunks(frames: dict[str | None, pd.DataFrame]) -> Iterator[_Chunk]:
    """Batches of about ``CHUNK_ROWS`` rows."""
    batch: list[tuple[str | None, pd.DataFrame]] = []
    rows = 0
    for key, frame in frames.items():
        batch.append((key, frame))
        rows += len(frame)
        if rows >= CHUNK_ROWS:
            yield _concat(batch)
            batch, rows = [], 0
    if batch:
        yield _concat(batch)


def _concat(batch: list[tuple[str | None, pd.DataFrame]]) -> _Chunk:
    keys, parts = [k for k, _ in batch], [f for _, f in batch]
    if len(parts) == 1:
        return _Chunk(parts[0], keys)
    # A positional index: concatenating with the partition as an index level costs more than the checks.
    starts = np.concatenate(([0], np.cumsum([len(f) for f in parts])[:-1])).astype(np.int64)
    return _Chunk(pd.concat(parts, ignore_index=True), keys, parts, starts)


def _failure(type_name: str, key: str | None, text: str, column: str | None = None) -> dg.TypeCheck:
    where = f"partition {key}: " if key is not None else ""
    metadata = {k: v for k, v in (("column", column), ("partition", key)) if v is not None}
    return dg.TypeCheck(success=False, description=f"{type_name}: {where}{text}", metadata=metadata)


def _violation(type_name: str, chunk: _Chunk, exc: ConstraintViolationException) -> dg.TypeCheck:
    """The failure, naming the column and the first offending rows' partition and index labels."""
    if not isinstance(exc, ColumnConstraintViolationException):
        return _failure(type_name, chunk.keys[0] if len(chunk.keys) == 1 else None, str(exc))
    text = f'column "{exc.column_name}" violated {exc.constraint_name}: {exc.constraint_description.rstrip(".")}'
    offending = exc.offending_rows
    # Index labels only: the rows' values could carry PII columns into the event log.
    if isinstance(offending, pd.DataFrame):
        count, labels = f"{len(offending)} row(s)", list(offending.index[:SAMPLE])
    elif offending is not None:  # NonNullableColumnConstraint hands over a lazy zip of (index, value) pairs
        count, labels = "rows", [label for label, _ in itertools.islice(offending, SAMPLE)]
    else:  # a dtype rule: the chunk is the one frame that has the dtype
        return _failure(type_name, chunk.keys[0], text, column=exc.column_name)
    key, rows = chunk.locate(labels)
    names = "(partition, row)" if len(chunk.keys) > 1 else "(index)"
    return _failure(type_name, key, f"{text}; offending {count}, first {names}: {rows}", column=exc.column_name)


SERIES_COLUMNS = (
    Column("store_id", "text", "store key"),
    Column("item_id", "text", "item key"),
)

CLEAN_SALES = FrameSchema(
    "CleanSalesFrame",
    "Sales rows of a period that passed every cleaning rule, typed; one frame per partition.",
    [
        Column("period", "datetime", "the period (partition) the row landed in"),
        Column("date", "datetime", "the row's date, inside its period"),
        *SERIES_COLUMNS,
        Column("sales", "number", "units sold", non_negative=True),
        Column("price", "number", "unit price; NaN where the file gives none", nullable=True),
        Column("promo", "number", "promotion; 0 where blank"),
        Column("source_file", "text", "the landed file the row came from", nullable=True),
        Column("source_row", "integer", "the row's position in that file"),
    ],
)

INTEGRATED_SALES = FrameSchema(
    "IntegratedSalesFrame",
    "One row per series and period over the whole history, joined with master data and calendar covariates.",
    [
        Column("date", "datetime", "the period date"),
        *SERIES_COLUMNS,
        Column(
            "sales",
            "number",
            "units sold in the period; NaN = missing, kept apart from zero",
            nullable=True,
            non_negative=True,
        ),
        Column("observed", "bool", "whether a row landed for the series and period"),
        Column("price", "number", "unit price, carried forward inside a series", nullable=True),
        Column("promo", "number", "promotion; 0 where no row says otherwise"),
    ],
)

QUANTILE_COLUMNS = tuple(quantile_column(q) for q in QUANTILES)

FORECASTS = FrameSchema(
    "ForecastsFrame",
    "Quantile forecasts for every active series over the horizon after the cutoff, from the champion model.",
    [
        *SERIES_COLUMNS,
        Column("date", "datetime", "the forecast period"),
        Column("mean", "number", "point forecast"),
        *(Column(c, "number", f"P{round(q * 100)} forecast") for q, c in zip(QUANTILES, QUANTILE_COLUMNS, strict=True)),
        Column("cutoff", "datetime", "the last period of the history the forecast starts from"),
        Column("model_version", "text", "the champion's registered model version"),
    ],
    frame_constraints=[QuantilesNonDecreasingConstraint(QUANTILE_COLUMNS)],
)

CleanSalesFrame = CLEAN_SALES.dagster_type
IntegratedSalesFrame = INTEGRATED_SALES.dagster_type
ForecastsFrame = FORECASTS.dagster_type
