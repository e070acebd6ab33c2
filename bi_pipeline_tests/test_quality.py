"""Row rules: each bad row is quarantined under one reason, in priority order; duplicates by the documented rule."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from bi_pipeline.quality import REASONS, clean_period, summarize_rejections
from bi_pipeline.readers import read_period
from bi_pipeline_tests.conftest import write_sales

HEADER = "date,store_id,item_id,sales,price,promo\n"
ROWS = [
    "2024-01-01,S1,I1,3,1.50,0",  # 2 ok
    "2024-01-01,,I1,3,1.50,0",  # 3 missing_key
    "2024-01-01,S1,I2,abc,1.50,0",  # 4 sales_not_numeric
    "2024-01-01,S1,I3,-2,1.50,0",  # 5 sales_negative
    "2024-13-01,S1,I4,3,1.50,0",  # 6 unparseable_date
    "2024-01-08,S1,I5,3,1.50,0",  # 7 date_outside_period (daily file)
    "2024-01-01,S9,I1,3,1.50,0",  # 8 unknown_store
    "2024-01-01,S1,I9,3,1.50,0",  # 9 unknown_item
    "2024-01-01,S1,I6,3,-1,0",  # 10 price_out_of_range
    "2024-01-01,S1,I7,3,cheap,0",  # 11 price_not_numeric
    "2024-01-01,S1,I8,3,1.50,yes",  # 12 promo_not_numeric
    "2024-01-01,S1,I1,3,1.50,0",  # 13 duplicate_exact (copy of line 2)
    "2024-01-01,S2,I1,5,1.50,0",  # 14 duplicate_conflict (line 15 corrects it)
    "2024-01-01,S2,I1,6,1.50,0",  # 15 ok (last wins)
    "2024-01-01,S2,I2,,1.50,0",  # 16 sales_missing
    ",S9,I9,abc,x,y",  # 17 missing_key wins over every later rule
]


def run(settings, rows=ROWS, frequency="D", **overrides):
    write_sales(settings.landing, "2024-01-01", HEADER + "\n".join(rows) + "\n")
    read = read_period(settings.landing, "2024-01-01")
    return clean_period(
        read.rows,
        "2024-01-01",
        frequency,
        replace(settings, **overrides),
        known_stores={"S1", "S2"},
        known_items={f"I{i}" for i in range(1, 9)},
        issues=read.issues,
    )


def test_each_rule_quarantines_exactly_its_rows(settings):
    result = run(settings)
    got = dict(zip(result.quarantine["source_row"], result.quarantine["reason"], strict=True))
    assert got == {
        3: "missing_key",
        4: "sales_not_numeric",
        5: "sales_negative",
        6: "unparseable_date",
        7: "date_outside_period",
        8: "unknown_store",
        9: "unknown_item",
        10: "price_out_of_range",
        11: "price_not_numeric",
        12: "promo_not_numeric",
        13: "duplicate_exact",
        14: "duplicate_conflict",
        16: "sales_missing",
        17: "missing_key",
    }
    assert result.clean["source_row"].tolist() == [2, 15]
    assert result.clean["sales"].tolist() == [3.0, 6.0]
    assert result.rows_in == len(ROWS)
    assert set(result.quarantine["reason"]) <= set(REASONS)
    # The quarantine keeps the values exactly as landed.
    row = result.quarantine.set_index("source_row").loc[4]
    assert (row["sales"], row["store_id"], row["source_file"]) == ("abc", "S1", "sales/2024-01-01.csv")


def test_clean_rows_are_typed_compactly(settings):
    clean = run(settings).clean
    assert str(clean["sales"].dtype) == "float32"
    assert isinstance(clean["store_id"].dtype, pd.CategoricalDtype)
    assert clean["date"].dtype == "datetime64[ns]"
    assert clean["period"].unique().tolist() == [pd.Timestamp("2024-01-01")]


def test_returns_are_kept_when_allowed(settings):
    result = run(settings, allow_returns=True)
    assert "sales_negative" not in set(result.quarantine["reason"])
    assert -2.0 in result.clean["sales"].tolist()


def test_weekly_period_accepts_days_inside_the_week(settings):
    rows = [
        "2024-01-01,S1,I1,3,1,0",
        "2024-01-07,S1,I2,3,1,0",
        "2024-01-08,S1,I3,3,1,0",
        "2023-12-31,S1,I4,3,1,0",
    ]
    result = run(settings, rows=rows, frequency="W")
    assert result.clean["source_row"].tolist() == [2, 3]
    assert result.quarantine["reason"].tolist() == ["date_outside_period", "date_outside_period"]


def test_bad_row_rate_message_names_file_and_rules(settings):
    result = run(settings)
    lines = summarize_rejections({"2024-01-01": result}, threshold=0.05)
    assert len(lines) == 1
    assert lines[0].startswith("sales/2024-01-01.csv: 14 of 16 rows quarantined")
    assert "missing_key (2)" in lines[0] and "duplicate_conflict (1)" in lines[0]
    assert summarize_rejections({"2024-01-01": result}, threshold=0.9) == []
