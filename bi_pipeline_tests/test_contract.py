"""The landing-zone contract and bad input: a clear error or a quarantine entry each, the file left as landed."""

from __future__ import annotations

import hashlib
import os
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from bi_pipeline.contract import (
    ContractError,
    infer_frequency,
    period_bounds,
    raw_frame,
    sales_file_for_key,
    scan_sales_dir,
    split_raw,
)
from bi_pipeline.readers import read_master, read_period, read_sales_file
from bi_pipeline_tests.conftest import write_sales

HEADER = "date,store_id,item_id,sales,price,promo\n"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_reads_rows_as_text_with_source_lines(settings):
    path = write_sales(settings.landing, "2024-01-01", HEADER + "2024-01-01,S1,I1,3,1.50,0\n2024-01-01,S1,I2,007,,\n")
    read = read_sales_file(path, settings.landing)
    assert read.rows["sales"].tolist() == ["3", "007"]  # text exactly as landed
    assert read.rows["source_row"].tolist() == [2, 3]
    assert read.rows["source_file"].astype(str).unique().tolist() == ["sales/2024-01-01.csv"]
    assert read.sha256 == digest(path)
    assert read.issues.empty


def test_malformed_rows_are_quarantined_with_their_line_numbers(settings):
    body = (
        HEADER + '2024-01-01,S1,I1,3,1,0\n2024-01-01,S1,I2\n\n2024-01-01,S1,I3,4,1,0,extra\n2024-01-01,"S,2",I1,7,1,0\n'
    )
    path = write_sales(settings.landing, "2024-01-01", body)
    before = digest(path)
    read = read_period(settings.landing, "2024-01-01")
    assert read.rows["source_row"].tolist() == [2, 6]
    assert read.rows["store_id"].tolist() == ["S1", "S,2"]
    assert read.issues[["source_row", "reason"]].values.tolist() == [
        [3, "malformed_row"],
        [5, "malformed_row"],
    ]
    assert "expected 6 fields, found 3" in read.issues["detail"].iloc[0]
    assert digest(path) == before


def test_non_utf8_lines_are_quarantined_not_fatal(settings):
    body = HEADER.encode() + b"2024-01-01,S1,I1,3,1,0\n2024-01-01,S1,I\xff2,3,1,0\n2024-01-01,S1,I3,3,1,0\n"
    write_sales(settings.landing, "2024-01-01", body)
    read = read_period(settings.landing, "2024-01-01")
    assert read.rows["source_row"].tolist() == [2, 4]
    assert read.issues[["source_row", "reason"]].values.tolist() == [[3, "invalid_encoding"]]


@pytest.mark.parametrize(
    ("body", "rule", "row"),
    [
        ("", "empty_file", None),
        (HEADER, "empty_file", 1),
        ("date,store,item_id,sales\n2024-01-01,S1,I1,3\n", "missing_columns", 1),
        ("date,store_id,store_id,item_id,sales\n2024-01-01,S1,S1,I1,3\n", "duplicate_column", 1),
        (b"\xff\xfe\x00d\x00a\x00t\x00e", "invalid_encoding", 1),
    ],
)
def test_unreadable_files_get_a_clear_error_naming_file_row_and_rule(settings, body, rule, row):
    path = write_sales(settings.landing, "2024-01-01", body)
    before = digest(path)
    with pytest.raises(ContractError) as info:
        read_sales_file(path, settings.landing)
    assert info.value.rule == rule
    assert info.value.row == row
    assert "sales/2024-01-01.csv" in str(info.value) and rule in str(info.value)
    # read_period never raises: the whole file becomes one quarantine entry, and the file is untouched.
    read = read_period(settings.landing, "2024-01-01")
    assert read.rows.empty
    assert read.issues["reason"].tolist() == [rule]
    assert read.issues["source_file"].tolist() == ["sales/2024-01-01.csv"]
    assert digest(path) == before


def test_unterminated_quote_is_quarantined_with_everything_it_swallowed(settings):
    path = write_sales(settings.landing, "2024-01-01", HEADER + '2024-01-01,"S1,I1,3,1,0\n2024-01-01,S2,I1,3,1,0\n')
    before = digest(path)
    read = read_period(settings.landing, "2024-01-01")
    # The open quote runs to the end of the file: one malformed record from line 2, its text kept whole.
    assert read.rows.empty
    assert read.issues[["source_row", "reason"]].values.tolist() == [[2, "malformed_row"]]
    assert '"S1,I1,3,1,0\n2024-01-01,S2,I1,3,1,0' in read.issues["detail"].iloc[0]
    assert digest(path) == before


def test_parquet_sales_files_are_read_as_text(settings):
    path = settings.landing / "sales" / "2024-01-01.parquet"
    pd.DataFrame(
        {
            "date": pd.to_datetime(["2024-01-01"] * 2),
            "store_id": ["S1", "S2"],
            "item_id": ["I1", "I1"],
            "sales": [3.0, 4.5],
        }
    ).to_parquet(path)
    read = read_sales_file(path, settings.landing)
    assert read.rows["date"].tolist() == ["2024-01-01", "2024-01-01"]
    assert read.rows["sales"].tolist() == ["3", "4.5"]
    assert read.rows["source_row"].tolist() == [2, 3]


def test_raw_frame_round_trip_keeps_unreadable_lines(settings):
    write_sales(settings.landing, "2024-01-01", HEADER + "2024-01-01,S1,I1,3,1,0\nbroken\n")
    read = read_period(settings.landing, "2024-01-01")
    frame = raw_frame(read)
    assert len(frame) == 2 and frame["read_error"].tolist() == ["", "malformed_row"]
    back = split_raw(frame, "2024-01-01")
    assert len(back.rows) == 1 and back.issues["reason"].tolist() == ["malformed_row"]


def test_scan_sorts_out_names_links_and_files_in_progress(settings, tmp_path):
    landing = settings.landing
    ok = write_sales(landing, "2024-01-08", HEADER + "2024-01-08,S1,I1,1,1,0\n")
    write_sales(landing, "not-a-date", HEADER)
    write_sales(landing, "2024-02-30", HEADER)
    write_sales(landing, "2024-01-15", HEADER, suffix=".xlsx")
    write_sales(landing, "2024-01-22", HEADER, suffix=".csv.part")
    write_sales(landing, "2024-01-29", HEADER + "2024-01-29,S1,I1,1,1,0\n", age_seconds=0)  # just written
    outside = tmp_path / "secret.csv"
    outside.write_text(HEADER)
    os.symlink(outside, landing / "sales" / "2024-02-05.csv")
    write_sales(landing, "2024-03-04", HEADER)
    write_sales(landing, "2024-03-04", HEADER, suffix=".parquet")

    first = scan_sales_dir(landing, settle_seconds=5.0)
    assert first.ready == []  # nothing is taken on the first sight of it
    scan = scan_sales_dir(landing, settle_seconds=5.0, previous=first.seen)
    assert [f.key for f in scan.ready] == ["2024-01-08"]
    assert scan.ready[0].sha256 == digest(ok)
    rules = {e.file: e.rule for e in scan.rejected}
    assert rules == {
        "sales/not-a-date.csv": "file_name_not_a_date",
        "sales/2024-02-30.csv": "file_name_not_a_date",
        "sales/2024-01-15.xlsx": "unsupported_format",
        "sales/2024-02-05.csv": "path_escape",
        "sales/2024-03-04": "duplicate_period",
    }
    assert sorted(p.split(":")[0] for p in scan.pending) == ["sales/2024-01-22.csv.part", "sales/2024-01-29.csv"]


def test_partition_keys_cannot_escape_the_landing_zone(settings):
    with pytest.raises(ContractError) as info:
        sales_file_for_key(settings.landing, "../../etc/passwd")
    assert info.value.rule == "file_name_not_a_date"
    read = read_period(settings.landing, "../../etc/passwd")
    assert read.issues["reason"].tolist() == ["file_name_not_a_date"]


def test_frequency_and_period_bounds():
    assert infer_frequency(["2024-01-01", "2024-01-02", "2024-01-04"]) == "D"
    assert infer_frequency(["2024-01-05", "2024-01-12", "2024-01-19"]) == "W"
    assert infer_frequency(["2024-01-01", "2024-02-01", "2024-03-01"]) == "M"
    with pytest.raises(ValueError, match="BI_PIPELINE_FREQUENCY"):
        infer_frequency(["2024-01-01", "2024-01-04", "2024-01-07"])
    assert period_bounds(date(2024, 1, 5), "W") == (date(2024, 1, 5), date(2024, 1, 12))
    assert period_bounds(date(2024, 12, 1), "M") == (date(2024, 12, 1), date(2025, 1, 1))
    assert period_bounds(date(2024, 2, 29), "D") == (date(2024, 2, 29), date(2024, 3, 1))


def test_master_files_are_optional_and_checked(settings):
    assert read_master(settings.landing, "stores") is None
    (settings.landing / "stores.csv").write_text("store_id,region\nS1,north\n")
    assert read_master(settings.landing, "stores")["region"].tolist() == ["north"]
    (settings.landing / "items.csv").write_text("sku,desc\nI1,x\n")
    with pytest.raises(ContractError, match="items.csv.*missing_columns"):
        read_master(settings.landing, "items")
    (settings.landing / "calendar.csv").write_bytes(b"date,holiday\n2024-01-01,1\n2024-01-02,\xff\n")
    with pytest.raises(ContractError) as info:
        read_master(settings.landing, "calendar")
    assert (info.value.rule, info.value.row) == ("invalid_encoding", 3)
