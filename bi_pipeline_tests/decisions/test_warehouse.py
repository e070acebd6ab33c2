"""The BI tables: stable schemas, idempotent re-writes by publication, the same rows in DuckDB and PostgreSQL."""

from __future__ import annotations

import pandas as pd
import pytest

from bi_pipeline.decisions.warehouse import TABLES, Warehouse, WarehouseError, conform, default_url
from bi_pipeline_tests.decisions.test_inventory import flat_forecasts


def publication(version: str, cutoff: str, value: float) -> pd.DataFrame:
    frame = flat_forecasts({("S1", "A"): value, ("S2", "B"): value + 1}, periods=3)
    frame["model_version"], frame["cutoff"] = version, pd.Timestamp(cutoff)
    return frame


def publish_twice(warehouse: Warehouse) -> pd.DataFrame:
    first, second = publication("1", "2023-12-25", 10.0), publication("2", "2024-01-01", 20.0)
    assert warehouse.write("forecasts", first) == 6
    assert warehouse.write("forecasts", first.assign(**{"q0.5": 11.0})) == 6  # a re-run replaces its rows
    assert warehouse.write("forecasts", second) == 6
    return warehouse.read("forecasts")


def check_rows(rows: pd.DataFrame) -> None:
    assert list(rows.columns) == list(TABLES["forecasts"])
    assert len(rows) == 12
    assert rows.groupby("model_version").size().to_dict() == {"1": 6, "2": 6}
    assert set(rows.loc[rows["model_version"] == "1", "p50"]) == {11.0}
    assert sorted(pd.to_datetime(rows["cutoff"]).dt.date.astype(str).unique()) == ["2023-12-25", "2024-01-01"]


def test_duckdb_keeps_each_publication_once(tmp_path):
    url = default_url(tmp_path / "home")
    assert url == f"duckdb:///{tmp_path / 'home' / 'warehouse.duckdb'}"
    check_rows(publish_twice(Warehouse(url)))


def test_postgres_holds_the_same_rows_as_duckdb(tmp_path, postgres_url):
    duck = publish_twice(Warehouse(default_url(tmp_path)))
    postgres = publish_twice(Warehouse(postgres_url))
    check_rows(postgres)
    for frame in (duck, postgres):
        for column in ("cutoff", "date"):
            frame[column] = pd.to_datetime(frame[column])
    pd.testing.assert_frame_equal(duck, postgres, check_dtype=False)


def test_a_frame_that_does_not_fit_its_table_is_refused_by_name(tmp_path):
    with pytest.raises(WarehouseError, match="lack column"):
        conform("orders", publication("1", "2024-01-01", 1.0))
    with pytest.raises(WarehouseError, match="no table 'sales'"):
        conform("sales", publication("1", "2024-01-01", 1.0))
    with pytest.raises(WarehouseError, match="use duckdb"):
        Warehouse("mysql://db/x")
    # Rows without their publication's keys are refused before anything is written.
    warehouse = Warehouse(default_url(tmp_path))
    warehouse.write("forecasts", publication("1", "2023-12-25", 10.0))
    broken = publication("1", "2023-12-25", 10.0).assign(model_version=None)
    with pytest.raises(WarehouseError, match="cutoff and a model_version"):
        warehouse.write("forecasts", broken)
    assert len(warehouse.read("forecasts")) == 6
