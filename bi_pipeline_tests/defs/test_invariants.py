"""Invariants of the data half on a generated landing zone with injected defects, through Dagster: the history
built is exactly the history that landed, re-runs never destroy it, and a failed period holds the view."""

from __future__ import annotations

import math
import shutil

import dagster as dg
import pandas as pd
import pytest

from bi_pipeline.config import Settings
from bi_pipeline.defs.collection import (
    sales_periods,
)
from bi_pipeline.defs.runner import remove_period
from bi_pipeline.generate import GenerationSpec, generate
from bi_pipeline.state import load_removals
from bi_pipeline_tests.conftest import write_sales
from bi_pipeline_tests.defs.chain import materialize_chain


def stored_view(settings: Settings) -> pd.DataFrame:
    return pd.read_parquet(settings.asset_dir / "integrated_sales.parquet")


@pytest.fixture
def landed(tmp_path) -> tuple[Settings, dict]:
    settings = Settings(home=tmp_path / "home", landing=tmp_path / "landing", settle_seconds=0, max_bad_row_rate=0.15)
    report = generate(settings.landing, GenerationSpec(stores=3, items=8, periods=30, frequency="W", defects=3, seed=5))
    return settings, report.to_dict()


@pytest.mark.slow
def test_the_view_holds_exactly_the_accepted_rows_and_reruns_without_files_change_nothing(landed, tmp_path):
    settings, report = landed
    with dg.instance_for_test() as instance:
        first = materialize_chain(settings, instance, raise_on_error=False)
        assert first.success
        clean = pd.concat(first.output_for_node("clean_sales", "clean_sales").values())
        quarantine = pd.concat(first.output_for_node("clean_sales", "sales_quarantine").values())
        expected = {k: v for k, v in report["expected_quarantine"].items() if v}
        assert quarantine["reason"].value_counts().to_dict() == expected
        assert len(clean) == report["valid_rows"]
        view = stored_view(settings)
        # The view's total is the accepted rows' total exactly (the same float32 values, summed exactly).
        assert math.fsum(view["sales"].dropna().astype("float64")) == math.fsum(clean["sales"].astype("float64"))
        assert view["observed"].sum() == len(clean)  # one row per key and period: each is one observed value

        # Every landed file archived away: re-running every partition keeps what was ingested.
        shutil.move(settings.landing / "sales", tmp_path / "archive")
        (settings.landing / "sales").mkdir()
        again = materialize_chain(settings, instance, raise_on_error=False)
        assert again.success
        pd.testing.assert_frame_equal(stored_view(settings), view)
        raw = next(e for e in again.get_asset_materialization_events() if e.asset_key == dg.AssetKey("raw_sales"))
        assert len(raw.materialization.metadata["kept_previous"].value) == report["sales_files"]


@pytest.mark.slow
def test_a_failed_period_holds_the_view_until_it_is_fixed_or_removed(landed):
    settings, _ = landed
    with dg.instance_for_test() as instance:
        assert materialize_chain(settings, instance, raise_on_error=False).success
        good_view = stored_view(settings)
        keys = instance.get_dynamic_partitions(sales_periods.name)
        last = pd.Timestamp(keys[-1])
        bad_key = str((last + pd.Timedelta(weeks=1)).date())
        next_key = str((last + pd.Timedelta(weeks=2)).date())
        header = "date,store_id,item_id,sales\n"
        store, item = good_view["store_id"].iloc[0], good_view["item_id"].iloc[0]
        # A period where every row breaks a rule: its blocking check fails.
        write_sales(settings.landing, bad_key, header + f"{bad_key},{store},{item},abc\n{bad_key},{store},{item},-\n")
        failed = materialize_chain(settings, instance, [bad_key], raise_on_error=False)
        assert not failed.success
        assert stored_view(settings).equals(good_view)
        # A later, good period lands and is ingested: the view still waits for the failed one.
        write_sales(settings.landing, next_key, header + f"{next_key},{store},{item},5\n")
        later = materialize_chain(settings, instance, [next_key], raise_on_error=False)
        assert not later.success
        failure = next(e for e in later.all_events if e.is_step_failure and e.step_key == "integrated_sales")
        message = failure.step_failure_data.error.message
        assert f"sales/{bad_key}.csv: 2 of 2 rows quarantined" in message and "keeps its last good state" in message
        assert stored_view(settings).equals(good_view)

        # Removing the bad period on purpose is recorded, and the view is rebuilt with the later period.
        result = remove_period(settings, bad_key, "export of a closed store", instance=instance)
        assert result["integrated_view"].startswith("rebuilt")
        (entry,) = load_removals(settings.removals_path)
        assert entry["period"] == bad_key and entry["reason"] == "export of a closed store" and entry["by"]
        assert list(entry["files"]) == [f"sales/{bad_key}.csv"]
        assert bad_key not in instance.get_dynamic_partitions(sales_periods.name)
        view = stored_view(settings)
        assert pd.Timestamp(next_key) in set(view["date"]) and pd.Timestamp(bad_key) in set(view["date"])
        # The removed week is a gap (missing, not zero) in the series that continue through it.
        assert view.loc[view["date"] == pd.Timestamp(bad_key), "observed"].sum() == 0
        assert (settings.landing / "sales" / f"{bad_key}.csv").exists()  # the landed file is left as it was
