"""The demo data generator: deterministic, realistic enough, and its injected defects are found exactly."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from bi_pipeline.config import Settings
from bi_pipeline.contract import infer_frequency, scan_sales_dir
from bi_pipeline.generate import GenerationSpec, generate
from bi_pipeline.quality import clean_period, known_ids
from bi_pipeline.readers import read_master, read_period


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((root / "sales").iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    for name in ("stores.csv", "items.csv", "calendar.csv"):
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


def clean_all(landing: Path) -> tuple[Counter, int]:
    settings = Settings(home=landing.parent / "home", landing=landing)
    keys = sorted(f.key for f in scan_sales_dir(landing, settle_seconds=0, assume_complete=True).ready)
    frequency = infer_frequency(keys)
    stores = known_ids(read_master(landing, "stores"), "store_id")
    items = known_ids(read_master(landing, "items"), "item_id")
    reasons, kept = Counter(), 0
    for key in keys:
        read = read_period(landing, key)
        result = clean_period(read.rows, key, frequency, settings, stores, items, read.issues)
        reasons.update(result.reason_counts)
        kept += len(result.clean)
    return reasons, kept


@pytest.mark.parametrize(("frequency", "fmt"), [("W", "csv"), ("D", "csv"), ("M", "csv"), ("W", "parquet")])
def test_quarantine_counts_equal_the_injected_counts(tmp_path, frequency, fmt):
    spec = GenerationSpec(stores=3, items=10, periods=40, frequency=frequency, defects=3, fmt=fmt, seed=11)
    report = generate(tmp_path / "landing", spec)
    expected = {k: v for k, v in report.expected_quarantine.items() if v}
    assert sum(expected.values()) >= 27  # every defect type present
    reasons, kept = clean_all(tmp_path / "landing")
    assert dict(reasons) == expected
    assert kept == report.valid_rows


def test_clean_data_has_nothing_to_quarantine(tmp_path):
    report = generate(tmp_path / "landing", GenerationSpec(stores=2, items=5, periods=20, defects=0))
    reasons, kept = clean_all(tmp_path / "landing")
    assert reasons == Counter()
    assert kept == report.rows_written == report.valid_rows


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    spec = GenerationSpec(stores=2, items=6, periods=30, seed=5)
    generate(tmp_path / "a", spec)
    generate(tmp_path / "b", spec)
    generate(tmp_path / "c", GenerationSpec(stores=2, items=6, periods=30, seed=6))
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def test_retail_patterns_are_present(tmp_path):
    spec = GenerationSpec(stores=4, items=40, periods=104, frequency="W", defects=0, seed=2)
    report = generate(tmp_path / "landing", spec)
    sales = pd.concat(pd.read_csv(p) for p in sorted((tmp_path / "landing" / "sales").glob("*.csv")))
    assert len(sales) == report.rows_written
    per_item = sales.groupby("item_id")["date"].agg(["min", "max"])
    assert (per_item["min"] > per_item["min"].min()).any()  # items launched later
    assert (per_item["max"] < per_item["max"].max()).any()  # items discontinued
    assert (sales["sales"] == 0).mean() > 0.05  # intermittent demand and stock-outs
    promo = sales[sales["promo"] > 0]
    assert 0 < len(promo) < len(sales)
    lift = sales.assign(on=sales["promo"] > 0).groupby(["store_id", "item_id", "on"])["sales"].mean().unstack()
    assert (lift[True] > lift[False]).mean() > 0.6
    items = pd.read_csv(tmp_path / "landing" / "items.csv")
    assert {"item_id", "category", "description"} <= set(items.columns)
    calendar = pd.read_csv(tmp_path / "landing" / "calendar.csv", keep_default_na=False)
    assert (calendar["holiday"] == 1).any() and (calendar["store_id"] != "").any()


def _sales(landing: Path) -> pd.DataFrame:
    return pd.concat(pd.read_csv(path) for path in sorted((landing / "sales").iterdir()))


def test_store_closures_are_announced_in_the_calendar_and_sell_nothing(tmp_path):
    spec = GenerationSpec(stores=3, items=5, periods=120, frequency="D", defects=0, closure_share=0.05)
    generate(tmp_path / "z", spec)
    calendar = pd.read_csv(tmp_path / "z" / "calendar.csv")
    assert calendar.columns.tolist() == ["date", "store_id", "holiday", "event", "local_event", "closed"]
    assert not calendar.duplicated(["date", "store_id"]).any()
    closed = calendar.loc[calendar["closed"] == 1, ["date", "store_id"]]
    assert len(closed) > 0 and closed["store_id"].notna().all()
    on_closed_days = _sales(tmp_path / "z").merge(closed, on=["date", "store_id"])
    assert len(on_closed_days) == len(closed) * 5 and on_closed_days["sales"].sum() == 0
    # Without closures the calendar has no such column.
    generate(tmp_path / "open", GenerationSpec(stores=3, items=5, periods=30, frequency="D", defects=0))
    assert "closed" not in pd.read_csv(tmp_path / "open" / "calendar.csv").columns


def test_level_shifts_step_each_shifted_series_once(tmp_path):
    from bi_pipeline.generate import _shifts_and_closures

    spec = GenerationSpec(
        stores=2,
        items=10,
        periods=104,
        defects=0,
        level_shift_share=1.0,
        intermittent_item_share=0.0,
        new_item_share=0.0,
        discontinued_item_share=0.0,
    )
    generate(tmp_path / "s", spec)
    drawn = _shifts_and_closures(spec, 20, 2)
    assert ((drawn["shift_at"] >= 104 // 3) & (drawn["shift_at"] < 104 * 9 // 10)).all()
    sales = _sales(tmp_path / "s").sort_values(["store_id", "item_id", "date"])
    # Per direction, the 26 periods after each shift against the 26 before, summed over series (one series of a few
    # units a week is too noisy to judge alone).
    after, before = {True: 0.0, False: 0.0}, {True: 0.0, False: 0.0}
    for number, (_, series) in enumerate(sales.groupby(["store_id", "item_id"], sort=True)):
        values, at, up = (
            series["sales"].to_numpy(dtype=float),
            drawn["shift_at"][number],
            drawn["shift_factor"][number] > 1,
        )
        after[up] += values[at : at + 26].mean()
        before[up] += values[max(0, at - 26) : at].mean()
    assert after[True] / before[True] > 1.25 and after[False] / before[False] < 0.75
