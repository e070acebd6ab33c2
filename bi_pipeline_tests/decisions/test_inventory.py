"""Orders computed by hand, the economics read per series, the attributes' rules, and the simulated policy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import ndtri

from bi_pipeline.config import DecisionSettings
from bi_pipeline.decisions.demand import LEVELS, QCOLS, Dependence
from bi_pipeline.decisions.inventory import (
    attribute_errors,
    order_quantities,
    plan_orders,
    series_parameters,
    simulate_policy,
    tune_level_shift,
)


def test_an_order_by_hand_packs_minimum_and_stock_on_order():
    up_to = np.array([37.2, 18.0, 10.0, 40.0])
    on_hand = np.array([10.0, 10.0, 12.0, 0.0])
    on_order = np.array([5.0, 5.0, 0.0, 0.0])
    # 22.2 short → 4 packs of 6 = 24; 3 short → 1 pack, raised to the minimum order of 12 (2 packs);
    # over the level → nothing; 40 short in packs of 12 with a minimum of 5 → 48.
    quantity = order_quantities(up_to, on_hand, on_order, np.array([6, 6, 6, 12.0]), np.array([12, 12, 12, 5.0]))
    assert quantity.tolist() == [24.0, 12.0, 0.0, 48.0]


def series(*pairs: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame(pairs, columns=["store_id", "item_id"])


def test_parameters_come_from_the_item_then_the_store_then_the_settings():
    items = pd.DataFrame(
        {"item_id": ["A", "B"], "unit_price": [10.0, None], "unit_cost": [6.0, None], "lead_time": [3, None]}
    )
    stores = pd.DataFrame({"store_id": ["S1", "S2"], "lead_time": [2, None], "holding_cost_rate": [0.26, None]})
    economics = DecisionSettings(service_level=0.9, lead_time=1)
    table = series_parameters(series(("S1", "A"), ("S1", "B"), ("S2", "B")), "W", economics, [items, stores])
    assert table["lead_time"].tolist() == [3, 2, 1]
    assert table["economics"].tolist() == ["costs", "service level", "service level"]
    # Priced: underage 10 − 6 = 4, overage 6 × 0.26 ÷ 52 = 0.03 a week, ratio 4 ÷ 4.03.
    assert table.loc[0, ["underage", "overage"]].tolist() == pytest.approx([4.0, 0.03])
    assert table.loc[0, "critical_ratio"] == pytest.approx(4.0 / 4.03)
    # Unpriced: the service level, and the costs it implies (a unit short costs 1, a unit held 0.1 ÷ 0.9).
    assert table.loc[1, ["critical_ratio", "underage", "overage"]].tolist() == pytest.approx([0.9, 1.0, 1 / 9])


def test_attributes_that_break_their_rules_are_named_by_file_row_and_rule():
    items = pd.DataFrame(
        {
            "item_id": ["A", "B", "C", "D"],
            "lead_time": ["2", "1.5", "", "-1"],
            "pack_size": ["6", "0", "x", ""],
            "source_row": [2, 3, 4, 5],
        }
    )
    assert attribute_errors(items, "items.csv") == [
        "items.csv, row 3: rule 'lead_time': must be a whole number of periods ≥ 0, got '1.5'",
        "items.csv, row 5: rule 'lead_time': must be a whole number of periods ≥ 0, got '-1'",
        "items.csv, row 3: rule 'pack_size': must be a number > 0, got '0'",
        "items.csv, row 4: rule 'pack_size': must be a number > 0, got 'x'",
    ]
    assert attribute_errors(None, "stores.csv") == []


def flat_forecasts(values: dict[tuple[str, str], float], periods: int) -> pd.DataFrame:
    """Forecasts with all nine quantiles equal (certain demand), so cumulative demand is known exactly."""
    dates = pd.date_range("2024-01-01", periods=periods, freq="W-MON")
    rows = []
    for (store, item), value in values.items():
        for date in dates:
            rows.append(
                {"store_id": store, "item_id": item, "date": date, "mean": value, **dict.fromkeys(QCOLS, value)}
            )
    frame = pd.DataFrame(rows)
    frame["cutoff"], frame["model_version"] = pd.Timestamp("2023-12-25"), "3"
    return frame


def test_orders_cover_the_protection_interval_by_hand():
    forecasts = flat_forecasts({("S1", "A"): 10.0, ("S1", "B"): 4.0}, periods=6)
    items = pd.DataFrame({"item_id": ["A", "B"], "lead_time": [2, 0], "pack_size": [6, 1], "min_order": [0, 10]})
    parameters = series_parameters(forecasts, "W", DecisionSettings(review_period=1), [items])
    stock = pd.DataFrame({"store_id": ["S1", "S1"], "item_id": ["A", "B"], "on_hand": [7.0, 1.0], "on_order": [5, 0]})
    out = plan_orders(forecasts, parameters, Dependence(), stock)
    assert out["protection_periods"].tolist() == [3, 1]
    assert out["order_up_to"].tolist() == pytest.approx([30.0, 4.0])
    # A: 30 − 7 − 5 = 18 → 3 packs of 6; B: 4 − 1 = 3, raised to the minimum order of 10.
    assert out["order_quantity"].tolist() == [18.0, 10.0]
    assert out["cutoff"].tolist() == [pd.Timestamp("2023-12-25")] * 2 and set(out["model_version"]) == {"3"}
    without = plan_orders(forecasts, parameters, Dependence())
    assert without["order_quantity"].isna().all() and without["order_up_to"].tolist() == pytest.approx([30.0, 4.0])


def test_the_policy_with_certain_demand_loses_nothing_and_holds_only_the_first_periods_stock():
    periods = 8
    quantiles = np.full((1, periods, len(LEVELS)), 10.0)
    demand = np.full((1, periods), 10.0)
    parameters = series_parameters(series(("S", "I")), "W", DecisionSettings(service_level=0.9))
    result = simulate_policy(quantiles, demand, parameters, Dependence())
    # Starts with 20 on hand (lead 1 + review 1); 10 are left after the first week, none after any later one.
    assert result.lost == 0.0 and result.fill_rate == 1.0
    assert result.holding_cost == pytest.approx(10.0 / 9.0)
    assert result.average_stock == pytest.approx(10.0 / periods)
    assert result.coverage_80 == 1.0 and result.windows_scored == periods - 1


def test_cumulative_intervals_are_calibrated_when_the_dependence_is_right_and_too_narrow_when_ignored():
    rng = np.random.default_rng(7)
    series_count, periods = 2000, 12
    true = Dependence(tuple(0.7**k for k in range(1, periods)))
    z = rng.standard_normal((series_count, periods)) @ np.linalg.cholesky(true.matrix(periods)).T
    demand = 100.0 + 10.0 * z
    quantiles = np.broadcast_to(100.0 + 10.0 * ndtri(LEVELS), (series_count, periods, len(LEVELS)))
    pairs = [(f"S{i}", "I") for i in range(series_count)]
    parameters = series_parameters(series(*pairs), "W", DecisionSettings(lead_time=2, review_period=2))
    right = simulate_policy(quantiles, demand, parameters, true)
    independent = simulate_policy(quantiles, demand, parameters, Dependence((0.0,)))
    assert right.coverage_80 == pytest.approx(0.80, abs=0.03)
    # The order-up-to level at the 0.95 service level holds the protection window's demand about 95% of the time.
    assert right.service_level == pytest.approx(0.95, abs=0.02)
    assert independent.coverage_80 < 0.72
    # At the same service level the right intervals lose less.
    assert right.lost < independent.lost


def validation_rows(demand: float, origins: int = 3, count: int = 20, steps: int = 6) -> pd.DataFrame:
    """Validation forecasts centred on 10 with P10–P90 of 2–18, and ``demand`` as every actual."""
    grid = pd.MultiIndex.from_product(
        [
            [f"S{i}" for i in range(count)],
            ["I"],
            pd.date_range("2024-01-01", periods=origins, freq="MS"),
            range(1, steps + 1),
        ],
        names=["store_id", "item_id", "origin", "step"],
    ).to_frame(index=False)
    grid[QCOLS] = 10.0 + 8.0 * ndtri(LEVELS) / ndtri(0.9)
    return grid.assign(sales=demand)


def test_the_order_level_shift_is_tuned_on_validation_forecasts():
    rows = validation_rows(demand=10.0)
    parameters = series_parameters(rows.drop_duplicates(["store_id", "item_id"]), "W", DecisionSettings())
    # Demand always at the median: every unit above it only costs holding, so the lowest level tried is cheapest.
    assert tune_level_shift(rows, parameters, Dependence()) == -0.6
    # Demand always above every level tried: a lower level loses more sales, which cost far more than holding.
    assert tune_level_shift(validation_rows(demand=30.0), parameters, Dependence()) == 0.0
    # An origin without every step's actual is left out; none left: no shift.
    assert tune_level_shift(rows.assign(sales=np.nan), parameters, Dependence()) == 0.0


def test_the_order_level_moves_the_ratio_in_normal_scores_and_is_saved():
    shifted = Dependence((0.5,), (40,), -0.5)
    assert float(shifted.order_level(0.95)) == pytest.approx(0.8739, abs=1e-4)  # Φ(1.6449 − 0.5)
    assert float(Dependence().order_level(0.95)) == pytest.approx(0.95)
    assert Dependence.from_dict(shifted.to_dict()) == shifted
    assert Dependence.from_dict({"lags": [0.5], "pairs": [40]}).level_shift == 0.0  # saved before shifts existed
