"""The forecast metrics cross-checked against utilsforecast.losses, and each on a tiny case worked by hand.

utilsforecast scores one value per series (``unique_id``); the project pools the rows of a forecast frame, except
MASE, which it averages over series. How the two line up, each asserted below:

- WAPE  = utilsforecast ``wape`` over one pooled id = Σ_i mae_i·n_i / Σ|y|.
- bias  = utilsforecast ``bias`` (mean of ŷ - y) over one pooled id · n / Σ|y|.
- WQL   = utilsforecast ``scaled_crps`` over one pooled id (whose denominator is Σ|y| + machine eps)
        = 2·n·``mqloss`` / Σ|y| over one pooled id
        = Σ_i scaled_crps_i·Σ|y_i| / Σ|y| (the volume-weighted mean of the per-series scaled CRPS).
- coverage_80 = coverage_80_closed = utilsforecast ``coverage`` at level 80 (``is_between`` with both ends closed) over
  one pooled id, where no actual sits on a point mass of its forecast (ties are split: the tests by hand below).
- RMSSE = mean of utilsforecast's per-series ``rmsse`` at seasonality 1 over the series whose value is finite.
- MASE  = mean of utilsforecast's per-series ``mase`` over the series whose value is finite: utilsforecast divides by a
  zero in-sample scale (inf) or by a NaN one (history no longer than the season) where the project drops the series.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from utilsforecast import losses

from bi_pipeline.forecasting.metrics import (
    QUANTILES,
    bias,
    closed_coverage,
    coverage,
    covered_share,
    mase,
    mase_scales,
    quantile_column,
    rmsse,
    rmsse_scales,
    score,
    wape,
    wql,
)

SEASON = 7
TRAIN_DAYS = 35
HORIZON = 14
RTOL = 1e-9
QUANTILE_COLUMNS = [quantile_column(q) for q in QUANTILES]


def random_panel(seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and forecast frames of five daily series: three ordinary ones, one whose training history is constant
    (MASE scale 0) and one whose history is shorter than a season (MASE scale NaN)."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2024-01-01", periods=TRAIN_DAYS + HORIZON, freq="D")
    train_parts, forecast_parts = [], []
    kinds = {
        ("s1", "a"): "ordinary",
        ("s1", "b"): "ordinary",
        ("s2", "a"): "ordinary",
        ("s2", "b"): "constant",
        ("s3", "a"): "short",
    }
    for (store, item), kind in kinds.items():
        level = rng.uniform(5, 50)
        weekly = rng.uniform(0, 10, SEASON)[np.arange(len(dates)) % SEASON]
        sales = np.maximum(level + weekly + rng.normal(0, 4, len(dates)), 0.0)
        if kind == "constant":
            sales[:TRAIN_DAYS] = level
        history = slice(TRAIN_DAYS - SEASON + 2, TRAIN_DAYS) if kind == "short" else slice(0, TRAIN_DAYS)
        train_parts.append(
            pd.DataFrame({"store_id": store, "item_id": item, "date": dates[history], "sales": sales[history]})
        )
        actual = sales[TRAIN_DAYS:]
        mean = actual + rng.normal(1.0, 5.0, HORIZON)  # a little over-forecast, so bias is not ~0
        spread = rng.uniform(1, 10, HORIZON)
        offsets = np.sort(rng.normal(0, 1, (HORIZON, len(QUANTILES))), axis=1) * spread[:, None]
        frame = pd.DataFrame(
            {"store_id": store, "item_id": item, "date": dates[TRAIN_DAYS:], "sales": actual, "mean": mean}
        )
        for column, offset in zip(QUANTILE_COLUMNS, offsets.T, strict=True):
            frame[column] = mean + offset
        forecast_parts.append(frame)
    train = pd.concat(train_parts, ignore_index=True)
    # The project sorts the training rows itself; utilsforecast wants them in time order (see as_utils).
    train = train.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    forecast = pd.concat(forecast_parts, ignore_index=True)
    # Actuals on the ends of the 80% interval, which both count as inside.
    forecast.loc[0, quantile_column(0.1)] = forecast.loc[0, "sales"]
    forecast.loc[1, quantile_column(0.9)] = forecast.loc[1, "sales"]
    return train, forecast


def as_utils(frame: pd.DataFrame, pooled: bool = False) -> pd.DataFrame:
    """A project frame in utilsforecast's layout: ``unique_id``/``ds``/``y``, the 80% interval as ``mean-lo-80`` and
    ``mean-hi-80``; with ``pooled`` every row under one id, so a per-id loss is the loss over the whole frame."""
    out = frame.sort_values(["store_id", "item_id", "date"]).reset_index(drop=True)
    out.insert(0, "unique_id", "all" if pooled else out["store_id"] + "/" + out["item_id"])
    out = out.rename(columns={"date": "ds", "sales": "y"})
    if quantile_column(0.1) in out:
        out["mean-lo-80"] = out[quantile_column(0.1)]
        out["mean-hi-80"] = out[quantile_column(0.9)]
    return out.drop(columns=["store_id", "item_id"])


def per_id(result: pd.DataFrame, model: str = "mean") -> pd.Series:
    return result.set_index("unique_id")[model].sort_index()


def one(result: pd.DataFrame, model: str = "mean") -> float:
    values = per_id(result, model)
    assert len(values) == 1
    return float(values.iloc[0])


@pytest.fixture(scope="module")
def panel() -> tuple[pd.DataFrame, pd.DataFrame]:
    return random_panel()


# -- cross-checks against utilsforecast ------------------------------------------------------------------------------


def test_mase_matches_utilsforecast_per_series_mean(panel):
    train, forecast = panel
    per_series = per_id(losses.mase(as_utils(forecast), ["mean"], seasonality=SEASON, train_df=as_utils(train)))
    # utilsforecast keeps the series the project drops: a zero scale gives inf, a history no longer than the season NaN.
    assert np.isinf(per_series["s2/b"]) and np.isnan(per_series["s3/a"])
    assert np.isfinite(per_series).sum() == 3
    expected = per_series[np.isfinite(per_series)].mean()
    np.testing.assert_allclose(mase(forecast, mase_scales(train, SEASON)), expected, rtol=RTOL)


def test_mase_scales_match_utilsforecast_seasonal_naive_mae(panel):
    train, forecast = panel
    utils_train = as_utils(train)
    # utilsforecast's in-sample scale, recovered as MAE / MASE, is the project's mean absolute seasonal difference.
    mae = per_id(losses.mae(as_utils(forecast), ["mean"]))
    scaled = per_id(losses.mase(as_utils(forecast), ["mean"], seasonality=SEASON, train_df=utils_train))
    scales = mase_scales(train, SEASON)
    scales.index = [f"{store}/{item}" for store, item in scales.index]
    ordinary = ["s1/a", "s1/b", "s2/a"]
    np.testing.assert_allclose((mae / scaled)[ordinary], scales.sort_index()[ordinary], rtol=RTOL)
    assert scales["s2/b"] == 0.0 and np.isnan(scales["s3/a"])


def test_rmsse_matches_utilsforecast_per_series_mean(panel):
    train, forecast = panel
    per_series = per_id(losses.rmsse(as_utils(forecast), ["mean"], seasonality=1, train_df=as_utils(train)))
    assert np.isinf(per_series["s2/b"])  # a constant history: scale 0, dropped by the project
    expected = per_series[np.isfinite(per_series)].mean()
    np.testing.assert_allclose(rmsse(forecast, rmsse_scales(train)), expected, rtol=RTOL)


def test_rmsse_does_not_reward_forecasting_zero_for_intermittent_demand_as_mase_does():
    dates = pd.date_range("2024-01-01", periods=40, freq="D")
    sales = np.where(np.arange(40) % 4 == 0, 8.0, 0.0)  # a sale of 8 every fourth day
    train = pd.DataFrame({"store_id": "s", "item_id": "i", "date": dates[:28], "sales": sales[:28]})
    test = pd.DataFrame({"store_id": "s", "item_id": "i", "date": dates[28:], "sales": sales[28:]})
    zero, rate = test.assign(mean=0.0), test.assign(mean=2.0)  # all zeros against the mean rate
    assert mase(zero, mase_scales(train, 1)) < mase(rate, mase_scales(train, 1))
    # MSE over the 12 test days (3 sales): zero 3·64/12 = 16, rate (3·36 + 9·4)/12 = 12. In-sample, 13 of the 27
    # one-step differences are ±8: a scale of 13·64/27.
    assert rmsse(zero, rmsse_scales(train)) == pytest.approx(np.sqrt(16 / (13 * 64 / 27)))
    assert rmsse(rate, rmsse_scales(train)) == pytest.approx(np.sqrt(12 / (13 * 64 / 27)))
    assert rmsse(rate, rmsse_scales(train)) < rmsse(zero, rmsse_scales(train))


def test_wape_matches_utilsforecast(panel):
    _, forecast = panel
    project = wape(forecast)
    np.testing.assert_allclose(project, one(losses.wape(as_utils(forecast, pooled=True), ["mean"])), rtol=RTOL)
    frame = as_utils(forecast)
    counts = frame.groupby("unique_id").size().sort_index()
    mae = per_id(losses.mae(frame, ["mean"]))
    np.testing.assert_allclose(project, (mae * counts).sum() / frame["y"].abs().sum(), rtol=RTOL)


def test_bias_matches_utilsforecast(panel):
    _, forecast = panel
    pooled = as_utils(forecast, pooled=True)
    expected = one(losses.bias(pooled, ["mean"])) * len(pooled) / pooled["y"].abs().sum()
    project = bias(forecast)
    assert project > 0
    np.testing.assert_allclose(project, expected, rtol=RTOL)


def test_wql_matches_utilsforecast_scaled_crps_and_mqloss(panel):
    _, forecast = panel
    models = {"mean": QUANTILE_COLUMNS}
    quantiles = np.array(QUANTILES)
    project = wql(forecast)
    pooled = as_utils(forecast, pooled=True)
    np.testing.assert_allclose(project, one(losses.scaled_crps(pooled, models, quantiles)), rtol=RTOL)
    mqloss = one(losses.mqloss(pooled, models, quantiles))
    np.testing.assert_allclose(project, 2 * len(pooled) * mqloss / pooled["y"].abs().sum(), rtol=RTOL)
    # Per series: the pooled WQL is the volume-weighted mean of the per-series scaled CRPS, not their plain mean.
    frame = as_utils(forecast)
    volume = frame["y"].abs().groupby(frame["unique_id"]).sum().sort_index()
    per_series = per_id(losses.scaled_crps(frame, models, quantiles))
    np.testing.assert_allclose(project, (per_series * volume).sum() / volume.sum(), rtol=RTOL)
    assert abs(project - per_series.mean()) > 1e-6


def test_coverage_matches_utilsforecast(panel):
    _, forecast = panel
    project = coverage(forecast)
    assert 0.0 < project < 1.0
    assert closed_coverage(forecast) == project  # no ties: the two are one
    pooled = one(losses.coverage(as_utils(forecast, pooled=True), ["mean"], level=80))
    np.testing.assert_allclose(project, pooled, rtol=RTOL)
    frame = as_utils(forecast)
    counts = frame.groupby("unique_id").size().sort_index()
    per_series = per_id(losses.coverage(frame, ["mean"], level=80))
    np.testing.assert_allclose(project, (per_series * counts).sum() / counts.sum(), rtol=RTOL)


def test_score_matches_utilsforecast(panel):
    train, forecast = panel
    with_gap = forecast.copy()
    with_gap.loc[3, "sales"] = np.nan  # score drops rows without an actual; utilsforecast gets them dropped
    kept = forecast.drop(index=3)
    pooled, frame = as_utils(kept, pooled=True), as_utils(kept)
    models, quantiles = {"mean": QUANTILE_COLUMNS}, np.array(QUANTILES)
    per_series_mase = per_id(losses.mase(frame, ["mean"], seasonality=SEASON, train_df=as_utils(train)))
    per_series_rmsse = per_id(losses.rmsse(frame, ["mean"], seasonality=1, train_df=as_utils(train)))
    expected = {
        "MASE": per_series_mase[np.isfinite(per_series_mase)].mean(),
        "RMSSE": per_series_rmsse[np.isfinite(per_series_rmsse)].mean(),
        "WAPE": one(losses.wape(pooled, ["mean"])),
        "WQL": one(losses.scaled_crps(pooled, models, quantiles)),
        "coverage_80": one(losses.coverage(pooled, ["mean"], level=80)),
        "coverage_80_closed": one(losses.coverage(pooled, ["mean"], level=80)),
        "bias": one(losses.bias(pooled, ["mean"])) * len(pooled) / pooled["y"].abs().sum(),
    }
    metrics = score(with_gap, train, SEASON)
    assert metrics.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(metrics[name], value, rtol=RTOL, err_msg=name)


# -- exact values on tiny cases worked by hand -----------------------------------------------------------------------


def frame(sales, mean, store="s", item="i", **quantiles) -> pd.DataFrame:
    out = pd.DataFrame({"store_id": store, "item_id": item, "sales": sales, "mean": mean})
    for name, values in quantiles.items():
        out[name.replace("_", ".")] = values
    return out


def test_mase_by_hand():
    train = pd.DataFrame(
        {
            "store_id": "s",
            "item_id": ["a"] * 4 + ["b"] * 4 + ["c"] * 4,
            "date": list(pd.date_range("2024-01-01", periods=4)) * 3,
            # a: 2-step diffs |4-1|, |7-2| -> scale 4; b: |2-0|, |2-0| -> scale 2; c: constant -> scale 0, dropped
            "sales": [1.0, 2.0, 4.0, 7.0, 0.0, 0.0, 2.0, 2.0, 5.0, 5.0, 5.0, 5.0],
        }
    ).iloc[::-1]
    scales = mase_scales(train, season_length=2)
    assert scales.to_dict() == {("s", "a"): 4.0, ("s", "b"): 2.0, ("s", "c"): 0.0}
    forecast = pd.concat(
        [
            frame([10.0, 12.0], [8.0, 13.0], item="a"),  # errors 2, 1 -> MAE 1.5 -> 1.5 / 4 = 0.375
            frame([1.0, 1.0], [2.0, 4.0], item="b"),  # errors 1, 3 -> MAE 2 -> 2 / 2 = 1.0
            frame([5.0], [9.0], item="c"),  # zero scale: not counted
            frame([5.0], [9.0], item="d"),  # no training history: not counted
        ]
    )
    assert mase(forecast, scales) == pytest.approx(0.6875, rel=RTOL)  # (0.375 + 1.0) / 2


def test_wape_and_bias_by_hand():
    forecast = frame([10.0, 0.0, 30.0], [12.0, 1.0, 25.0])
    assert wape(forecast) == pytest.approx(0.2, rel=RTOL)  # (2 + 1 + 5) / 40
    assert bias(forecast) == pytest.approx(-0.05, rel=RTOL)  # (2 + 1 - 5) / 40


def test_coverage_by_hand():
    forecast = frame([10.0, 0.0, 30.0, 5.0], 0.0, q0_1=[10.0, 1.0, 20.0, 6.0], q0_9=[15.0, 2.0, 30.0, 9.0])
    assert closed_coverage(forecast) == 0.5  # 10 on the lower end and 30 on the upper end count as inside


def test_coverage_splits_a_tie_on_a_point_mass_by_hand():
    levels = np.arange(1, 10) / 10
    rows = np.array(
        [
            [0, 0, 1, 2, 3, 4, 5, 6, 7],  # zero at 10% and 20%: P(0) = 0.2, the zero's PIT uniform on [0, 0.2]
            [0, 0, 0, 0, 0, 1, 2, 3, 4],  # P(0) = 0.5: [0, 0.5]
            [0] * 9,  # P(0) at least 0.9: [0, 0.9]
            [0, 1, 2, 3, 4, 5, 6, 7, 8],  # P(0) = 0.1 only: [0, 0.1], the zero is in the lowest tenth
            [1, 2, 3, 4, 5, 6, 7, 8, 9],  # no mass at 0: below the interval
            [0, 1, 2, 3, 4, 5, 6, 7, 8],  # 1 on the 20% quantile, no tie
            [2, 2, 2, 2, 2, 2, 2, 2, 2],  # 2 at every level of a positive forecast: F(2-) = 0.1, F(2) = 0.9
            [1, 2, 3, 4, 5, 6, 7, 8, 9],  # on the upper end, no tie: inside, as the closed interval says
            [1, 2, 3, 4, 5, 6, 7, 8, 9],  # above it
        ],
        dtype="float64",
    )
    y = np.array([0, 0, 0, 0, 0, 1, 2, 9, 9.5])
    expected = [0.1 / 0.2, 0.4 / 0.5, 0.8 / 0.9, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    np.testing.assert_allclose(covered_share(rows, y), expected, rtol=RTOL)
    columns = {f"q{level:g}".replace(".", "_"): rows[:, j] for j, level in enumerate(levels)}
    forecast = frame(y, 0.0, **columns)
    assert coverage(forecast) == pytest.approx(np.mean(expected), rel=RTOL)
    # The closed interval counts every zero at a lower quantile of zero as inside, whatever mass the forecast gave it.
    assert closed_coverage(forecast) == pytest.approx(7 / 9, rel=RTOL)


def test_a_calibrated_forecast_of_a_count_covers_near_80_percent_with_ties_split():
    # Poisson(0.7) demand forecast with its true quantiles 0, 0, 0, 0, 1, 1, 1, 1, 2: the closed interval holds every
    # day up to 2 (97%). With ties split, a zero counts 0.75 (the grid puts its mass on [0, 0.4]: 0.3 of it between
    # the 10% and 90% levels), a 1 (on [0.5, 0.8]) and a 2 (the 90% quantile, no tie on the grid) count 1: about 84%,
    # near the 80% a calibrated forecast holds; nine levels cannot tell more of a count's steps.
    from scipy import stats

    rng = np.random.default_rng(0)
    y = rng.poisson(0.7, 200_000).astype("float64")
    rows = np.tile(stats.poisson(0.7).ppf(np.arange(1, 10) / 10), (len(y), 1))
    assert rows[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    inside = covered_share(rows, y).mean()
    assert inside == pytest.approx(0.75 * np.mean(y == 0) + np.mean((y == 1) | (y == 2)), rel=RTOL)
    assert 0.8 < inside < 0.85
    assert ((y >= rows[:, 0]) & (y <= rows[:, -1])).mean() > 0.96


def test_wql_by_hand():
    # y = 10, 20. Pinball sums: q0.1 at 8, 22 -> 0.1·2 + 0.9·2 = 2.0; q0.5 at 10, 18 -> 0 + 0.5·2 = 1.0;
    # q0.9 at 12, 25 -> 0.1·2 + 0.1·5 = 0.7. WQL = mean(2·2.0, 2·1.0, 2·0.7) / 30 = 7.4 / 90.
    forecast = frame([10.0, 20.0], 0.0, q0_1=[8.0, 22.0], q0_5=[10.0, 18.0], q0_9=[12.0, 25.0])
    assert wql(forecast, quantiles=(0.1, 0.5, 0.9)) == pytest.approx(37 / 450, rel=RTOL)
    # Every one of the nine quantiles 1 above y = 10: pinball_q = 1 - q, mean over levels of 2·(1 - q) / 10 = 0.1.
    every = frame([10.0], 0.0, **{column.replace(".", "_"): [11.0] for column in QUANTILE_COLUMNS})
    assert wql(every) == pytest.approx(0.1, rel=RTOL)


def test_score_by_hand():
    train = pd.DataFrame(
        {"store_id": "s", "item_id": "i", "date": pd.date_range("2024-01-01", periods=3), "sales": [4.0, 6.0, 5.0]}
    )  # 1-step diffs 2, 1 -> scale 1.5; squared 4, 1 -> RMSSE's scale 2.5
    exact = {column.replace(".", "_"): [10.0, 20.0, 0.0] for column in QUANTILE_COLUMNS}
    forecast = frame([10.0, 20.0, np.nan], [12.0, 17.0, 3.0], **exact)
    # Without the row lacking an actual: errors 2, 3 -> MAE 2.5, MSE 6.5; Σ|y| = 30; every quantile exact.
    assert score(forecast, train, season_length=1) == pytest.approx(
        {
            "MASE": 2.5 / 1.5,
            "RMSSE": np.sqrt(6.5 / 2.5),
            "WAPE": 5 / 30,
            "WQL": 0.0,
            "coverage_80": 1.0,
            "coverage_80_closed": 1.0,
            "bias": -1 / 30,
        },
        rel=RTOL,
    )
