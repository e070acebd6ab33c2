"""The integrated view: regular index per active span, zero and missing kept apart, joins with master data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bi_pipeline.integration import integrate

NAN = np.nan


def clean(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["date", "store_id", "item_id", "sales", "price", "promo"])
    frame["date"] = pd.to_datetime(frame["date"])
    frame["period"] = frame["date"]
    return frame.astype({"sales": "float32", "price": "float32", "promo": "float32"})


PERIODS = ["2024-01-01", "2024-01-08", "2024-01-22", "2024-01-29"]  # 2024-01-15 never landed
ROWS = clean(
    [
        ("2024-01-01", "S1", "I1", 3, 1.0, 0),
        ("2024-01-08", "S1", "I1", 0, NAN, 0),  # an observed zero; price carried forward
        ("2024-01-29", "S1", "I1", 5, 1.2, 0.2),
        ("2024-01-08", "S1", "I2", 2, 4.0, 0),
        ("2024-01-22", "S1", "I2", 4, 4.0, 0),
        ("2024-01-01", "S2", "I1", 1, 1.0, 0),
        ("2024-01-29", "S2", "I1", 1, 1.0, 0),
    ]
)
STORES = pd.DataFrame(
    {"store_id": ["S1", "S2", "S3"], "region": ["north", "south", "east"], "size": ["100", "200", "50"]}
)
ITEMS = pd.DataFrame({"item_id": ["I1", "I2"], "category": ["food", "toys"]})
CALENDAR = pd.DataFrame(
    {
        "date": ["2024-01-02", "2024-01-25", "2024-01-09"],
        "store_id": ["", "", "S2"],
        "holiday": ["1", "0", ""],
        "event": ["NewYear", "", ""],
        "local_event": ["", "", "1"],
    }
)
QUARANTINED = pd.DataFrame(
    {"period": ["2024-01-22"], "store_id": ["S2"], "item_id": ["I1"], "reason": ["sales_not_numeric"]}
)


def series(frame: pd.DataFrame, store: str, item: str) -> pd.DataFrame:
    return frame[(frame["store_id"] == store) & (frame["item_id"] == item)].set_index("date")


@pytest.mark.parametrize("implicit_zeros", [False, True])
def test_spans_and_missing_versus_zero(implicit_zeros):
    out = integrate(ROWS, "W", PERIODS, quarantined=QUARANTINED, implicit_zeros=implicit_zeros)
    a = series(out, "S1", "I1")
    assert a.index.strftime("%Y-%m-%d").tolist() == [
        "2024-01-01",
        "2024-01-08",
        "2024-01-15",
        "2024-01-22",
        "2024-01-29",
    ]
    assert a["observed"].tolist() == [True, True, False, False, True]
    gap = 0.0 if implicit_zeros else NAN
    # 01-15: no file landed, so unknown even with implicit zeros; 01-22: landed without a row.
    np.testing.assert_array_equal(a["sales"].to_numpy(), np.array([3, 0, NAN, gap, 5], dtype="float32"))
    np.testing.assert_array_equal(a["price"].to_numpy(), np.array([1, 1, 1, 1, 1.2], dtype="float32"))
    np.testing.assert_array_equal(a["promo"].to_numpy(), np.array([0, 0, 0, 0, 0.2], dtype="float32"))
    # A series exists only from its first to its last row.
    b = series(out, "S1", "I2")
    assert b.index.strftime("%Y-%m-%d").tolist() == ["2024-01-08", "2024-01-15", "2024-01-22"]
    # A quarantined value is missing, never an implicit zero.
    c = series(out, "S2", "I1")
    np.testing.assert_array_equal(c["sales"].to_numpy(), np.array([1, gap, NAN, NAN, 1], dtype="float32"))
    assert len(out) == 5 + 3 + 5


def test_joins_master_data_and_calendar_by_period_and_store():
    out = integrate(ROWS, "W", PERIODS, stores=STORES, items=ITEMS, calendar=CALENDAR)
    a, c = series(out, "S1", "I1"), series(out, "S2", "I1")
    assert a["region"].astype(str).unique().tolist() == ["north"]
    assert c["size"].unique().tolist() == [200.0]
    assert series(out, "S1", "I2")["category"].astype(str).unique().tolist() == ["toys"]
    assert a["holiday"].tolist() == [1, 0, 0, 0, 0]  # the 01-02 holiday lands in the week of 01-01
    assert a["event"].astype(object).where(a["event"].notna(), None).tolist() == [
        "NewYear",
        None,
        None,
        None,
        None,
    ]
    assert a["local_event"].tolist() == [0, 0, 0, 0, 0]
    assert c["local_event"].tolist() == [0, 1, 0, 0, 0]  # store-specific row for S2 only


def test_rows_inside_a_period_are_summed_and_types_are_compact():
    rows = clean([("2024-01-01", "S1", "I1", 3, 1.0, 0), ("2024-01-03", "S1", "I1", 4, 1.0, 0.1)])
    rows["period"] = pd.Timestamp("2024-01-01")
    out = integrate(rows, "W", ["2024-01-01"])
    assert out["sales"].tolist() == [7.0]
    assert out["promo"].tolist() == pytest.approx([0.1])
    assert {c: str(t) for c, t in out.dtypes.items()} == {
        "date": "datetime64[ns]",
        "store_id": "category",
        "item_id": "category",
        "sales": "float32",
        "observed": "bool",
        "price": "float32",
        "promo": "float32",
    }


def test_monthly_periods_and_per_period_frames():
    frames = [
        clean([("2024-01-01", "S1", "I1", 10, NAN, 0)]),
        clean([("2024-03-01", "S1", "I1", 30, NAN, 0)]),
    ]
    out = integrate(frames, "M", ["2024-01-01", "2024-02-01", "2024-03-01"], implicit_zeros=True)
    assert out["date"].dt.strftime("%Y-%m").tolist() == ["2024-01", "2024-02", "2024-03"]
    assert out["sales"].tolist() == [10.0, 0.0, 30.0]


def test_no_rows_is_a_clear_error():
    with pytest.raises(ValueError, match="no clean sales rows"):
        integrate([], "D", ["2024-01-01"])
