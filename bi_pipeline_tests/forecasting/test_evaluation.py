"""Metrics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bi_pipeline.forecasting.metrics import QUANTILES, mase_scales, pinball, quantile_column, score

TRAIN = pd.DataFrame(
    {
        "store_id": ["S1"] * 4 + ["S2"] * 3,
        "item_id": ["A"] * 4 + ["B"] * 3,
        "date": pd.to_datetime(
            ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"] * 1 + ["2024-01-01", "2024-01-02", "2024-01-03"]
        ),
        "sales": [1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 14.0],
    }
)
FORECAST = pd.DataFrame(
    {
        "store_id": ["S1", "S1", "S2"],
        "item_id": ["A", "A", "B"],
        "date": pd.to_datetime(["2024-01-05", "2024-01-06", "2024-01-04"]),
        "sales": [5.0, 6.0, 10.0],
        "mean": [4.0, 8.0, 13.0],
    }
)


def with_quantiles(frame: pd.DataFrame, spread: float) -> pd.DataFrame:
    out = frame.copy()
    for level in QUANTILES:
        # q0.1 = mean - spread ... q0.9 = mean + spread, linear in the level.
        out[quantile_column(level)] = out["mean"] + spread * (level - 0.5) / 0.4
    return out


def test_scales_are_the_in_sample_seasonal_differences():
    scales = mase_scales(TRAIN, season_length=1)
    assert scales.loc[("S1", "A")] == 1.0  # |2-1|, |3-2|, |4-3|
    assert scales.loc[("S2", "B")] == 2.0  # |10-10|, |14-10|
    assert np.isnan(mase_scales(TRAIN, season_length=4).loc[("S1", "A")])  # too short for a 4-step difference


def test_metrics_by_hand():
    metrics = score(with_quantiles(FORECAST, spread=0.0), TRAIN, season_length=1)
    assert metrics["MASE"] == pytest.approx((1.5 / 1 + 3 / 2) / 2)
    assert metrics["WAPE"] == pytest.approx(6 / 21)
    assert metrics["bias"] == pytest.approx(4 / 21)
    # Every quantile at the point forecast: per level the pinball sum is 5 - 4*level, averaging 3.
    assert metrics["WQL"] == pytest.approx(2 * 3 / 21)
    assert score(with_quantiles(FORECAST, spread=1.0), TRAIN, 1)["coverage_80"] == pytest.approx(1 / 3)


def test_pinball_is_asymmetric():
    assert pinball(np.array([10.0]), np.array([8.0]), 0.9)[0] == pytest.approx(1.8)
    assert pinball(np.array([10.0]), np.array([12.0]), 0.9)[0] == pytest.approx(0.2)
