"""The assets' Dagster types: core columns with their dtypes and rules, extras allowed, a failure naming the column
(and the partition), and the column schema on the asset definitions."""

from __future__ import annotations

import dataclasses

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from bi_pipeline.config import Settings
from bi_pipeline.defs import types
from bi_pipeline.defs.cleaning import clean_sales
from bi_pipeline.defs.integration import integrated_sales
from bi_pipeline.defs.resources import PipelineResource
from bi_pipeline.defs.types import (
    CLEAN_SALES,
    COLUMN_SCHEMA,
    FORECASTS,
    INTEGRATED_SALES,
    QUANTILE_COLUMNS,
    CleanSalesFrame,
)


def clean_frame(period: str = "2024-01-01", rows: int = 4) -> pd.DataFrame:
    """A clean_sales partition as the cleaning rules build it (categorical ids, float32 measures), with an extra."""
    return pd.DataFrame(
        {
            "period": pd.Series(pd.Timestamp(period), index=range(rows)).astype("datetime64[ns]"),
            "date": pd.date_range(period, periods=rows, freq="D"),
            "store_id": pd.Categorical(["S1", "S2"] * (rows // 2)),
            "item_id": pd.Categorical(["I1"] * rows),
            "sales": np.arange(rows, dtype="float32"),
            "price": np.array([1.5, np.nan] * (rows // 2), dtype="float32"),
            "promo": np.zeros(rows, dtype="float32"),
            "weather": np.linspace(0.0, 1.0, rows),
            "source_file": pd.Categorical([f"sales/{period}.csv"] * rows),
            "source_row": np.arange(rows, dtype="int64"),
        }
    )


def integrated_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "date": pd.to_datetime(["2024-01-01", "2024-01-08", "2024-01-15"]),
            "store_id": pd.Categorical(["S1"] * 3),
            "item_id": pd.Categorical(["I1"] * 3),
            "sales": np.array([3.0, np.nan, 0.0], dtype="float32"),  # NaN: a missing period, kept apart from zero
            "observed": [True, False, True],
            "price": np.array([np.nan, 2.0, 2.0], dtype="float32"),
            "promo": np.zeros(3, dtype="float32"),
            "region": pd.Categorical(["north"] * 3),
        }
    )


def forecasts_frame() -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "store_id": ["S1", "S1"],
            "item_id": ["I1", "I1"],
            "date": pd.to_datetime(["2024-02-05", "2024-02-12"]),
            "mean": [5.0, 6.0],
        }
    )
    for i, column in enumerate(QUANTILE_COLUMNS):
        frame[column] = [1.0 + i, 2.0 + i]
    frame["cutoff"] = pd.Timestamp("2024-01-29")
    frame["model_version"] = "3"
    return frame


def test_a_good_clean_sales_frame_passes_through_the_dagster_type_and_lists_its_extras():
    result = dg.check_dagster_type(CleanSalesFrame, clean_frame())
    assert result.success, result.description
    assert result.metadata["extra_columns"].value == "weather"
    assert result.metadata["rows"].value == 4


def test_a_frame_missing_sales_fails_naming_sales():
    result = CLEAN_SALES.check(clean_frame().drop(columns=["sales"]))
    assert not result.success
    assert "missing required column(s) sales" in result.description
    assert result.metadata["column"].value == "sales"


def test_a_null_store_id_fails_naming_store_id_and_the_row():
    frame = clean_frame()
    frame.loc[2, "store_id"] = np.nan
    result = CLEAN_SALES.check(frame)
    assert not result.success
    assert 'column "store_id" violated NonNullableColumnConstraint' in result.description
    assert "(index): [2]" in result.description
    assert result.metadata["column"].value == "store_id"


def test_a_wrong_dtype_fails_naming_the_column_and_its_dtype():
    result = CLEAN_SALES.check(clean_frame().assign(date=lambda f: f["date"].dt.strftime("%Y-%m-%d")))
    assert not result.success
    assert 'column "date"' in result.description and 'but was "object"' in result.description


def test_negative_sales_fail_unless_the_run_allows_returns():
    frame = clean_frame()
    frame.loc[1, "sales"] = -2.0
    strict = CLEAN_SALES.check(frame)
    assert not strict.success
    assert 'column "sales"' in strict.description and "BI_PIPELINE_ALLOW_RETURNS" in strict.description
    assert CLEAN_SALES.check(frame, allow_returns=True).success
    # Returns allowed or not, sales is never null in clean rows.
    frame.loc[1, "sales"] = np.nan
    assert 'column "sales" violated NonNullable' in CLEAN_SALES.check(frame, allow_returns=True).description


def test_the_integrated_view_allows_missing_sales_but_not_negative_ones_or_a_missing_observed_flag():
    frame = integrated_frame()
    assert INTEGRATED_SALES.check(frame).success
    assert not INTEGRATED_SALES.check(frame.assign(sales=np.float32(-1.0))).success
    result = INTEGRATED_SALES.check(frame.drop(columns=["observed"]))
    assert not result.success and result.metadata["column"].value == "observed"


def test_a_dict_of_partitions_passes_when_every_frame_is_good():
    value = {"2024-01-01": clean_frame("2024-01-01"), "2024-01-08": clean_frame("2024-01-08")}
    result = CLEAN_SALES.check(value)
    assert result.success, result.description
    assert result.metadata["partitions"].value == 2 and result.metadata["rows"].value == 8
    assert CLEAN_SALES.check({}).success  # nothing to check


def test_a_dict_of_partitions_fails_naming_the_partition_and_the_column():
    bad = clean_frame("2024-01-08")
    bad.loc[3, "store_id"] = np.nan
    result = CLEAN_SALES.check({"2024-01-01": clean_frame("2024-01-01"), "2024-01-08": bad})
    assert not result.success
    assert 'column "store_id"' in result.description and "('2024-01-08', 3)" in result.description

    missing = {"2024-01-01": clean_frame("2024-01-01"), "2024-01-08": clean_frame("2024-01-08").drop(columns="promo")}
    result = CLEAN_SALES.check(missing)
    assert result.description.startswith("CleanSalesFrame: partition 2024-01-08: missing required column(s) promo")
    assert result.metadata["partition"].value == "2024-01-08"


def test_frames_are_checked_in_chunks_and_a_defect_in_a_later_chunk_is_still_found(monkeypatch):
    monkeypatch.setattr(types, "CHUNK_ROWS", 8)  # two 4-row partitions per chunk, the last alone
    value = {f"2024-01-{d:02d}": clean_frame(f"2024-01-{d:02d}") for d in (1, 8, 15, 22, 29)}
    assert CLEAN_SALES.check(value).success
    value["2024-01-29"].loc[0, "sales"] = -1.0
    result = CLEAN_SALES.check(value)
    assert not result.success and result.metadata["partition"].value == "2024-01-29"
    value["2024-01-29"].loc[0, "sales"] = 1.0
    value["2024-01-15"].loc[1, "sales"] = -1.0
    assert "('2024-01-15', 1)" in CLEAN_SALES.check(value).description


def test_anything_but_a_frame_or_a_dict_of_frames_fails():
    assert not CLEAN_SALES.check(None).success
    assert not CLEAN_SALES.check({"2024-01-01": "not a frame"}).success


def test_forecasts_pass_and_a_missing_quantile_fails_naming_it():
    assert FORECASTS.check(forecasts_frame()).success
    result = FORECASTS.check(forecasts_frame().drop(columns=["q0.9"]))
    assert not result.success
    assert "missing required column(s) q0.9" in result.description
    assert result.metadata["column"].value == "q0.9"


def test_crossing_quantiles_fail_naming_the_columns():
    frame = forecasts_frame()
    frame.loc[1, "q0.4"] = frame.loc[1, "q0.3"] - 1.0
    result = FORECASTS.check(frame)
    assert not result.success
    assert 'column "q0.4" is below column "q0.3" in 1 row(s)' in result.description
    # A rounding error below the previous quantile is not a crossing.
    frame.loc[1, "q0.4"] = frame.loc[1, "q0.3"] - 1e-9
    assert FORECASTS.check(frame).success


def test_the_assets_carry_their_type_and_column_schema():
    out = clean_sales.op.outs["clean_sales"]
    assert out.dagster_type.display_name == "CleanSalesFrame"
    assert integrated_sales.op.outs["result"].dagster_type.display_name == "IntegratedSalesFrame"
    specs = {**clean_sales.specs_by_key, **integrated_sales.specs_by_key}
    for key, schema in (("clean_sales", CLEAN_SALES), ("integrated_sales", INTEGRATED_SALES)):
        columns = specs[dg.AssetKey(key)].metadata[COLUMN_SCHEMA].schema.columns
        assert [c.name for c in columns] == [c.name for c in schema.columns]
    sales = next(c for c in INTEGRATED_SALES.table_schema.columns if c.name == "sales")
    assert sales.constraints.nullable and "BI_PIPELINE_ALLOW_RETURNS" in sales.constraints.other[0]


@pytest.mark.parametrize("allow_returns", [False, True])
def test_materialize_checks_the_value_with_the_runs_own_returns_setting(settings: Settings, allow_returns: bool):
    frame = clean_frame()
    frame.loc[0, "sales"] = -1.0

    @dg.asset(dagster_type=CleanSalesFrame, metadata=CLEAN_SALES.definition_metadata())
    def sales(pipeline: PipelineResource) -> dg.Output:
        return dg.Output({"2024-01-01": frame}, metadata=CLEAN_SALES.observed_metadata({"2024-01-01": frame}))

    pipeline = PipelineResource.from_settings(dataclasses.replace(settings, allow_returns=allow_returns))
    result = dg.materialize_to_memory([sales], resources={"pipeline": pipeline}, raise_on_error=False)
    assert result.success is allow_returns
    if allow_returns:
        observed = result.asset_materializations_for_node("sales")[0].metadata[COLUMN_SCHEMA].schema
        assert ("weather", "float64") in [(c.name, c.type) for c in observed.columns]
    else:
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        assert 'column "sales" violated NonNegativeColumnConstraint' in str(failure.event_specific_data.error)
