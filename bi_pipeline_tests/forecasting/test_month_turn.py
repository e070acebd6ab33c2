"""The month-turn adjustment: found where a panel has it, absent where it has not, and applied both ways."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from bi_pipeline.forecasting.configuration import model_config
from bi_pipeline.forecasting.features import fit_spec
from bi_pipeline.forecasting.modeling import BIForecaster
from bi_pipeline.forecasting.month_turn import MIN_GAIN, MonthTurn, band_shares, fit_month_turn
from bi_pipeline.forecasting.panel import build_panel, month_turn_factors, panel_frame, panel_from_frame
from bi_pipeline.forecasting.transformer import forecast
from bi_pipeline_tests.forecasting.helpers import tiny, weekly_history

EFFECTS = (0.06, 0.01, 0.0, -0.03)  # days 1-7, 8-14, 15-21, 22-28, against days 29-31


def month_turn_panel(effects=EFFECTS, anchor: str = "end", noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Two years of Friday-dated weeks for 12 flat series of different sizes, each week lifted by the month-turn
    ``effects`` (the week read as ending on its date, or as starting on it)."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2010-02-05", periods=104, freq="W-FRI")
    lift = MonthTurn(anchor, tuple(effects), 0.0).factors(dates)
    frames = [
        pd.DataFrame(
            {
                "date": dates,
                "store_id": f"S{i:02d}",
                "item_id": "all",
                "sales": 1000.0 * (i + 1) * lift * np.exp(rng.normal(0, noise, len(dates))),
            }
        )
        for i in range(12)
    ]
    return pd.concat(frames, ignore_index=True)


def test_the_shares_count_the_weeks_days_in_each_band_of_the_month():
    dates = pd.DatetimeIndex(["2012-03-02", "2012-06-29"])
    # Ending Friday 2 March: 25-28 Feb, 29 Feb (the reference), 1-2 March; starting on it: 2-8 March.
    np.testing.assert_array_equal(band_shares(dates, "end"), [[2 / 7, 0, 0, 4 / 7], [0, 0, 0, 6 / 7]])
    np.testing.assert_array_equal(band_shares(dates, "start"), [[6 / 7, 1 / 7, 0, 0], [5 / 7, 0, 0, 0]])
    with pytest.raises(ValueError, match="week anchor 'middle'"):
        band_shares(dates, "middle")


@pytest.mark.parametrize("anchor", ["end", "start"])
def test_the_effects_are_found_with_their_reading_of_the_week(anchor):
    found = fit_month_turn(month_turn_panel(EFFECTS, anchor), "W")
    assert found.anchor == anchor
    np.testing.assert_allclose(found.effects, EFFECTS, atol=0.002)
    assert found.gain > 0.95


def test_the_adjustment_describes_itself_for_the_features_metadata():
    assert MonthTurn("end", EFFECTS, 0.2168).describe() == (
        "weeks (the 7 days ending on their date) sell, per day of the month against days 29-31: days 1-7 +6.2%, "
        "days 8-14 +1.0%, days 15-21 +0.0%, days 22-28 -3.0%; explains 22% of the weeks' deviation from their "
        "neighbours"
    )


def test_a_panel_without_the_effect_or_not_weekly_gets_no_adjustment():
    assert fit_month_turn(month_turn_panel((0.0, 0.0, 0.0, 0.0), noise=0.03), "W") is None
    assert fit_month_turn(weekly_history(series=6, periods=90), "W") is None  # seasons and holidays, no month turn
    with_effect = month_turn_panel()
    assert fit_month_turn(with_effect, "W", "off") is None
    assert fit_month_turn(with_effect[with_effect["date"] < "2010-12-01"], "W") is None  # under a year of weeks
    assert fit_month_turn(with_effect.assign(date=with_effect["date"] - pd.Timedelta(days=4)), "D") is None
    with pytest.raises(ValueError, match="month turn 'on'"):
        fit_month_turn(with_effect, "W", "on")


def test_a_noisy_effect_is_kept_above_the_minimum_gain_and_a_weak_one_is_not():
    strong = fit_month_turn(month_turn_panel(noise=0.02), "W")
    assert strong is not None and strong.gain >= MIN_GAIN
    np.testing.assert_allclose(strong.effects, EFFECTS, atol=0.015)
    assert fit_month_turn(month_turn_panel(np.array(EFFECTS) / 30, noise=0.03), "W") is None


def test_the_network_reads_adjusted_sales_and_its_forecasts_are_multiplied_back():
    history = month_turn_panel()
    spec = fit_spec(history, "W")
    adjustment = spec.month_turn_adjustment
    assert isinstance(adjustment, MonthTurn) and adjustment.anchor == "end"
    assert spec.to_dict()["month_turn"] == adjustment.to_list()
    panel = build_panel(history, spec, horizon=13)
    sales = history.sort_values(["store_id", "date"])["sales"].to_numpy().reshape(12, 104)
    np.testing.assert_allclose(panel.values[:, :104], sales / adjustment.factors(panel.dates[:104]), rtol=1e-5)
    # Adjusted, every series is flat at its level (to the fitted effects' precision).
    levels = 1000.0 * np.arange(1, 13)[:, None]
    np.testing.assert_allclose(panel.values[:, :104], np.broadcast_to(levels, (12, 104)), rtol=0.005)
    # The features frame keeps the sales as they landed, and gives the adjusted panel back.
    frame = panel_frame(panel)
    np.testing.assert_allclose(
        frame["target"].to_numpy(), history.sort_values(["store_id", "date"])["sales"], rtol=1e-5
    )
    np.testing.assert_allclose(panel_from_frame(frame).values[:, :104], panel.values[:, :104], rtol=1e-6)

    torch.manual_seed(0)
    model = BIForecaster(model_config(panel, 13, tiny())).eval()
    unadjusted = dataclasses.replace(panel, spec=dataclasses.replace(spec, month_turn=None))
    factors = month_turn_factors(spec, panel.dates[104:])
    assert factors.max() > 1.0
    adjusted, plain = forecast(model, panel, 103), forecast(model, unadjusted, 103)
    for column in ("q0.1", "q0.5", "q0.9"):
        expected = plain[column].to_numpy().reshape(12, 13) * factors
        np.testing.assert_allclose(adjusted[column].to_numpy().reshape(12, 13), expected, rtol=1e-5)


def test_specs_saved_before_the_adjustment_load_without_it():
    spec = fit_spec(month_turn_panel(), "W")
    old = {k: v for k, v in spec.to_dict().items() if k != "month_turn"}
    assert type(spec).from_dict(old).month_turn_adjustment is None
