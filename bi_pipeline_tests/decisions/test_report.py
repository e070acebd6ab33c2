"""The insights report: every section, the numbers against last year, and a page that needs nothing else."""

from __future__ import annotations

import re

import pandas as pd

from bi_pipeline.decisions.report import SECTIONS, insights, last_year
from bi_pipeline_tests.decisions.test_inventory import flat_forecasts


def test_last_year_is_52_weeks_for_weekly_and_daily_and_12_months_for_monthly():
    dates = pd.Series(pd.to_datetime(["2024-03-04", "2024-02-29"]))
    assert last_year(dates, "W").dt.date.astype(str).tolist() == ["2023-03-06", "2023-03-02"]
    assert last_year(pd.Series(pd.to_datetime(["2024-03-01"])), "M").dt.date.astype(str).tolist() == ["2023-03-01"]


def test_the_report_holds_every_section_with_the_numbers_against_last_year():
    forecasts = flat_forecasts({("S1", "A"): 12.0, ("S2", "B"): 5.0}, periods=2)  # 2024-01-01 and 2024-01-08
    history = pd.DataFrame(
        {
            "store_id": ["S1", "S1", "S2", "S2"],
            "item_id": ["A", "A", "B", "B"],
            "date": pd.to_datetime(["2023-01-02", "2023-01-09", "2023-01-02", "2023-01-09"]),
            "sales": [10.0, 10.0, 10.0, 10.0],
        }
    )
    items = pd.DataFrame({"item_id": ["A", "B"], "category": ["Dairy", "Bakery"]})
    alerts = pd.DataFrame({"severity": ["high"], "kind": ["stockout_risk"], "message": ["S1 / A: <short> of stock"]})
    orders = pd.DataFrame(
        {
            "store_id": ["S1"],
            "item_id": ["A"],
            "demand_p50": [24.0],
            "demand_p90": [30.0],
            "order_up_to": [31.0],
            "on_hand": [4.0],
            "on_order": [0.0],
            "order_quantity": [27.0],
        }
    )
    drivers = forecasts[["store_id", "item_id", "date"]].assign(
        median=forecasts["q0.5"],
        level_trend=forecasts["q0.5"] - 2.0,
        seasonality=1.0,
        calendar=1.0,
        promotion_price=0.0,
    )
    effects = pd.DataFrame(
        {
            "category": ["Dairy"],
            "items": [1],
            "elasticity": [-1.25],
            "elasticity_low": [-1.5],
            "elasticity_high": [-1.0],
            "uplift": [0.3],
            "uplift_low": [0.2],
            "uplift_high": [0.4],
        }
    )
    report = insights(history, forecasts, "W", orders, alerts, items, drivers, effects)
    page = report.html
    assert report.sections == SECTIONS
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in page
    # Forecast 2 × (12 + 5) = 34 against 40 last year: −15%.
    assert "<b>34</b>" in page and "<b>40</b>" in page and "-15.0%" in page
    assert "<td>Dairy</td>" in page or '<td class="text">Dairy</td>' in page
    assert "+20.0%" not in page and "20.0%" in page  # S1 / A rises by 20%, shown as a rise
    assert "S1 / A: &lt;short&gt; of stock" in page  # text is escaped
    assert "<td>27</td>" in page
    # Drivers: the parts' shares of the 34 forecast (4 of it calendar), and the category's elasticity and uplift.
    assert '<td class="text">calendar and holidays</td><td>4</td><td class="up">11.8%</td>' in page
    assert "<td>-1.25</td>" in page and '<td class="up">30.0%</td>' in page
    # Self-contained: the plot is inline and nothing is fetched.
    assert "data:image/png;base64," in page
    assert not re.search(r'(src|href)="https?://', page)
