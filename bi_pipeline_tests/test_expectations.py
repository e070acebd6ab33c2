"""The GX suites and checks: exact counts, judged against the quarantine; the Data Docs offline and served."""

from __future__ import annotations

import queue
import re
import threading
import urllib.request
from dataclasses import replace
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from bi_pipeline.config import Settings
from bi_pipeline.defs.checks import QuarantineSummary, rules_check_result, sales_check_results
from bi_pipeline.defs.cleaning import quarantine_sample
from bi_pipeline.docs_site import OFFLINE_MARK, DocsNotBuilt, docs_url, serve_docs, site_dir
from bi_pipeline.expectations import (
    ExpectationOutcome,
    SuiteOutcome,
    Validator,
    key_repeats,
    sales_suite_spec,
    unexpected_rows,
    validation_frame,
)
from bi_pipeline.privacy import truncate
from bi_pipeline.quality import REASONS

DAY = "datetime64[D]"
EXTERNAL = re.compile(r"(src|href)\s*=\s*[\"']https?://|url\(\s*[\"']?https?://", re.I)


def test_key_repeats_flag_each_later_occurrence_of_a_key():
    period = np.array(["2024-01-01"] * 6, dtype=DAY)
    day = np.array(["2024-01-01", "2024-01-01", "2024-01-02", "2024-01-01", "NaT", "2024-01-01"], dtype=DAY)
    store = np.array([0, 0, 1, 0, 0, -1])
    item = np.array([0, 0, 1, 0, 0, 0])
    repeats = key_repeats(period, day, store, item)
    # First occurrence 0, each later one 1; NaN where a key part is missing.
    np.testing.assert_array_equal(repeats, [0.0, 1.0, 0.0, 1.0, np.nan, np.nan])
    # Codes too wide for one combined int64 key take the other path, with the same answer.
    wide = key_repeats(period, day, store * 10**9, item * 10**12)
    np.testing.assert_array_equal(wide, repeats)


def test_a_row_dated_into_another_period_is_not_a_repeat_of_that_periods_row():
    # The first file's second row is dated in the next period: that is date_outside_period, not a duplicate.
    period = np.array(["2024-01-01", "2024-01-01", "2024-01-08"], dtype=DAY)
    dates = np.array(["2024-01-01", "2024-01-08", "2024-01-08"], dtype=DAY)
    store, item = pd.Categorical(["S1", "S1", "S1"]), pd.Categorical(["I1", "I1", "I1"])
    frame = validation_frame(period, dates, store, item, np.ones(3), np.ones(3), "W")
    assert frame["key_repeat"].tolist() == [0.0, 0.0, 0.0]
    assert frame["period_offset"].tolist() == [0.0, 1.0, 0.0]


def test_the_transactions_grain_has_no_key_rule(tmp_path):
    rows = sales_suite_spec(Settings(home=tmp_path, landing=tmp_path))
    transactions = sales_suite_spec(Settings(home=tmp_path, landing=tmp_path, sales_grain="transactions"))
    key_rule = ("ExpectColumnValuesToBeBetween", {"column": "key_repeat", "min_value": 0, "max_value": 0})
    assert key_rule in rows
    assert key_rule not in transactions
    assert [e for e in rows if e != key_rule] == transactions
    assert not any(kwargs.get("column") == "key_repeat" for _, kwargs in transactions)


def test_unexpected_rows_names_the_rows_each_expectation_rejects():
    frame = pd.DataFrame(
        {
            "sales": [1.0, -2.0, np.nan, 4.0],
            "key_repeat": [0.0, 1.0, np.nan, 0.0],
            "store_in_master": pd.array([True, False, None, True], dtype="boolean"),
        }
    )
    spec = [
        ("ExpectColumnValuesToNotBeNull", {"column": "sales"}),
        ("ExpectColumnValuesToBeBetween", {"column": "sales", "min_value": 0}),
        ("ExpectColumnValuesToBeBetween", {"column": "key_repeat", "min_value": 0, "max_value": 0}),
        ("ExpectColumnValuesToBeInSet", {"column": "store_in_master", "value_set": [True]}),
        ("ExpectTableColumnsToMatchSet", {"column_set": ["sales"], "exact_match": True}),
    ]
    masks = {k: v.tolist() for k, v in unexpected_rows(frame, spec).items()}
    assert masks == {
        "expect_column_values_to_not_be_null(sales)": [False, False, True, False],
        "expect_column_values_to_be_between(sales)": [False, True, False, False],
        "expect_column_values_to_be_between(key_repeat)": [False, True, False, False],
        "expect_column_values_to_be_in_set(store_in_master)": [False, True, False, False],
    }
    only = unexpected_rows(frame, spec, {"expect_column_values_to_be_between(sales)"})
    assert list(only) == ["expect_column_values_to_be_between(sales)"]


# --- the landed-rows check against the quarantine (GX runs) ----------------------------------------------------


@pytest.fixture(scope="module")
def gx_run(tmp_path_factory) -> tuple[Settings, Validator]:
    home = tmp_path_factory.mktemp("gx_home")
    settings = Settings(home=home, landing=home / "landing", settle_seconds=0, docs_port=4321)
    return settings, Validator(settings.gx_dir)


def _landed() -> tuple[pd.DataFrame, np.ndarray]:
    """Two weekly files; the first holds a negative sale (row 1)."""
    period = np.array(["2024-01-01", "2024-01-01", "2024-01-08"], dtype=DAY)
    store, item = pd.Categorical(["S1", "S1", "S1"]), pd.Categorical(["I1", "I2", "I1"])
    frame = validation_frame(
        period, period.copy(), store, item, np.array([3.0, -1.0, 2.0]), np.array([1.5, 1.5, 1.5]), "W"
    )
    files = np.array(["sales/2024-01-01.csv", "sales/2024-01-01.csv", "sales/2024-01-08.csv"], dtype=object)
    return frame, files


def _quarantine(rows: list[tuple[str, int, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source_file": [r[0] for r in rows],
            "source_row": [r[1] for r in rows],
            "reason": [r[2] for r in rows],
            "detail": [REASONS.get(r[2], "") for r in rows],
        }
    )


def test_landed_check_passes_when_every_defect_was_quarantined(gx_run):
    settings, validator = gx_run
    landed, files = _landed()
    kept_rows = np.array([True, False, True])
    kept = landed[kept_rows].reset_index(drop=True)
    quarantine = _quarantine([("sales/2024-01-01.csv", 3, "sales_negative")])
    landed_check, gate = sales_check_results(validator, landed, kept, lambda: files[kept_rows], quarantine, settings)

    assert landed_check.passed and landed_check.severity == dg.AssetCheckSeverity.WARN
    assert landed_check.description == (
        "every defect GX found on the 3 landed rows was quarantined with a reason\n"
        "GX unexpected on the landed rows: expect_column_values_to_be_between(sales): 1\n"
        "quarantined 1 rows: sales_negative (1)\n"
        "files with defects (1): sales/2024-01-01.csv"
    )
    metadata = landed_check.metadata
    assert metadata["unexpected_by_expectation"].value == {"expect_column_values_to_be_between(sales)": 1}
    assert metadata["by_reason"].value == {"sales_negative": 1}
    assert metadata["defect_files"].value == {"sales/2024-01-01.csv": 1}
    assert metadata["kept_unexpected"].value == {}
    assert gate.passed and gate.description == "all 12 expectations met on 2 rows"
    # The link is the page served by `bi-pipeline docs`; the path is the same page on disk.
    page = Path(metadata["data_docs_path"].value)
    assert page.is_file()
    assert metadata["data_docs"].value == (
        f"http://127.0.0.1:4321/{page.relative_to(site_dir(settings.gx_dir)).as_posix()}"
    )


def test_landed_check_fails_on_a_defect_the_rules_kept(gx_run):
    settings, validator = gx_run
    landed, files = _landed()
    # The rules let the negative sale through: nothing quarantined.
    landed_check, gate = sales_check_results(validator, landed, landed.copy(), lambda: files, _quarantine([]), settings)

    assert not landed_check.passed and landed_check.severity == dg.AssetCheckSeverity.WARN
    assert landed_check.description == (
        "GX found defects on the landed rows that the rules did not quarantine: "
        "expect_column_values_to_be_between(sales): 1 kept (in sales/2024-01-01.csv)\n"
        "GX unexpected on the landed rows: expect_column_values_to_be_between(sales): 1"
    )
    assert landed_check.metadata["kept_unexpected"].value == {"expect_column_values_to_be_between(sales)": 1}
    # The blocking gate names the file whose kept rows fail, not the first files of the run.
    assert not gate.passed and gate.severity == dg.AssetCheckSeverity.ERROR
    assert gate.description == "sales/2024-01-01.csv: expect_column_values_to_be_between(sales): 1 unexpected"

    # A big run (counted by the rules) fails the same way.
    big, _ = sales_check_results(
        validator, landed, landed.copy(), lambda: files, _quarantine([]), replace(settings, gx_landed_max_rows=0)
    )
    assert not big.passed
    assert big.description == (
        "3 landed rows > BI_PIPELINE_GX_LANDED_MAX_ROWS=0: counted by the rules, not GX; nothing quarantined\n"
        "defects the rules did not quarantine: expect_column_values_to_be_between(sales): 1 kept "
        "(in sales/2024-01-01.csv)"
    )


def test_the_rules_check_passes_when_everything_was_quarantined_with_a_reason():
    ok = SuiteOutcome("clean_sales", True, 10, [ExpectationOutcome("expect_x", "sales", True, 0, 0.0)])
    quarantine = QuarantineSummary.of(
        _quarantine([("sales/2024-01-08.csv", 2, "sales_negative"), ("sales/2024-01-01.csv", 5, "missing_key")])
    )
    result = rules_check_result("landed_rows_expectations", quarantine, 12, 5, ok, [])
    assert result.passed
    assert result.description == (
        "12 landed rows > BI_PIPELINE_GX_LANDED_MAX_ROWS=5: counted by the rules, not GX; "
        "missing_key (1), sales_negative (1)\n"
        "files with defects (2): sales/2024-01-01.csv, sales/2024-01-08.csv"
    )
    assert result.metadata["by_reason"].value == {"missing_key": 1, "sales_negative": 1}
    # A quarantined row without a reason is not "quarantined with a reason".
    unexplained = _quarantine([("sales/2024-01-01.csv", 5, "")])
    result = rules_check_result("landed_rows_expectations", QuarantineSummary.of(unexplained), 12, 5, ok, [])
    assert not result.passed
    assert "defects the rules did not quarantine: 1 quarantined rows without a reason" in result.description


def test_the_quarantine_sample_truncates_a_malformed_lines_text():
    line = "2024-01-01,S1,I1,3,1.50,0," + "x" * 150
    detail = f"expected 6 fields, found 7: {line}"
    quarantine = pd.DataFrame(
        {
            "source_file": ["sales/2024-01-01.csv", "sales/2024-01-01.csv"],
            "source_row": [4, 7],
            "reason": ["malformed_row", "duplicate_conflict"],
            "detail": [detail, REASONS["duplicate_conflict"]],
        }
    )
    sample = quarantine_sample(quarantine, ("description",))
    assert truncate(detail) == detail[:80] + f"… ({len(detail) - 80} more characters)"
    assert truncate(detail) in sample
    assert detail not in sample and "x" * 100 not in sample
    # A rule's own text is not landed data: shown whole.
    assert REASONS["duplicate_conflict"] in sample
    # A column named as PII is masked.
    masked = quarantine_sample(quarantine, ("detail",))
    assert "expected 6 fields" not in masked and "***" in masked
    assert quarantine_sample(quarantine.iloc[:0], ("description",)) == "nothing quarantined"


# --- the Data Docs -----------------------------------------------------------------------------------------------


def test_the_data_docs_need_nothing_from_the_network(gx_run):
    settings, validator = gx_run
    landed, _ = _landed()
    validator.run("docs_probe", landed, [("ExpectColumnValuesToBeBetween", {"column": "sales", "min_value": 0})])
    site = site_dir(settings.gx_dir)
    pages = sorted(site.rglob("*.html"))
    assert pages
    for page in pages:
        text = page.read_text()
        assert OFFLINE_MARK in text, page
        assert not EXTERNAL.search(text), page
        assert "<script src" not in text
    index = (site / "index.html").read_text()
    # The index tables GX fills in with JavaScript are written out: one row per validation, linked to its page.
    links = re.findall(r'<a href="(validations/[^"]+\.html)">', index)
    assert links and all((site / link).is_file() for link in links)
    assert "docs_probe" in index and "✘ Failed" in index
    page = next(p for p in pages if "validations/docs_probe" in p.as_posix())
    text = page.read_text()
    # The result table is in the page, with a status mark that needs no icon font.
    assert 'values must be greater than or equal to <span class="badge badge-secondary" >0.0</span>' in text
    assert "fa-times" in text
    assert 'src="../../../../static/images/logo-long.png"' in text
    assert 'href="../../../../static/images/favicon.ico"' in text
    assert (site / "static" / "images" / "logo-long.png").is_file()


def test_serve_docs_serves_the_site_on_loopback(gx_run):
    settings, validator = gx_run
    validator.run("serve_probe", _landed()[0], [("ExpectColumnValuesToNotBeNull", {"column": "sales"})])
    site = site_dir(settings.gx_dir)
    # A page built before the offline rewrite existed is rewritten when the server starts.
    (site / "old.html").write_text('<html><head><script src="https://code.jquery.com/x.js"></script></head></html>')
    servers: queue.Queue = queue.Queue()
    thread = threading.Thread(target=serve_docs, args=(settings.gx_dir, 0), kwargs={"on_ready": servers.put})
    thread.start()
    server = servers.get(timeout=30)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=10) as response:
            assert response.status == 200
            index = response.read().decode()
        assert OFFLINE_MARK in index and "serve_probe" in index
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/old.html", timeout=10) as response:
            assert "https://" not in response.read().decode()
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_serve_docs_says_when_the_site_is_not_built_and_stays_on_loopback(tmp_path):
    with pytest.raises(DocsNotBuilt, match="no GX Data Docs under .*local_site: they are built when the pipeline"):
        serve_docs(tmp_path / "gx", 0)
    with pytest.raises(ValueError, match="loopback address only"):
        serve_docs(tmp_path / "gx", 0, host="0.0.0.0")


def test_docs_url_points_at_the_served_site(tmp_path):
    settings = Settings(home=tmp_path, landing=tmp_path, docs_port=3999)
    assert docs_url(settings) == "http://127.0.0.1:3999/"
    assert docs_url(settings, "validations/a b/x.html") == "http://127.0.0.1:3999/validations/a%20b/x.html"
