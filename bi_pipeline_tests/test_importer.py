"""import-csv: one big export -> the landing-zone contract, including the real Walmart and Australian retail data."""

from __future__ import annotations

import pandas as pd
import pytest

from bi_pipeline.contract import infer_frequency, scan_sales_dir
from bi_pipeline.importer import import_csv
from bi_pipeline.integration import integrate
from bi_pipeline.quality import clean_period, known_ids
from bi_pipeline.readers import read_master, read_period
from bi_pipeline_tests.conftest import shared_file


def ingest(settings):
    """Contract reading, cleaning and integration, as the assets do them."""
    keys = sorted(f.key for f in scan_sales_dir(settings.landing, settle_seconds=0, assume_complete=True).ready)
    frequency = infer_frequency(keys)
    stores, items = read_master(settings.landing, "stores"), read_master(settings.landing, "items")
    frames, bad = [], 0
    for key in keys:
        read = read_period(settings.landing, key)
        result = clean_period(
            read.rows, key, frequency, settings, known_ids(stores, "store_id"), known_ids(items, "item_id"), read.issues
        )
        frames.append(result.clean)
        bad += result.bad_rows
    out = integrate(frames, frequency, keys, stores, items, read_master(settings.landing, "calendar"))
    return keys, frequency, bad, out


def test_small_export_with_day_first_dates_and_rejects(settings, tmp_path):
    export = tmp_path / "export.csv"
    export.write_text(
        "Day,Shop,Sku,Units,Holiday\n"
        "05-02-2024,A,x,3,0\n05-02-2024,A,y,4,0\n06-02-2024,A,x,5,1\nnot a date,A,x,1,0\n06-02-2024,,y,2,1\n"
    )
    result = import_csv(
        export, settings.landing, "Day", "Shop", "Units", item_col="Sku", dayfirst=True, covariates=["Holiday"]
    )
    assert result["frequency"] == "D"
    assert (result["periods"], result["rows"], result["series"]) == (2, 3, 2)
    assert result["rejected_by_rule"] == {"unparseable_date": 1, "missing_key": 1}
    assert result["calendar_scope"] == "all stores"
    assert (settings.landing / "sales" / "2024-02-05.csv").read_text().splitlines() == [
        "date,store_id,item_id,sales",
        "2024-02-05,A,x,3",
        "2024-02-05,A,y,4",
    ]
    rejects = pd.read_csv(settings.landing / "import_rejects.csv")
    assert rejects[["source_row", "rule"]].values.tolist() == [[5, "unparseable_date"], [6, "missing_key"]]
    with pytest.raises(ValueError, match="export.csv: column.*Qty"):
        import_csv(export, settings.landing, "Day", "Shop", "Qty")


def test_walmart_store_sales_converts_loads_and_integrates(settings):
    source = shared_file("walmart_store_sales", "Walmart.csv")
    result = import_csv(
        source,
        settings.landing,
        date_col="Date",
        store_col="Store",
        sales_col="Weekly_Sales",
        dayfirst=True,
        covariates=["Holiday_Flag", "Temperature", "Fuel_Price", "CPI", "Unemployment"],
    )
    assert (result["frequency"], result["periods"], result["series"], result["rows"]) == ("W", 143, 45, 6435)
    assert (result["first_period"], result["last_period"]) == ("2010-02-05", "2012-10-26")
    keys, frequency, bad, out = ingest(settings)
    assert bad == 0
    assert len(out) == 6435 and out["observed"].all()
    assert out.groupby("store_id", observed=True).size().eq(143).all()
    store1 = out[out["store_id"] == "1"].set_index("date")
    assert store1.loc["2010-02-05", "sales"] == pytest.approx(1643690.9, rel=1e-6)
    assert store1.loc["2010-02-12", "Holiday_Flag"] == 1.0  # store-specific calendar rows joined
    assert store1.loc["2010-02-05", "CPI"] == pytest.approx(211.0963582, rel=1e-5)


def test_aus_retail_monthly_converts_and_integrates(settings):
    source = shared_file("aus_retail", "aus_retail.csv.gz")
    result = import_csv(source, settings.landing, "Month", "State", "Turnover", item_col="Industry")
    assert (result["frequency"], result["series"], result["rows"]) == ("M", 152, 64532)
    keys, frequency, bad, out = ingest(settings)
    assert (frequency, bad, len(out)) == ("M", 0, 64532)
    # Series start at different months; none has a row before its first sale.
    starts = out.groupby(["store_id", "item_id"], observed=True)["date"].min()
    assert starts.nunique() >= 3
