"""What bad input gets: one named case per hostile or odd input, each with its exact outcome (rows kept, the
quarantine reason and source row, or the per-file error naming the file), and the landed file left as it was."""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bi_pipeline.contract import ContractError, infer_grid, scan_sales_dir
from bi_pipeline.importer import import_csv
from bi_pipeline.ingest import IngestError, ingest_landing
from bi_pipeline.integration import integrate
from bi_pipeline.privacy import mask_frame, redact_uri, truncate
from bi_pipeline.quality import clean_period
from bi_pipeline.readers import Limits, read_master, read_period
from bi_pipeline.state import StateError, load_manifest, load_removals, sweep_temp_files, temp_path
from bi_pipeline_tests.conftest import write_sales

HEADER = "date,store_id,item_id,sales,price,promo"
ROW = "2024-01-01,S1,I{},{},1.5,0"
KEY = "2024-01-01"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def land(settings, body: str | bytes, key: str = KEY, suffix: str = ".csv") -> Path:
    return write_sales(settings.landing, key, body, suffix=suffix)


def outcome(settings, key: str = KEY, limits: Limits | None = None) -> tuple[list, list]:
    """(kept rows as [item_id, sales, source_row], quarantine as [source_row, reason])."""
    read = read_period(settings.landing, key, limits)
    rows = read.rows[["item_id", "sales", "source_row"]].values.tolist()
    return rows, read.issues[["source_row", "reason"]].values.tolist()


def file_error(settings, key: str = KEY, limits: Limits | None = None) -> tuple[str, str, int]:
    """The per-file error: (file, rule, row) of the single quarantine entry; no row is kept."""
    read = read_period(settings.landing, key, limits)
    assert read.rows.empty and len(read.issues) == 1
    issue = read.issues.iloc[0]
    return issue["source_file"], issue["reason"], int(issue["source_row"])


def parquet(settings, table: pa.Table, key: str = KEY, suffix: str = ".parquet") -> Path:
    path = settings.landing / "sales" / f"{key}{suffix}"
    pq.write_table(table, path)
    return path


def base_columns(n: int = 2) -> dict:
    return {
        "date": [KEY] * n,
        "store_id": ["S1"] * n,
        "item_id": [f"I{i}" for i in range(n)],
        "sales": [str(i + 1) for i in range(n)],
    }


# --- line endings, quoting, line numbers ---------------------------------------------------------------------------


def test_cr_only_line_endings_of_old_spreadsheet_exports_read_every_row(settings):
    path = land(settings, "\r".join([HEADER, ROW.format(1, 3), ROW.format(2, 4)]) + "\r")
    assert outcome(settings) == ([["I1", "3", 2], ["I2", "4", 3]], [])
    assert digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_mixed_line_endings_and_blank_lines_keep_exact_line_numbers(settings):
    land(settings, HEADER + "\r\n" + ROW.format(1, 3) + "\r\n\r\n" + ROW.format(2, 4) + "\r" + ROW.format(3, 5) + "\n")
    assert outcome(settings)[0] == [["I1", "3", 2], ["I2", "4", 4], ["I3", "5", 5]]


def test_a_stray_cr_inside_a_line_quarantines_both_halves_with_their_lines(settings):
    land(settings, "\n".join([HEADER, "2024-01-01,S1,I1,3\r,1.5,0", ROW.format(2, 4)]) + "\n")
    assert outcome(settings) == ([["I2", "4", 4]], [[2, "malformed_row"], [3, "malformed_row"]])


def test_row_numbers_stay_exact_after_a_quoted_line_break(settings):
    body = "\n".join([HEADER, '2024-01-01,S1,I1,3,1.5,0', '2024-01-01,"S\n1",I2,4,1.5,0', ROW.format(3, 5), "oops"])
    land(settings, body + "\n")
    rows, issues = outcome(settings)
    assert rows == [["I1", "3", 2], ["I2", "4", 3], ["I3", "5", 5]]
    assert issues == [[6, "malformed_row"]]


def test_quoted_fields_read_as_their_values(settings):
    land(settings, HEADER + '\n"2024-01-01","S1","I1","3","1.5","0"\n')
    read = read_period(settings.landing, KEY)
    assert read.rows[["store_id", "item_id", "sales"]].values.tolist() == [["S1", "I1", "3"]]


def test_an_unterminated_quote_is_one_malformed_record_keeping_what_it_swallowed(settings):
    land(settings, HEADER + '\n2024-01-01,"S1,I1,3,1.5,0\n' + ROW.format(2, 4) + "\n")
    read = read_period(settings.landing, KEY)
    assert read.rows.empty
    assert read.issues[["source_row", "reason"]].values.tolist() == [[2, "malformed_row"]]
    assert ROW.format(2, 4) in read.issues["detail"].iloc[0]


def test_a_byte_order_mark_is_not_part_of_the_first_column_name(settings):
    land(settings, b"\xef\xbb\xbf" + (HEADER + "\n" + ROW.format(1, 3) + "\n").encode())
    assert outcome(settings) == ([["I1", "3", 2]], [])


def test_a_line_that_is_not_utf8_is_quarantined_and_the_rest_read(settings):
    land(settings, (HEADER + "\n").encode() + b"2024-01-01,S1,I\xff1,3,1.5,0\n" + (ROW.format(2, 4) + "\n").encode())
    assert outcome(settings) == ([["I2", "4", 3]], [[2, "invalid_encoding"]])


def test_a_line_with_the_wrong_number_of_fields_is_quarantined_with_its_text(settings):
    land(settings, "\n".join([HEADER, "2024-01-01,S1,I1", ROW.format(2, 4)]) + "\n")
    read = read_period(settings.landing, KEY)
    assert read.issues[["source_row", "reason"]].values.tolist() == [[2, "malformed_row"]]
    assert read.issues["detail"].iloc[0] == "expected 6 fields, found 3: 2024-01-01,S1,I1"


# --- sizes and limits ----------------------------------------------------------------------------------------------


def test_a_header_field_over_128_kib_is_read(settings):
    long_name = "x" * (200 << 10)
    land(settings, f"{HEADER},{long_name}\n{ROW.format(1, 3)},v\n")
    read = read_period(settings.landing, KEY)
    assert read.rows[long_name].tolist() == ["v"] and read.issues.empty


def test_a_header_over_the_line_limit_is_a_file_error(settings):
    land(settings, f"{HEADER},{'x' * 300}\n{ROW.format(1, 3)},v\n")
    assert file_error(settings, limits=Limits(max_line_bytes=256)) == ("sales/2024-01-01.csv", "header_too_long", 1)


def test_a_line_over_the_line_limit_is_quarantined_and_the_rest_read(settings):
    land(settings, "\n".join([HEADER, ROW.format(1, 3) + "9" * 300, ROW.format(2, 4)]) + "\n")
    assert outcome(settings, limits=Limits(max_line_bytes=256)) == ([["I2", "4", 3]], [[2, "line_too_long"]])


def test_a_line_over_16_mib_does_not_reject_the_file(settings):
    huge = "2024-01-01,S1,I1,3,1.5," + "0" * (17 << 20)
    land(settings, "\n".join([HEADER, huge, ROW.format(2, 4)]) + "\n")
    rows, issues = outcome(settings)
    assert rows == [["I2", "4", 3]] and issues == [[2, "line_too_long"]]
    rows, issues = outcome(settings, limits=Limits(max_line_bytes=32 << 20))
    assert [r[2] for r in rows] == [2, 3] and issues == []


def test_a_file_over_the_byte_limit_is_rejected_before_reading(settings):
    land(settings, HEADER + "\n" + ROW.format(1, 3) + "\n")
    assert file_error(settings, limits=Limits(max_file_bytes=20)) == ("sales/2024-01-01.csv", "file_too_large", 0)


def test_a_csv_over_the_row_limit_is_rejected_by_name(settings):
    land(settings, "\n".join([HEADER, *(ROW.format(i, 1) for i in range(5))]) + "\n")
    assert file_error(settings, limits=Limits(max_rows=4)) == ("sales/2024-01-01.csv", "too_many_rows", 0)


def test_a_file_over_the_column_limit_is_rejected_by_name(settings):
    land(settings, HEADER + ",a,b\n" + ROW.format(1, 3) + ",1,2\n")
    assert file_error(settings, limits=Limits(max_columns=7)) == ("sales/2024-01-01.csv", "too_many_columns", 1)


# --- Parquet -------------------------------------------------------------------------------------------------------


def test_parquet_list_columns_are_rejected_by_name(settings):
    parquet(settings, pa.table({**base_columns(), "tags": [[1, 2], [3]]}))
    file, rule, _ = file_error(settings)
    assert (file, rule) == ("sales/2024-01-01.parquet", "unsupported_column_type")
    assert "'tags'" in read_period(settings.landing, KEY).issues["detail"].iloc[0]


def test_parquet_struct_columns_are_rejected_by_name(settings):
    parquet(settings, pa.table({**base_columns(), "meta": [{"a": 1}, {"a": 2}]}))
    assert file_error(settings)[1] == "unsupported_column_type"


def test_parquet_binary_columns_holding_text_are_read(settings):
    columns = base_columns()
    columns["store_id"] = pa.array([b"S1", b"S2"], type=pa.binary())
    parquet(settings, pa.table(columns))
    assert read_period(settings.landing, KEY).rows["store_id"].tolist() == ["S1", "S2"]


def test_parquet_binary_columns_that_are_not_text_are_rejected(settings):
    columns = base_columns()
    columns["store_id"] = pa.array([b"\xff\xfe", b"S2"], type=pa.binary())
    parquet(settings, pa.table(columns))
    assert file_error(settings)[1] == "invalid_encoding"


def test_a_corrupt_parquet_file_is_rejected_by_name(settings):
    land(settings, b"PAR1 this is not parquet PAR1", suffix=".parquet")
    assert file_error(settings) == ("sales/2024-01-01.parquet", "malformed_parquet", 0)


def test_a_parquet_file_that_decompresses_past_the_limit_is_rejected_from_its_metadata(settings):
    columns = base_columns(2000)
    columns["sales"] = ["7" * 100] * 2000  # compresses to almost nothing
    path = parquet(settings, pa.table(columns))
    assert path.stat().st_size < 20_000
    assert file_error(settings, limits=Limits(max_parquet_bytes=100_000))[1] == "parquet_too_large"


def test_a_parquet_file_over_the_row_limit_is_rejected_from_its_metadata(settings):
    parquet(settings, pa.table(base_columns(10)))
    assert file_error(settings, limits=Limits(max_rows=5))[1] == "too_many_rows"


# --- names, kinds of file, completeness ----------------------------------------------------------------------------


def test_an_upper_case_suffix_is_scanned_and_read_alike(settings):
    land(settings, HEADER + "\n" + ROW.format(1, 3) + "\n", suffix=".CSV")
    scan = scan_sales_dir(settings.landing, 0, assume_complete=True)
    assert [f.relpath for f in scan.ready] == ["sales/2024-01-01.CSV"]
    assert outcome(settings) == ([["I1", "3", 2]], [])


def test_a_csv_and_a_parquet_for_one_period_are_rejected_together(settings):
    land(settings, HEADER + "\n" + ROW.format(1, 3) + "\n", suffix=".CSV")
    parquet(settings, pa.table(base_columns()))
    scan = scan_sales_dir(settings.landing, 0, assume_complete=True)
    assert [(e.file, e.rule) for e in scan.rejected] == [("sales/2024-01-01", "duplicate_period")]
    assert file_error(settings)[1] == "duplicate_period"


@pytest.mark.parametrize("suffix", [".csv.gz", ".zip"])
def test_compressed_files_are_rejected_by_name_with_what_to_do(settings, suffix):
    path = settings.landing / "sales" / f"{KEY}{suffix}"
    path.write_bytes(gzip.compress((HEADER + "\n").encode()))
    (error,) = scan_sales_dir(settings.landing, 0, assume_complete=True).rejected
    assert (error.file, error.rule) == (f"sales/{KEY}{suffix}", "unsupported_format")
    assert "decompress" in error.message


def test_a_fifo_is_never_opened_for_reading(settings):
    os.mkfifo(settings.landing / "sales" / f"{KEY}.csv")
    done = threading.Event()
    result = {}

    def read() -> None:
        result["scan"] = scan_sales_dir(settings.landing, 0, assume_complete=True)
        result["read"] = read_period(settings.landing, KEY)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(10), "reading a FIFO blocked"
    assert [e.rule for e in result["scan"].rejected] == ["not_a_regular_file"]
    assert result["read"].issues["reason"].tolist() == ["not_a_regular_file"]


def test_a_folder_named_like_a_sales_file_is_rejected(settings):
    (settings.landing / "sales" / f"{KEY}.csv").mkdir()
    (error,) = scan_sales_dir(settings.landing, 0, assume_complete=True).rejected
    assert error.rule == "not_a_regular_file" and "folder" in error.message


def test_links_are_followed_only_to_regular_files_inside_the_landing_zone(settings, tmp_path):
    inside = settings.landing / "archive.csv"
    inside.write_text(HEADER + "\n" + ROW.format(1, 3) + "\n")
    (settings.landing / "sales" / "2024-01-01.csv").symlink_to(inside)
    (tmp_path / "secret.csv").write_text(HEADER + "\n")
    (settings.landing / "sales" / "2024-01-02.csv").symlink_to(tmp_path / "secret.csv")
    (settings.landing / "sales" / "2024-01-03.csv").symlink_to(settings.landing / "gone.csv")
    scan = scan_sales_dir(settings.landing, 0, assume_complete=True)
    assert [f.key for f in scan.ready] == ["2024-01-01"]
    assert {e.file: e.rule for e in scan.rejected} == {
        "sales/2024-01-02.csv": "path_escape",
        "sales/2024-01-03.csv": "unreadable",
    }


def test_a_csv_without_a_final_line_break_waits(settings):
    land(settings, HEADER + "\n2024-01-01,S1,I1,12")
    first = scan_sales_dir(settings.landing, 0)
    second = scan_sales_dir(settings.landing, 0, previous=first.seen)
    assert second.ready == [] and second.pending == [
        "sales/2024-01-01.csv: does not end with a line break (still being written?)"
    ]


def test_a_parquet_file_without_its_footer_waits(settings):
    path = parquet(settings, pa.table(base_columns()))
    path.write_bytes(path.read_bytes()[:-8])
    first = scan_sales_dir(settings.landing, 0)
    second = scan_sales_dir(settings.landing, 0, previous=first.seen)
    assert second.ready == [] and "no Parquet footer" in second.pending[0]


def test_temporary_names_wait_for_their_rename(settings):
    write_sales(settings.landing, KEY, HEADER + "\n", suffix=".csv.part")
    write_sales(settings.landing, ".2024-01-02", HEADER + "\n", suffix=".csv")
    scan = scan_sales_dir(settings.landing, 0, assume_complete=True)
    assert scan.ready == [] and len(scan.pending) == 2


# --- the period grid -----------------------------------------------------------------------------------------------


def test_a_monthly_file_not_on_the_first_of_the_month_is_rejected_with_its_neighbours(settings):
    for key in ("2024-01-01", "2024-02-01", "2024-03-01", "2024-02-29"):
        land(settings, f"{HEADER}\n{key},S1,I1,100,1,0\n", key=key)
    scan = scan_sales_dir(settings.landing, 0, assume_complete=True)
    assert [f.key for f in scan.ready] == ["2024-01-01", "2024-02-01", "2024-03-01"]
    (error,) = scan.rejected
    assert (error.file, error.rule) == ("sales/2024-02-29.csv", "off_grid_date")
    assert "expected 2024-02-01 or 2024-03-01" in error.message


def test_a_weekly_file_dated_mid_week_is_rejected_with_its_neighbours(settings):
    for key in ("2024-01-01", "2024-01-08", "2024-01-15", "2024-01-10"):
        land(settings, f"{HEADER}\n{key},S1,I1,100,1,0\n", key=key)
    (error,) = scan_sales_dir(settings.landing, 0, assume_complete=True).rejected
    assert (error.file, error.rule) == ("sales/2024-01-10.csv", "off_grid_date")
    assert "weekly periods start on Mon" in error.message and "expected 2024-01-08 or 2024-01-15" in error.message


def test_the_week_start_setting_decides_the_grid():
    assert infer_grid(["2024-01-03", "2024-01-10"], "W", "mon").on_grid(pd.Timestamp("2024-01-08").date())
    assert infer_grid(["2024-01-03", "2024-01-10", "2024-01-08"]).weekday == 2  # Wednesday, the commonest


def test_integration_refuses_two_partitions_in_one_period_naming_both_files(settings):
    frames = []
    for key in ("2024-01-08", "2024-01-10"):
        frames.append(
            pd.DataFrame(
                {
                    "date": pd.to_datetime([key]),
                    "store_id": ["S1"],
                    "item_id": ["I1"],
                    "sales": [100.0],
                    "price": [1.0],
                    "promo": [0.0],
                    "source_file": [f"sales/{key}.csv"],
                }
            )
        )
    with pytest.raises(ValueError) as info:
        integrate(frames, "W", ["2024-01-08", "2024-01-10"], week_start="mon")
    assert "sales/2024-01-10.csv falls in the period of 2024-01-08 (sales/2024-01-08.csv)" in str(info.value)


# --- a hostile file fails itself, not the run ----------------------------------------------------------------------


def test_an_unexpected_reader_failure_is_that_files_error_only(settings, monkeypatch):
    import bi_pipeline.readers as readers

    land(settings, HEADER + "\n" + ROW.format(1, 3) + "\n")
    land(settings, HEADER + "\n" + ROW.format(2, 4) + "\n", key="2024-01-02")
    real = readers._read_csv

    def explode(handle, size, rel, period, limits):
        if period == KEY:
            raise RecursionError("a parser bug")
        return real(handle, size, rel, period, limits)

    monkeypatch.setattr(readers, "_read_csv", explode)
    assert file_error(settings) == ("sales/2024-01-01.csv", "unreadable", 0)
    assert outcome(settings, "2024-01-02") == ([["I2", "4", 2]], [])


def test_a_master_file_that_is_a_fifo_is_an_error_naming_it(settings):
    os.mkfifo(settings.landing / "stores.csv")
    with pytest.raises(ContractError) as info:
        read_master(settings.landing, "stores")
    assert (info.value.file, info.value.rule) == ("stores.csv", "not_a_regular_file")


def test_a_master_file_with_cr_only_line_endings_reads(settings):
    (settings.landing / "items.csv").write_bytes(b"item_id,category\rI1,food\rI2,toys\r")
    assert read_master(settings.landing, "items")["category"].tolist() == ["food", "toys"]


# --- grain and types -----------------------------------------------------------------------------------------------


def test_a_transactions_grain_sums_lines_instead_of_quarantining_them(settings):
    land(settings, "\n".join([HEADER, ROW.format(1, 3), ROW.format(1, 3), ROW.format(1, 4)]) + "\n")
    read = read_period(settings.landing, KEY)
    rows_grain = clean_period(read.rows, KEY, "D", settings, issues=read.issues)
    assert rows_grain.reason_counts == {"duplicate_exact": 1, "duplicate_conflict": 1}
    transactions = clean_period(read.rows, KEY, "D", replace(settings, sales_grain="transactions"), issues=read.issues)
    assert transactions.reason_counts == {} and transactions.clean["sales"].sum() == 10
    view = integrate([transactions.clean], "D", [KEY])
    assert view["sales"].tolist() == [10.0]


def test_boolean_words_are_flags_in_sales_columns_master_data_and_the_calendar(settings):
    land(settings, f"{HEADER},on_display\n{ROW.format(1, 3)},TRUE\n{ROW.format(2, 4)},no\n")
    read = read_period(settings.landing, KEY)
    clean = clean_period(read.rows, KEY, "D", settings).clean
    assert clean["on_display"].tolist() == [1.0, 0.0]
    stores = pd.DataFrame({"store_id": ["S1"], "outlet": ["Yes"], "source_row": [2]})
    calendar = pd.DataFrame({"date": [KEY], "IsHoliday": ["FALSE"], "source_row": [2]})
    view = integrate([clean], "D", [KEY], stores=stores, calendar=calendar)
    assert view["outlet"].tolist() == [1.0, 1.0] and view["IsHoliday"].tolist() == [0.0, 0.0]
    assert view["on_display"].tolist() == [1.0, 0.0]


def test_import_csv_aggregates_a_transactions_export_to_the_grain(settings, tmp_path):
    export = tmp_path / "invoices.csv"
    export.write_text(
        "InvoiceDate,Country,StockCode,Quantity,UnitPrice\n"
        "2024-01-01 09:00,UK,A,6,2.0\n"
        "2024-01-01 11:30,UK,A,2,4.0\n"
        "2024-01-01 12:00,UK,B,1,1.0\n"
        "2024-01-01 13:00,UK,A,-1,2.0\n"
        "2024-01-02 10:00,UK,A,3,2.0\n"
        "2024-01-02 10:05,UK,A,lots,2.0\n"
    )
    result = import_csv(
        export, settings.landing, "InvoiceDate", "Country", "Quantity", "StockCode", price_col="UnitPrice"
    )
    assert (result["lines"], result["rows"], result["merged_lines"]) == (6, 3, 2)
    assert result["rejected_by_rule"] == {"sales_not_numeric": 1}
    day = (settings.landing / "sales" / "2024-01-01.csv").read_text().splitlines()
    # 6 + 2 - 1 units of A; its price weighted by units sold at it: (6*2 + 2*4) / 8.
    assert day == ["date,store_id,item_id,sales,price", "2024-01-01,UK,A,7,2.5", "2024-01-01,UK,B,1,1.0"]
    assert "lots" in (settings.landing / "import_rejects.csv").read_text()


# --- state, secrets, PII -------------------------------------------------------------------------------------------


def test_a_corrupt_state_file_is_an_error_naming_it_and_its_rebuild(settings):
    settings.manifest_path.parent.mkdir(parents=True)
    settings.manifest_path.write_text('{"sales/2024-01-01.csv": "ab')
    with pytest.raises(StateError) as info:
        load_manifest(settings.manifest_path)
    assert str(settings.manifest_path) in str(info.value) and "bi-pipeline state rebuild" in str(info.value)


def test_a_corrupt_removal_record_names_its_line(settings):
    settings.removals_path.parent.mkdir(parents=True)
    settings.removals_path.write_text('{"period": "2024-01-01"}\nnot json\n')
    with pytest.raises(StateError, match="line 2 is not valid JSON"):
        load_removals(settings.removals_path)


def test_orphan_temporary_files_are_removed_at_start_but_not_fresh_ones(tmp_path):
    old, fresh = temp_path(tmp_path / "a.parquet"), temp_path(tmp_path / "b.parquet")
    old.write_text("x")
    fresh.write_text("y")
    os.utime(old, (old.stat().st_mtime - 3600,) * 2)
    assert sweep_temp_files(tmp_path) == [old]
    assert not old.exists() and fresh.exists()


def test_credentials_never_appear_in_what_is_shown():
    assert redact_uri("postgresql://bi:s3cret@db:5432/mlflow") == "postgresql://***@db:5432/mlflow"
    assert redact_uri("http://host/x?user=a&password=hunter2") == "http://host/x?user=a&password=***"


def test_pii_columns_are_masked_and_raw_text_truncated():
    frame = pd.DataFrame({"item_id": ["I1", "I2"], "Description": ["Anna's birthday cake", ""]})
    assert mask_frame(frame, ("description",))["Description"].tolist() == ["***", ""]
    assert truncate("x" * 100) == "x" * 80 + "… (20 more characters)"


def test_backtest_input_stops_at_the_bad_row_gate_naming_the_file(settings):
    land(settings, "\n".join([HEADER, ROW.format(1, "abc"), ROW.format(2, 4)]) + "\n")
    with pytest.raises(IngestError) as info:
        ingest_landing(settings.landing, settings)
    assert "sales/2024-01-01.csv: 1 of 2 rows quarantined (50.0% > 5.0%)" in str(info.value)


def test_everything_landed_is_accounted_for(settings):
    """Rows kept plus rows quarantined equal the data lines of the file, whatever is wrong with them."""
    lines = [ROW.format(i, i) for i in range(50)]
    lines[3], lines[10], lines[20] = "broken", "2024-01-01,S1,I3,x,1,0", ROW.format(5, 5)
    land(settings, "\n".join([HEADER, *lines]) + "\n")
    read = read_period(settings.landing, KEY)
    result = clean_period(read.rows, KEY, "D", settings, issues=read.issues)
    assert len(result.clean) + len(result.quarantine) == 50
    kept = set(result.clean["source_row"]) | set(result.quarantine["source_row"])
    assert kept == set(np.arange(2, 52))


def test_a_true_false_holiday_column_reaches_the_model_and_unusable_columns_are_named(settings):
    from bi_pipeline.forecasting.features import fit_spec, unused_columns

    dates = pd.date_range("2024-01-01", periods=12, freq="W-MON")
    stores = [f"S{i}" for i in range(6)]
    clean = pd.DataFrame(
        {
            "date": np.repeat(dates, 6),
            "store_id": stores * 12,
            "item_id": "all",
            "sales": np.arange(72, dtype="float32"),
            "price": np.nan,
            "promo": 0.0,
        }
    )
    calendar = pd.DataFrame(
        {
            "date": dates.strftime("%Y-%m-%d"),
            "IsHoliday": ["FALSE", "TRUE", *["false"] * 10],
            "Temperature": [f"{t:.1f}" for t in np.linspace(3, 20, 12)],
            "source_row": np.arange(2, 14),
        }
    )
    master = pd.DataFrame({"store_id": stores, "manager": [f"manager {i}" for i in range(6)], "source_row": range(6)})
    view = integrate([clean], "W", list(dates.date), stores=master, calendar=calendar)
    spec = fit_spec(view, "W")
    assert spec.covariates == ["IsHoliday"]
    reasons = unused_columns(view, spec)
    assert set(reasons) == {"Temperature", "manager"}
    assert reasons["Temperature"].startswith("a continuous covariate")
    assert reasons["manager"].startswith("one value per store or item")


def test_the_home_is_created_private_to_its_user(tmp_path, monkeypatch):
    from bi_pipeline.config import Settings, prepare_dagster_home

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))
    settings = Settings(home=tmp_path / "new_home", landing=tmp_path / "landing")
    prepare_dagster_home(settings)
    assert settings.home.stat().st_mode & 0o777 == 0o700


def test_a_transaction_export_landed_as_rows_stops_at_the_gate_saying_what_it_is(settings):
    land(settings, "\n".join([HEADER, *(ROW.format(i % 2, i) for i in range(10))]) + "\n")
    with pytest.raises(IngestError) as info:
        ingest_landing(settings.landing, settings)
    message = str(info.value)
    expected = "sales/2024-01-01.csv: 8 of 10 rows quarantined (80.0% > 5.0%); rules broken: duplicate_conflict (8)"
    assert expected in message
    assert "BI_PIPELINE_SALES_GRAIN=transactions" in message
    summed = ingest_landing(settings.landing, replace(settings, sales_grain="transactions"))
    assert summed.history["sales"].sum() == sum(range(10)) and summed.quarantined == {}
