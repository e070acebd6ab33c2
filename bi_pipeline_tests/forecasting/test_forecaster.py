"""The forecaster's core without Dagster: features, the model, training, checkpoints, save/load, forecasts."""

from __future__ import annotations

import dataclasses
from datetime import date

import numpy as np
import pandas as pd
import pytest
import torch

from bi_pipeline.forecasting.baselines import statistical_forecast
from bi_pipeline.forecasting.calendar import (
    WEEKDAYS,
    calendar_effects,
    calendar_features,
    calendar_names,
    dates_after,
    easter_date,
    effect_names,
)
from bi_pipeline.forecasting.calibration import SPREAD_GRID, fit_calibration
from bi_pipeline.forecasting.candidate import (
    forecast_latest,
    holdout_score,
    make_candidate,
    not_forecast,
    train_with_holdout,
)
from bi_pipeline.forecasting.configuration import load_model, model_config
from bi_pipeline.forecasting.ensemble import (
    COVERAGE_TARGET,
    FACTOR_LIMITS,
    STEP_GROUPS,
    Forecaster,
    apply_step_factors,
    choose,
    combine,
    fit_step_factors,
    needed_factors,
)
from bi_pipeline.forecasting.features import (
    FeatureSpec,
    fit_spec,
    profile_lag_for,
    seasonal_profile,
    seasonal_profile_lag,
)
from bi_pipeline.forecasting.feedback import (
    LEVEL_RATIO_LIMITS,
    adjusted_forecasts,
    error_spread_factor,
    fit_error_spread,
    past_error_ratio,
    recent_level_ratio,
    respread,
    seasonal_spread_ratio,
)
from bi_pipeline.forecasting.inference import INPUTS
from bi_pipeline.forecasting.interface import Task
from bi_pipeline.forecasting.lightgbm import fit_lightgbm, predict_lightgbm
from bi_pipeline.forecasting.metrics import QUANTILES, quantile_column
from bi_pipeline.forecasting.modeling import (
    BIForecaster,
    BIForecasterConfig,
    Dropout,
    DropoutNoise,
    pinball_loss,
    smooth_floor,
    spread_factor,
)
from bi_pipeline.forecasting.panel import build_panel, panel_frame, panel_from_frame, split_windows, validation_length
from bi_pipeline.forecasting.sampling import epoch_sample, gather, mix_windows, recency_weights
from bi_pipeline.forecasting.trainer import averaged_weights, train_forecaster, update_average
from bi_pipeline.forecasting.transformer import forecast
from bi_pipeline_tests.forecasting.helpers import tiny, weekly_history

QCOLS = [quantile_column(q) for q in QUANTILES]


def test_spec_takes_flags_and_static_attributes_and_leaves_out_continuous_covariates():
    history = weekly_history()
    history["temperature"] = np.linspace(0, 30, len(history)).astype("float32")
    spec = fit_spec(history, "W")
    assert spec.covariates == ["holiday"]
    assert list(spec.static_categorical) == ["format"] and spec.static_categorical["format"] == ["big", "small"]
    assert fit_spec(history, "W", continuous_covariates=True).covariates == ["holiday", "temperature"]
    harmonics = ["year_sin1", "year_cos1", "year_sin2", "year_cos2", "year_sin3", "year_cos3"]
    easter = ["easter_week", "easter_holidays", "easter_week_change", "easter_holidays_change"]
    assert fit_spec(history, "W", use_covariates=False).future_names == harmonics + easter
    assert fit_spec(history, "W", use_covariates=False, calendar_effects="off").future_names == harmonics
    assert fit_spec(history, "W", use_covariates=False, calendar_effects="all").future_names == harmonics + easter
    with pytest.raises(ValueError, match="calendar effects 'yes'"):
        fit_spec(history, "W", calendar_effects="yes")


def test_calendar_effects_count_easter_days_and_weekdays_that_occur_five_times():
    # 2018: Easter Sunday 1 April, so its week (25 March … 1 April) lies 7/8 in March, and Good Friday … Easter
    # Monday (30 March … 2 April) half in each month; 2017: Easter 16 April, all in April.
    months = pd.date_range("2018-01-01", periods=4, freq="MS")
    effects = calendar_effects(months, "M", "all")
    assert effect_names("M", "all") == ["easter_week", "easter_holidays", *[f"extra_{d}" for d in WEEKDAYS]]
    assert effect_names("M", "easter") == ["easter_week", "easter_holidays"] and effect_names(
        "W", "all"
    ) == effect_names("W", "easter")
    np.testing.assert_array_equal(calendar_effects(months, "M", "easter"), effects[:, :2])
    np.testing.assert_allclose(effects[:, :2], [[0, 0], [0, 0], [7 / 8, 0.5], [1 / 8, 0.5]])
    # January 2018 starts on a Monday (31 days: Mon, Tue, Wed five times), February has 28 days, March starts on a
    # Thursday (Thu, Fri, Sat), April on a Sunday (30 days: Sun, Mon).
    assert effects[:, 2:].tolist() == [
        [1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 0],
        [1, 0, 0, 0, 0, 0, 1],
    ]
    # Weeks cover the 7 days from their date: Walmart's Friday weeks around Easter 2012 (8 April).
    weeks = pd.DatetimeIndex(["2012-03-23", "2012-03-30", "2012-04-06", "2012-04-13"])
    np.testing.assert_allclose(calendar_effects(weeks, "W"), [[0, 0], [5 / 8, 0], [3 / 8, 1], [0, 0]])
    days = pd.DatetimeIndex(["2012-03-31", "2012-04-01", "2012-04-06", "2012-04-09", "2012-04-10"])
    np.testing.assert_allclose(calendar_effects(days, "D"), [[0, 0], [1 / 8, 0], [1 / 8, 1 / 4], [0, 1 / 4], [0, 0]])
    assert easter_date(2011) == date(2011, 4, 24) and easter_date(2025) == date(2025, 4, 20)
    # With the encodings: each effect and its change against the same period a season before (364 days, 12 months),
    # so a model that repeats last year's shape knows that last year's Easter was elsewhere.
    features = calendar_features(months, "M", effects="all")
    names = calendar_names("M", effects="all")
    assert features.shape == (4, len(names)) and names[-1] == "extra_sun_change"
    before = calendar_effects(pd.date_range("2017-01-01", periods=4, freq="MS"), "M", "all")
    np.testing.assert_allclose(features[:, 12 : 12 + 9], effects)
    np.testing.assert_allclose(features[:, 12 + 9 :], effects - before)
    assert features[2, names.index("easter_week_change")] == pytest.approx(7 / 8)  # 2017: none of it in March
    np.testing.assert_allclose(
        calendar_features(weeks, "W", effects="easter")[:, 8:],
        calendar_effects(weeks, "W") - calendar_effects(weeks - pd.Timedelta(days=364), "W"),
    )


def test_dates_after_gives_each_end_its_next_periods_in_order():
    ends = np.array(["2024-01-01", "2024-03-01", "2024-01-01"], dtype="datetime64[ns]")
    expected = ["2024-02-01", "2024-03-01", "2024-04-01", "2024-05-01", "2024-02-01", "2024-03-01"]
    assert list(dates_after(ends, 2, "MS")) == list(np.array(expected, dtype="datetime64[ns]"))
    weeks = dates_after(np.array([pd.Timestamp("2024-03-22")]), 3, "W-FRI")
    assert list(pd.DatetimeIndex(weeks).strftime("%Y-%m-%d")) == ["2024-03-29", "2024-04-05", "2024-04-12"]
    assert len(dates_after(np.array([], dtype="datetime64[ns]"), 3, "D")) == 0


def test_specs_saved_before_calendar_effects_load_without_them():
    spec = fit_spec(weekly_history(), "W")
    assert spec.calendar_effects == "easter" and "easter_week" in spec.future_names
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    old = spec.to_dict()
    del old["calendar_effects"]
    loaded = FeatureSpec.from_dict(old)
    assert loaded.calendar_effects == "off" and "easter_week" not in loaded.future_names
    assert len(loaded.relative_mask) == len(loaded.future_names)
    assert len(spec.relative_mask) == len(spec.future_names)
    panel = build_panel(weekly_history(), loaded, horizon=8)
    assert panel.future.shape[-1] == len(loaded.future_names)


def test_seasonal_profile_is_each_positions_mean_deviation_over_earlier_seasons():
    # Season 4, pattern 1, 2, 3, 2: every trailing 4-period mean is 2, so the deviations at positions 0..3 are
    # log(1.1 / 2.1), 0, log(3.1 / 2.1), 0 (the 5% offset keeps zero sales finite). The first deviation needs a full
    # season behind it (index 3); with lag 4 each date reads the dates 4, 8, … before it.
    values = np.tile([1.0, 2.0, 3.0, 2.0], 5)[None, :].astype("float32")
    low, high = np.log(1.1 / 2.1), np.log(3.1 / 2.1)
    expected = [0, 0, 0, 0, 0, 0, 0, 0] + [low, 0, high, 0] * 3
    np.testing.assert_allclose(seasonal_profile(values, 4, 4)[0], expected, atol=1e-6)
    # Lag 8 reads two seasons back: one season later than lag 4.
    np.testing.assert_allclose(seasonal_profile(values, 4, 8)[0], [0] * 12 + [low, 0, high, 0] * 2, atol=1e-6)
    # Earlier seasons are averaged: with the peak at index 14 doubled (its trailing mean becomes 2.75), date 18
    # averages the deviations at 6, 10 and 14; nothing before date 18 moves.
    changed = values.copy()
    changed[0, 14] = 6.0
    profile = seasonal_profile(changed, 4, 4)[0]
    np.testing.assert_allclose(profile[:18], expected[:18], atol=1e-6)
    assert profile[18] == pytest.approx((2 * high + np.log(6.1375 / (1.05 * 2.75))) / 3, abs=1e-6)
    # No value is read less than the lag back: a change at index j moves nothing before j + lag.
    rng = np.random.default_rng(0)
    noisy = rng.uniform(1, 5, (3, 40)).astype("float32")
    for j in (10, 25, 39):
        moved = noisy.copy()
        moved[:, j] *= 4.0
        same = seasonal_profile(moved, 4, 8)[:, : j + 8] == seasonal_profile(noisy, 4, 8)[:, : j + 8]
        assert same.all()


def test_the_seasonal_profile_is_a_known_future_input_read_at_least_a_horizon_back():
    assert (profile_lag_for("M", 12), profile_lag_for("M", 13), profile_lag_for("W", 39), profile_lag_for("D", 28)) == (
        12,
        24,
        52,
        28,
    )
    history = weekly_history(periods=130)
    spec = fit_spec(history, "W", profile_lag=profile_lag_for("W", 8))
    assert spec.future_names[-1] == "seasonal_profile" and spec.relative_mask[-1] is False
    panel = build_panel(history, spec, horizon=8)
    expected = seasonal_profile(panel.values, 52, 52)
    np.testing.assert_array_equal(panel.future[..., -1], expected)
    assert np.abs(panel.future[:, 104:, -1]).max() > 0.05  # two earlier years of a sine season: a real signal
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    # auto: on with at least three seasons of history beyond the lag (52 + 3 · 52 = 208 weeks), else off.
    assert seasonal_profile_lag("auto", "W", 8, weekly_history(periods=207)) == 0
    assert seasonal_profile_lag("auto", "W", 8, weekly_history(periods=208)) == 52
    assert seasonal_profile_lag("on", "W", 8, history) == 52 and seasonal_profile_lag("off", "W", 8, history) == 0
    with pytest.raises(ValueError, match="seasonal profile 'yes'"):
        seasonal_profile_lag("yes", "W", 8, history)


def test_validation_targets_are_never_training_targets(panel):
    cutoff, horizon, validation = 81, 8, 8
    train, valid = split_windows(panel, horizon, cutoff, min_context=8, validation=validation)
    assert (train.step_begin, train.step_end) == (0, cutoff + 1 - validation)
    assert (valid.step_begin, valid.step_end) == (cutoff + 1 - validation, cutoff + 1)
    batch = gather(panel, train.series, train.start, 52, horizon, train.step_begin, train.step_end)
    steps = train.start[:, None] + np.arange(horizon)[None, :]
    assert steps[batch["mask"].numpy()].max() == cutoff - validation
    batch = gather(panel, valid.series, valid.start, 52, horizon, valid.step_begin, valid.step_end)
    steps = valid.start[:, None] + np.arange(horizon)[None, :]
    counted = steps[batch["mask"].numpy()]
    assert counted.min() == cutoff + 1 - validation and counted.max() == cutoff


def test_context_before_a_series_starts_is_padded_and_unobserved(panel):
    batch = gather(panel, np.array([0]), np.array([10]), 52, 8, 0, 90)
    observed = batch["past_observed"].numpy()[0]
    assert observed.sum() == 10 and not observed[:42].any()
    assert np.allclose(batch["past_values"].numpy()[0, :42], panel.values[0, 0])


def test_features_frame_round_trips_through_parquet(panel, tmp_path):
    frame = panel_frame(panel, split_at={"validation": 70, "test": 82})
    frame.to_parquet(tmp_path / "f.parquet")
    back = panel_from_frame(pd.read_parquet(tmp_path / "f.parquet"))
    assert np.array_equal(back.static_cat, panel.static_cat)
    assert np.allclose(back.future[:, :90], panel.future[:, :90])
    assert np.allclose(back.values[:, :90], panel.values[:, :90])
    assert frame["split"].value_counts().to_dict() == {"train": 6 * 70, "validation": 6 * 12, "test": 6 * 8}


def test_pinball_loss_matches_hand_computation():
    quantiles = torch.tensor([[[1.0, 2.0, 3.0]]])
    target = torch.tensor([[2.5]])
    levels = torch.tensor([0.1, 0.5, 0.9])
    # y - q = 1.5, 0.5, -0.5 → 0.1·1.5, 0.5·0.5, 0.1·0.5 = 0.15, 0.25, 0.05 → mean 0.15
    loss = pinball_loss(quantiles, target, torch.tensor([[True]]), levels)
    assert loss.item() == pytest.approx(0.15)
    assert pinball_loss(quantiles, target, torch.tensor([[False]]), levels).item() == 0.0


def test_dropout_drops_its_share_scales_the_rest_and_replays_after_a_reseed():
    noise = DropoutNoise(0)
    layer = Dropout(0.25, noise).train()
    x = torch.ones(400, 500)
    out = layer(x)
    assert out.unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    assert (out == 0).float().mean().item() == pytest.approx(0.25, abs=0.005)
    noise.reseed([7, 1, 0])
    first = layer(x)
    noise.reseed([7, 1, 0])
    assert torch.equal(layer(x), first) and not torch.equal(first, out)
    assert torch.equal(layer.eval()(x), x)
    # Every dropout of the network draws from its noise, the backbone's attention included; evaluation draws none.
    model = BIForecaster(BIForecasterConfig(horizon=4, context_length=16, patch_length=4, num_members=2))
    assert not [m for m in model.modules() if type(m) is torch.nn.Dropout]
    attention = [m for m in model.modules() if type(m).__name__ == "PatchTSTAttention"]
    assert attention and all(m.noise is model.noise for m in attention)
    past, observed = torch.rand(3, 16), torch.ones(3, 16, dtype=torch.bool)
    model.train()
    model.noise.reseed(1)
    a = model(past, observed)[0]
    model.noise.reseed(1)
    assert torch.equal(model(past, observed)[0], a) and not torch.equal(model(past, observed)[0], a)
    model.eval()
    assert torch.equal(model(past, observed)[0], model(past, observed)[0])


def test_the_step_layer_computed_part_by_part_equals_it_on_the_concatenated_inputs():
    config = BIForecasterConfig(
        horizon=5,
        context_length=16,
        patch_length=4,
        static_cardinalities=[3, 2],
        num_static_numeric=2,
        num_future_features=3,
        num_members=1,
    )
    member = BIForecaster(config).members[0]
    batch = 4
    flat = torch.randn(batch, config.d_model * config.num_patches)
    categorical, numeric = torch.tensor([[0, 1], [2, 0], [1, 1], [0, 0]]), torch.randn(batch, 2)
    future = torch.randn(batch, 5, 3)
    every_step = [
        member.context(flat).unsqueeze(1).expand(batch, 5, -1),
        member.step.weight.unsqueeze(0).expand(batch, 5, -1),
        *[e(categorical[:, j]).unsqueeze(1).expand(batch, 5, -1) for j, e in enumerate(member.embeddings)],
        numeric.unsqueeze(1).expand(batch, 5, -1),
        future,
    ]
    expected = member.step_mlp[0](torch.cat(every_step, dim=-1))
    torch.testing.assert_close(member.step_input(flat, future, categorical, numeric), expected)


def test_mixed_windows_are_mixtures_of_scaled_series_over_the_same_dates():
    history = weekly_history(series=2, periods=60)
    # The second series is exactly three times the first: scaled, they are the same shape, so any mixture of the
    # two is that shape again, whatever the weights.
    first = history["item_id"] == "I0"
    history.loc[~first, "sales"] = 3.0 * history.loc[first, "sales"].to_numpy()
    history["store_id"] = "S0"
    panel = build_panel(history, fit_spec(history, "W"), horizon=8)
    config = model_config(panel, 8, tiny())
    train, _ = split_windows(panel, 8, 59, 8, 8)
    sel = np.arange(len(train))
    batch = gather(panel, train.series[sel], train.start[sel], config.context_length, 8, 0, train.step_end)
    mixed = mix_windows(panel, batch, train, sel, config, 1.0, np.random.default_rng(0))
    scale = BIForecaster.scale(batch["past_values"], batch["past_observed"])
    changed = ~torch.isclose(mixed["past_values"], batch["past_values"]).all(1)
    assert changed.all()  # every window has a partner here (share 1, the other series)
    torch.testing.assert_close(mixed["past_values"], batch["past_values"] / scale)
    torch.testing.assert_close(mixed["target"], batch["target"] / scale)
    # Same dates: the calendar and the holiday flag are unchanged; masks and static attributes are kept.
    torch.testing.assert_close(mixed["future_features"], batch["future_features"])
    assert torch.equal(mixed["mask"], batch["mask"])
    assert torch.equal(mixed["static_categorical"], batch["static_categorical"])
    assert mix_windows(panel, batch, train, sel, config, 0.0, np.random.default_rng(0)) is batch


def test_level_calibration_follows_a_shift_the_training_windows_never_saw():
    history = weekly_history(periods=90)
    dates = np.sort(history["date"].unique())
    shifted = history.copy()
    # From the validation periods on (the last 8 of the 82 up to the cutoff), every series sells 8% more. The
    # training windows (targets before them) are the same, so both runs learn the same weights.
    shifted.loc[shifted["date"] >= dates[74], "sales"] *= 1.08
    # The per-series feedback off: its ratios read the model's own (scaled) forecasts against actuals, so it would
    # answer the factor in part.
    config = tiny(epochs=8, learning_rate=0.01, validation_periods=8, calibrate_level=True, mixup=0.0)
    config = dataclasses.replace(config, level_feedback_origins=0, error_spread_windows=0)
    models = {}
    for name, frame in (("plain", history), ("shifted", shifted)):
        panel = build_panel(frame, fit_spec(frame, "W"), horizon=8)
        models[name] = train_forecaster(panel, 8, 81, config).model
    # Measured: 0.975 and 1.05, the 8% shift.
    assert models["shifted"].config.level_scale > 1.0
    assert models["shifted"].config.level_scale - models["plain"].config.level_scale > 0.04
    assert train_forecaster(panel, 8, 81, tiny(epochs=1, calibrate_level=False)).model.config.level_scale == 1.0
    # The factor multiplies every quantile, after the spread calibration.
    model = models["shifted"]
    factor = model.config.level_scale
    scaled = forecast(model, panel, 81)
    model.config.level_scale = 1.0
    np.testing.assert_allclose(
        scaled[QCOLS].to_numpy(), forecast(model, panel, 81)[QCOLS].to_numpy() * factor, rtol=1e-5
    )


def test_a_warm_start_trains_on_raw_quantiles_and_calibrates_afresh(panel):
    champion = train_forecaster(panel, 8, 81, tiny(epochs=1)).model
    champion.config.spread_scale, champion.config.level_scale = 0.5, 1.1
    champion.config.spread_power, champion.config.spread_reference = 1.5, 0.3
    champion.config.error_spread_power, champion.config.error_spread_reference = 0.75, 0.4
    config = tiny(epochs=1, calibrate_level=False, calibrate_spread_power=False, error_spread_windows=0)
    update = train_forecaster(panel, 8, 81, config, initial_model=champion).model
    # The champion's factors fitted its own weights: the update starts from 1 and fits its spread again (its level
    # and width calibrations are off here, so they stay neutral instead of inheriting the champion's).
    assert update.config.level_scale == 1.0
    assert update.config.spread_scale in SPREAD_GRID
    assert (update.config.spread_power, update.config.spread_reference) == (0.0, 1.0)
    assert (update.config.error_spread_power, update.config.error_spread_reference) == (0.0, 1.0)
    assert (champion.config.spread_scale, champion.config.level_scale) == (0.5, 1.1)


def test_spread_factor_follows_each_forecasts_own_width():
    # Two forecasts (B=2, H=2, Q=3): outer quantiles 0.2 apart and 0.8 apart.
    q = torch.tensor([[[0.9, 1.0, 1.1], [0.9, 1.0, 1.1]], [[0.6, 1.0, 1.4], [0.6, 1.0, 1.4]]])
    assert spread_factor(q, 0.8) == 0.8
    factor = spread_factor(q, 0.8, power=1.0, reference=0.4)
    assert factor.shape == (2, 1, 1)
    np.testing.assert_allclose(factor.flatten().numpy(), [0.8 * 0.5, 0.8 * 2.0], rtol=1e-6)
    np.testing.assert_allclose(spread_factor(q, 1.0, 0.5, 0.2).flatten().numpy(), [1.0, 2.0], rtol=1e-6)
    assert float(spread_factor(q, 1.0, 8.0, 0.01).max()) == 10.0  # clamped


@pytest.mark.parametrize("floor", [False, True])
def test_the_calibration_grid_scores_what_the_forward_pass_would(floor):
    # The grid search scores only the masked-in steps, with the median and distances computed once; each score must
    # equal the loss of the quantiles the model's forward pass makes with those factors, over whole batches.
    from bi_pipeline.forecasting.calibration import CalibrationRows

    def calibrated_loss(outputs, levels, median, spread, level, power, reference, floor) -> float:
        # Batch by batch, every step scored under its mask, through the model's own spread_factor.
        total, weight = 0.0, 0.0
        for quantiles, target, mask in outputs:
            centre = quantiles[..., median : median + 1]
            spread_out = centre + (quantiles - centre) * spread_factor(quantiles, spread, power, reference)
            calibrated = (smooth_floor(spread_out, hard=True) if floor else spread_out) * level
            count = float((mask != 0).sum())
            total += float(pinball_loss(calibrated, target, mask, levels)) * count
            weight += count
        return total / weight

    levels = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    generator = torch.Generator().manual_seed(3)
    outputs = []
    for size in (7, 5):
        scale = torch.rand(size, 1, 1, generator=generator) * 2 + 0.1
        quantiles = torch.sort(torch.randn(size, 6, 9, generator=generator) * scale, dim=-1).values
        target = torch.randn(size, 6, generator=generator)
        mask = (torch.rand(size, 6, generator=generator) < 0.6).float()
        outputs.append((quantiles, target, mask))
    rows = CalibrationRows.of(outputs, levels)
    assert len(rows.target) == int(sum(float(m.sum()) for _, _, m in outputs))
    level_tensor, median = torch.tensor(levels), levels.index(0.5)
    for spread, level, power in [(1.0, 1.0, 0.0), (0.6, 1.05, 0.0), (1.3, 0.95, 0.5), (0.8, 1.0, 1.5)]:
        expected = calibrated_loss(outputs, level_tensor, median, spread, level, power, rows.reference, floor)
        assert rows.loss(rows.calibrated(spread, level, power, floor)) == pytest.approx(expected, rel=1e-5)


def test_width_calibration_finds_errors_that_grow_faster_than_the_intervals():
    # Forecasts whose 80% intervals are w wide and whose errors are proportional to w²: one spread factor cannot fit
    # both, a factor growing with the width can. Targets are the median plus errors at the 10%..90% quantiles of a
    # uniform spread, so every quantile level is hit as often as it should be once the width is right.
    levels = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    offsets = torch.tensor([lvl - 0.5 for lvl in levels]) * 1.25  # outer quantiles 1 apart when w = 1
    outputs = []
    for w in (0.1, 0.2, 0.4, 0.8):
        quantiles = (1.0 + offsets * w).expand(9, 1, 9).clone()
        target = (1.0 + offsets * w * (w / 0.3)).reshape(9, 1)
        outputs.append((quantiles, target, torch.ones(9, 1)))
    fitted = fit_calibration(outputs, levels, level=False)
    assert fitted["spread_power"] == 1.0
    assert fitted["spread_reference"] == pytest.approx(0.3, rel=1e-6)  # median of the widths 0.1, 0.2, 0.4, 0.8
    assert fitted["spread_scale"] == 1.0 and fitted["level_scale"] == 1.0
    plain = fit_calibration(outputs, levels, level=False, spread_power=False)
    assert (plain["spread_power"], plain["spread_reference"]) == (0.0, 1.0)


def model_and_six_windows(panel, spread: float) -> tuple[BIForecaster, list[torch.Tensor]]:
    """A one-epoch model with this spread factor (level 1), and its inputs for six windows."""
    model = train_forecaster(panel, 8, 81, tiny(epochs=1, calibrate_spread_power=False)).model
    model.config.spread_scale, model.config.level_scale = spread, 1.0
    batch = gather(panel, np.arange(6), np.full(6, 82), model.config.context_length, 8, 0, 8)
    return model, [batch[k] for k in INPUTS]


def test_the_model_applies_the_width_calibration(panel):
    model, inputs = model_and_six_windows(panel, spread=0.9)
    with torch.no_grad():
        members, _ = model(*inputs, return_members=True)
        raw = members.mean(0)
        width = (raw[..., -1] - raw[..., 0]).mean(-1)
        reference = float(width.median())
        model.config.spread_power, model.config.spread_reference = 0.5, reference
        calibrated, _ = model(*inputs)
    median = raw[..., 4:5]
    factor = (0.9 * (width / reference) ** 0.5).reshape(6, 1, 1)
    # Sales were never negative: the floor comes after the calibration.
    assert model.members[0].nonnegative
    torch.testing.assert_close(calibrated, smooth_floor(median + (raw - median) * factor, hard=True))
    assert float(factor.min()) < 0.9 < float(factor.max())  # narrower forecasts narrow further, wider ones widen


def test_error_spread_factor_follows_each_series_past_errors():
    ratio = np.array([0.2, 0.4, np.nan, 0.8, 100.0, 0.0])
    np.testing.assert_allclose(error_spread_factor(ratio, 0.4, 1.0), [0.5, 1.0, 1.0, 2.0, 10.0, 0.1])
    np.testing.assert_allclose(error_spread_factor(ratio, 0.4, 0.5), [0.5**0.5, 1.0, 1.0, 2**0.5, 10.0, 0.1])
    np.testing.assert_allclose(error_spread_factor(ratio, 0.4, 0.0), [1.0] * 6)


def test_past_error_ratio_is_the_models_own_errors_on_earlier_forecasts(panel):
    model = train_forecaster(panel, 8, 81, tiny(epochs=1, error_spread_windows=0, level_feedback_origins=0)).model
    assert model.config.error_spread_power == 0.0
    series = np.arange(panel.series)
    ratio = past_error_ratio(model, panel, 81, series, windows=2)
    # By hand: the forecasts from origins 73 and 65 (targets up to 81), |actual − median| over the 10–90% width.
    error, width = np.zeros(panel.series), np.zeros(panel.series)
    for origin in (73, 65):
        frame = forecast(model, panel, origin)
        values = frame[QCOLS].to_numpy().reshape(panel.series, 8, 9)
        actual = panel.values[:, origin + 1 : origin + 9]
        error += np.abs(actual - values[..., 4]).sum(1)
        width += (values[..., -1] - values[..., 0]).sum(1)
    np.testing.assert_allclose(ratio, error / width, rtol=1e-5)
    # Nothing after the origin is read.
    later = dataclasses.replace(panel, values=panel.values.copy())
    later.values[:, 82:] *= 3.0
    np.testing.assert_allclose(past_error_ratio(model, later, 81, series, windows=2), ratio, rtol=1e-6)


def test_error_spread_narrows_the_series_the_model_forecast_well_and_widens_the_others():
    # Same seasonal shape everywhere; half the series carry noise of 2% of their level, half 30%.
    history = weekly_history(series=8, periods=120)
    rng = np.random.default_rng(3)
    noisy = history["item_id"].isin([f"I{i}" for i in range(1, 8, 2)])
    level = history.groupby("item_id")["sales"].transform("mean")
    history["sales"] = history["sales"] + rng.normal(0, 1, len(history)) * level * np.where(noisy, 0.3, 0.02)
    panel = build_panel(history, fit_spec(history, "W"), horizon=8)
    # One horizon of validation, as the scenario was sized: with two (16 of 112 weeks) and these 3 epochs, the noisy
    # series' intervals came out at 0.98 of the plain ones (the sized test checks the mechanism, not the default).
    config = tiny(epochs=3, error_spread_windows=4, level_feedback_origins=0, validation_horizons=1.0)
    model = train_forecaster(panel, 8, 111, config).model
    cfg = model.config
    assert cfg.error_spread_power > 0 and cfg.error_spread_windows == 4
    spread = forecast(model, panel, 111)
    power = cfg.error_spread_power
    cfg.error_spread_power = 0.0
    plain = forecast(model, panel, 111)
    cfg.error_spread_power = power
    # forecast() applies exactly error_spread_factor of the series' past error ratio to the distances from the median.
    ratio = past_error_ratio(model, panel, 111, np.arange(panel.series), 4)
    factor = np.repeat(error_spread_factor(ratio, cfg.error_spread_reference, power), 8)[:, None]
    median = plain[["q0.5"]].to_numpy()
    expected = median + (plain[QCOLS].to_numpy() - median) * factor
    np.testing.assert_allclose(spread[QCOLS].to_numpy(), expected, rtol=1e-5)
    relative = (spread["q0.9"] - spread["q0.1"]) / (plain["q0.9"] - plain["q0.1"])
    by_series = relative.groupby(spread["item_id"].isin([f"I{i}" for i in range(1, 8, 2)])).mean()
    assert by_series[False] < 1.0 < by_series[True]


def test_the_error_spread_applied_at_forecast_time_is_the_one_fitted(panel, monkeypatch):
    # The fit folds its common factor into spread_scale, which widens the past intervals whose error ratios are read
    # at forecast time as well; the stored reference must follow, or the factor applied is not the one chosen.
    model = train_forecaster(panel, 8, 81, tiny(epochs=2, error_spread_windows=0, level_feedback_origins=0)).model
    for member in model.members:
        member.nonnegative = False  # the floor would bend the low quantiles that the factors here scale linearly
    cfg, origin, series = model.config, 81 - 8, np.arange(panel.series)
    before = adjusted_forecasts(model, panel, series, origin, spread=False)
    ratio = past_error_ratio(model, panel, origin, series, 4)
    reference, scale = float(np.median(ratio)), 0.7
    # fit_error_spread stores the reference that way: its ratios' median over the common factor it folds in (grids of
    # one value each, so that it must choose them).
    monkeypatch.setattr("bi_pipeline.forecasting.feedback.ERROR_POWER_GRID", (0.5,))
    monkeypatch.setattr("bi_pipeline.forecasting.feedback.ERROR_SCALE_GRID", (scale,))
    fitted = fit_error_spread(model, panel, 81, 8, 4)
    assert fitted["spread_scale"] == pytest.approx(cfg.spread_scale * scale)
    assert fitted["error_spread_reference"] == pytest.approx(reference / scale)
    cfg.error_spread_power, cfg.error_spread_windows = 0.5, 4
    cfg.error_spread_reference, cfg.spread_scale = reference / scale, cfg.spread_scale * scale
    after = adjusted_forecasts(model, panel, series, origin)
    expected = respread(before, error_spread_factor(ratio, reference, 0.5) * scale, QUANTILES.index(0.5))
    np.testing.assert_allclose(after, expected, rtol=1e-4)


def daily_year_history() -> pd.DataFrame:
    """500 days of seven store × item series, each at its own level but for last year's horizon window around origin
    480 (context 56, horizon 28: its context days 61–116, its horizon days 117–144), where each holds its own."""
    dates = pd.date_range("2021-01-01", periods=500, freq="D")
    weekday = 1 + 0.2 * (dates.dayofweek.to_numpy() >= 5)
    shapes = [  # store, level, level in last year's horizon window, first day
        ("S0", 60.0, 45.0, 0),
        ("S0", 20.0, 20.0, 0),
        ("S1", 60.0, 10.0, 0),
        ("S2", 60.0, 200.0, 100),
        ("S2", 60.0, 45.0, 0),
        ("S3", 60.0, 0.0, 0),
        ("S4", 60.0, 60.0, 0),
    ]
    frames = []
    for item, (store, level, horizon_level, first) in enumerate(shapes):
        sales = np.full(500, level)
        sales[117:145] = horizon_level
        if store == "S4":
            sales[120:125] = 0.0  # closed for five days
        frame = pd.DataFrame({"date": dates, "store_id": store, "item_id": f"I{item}", "sales": sales * weekday})
        frames.append(frame[first:])
    return pd.concat(frames, ignore_index=True)


def test_the_seasonal_spread_ratio_is_last_years_store_level_over_the_horizon_against_its_context():
    history = daily_year_history()
    panel = build_panel(history, fit_spec(history, "D"), horizon=28)
    series = np.arange(panel.series)
    ratio = seasonal_spread_ratio(panel, 480, series, 56, 28, "D")
    # The median day of each window is a weekday, the weekend lift aside. S0 sums its items: (45 + 20) ÷ (60 + 20).
    # S1's 10 ÷ 60 is held at the lower limit. In S2 the series that started on day 100 has most of last year's
    # context unobserved: it takes the store's 45 ÷ 60 and adds nothing to it. S3 sold nothing in the window: no
    # ratio. S4 was closed for five of its days, which is not a season.
    np.testing.assert_allclose(ratio, [65 / 80, 65 / 80, LEVEL_RATIO_LIMITS[0], 0.75, 0.75, 1.0, 1.0])
    np.testing.assert_allclose(seasonal_spread_ratio(panel, 480, series[[4, 0]], 56, 28, "D"), [0.75, 65 / 80])
    # Nothing after last year's horizon (day 144) is read: the forecast dates' own year is not.
    later = dataclasses.replace(panel, values=panel.values.copy())
    later.values[:, 145:] *= 3.0
    np.testing.assert_allclose(seasonal_spread_ratio(later, 480, series, 56, 28, "D"), ratio)
    # A context of a year or more already shows the season; a history too short to reach a year back gives no ratio.
    np.testing.assert_allclose(seasonal_spread_ratio(panel, 480, series, 364, 28, "D"), np.ones(7))
    np.testing.assert_allclose(seasonal_spread_ratio(panel, 400, series, 56, 28, "D"), np.ones(7))
    weekly = build_panel(weekly_history(periods=160), fit_spec(weekly_history(periods=160), "W"), horizon=8)
    np.testing.assert_allclose(seasonal_spread_ratio(weekly, 150, np.arange(6), 52, 8, "W"), np.ones(6))


def test_forecasts_from_a_daily_context_take_the_seasonal_spread_ratio_on_their_distances_from_the_median():
    history = daily_year_history()
    panel = build_panel(history, fit_spec(history, "D"), horizon=28)
    config = tiny(epochs=1, error_spread_windows=0, level_feedback_origins=0)
    assert config.seasonal_spread and not BIForecasterConfig().seasonal_spread  # versions saved before: off
    model = train_forecaster(panel, 28, 471, config).model
    assert model.config.seasonal_spread and model.config.context_length == 56
    seasonal = forecast(model, panel, 480)
    model.config.seasonal_spread = False
    plain = forecast(model, panel, 480)
    factor = np.repeat(seasonal_spread_ratio(panel, 480, np.arange(7), 56, 28, "D"), 28)[:, None]
    median = plain[["q0.5"]].to_numpy()
    expected = np.maximum(median + (plain[QCOLS].to_numpy() - median) * factor, 0.0)
    np.testing.assert_allclose(seasonal[QCOLS].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    assert (seasonal["q0.9"] - seasonal["q0.1"]).iloc[:28].sum() < (plain["q0.9"] - plain["q0.1"]).iloc[:28].sum()


def test_level_feedback_follows_the_models_recent_errors_on_each_series():
    # Every series jumps by 40% from week 96: a model that reads each window's level from a year of context keeps
    # under-forecasting for a while after, and its own recent forecasts show by how much.
    history = weekly_history(series=6, periods=124)
    jump = history["date"] >= history["date"].unique()[96]
    history.loc[jump, "sales"] *= 1.4
    panel = build_panel(history, fit_spec(history, "W"), horizon=8)
    model = train_forecaster(panel, 8, 115, tiny(epochs=3, error_spread_windows=0, level_feedback_origins=3)).model
    cfg = model.config
    assert cfg.level_feedback_power > 0 and cfg.level_feedback_origins == 3
    series = np.arange(panel.series)
    ratio = recent_level_ratio(model, panel, 115, series, 3)
    # By hand: forecasts from origins 113, 111, 109 (a fifth of the horizon apart), targets up to 115.
    power = cfg.level_feedback_power
    cfg.level_feedback_power = 0.0
    actual_sum, forecast_sum = np.zeros(6), np.zeros(6)
    for origin in (113, 111, 109):
        values = forecast(model, panel, origin)["q0.5"].to_numpy().reshape(6, 8)[:, : 115 - origin]
        actual_sum += panel.values[:, origin + 1 : 116].sum(1)
        forecast_sum += values.sum(1)
    # Within the limits a ratio may reach (a series whose forecasts missed by more than half is not trusted further).
    np.testing.assert_allclose(ratio, np.clip(actual_sum / forecast_sum, *LEVEL_RATIO_LIMITS), rtol=1e-5)
    assert np.median(ratio) > 1.1  # under-forecast after the jump, as a whole
    plain = forecast(model, panel, 115)
    cfg.level_feedback_power = power
    fed = forecast(model, panel, 115)
    factor = np.repeat(ratio**power, 8)[:, None]
    np.testing.assert_allclose(fed[QCOLS].to_numpy(), plain[QCOLS].to_numpy() * factor, rtol=1e-5)


def test_training_reduces_the_loss_and_quantiles_are_monotone(panel):
    result = train_forecaster(panel, 8, 81, tiny(epochs=5))
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0]
    out = forecast(result.model, panel, 81)
    assert len(out) == 6 * 8
    values = out[QCOLS].to_numpy()
    assert (np.diff(values, axis=1) >= 0).all()
    assert np.array_equal(out["mean"].to_numpy(), out["q0.5"].to_numpy())


def test_save_and_load_give_identical_forecasts(panel, tmp_path):
    model = train_forecaster(panel, 8, 81, tiny(epochs=1)).model
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").exists()
    loaded = BIForecaster.from_pretrained(tmp_path / "model")
    assert loaded.config.spread_scale == model.config.spread_scale
    assert (loaded.config.spread_power, loaded.config.spread_reference) == (
        model.config.spread_power,
        model.config.spread_reference,
    )
    pd.testing.assert_frame_equal(forecast(model, panel, 81), forecast(loaded, panel, 81))


@pytest.mark.parametrize(
    "recipe", [{}, {"members": 2, "mixup": 0.0, "calibrate_level": False}, {"weight_average": 0.9}]
)
def test_a_crashed_training_resumes_from_its_checkpoint(panel, tmp_path, recipe):
    straight = train_forecaster(panel, 8, 81, tiny(epochs=4, **recipe))

    class Crash(Exception):
        pass

    def crash_after_two(record: dict) -> None:
        if record.get("stage") == "train" and record["epoch"] == 2:
            raise Crash

    with pytest.raises(Crash):
        train_forecaster(panel, 8, 81, tiny(epochs=4, **recipe), checkpoint_dir=tmp_path, progress=crash_after_two)
    resumed = train_forecaster(panel, 8, 81, tiny(epochs=4, **recipe), checkpoint_dir=tmp_path)
    assert resumed.resumed_from_epoch == 2
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(forecast(straight.model, panel, 81), forecast(resumed.model, panel, 81))


def test_the_weight_average_follows_every_step_and_is_what_validation_reads(panel):
    layer = torch.nn.Linear(1, 1)
    average = {name: torch.zeros_like(value) for name, value in layer.state_dict().items()}
    for weight in (2.0, 4.0):
        with torch.no_grad():
            layer.weight.fill_(weight)
            layer.bias.fill_(-weight)
        update_average(average, layer, 0.5)
    assert (average["weight"].item(), average["bias"].item()) == (2.5, -2.5)  # 0.5·(0.5·0 + 0.5·2) + 0.5·4
    # Divided by 1 − 0.5²: the mean of 2 and 4 weighted 1 : 2, with no pull towards the zero it started from.
    corrected = averaged_weights(average, 0.5, 2)
    assert corrected["weight"].item() == pytest.approx(10 / 3) and corrected["bias"].item() == pytest.approx(-10 / 3)
    # Trained with a weight average, the model kept is the average at its best epoch, not the raw weights: the two
    # runs share their raw trajectory (same seed and batches) but keep different weights and validation losses.
    raw = train_forecaster(panel, 8, 81, tiny(epochs=3, weight_average=0.0))
    averaged = train_forecaster(panel, 8, 81, tiny(epochs=3, weight_average=0.9))
    assert [r["train_loss"] for r in averaged.history] == pytest.approx([r["train_loss"] for r in raw.history])
    assert [r["validation_loss"] for r in averaged.history] != [r["validation_loss"] for r in raw.history]
    weights = dict(raw.model.named_parameters())
    assert any(not torch.equal(p, weights[name]) for name, p in averaged.model.named_parameters())


def test_recent_windows_are_drawn_more_often_when_an_epoch_takes_a_sample():
    from bi_pipeline.forecasting.panel import Windows

    assert recency_weights(Windows(np.zeros(3, "int64"), np.array([10, 20, 30]), 0, 0), 10).tolist() == [
        0.25,
        0.5,
        1.0,
    ]
    windows = Windows(np.zeros(1000, "int64"), np.arange(1000), 0, 0)
    uniform = epoch_sample(windows, 100, 0, np.random.default_rng(0))
    recent = epoch_sample(windows, 100, 50, np.random.default_rng(0))
    assert len(set(uniform)) == len(set(recent)) == 100  # without replacement
    # A half-life of 50 periods: the sample's mean start sits within about two half-lives of the latest window.
    assert windows.start[uniform].mean() < 600 < 850 < windows.start[recent].mean()
    # With no more windows than an epoch takes, every one is trained on, recency or not.
    assert sorted(epoch_sample(windows, 1000, 50, np.random.default_rng(0))) == list(range(1000))


def test_early_stopping_stops_when_validation_stops_improving(panel):
    result = train_forecaster(panel, 8, 81, tiny(epochs=30, patience=2, learning_rate=0.05))
    assert result.epochs_run < 30
    assert result.epochs_run - result.best_epoch == 2


def test_fine_tuning_starts_from_a_local_checkpoint_with_another_head(panel, tmp_path):
    source = BIForecaster(model_config(panel, 8, tiny()))
    source.save_pretrained(tmp_path / "pretrained")
    target_config = model_config(panel, 4, tiny())
    loaded = load_model(str(tmp_path / "pretrained"), target_config)
    assert loaded.config.horizon == 4 and loaded.members[0].direct.out_features == 4
    for name, weight in source.members[0].backbone.state_dict().items():
        assert torch.equal(weight, loaded.members[0].backbone.state_dict()[name]), name
    result = train_forecaster(panel, 4, 81, tiny(epochs=1, init_from=str(tmp_path / "pretrained")))
    assert result.model.config.horizon == 4


def test_holdout_training_and_latest_forecasts_from_a_saved_model(tmp_path):
    history = weekly_history(periods=100)
    trained = train_with_holdout(history, "W", horizon=8, season_length=52, config=tiny(epochs=3))
    assert trained.lineage["training_end"] == str(pd.Timestamp(history["date"].unique()[-9]).date())
    assert set(trained.scores) == {"MASE", "RMSSE", "WAPE", "WQL", "coverage_80", "coverage_80_closed", "bias"}
    trained.result.model.save_pretrained(tmp_path / "m")
    model = BIForecaster.from_pretrained(tmp_path / "m")
    assert holdout_score(model, history, 52) == pytest.approx(trained.scores)
    latest = forecast_latest(model, history)
    assert len(latest) == 6 * 8
    assert latest["date"].min() == history["date"].max() + pd.Timedelta(weeks=1)
    assert (latest["cutoff"] == history["date"].max()).all()


def _quantile_rows(medians, width):
    """(rows, quantiles): each median with quantiles ``width`` apart per 0.1 of level."""
    return np.asarray(medians, dtype="float64")[:, None] + (np.asarray(QUANTILES) - 0.5)[None, :] * width


def test_the_choice_goes_to_the_member_that_forecasts_validation_best():
    rng = np.random.default_rng(0)
    y = 100 + rng.normal(0, 5, 400)
    steps = np.tile(np.arange(1, 9), 50)
    series, scale = np.repeat(np.arange(50), 8), np.full(400, 5.0)
    good = _quantile_rows(y + rng.normal(0, 1, 400), 2.0)
    bad = _quantile_rows(y + 30, 2.0)
    # AutoETS near the actuals, the transformer 30 off: AutoETS alone, in both weights.
    members = ("transformer", "lightgbm", "auto_ets")
    chosen = choose(np.stack([bad, bad, good]), y, scale, series, steps, 8, members)
    assert chosen.weights == {"auto_ets": 1.0} and chosen.spread_weights == {"auto_ets": 1.0}
    assert chosen.scores["auto_ets"]["MASE"] < chosen.scores["transformer"]["MASE"]
    # Two members off by +10 and −10: their even blend is exact.
    chosen = choose(
        np.stack([_quantile_rows(y + 10, 2.0), _quantile_rows(y - 10, 2.0)]),
        y,
        scale,
        series,
        steps,
        8,
        ("transformer", "lightgbm"),
    )
    assert chosen.weights == {"transformer": 0.5, "lightgbm": 0.5}
    assert chosen.scores["combination"]["MASE"] == pytest.approx(0.0, abs=1e-9)


def test_interval_factors_widen_intervals_that_are_too_narrow_per_step():
    from scipy.stats import norm

    rng = np.random.default_rng(1)
    steps = np.tile(np.arange(1, 13), 3000)
    sd = 0.5 + 0.25 * (steps - 1)  # errors grow with the lead time: sd 0.5 at step 1, 3.25 at step 12
    y = 100 + rng.normal(0, 1, len(steps)) * sd
    # Quantiles of a normal with sd 1 at every step: too wide at first, three times too narrow at step 12.
    quantiles = np.tile(100 + norm.ppf(np.asarray(QUANTILES)), (len(y), 1))
    factors = fit_step_factors(quantiles, y, steps, 12)
    # Groups of three steps. The first is too wide and is left so (widening only); the others cover exactly the
    # target share of their validation rows once widened (split conformal).
    assert factors[0] == 1.0
    groups = np.minimum((steps - 1) // 3, 3)
    lower, upper = quantiles[:, 0], quantiles[:, -1]
    for group in (1, 2, 3):
        rows = groups == group
        factor = factors[group]
        inside = (y[rows] >= 100 - (100 - lower[rows]) * factor) & (y[rows] <= 100 + (upper[rows] - 100) * factor)
        assert inside.mean() == pytest.approx(COVERAGE_TARGET, abs=1 / rows.sum())
    assert factors[1] < factors[2] < factors[3] < FACTOR_LIMITS[1]
    frame = pd.DataFrame({"date": pd.date_range("2024-01-07", periods=12, freq="W"), "mean": 100.0})
    for j, column in enumerate(QCOLS):
        frame[column] = quantiles[0, j]
    calibrated = apply_step_factors(frame, factors, pd.Timestamp("2023-12-31"), 12)
    widths = (calibrated["q0.9"] - calibrated["q0.1"]).to_numpy()
    np.testing.assert_allclose(widths, np.repeat(factors, 3) * 2 * norm.ppf(0.9))
    assert (calibrated["q0.5"] == 100.0).all()


def test_interval_factors_on_slow_movers_count_zeros_as_the_coverage_metric_does():
    from scipy import stats

    from bi_pipeline.forecasting.ensemble import respread
    from bi_pipeline.forecasting.metrics import covered_share

    # Poisson(0.8) days (45% zeros) forecast with a smooth, too narrow distribution that never reaches zero: the
    # quantiles of a normal at the mean with half the Poisson's sd, floored at 0.15.
    rng = np.random.default_rng(2)
    y = rng.poisson(0.8, 6000).astype("float64")
    steps = np.tile(np.arange(1, 13), 500)
    row = np.maximum(0.8 + 0.5 * np.sqrt(0.8) * stats.norm.ppf(np.asarray(QUANTILES)), 0.15)
    quantiles = np.tile(row, (len(y), 1))
    factors = fit_step_factors(quantiles, y, steps, 12, floor=True)
    for group, factor in enumerate(factors):
        rows = (steps - 1) // 3 == group
        covered = covered_share(respread(quantiles[rows], steps[rows], [factor] * 4, 12, True), y[rows]).mean()
        # The least factor that covers the target share, ties split; a hair less does not.
        assert covered >= COVERAGE_TARGET
        narrower = respread(quantiles[rows], steps[rows], [factor - 0.01] * 4, 12, True)
        assert covered_share(narrower, y[rows]).mean() < COVERAGE_TARGET
    assert min(factors) > 1.5
    # Counted as the closed interval counts them (every zero on a lower quantile of zero inside), the rule of
    # positive demand would stop far short.
    plain = fit_step_factors(quantiles, y, steps, 12)
    assert max(plain) < min(factors)
    # Without a zero among the actuals the floor changes nothing.
    assert fit_step_factors(quantiles, y + 1, steps, 12, floor=True) == fit_step_factors(quantiles, y + 1, steps, 12)


def test_needed_factors_at_the_median_beside_a_point_forecast_and_at_zero():
    # q0.1 … q0.9 at 0, 2.5, …, 20 around a median of 10: the half-widths are 10 on both sides.
    quantiles = np.tile(np.linspace(0.0, 20.0, len(QUANTILES)), (4, 1))
    quantiles[3] = 5.0  # a forecast with no width
    y = np.array([10.0, 25.0, 0.0, 6.0])
    np.testing.assert_allclose(needed_factors(quantiles, y), [0.0, 1.5, 1.0, np.inf])


def test_combine_blends_medians_and_spreads_with_their_own_weights_and_fills_missing_rows():
    dates = pd.date_range("2024-01-01", periods=4, freq="W-MON")
    actual = pd.DataFrame({"store_id": "S", "item_id": "I", "date": dates, "sales": [10.0, 12, 11, 13]})

    def frame(values, width):
        out = actual[["store_id", "item_id", "date"]].copy()
        out["mean"] = values
        for q in QUANTILES:
            out[quantile_column(q)] = np.asarray(values) + (q - 0.5) * width
        return out

    # Both medians 1 off (one above, one below), the first with tight intervals, the second with intervals 20 wide.
    tight, wide = frame([11.0, 13, 12, 14], 1.0), frame([9.0, 11, 10, 12], 20.0)
    mixed = combine(
        {"transformer": tight, "lightgbm": wide},
        {"transformer": 0.5, "lightgbm": 0.5},
        {"transformer": 0.75, "lightgbm": 0.25},
    )
    assert mixed["mean"].tolist() == actual["sales"].tolist()
    # Median 10 at the first date, distance of q0.9 from it: 0.75 · 0.4 + 0.25 · 8 = 2.3.
    assert mixed["q0.9"].iloc[0] == pytest.approx(10.0 + 2.3)
    assert mixed["q0.1"].iloc[0] == pytest.approx(10.0 - 2.3)
    # A row only one member forecasts (a series too new for the other) is that member's alone.
    partial = combine(
        {"transformer": tight, "lightgbm": wide.iloc[:2]},
        {"transformer": 0.5, "lightgbm": 0.5},
        {"transformer": 0.5, "lightgbm": 0.5},
    )
    assert partial["mean"].tolist() == [10.0, 12.0, 12.0, 14.0]
    # Only the dates after the history's last one.
    assert len(combine({"transformer": tight}, {"transformer": 1.0}, {"transformer": 1.0}, dates[1])) == 2


def test_ensemble_candidate_saves_loads_and_forecasts_from_newer_history(tmp_path):
    history = weekly_history(periods=100)
    trained = train_with_holdout(history, "W", horizon=8, season_length=52, config=tiny(epochs=2))
    candidate = make_candidate(trained.model, history, Task("W", 8, 52, ("holiday",)), ensemble=True)
    assert set(candidate.scores) == {"transformer", "lightgbm", "auto_ets", "ensemble"}
    assert candidate.scores["transformer"] == pytest.approx(trained.scores)
    assert candidate.own_scores == candidate.scores["ensemble"]
    assert candidate.kind in ("transformer", "lightgbm", "auto_ets", "ensemble")
    assert len(candidate.selection.origins) == 3 and len(candidate.model.step_factors) == STEP_GROUPS
    assert len(candidate.holdout["lightgbm"]) == 6 * 8 and len(candidate.validation) > 0
    alone = make_candidate(trained.model, history, Task("W", 8, 52), ensemble=False)
    assert alone.kind == "transformer" and set(alone.scores) == {"transformer"}

    # An even blend of the three round-trips through its directory and forecasts after the newest period: the
    # transformer reads the newest context, LightGBM the newest lags, AutoETS refits on the newest history.
    train = history[history["date"] <= trained.panel.dates[trained.cutoff]]
    lightgbm = fit_lightgbm(train, 8, "W", ["holiday"])
    weights = {"transformer": 0.4, "lightgbm": 0.3, "auto_ets": 0.3}
    Forecaster(trained.result.model, lightgbm, weights, None, [1.0, 1.2, 1.4, 1.6], 52).save(tmp_path / "ensemble")
    loaded = Forecaster.load(tmp_path / "ensemble")
    assert loaded.kind == "ensemble" and loaded.weights == weights and loaded.lightgbm.covariates == ["holiday"]
    assert loaded.step_factors == [1.0, 1.2, 1.4, 1.6] and loaded.season_length == 52
    assert loaded.describe() == "transformer 0.4 + lightgbm 0.3 + auto_ets 0.3"
    spread = {"transformer": 0.5, "auto_ets": 0.5}
    assert Forecaster(trained.result.model, None, {"transformer": 1.0}, spread).describe() == (
        "transformer 1.0 (spread: transformer 0.5 + auto_ets 0.5)"
    )
    latest = forecast_latest(loaded, history)
    assert len(latest) == 6 * 8 and latest["date"].min() == history["date"].max() + pd.Timedelta(weeks=1)
    parts = {
        "transformer": forecast_latest(trained.result.model, history),
        "lightgbm": predict_lightgbm(lightgbm, history, 8),
        "auto_ets": statistical_forecast(history, 8, "W", 52, names=("auto_ets",))["auto_ets"],
    }
    last = history["date"].max()
    expected = apply_step_factors(combine(parts, weights, weights, last), [1.0, 1.2, 1.4, 1.6], last, 8)
    merged = latest.merge(expected, on=["store_id", "item_id", "date"], suffixes=("", "_expected"))
    assert len(merged) == len(latest)
    np.testing.assert_allclose(merged["q0.9"], merged["q0.9_expected"], rtol=1e-6)
    # The champion is re-scored on a challenger's holdout with its own parts: the same numbers after loading.
    in_memory = Forecaster(trained.result.model, lightgbm, weights, None, [1.0, 1.2, 1.4, 1.6], 52)
    assert holdout_score(loaded, history, 52) == pytest.approx(holdout_score(in_memory, history, 52))
    # A choice of AutoETS alone saves no LightGBM and forecasts with AutoETS.
    Forecaster(trained.result.model, lightgbm, {"auto_ets": 1.0}, None, None, 52).save(tmp_path / "ets")
    assert not (tmp_path / "ets" / "lightgbm").exists()
    ets = Forecaster.load(tmp_path / "ets")
    assert ets.kind == "auto_ets" and ets.lightgbm is None
    np.testing.assert_allclose(forecast_latest(ets, history)["q0.5"], parts["auto_ets"]["q0.5"], rtol=1e-6)


def test_a_transformer_that_loses_on_validation_gives_way_to_a_baseline():
    # A transformer trained one epoch at a negligible learning rate forecasts noise; smooth seasonal series that
    # AutoETS and LightGBM read well: the candidate is one of them (or their blend), without the transformer.
    history = weekly_history(periods=110)
    trained = train_with_holdout(history, "W", 8, 52, config=tiny(epochs=1, learning_rate=1e-7))
    candidate = make_candidate(trained.model, history, Task("W", 8, 52, ("holiday",)))
    assert candidate.model.weight == 0.0 and candidate.kind != "transformer"
    assert candidate.selection.scores["transformer"]["MASE"] > candidate.selection.scores["combination"]["MASE"]
    assert candidate.scores["ensemble"]["MASE"] < candidate.scores["transformer"]["MASE"]


def test_validation_is_two_horizons_at_most_a_fifth_of_the_history():
    # aus_retail's monthly history (H = 12, 417 periods before the holdout): two years; Walmart's (H = 39, 104
    # weeks): a fifth of its history, as before; a tiny history still gets one period.
    assert validation_length(12, 417) == 24
    assert validation_length(39, 104) == 20
    assert validation_length(13, 40) == 8
    assert validation_length(12, 3) == 1
    assert validation_length(12, 417, horizons=1.0) == 12
    assert validation_length(12, 417, horizons=1.5) == 18


def test_every_series_without_a_forecast_is_listed_with_the_reason():
    history = weekly_history(series=3, periods=20)
    last = history["date"].max()
    history = history[~((history["item_id"] == "I1") & (history["date"] > last - pd.Timedelta(weeks=3)))]
    forecasts = history[history["date"] == last][["store_id", "item_id"]].astype(str)
    forecasts = forecasts[forecasts["item_id"] != "I2"]  # an active series the model returned nothing for
    skipped = not_forecast(history, forecasts)
    assert skipped[["item_id", "reason"]].to_dict("records") == [
        {
            "item_id": "I1",
            "reason": f"ended: its last landed period is {(last - pd.Timedelta(weeks=3)).date()}, before {last.date()}",
        },
        {"item_id": "I2", "reason": "no forecast from the model"},
    ]


def test_the_floor_is_smooth_in_training_and_holds_a_point_mass_at_zero_in_forecasts():
    raw = torch.tensor([-2.0, -0.3, 0.0, 0.05, 0.5, 3.0])
    soft = torch.nn.functional.softplus(raw, beta=5.0)
    torch.testing.assert_close(smooth_floor(raw), soft)
    # A softplus never reaches zero: a raw 0 is lifted to log(2) / 5.
    assert float(smooth_floor(raw).min()) > 0
    assert float(smooth_floor(torch.tensor(0.0))) == pytest.approx(np.log(2) / 5)
    hard = smooth_floor(raw, hard=True)
    assert hard[:3].tolist() == [0.0, 0.0, 0.0]  # at or below zero: zero
    torch.testing.assert_close(hard[3:], soft[3:])  # above it: the same softplus
    assert bool((hard[1:] >= hard[:-1]).all())  # still monotone, so quantiles keep their order


def test_a_zero_heavy_panel_gets_no_negative_quantile_from_the_network_itself(tmp_path):
    from bi_pipeline.config import Settings
    from bi_pipeline.forecasting.backtest import load_history
    from bi_pipeline.forecasting.inference import quantile_forecasts
    from bi_pipeline.forecasting.models import Transformer
    from bi_pipeline.generate import GenerationSpec, generate

    # Slow movers only: most days sell nothing.
    spec = GenerationSpec(stores=2, items=12, periods=240, frequency="D", defects=0, intermittent_item_share=1.0)
    generate(tmp_path / "landing", spec)
    history, frequency, _ = load_history(tmp_path / "landing", Settings(home=tmp_path, landing=tmp_path / "landing"))
    assert (history["sales"] == 0).mean() > 0.5
    train = history[history["date"] <= history["date"].max() - pd.Timedelta(days=14)]
    model = Transformer(tiny(epochs=2)).fit(train, Task("D", 14, 7))
    assert model.network.members[0].nonnegative
    # The network's own quantiles, before any per-series feedback or guard, keep to the measure's support.
    raw = quantile_forecasts(model.network, model.panel, np.arange(model.panel.series), model.cutoff)
    assert (raw >= 0).all()
    out = model.predict(train)
    assert (out[QCOLS] >= 0).all().all() and len(out) == model.panel.series * 14
    # Intermittent series are forecast as such: the low quantiles sit at zero, a point mass the network gives them
    # (a softplus alone never reaches 0), so a day without a sale can fall inside the interval.
    assert (raw[..., 0] == 0).mean() > 0.5
    assert (out["q0.1"] == 0).mean() > 0.5
