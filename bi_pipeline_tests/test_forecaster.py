"""The forecaster's core without Dagster: features, the model, training, checkpoints, save/load, forecasts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bi_pipeline.baselines import fit_lightgbm, predict_lightgbm
from bi_pipeline.ensemble import Forecaster, blend, fit_blend_weight
from bi_pipeline.evaluation import QUANTILES, quantile_column
from bi_pipeline.features import build_panel, fit_spec, panel_frame, panel_from_frame, split_windows
from bi_pipeline.forecasting import forecast_latest, holdout_score, make_candidate, train_with_holdout
from bi_pipeline.models import BIForecaster, pinball_loss, spread_factor, window_weights
from bi_pipeline.training import (
    SPREAD_GRID,
    TrainConfig,
    fit_calibration,
    forecast,
    gather,
    load_model,
    mix_windows,
    model_config,
    train_forecaster,
)

QCOLS = [quantile_column(q) for q in QUANTILES]


def weekly_history(series: int = 6, periods: int = 90, seed: int = 0) -> pd.DataFrame:
    """Seasonal weekly series of different sizes with a holiday flag that lifts sales, and a store attribute."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2021-01-04", periods=periods, freq="W-MON")
    holiday = (dates.isocalendar().week.to_numpy() % 13 == 0).astype("float32")
    frames = []
    for i in range(series):
        level = 10.0 * (i + 1)
        season = 1 + 0.3 * np.sin(2 * np.pi * np.arange(periods) / 52.0 + i)
        sales = level * season * (1 + 0.5 * holiday) + rng.normal(0, 0.5, periods)
        frames.append(
            pd.DataFrame(
                {
                    "date": dates,
                    "store_id": f"S{i % 3}",
                    "item_id": f"I{i}",
                    "sales": sales.astype("float32"),
                    "observed": True,
                    "format": "big" if i % 3 == 0 else "small",
                    "holiday": holiday,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


TINY = dict(d_model=16, ffn_dim=32, num_attention_heads=2, num_hidden_layers=1, max_windows_per_epoch=256)


def tiny(**overrides) -> TrainConfig:
    values = {**TINY, "num_members": 1, "epochs": 4, "patience": 100, "batch_size": 64, **overrides}
    return TrainConfig(**values)


@pytest.fixture
def panel():
    history = weekly_history()
    spec = fit_spec(history, "W")
    return build_panel(history, spec, horizon=8)


def test_spec_takes_flags_and_static_attributes_and_leaves_out_continuous_covariates():
    history = weekly_history()
    history["temperature"] = np.linspace(0, 30, len(history)).astype("float32")
    spec = fit_spec(history, "W")
    assert spec.covariates == ["holiday"]
    assert list(spec.static_categorical) == ["format"] and spec.static_categorical["format"] == ["big", "small"]
    assert fit_spec(history, "W", continuous_covariates=True).covariates == ["holiday", "temperature"]
    assert fit_spec(history, "W", use_covariates=False).future_names == [
        "year_sin1",
        "year_cos1",
        "year_sin2",
        "year_cos2",
        "year_sin3",
        "year_cos3",
    ]


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


def test_window_weights_follow_the_metric_they_stand_for():
    # Two windows: levels 1 and 4 (the scale); one-step changes 0.5 and 1 in their observed contexts.
    past = torch.tensor([[1.0, 1.5, 1.0, 0.5], [4.0, 3.0, 4.0, 5.0]])
    observed = torch.ones_like(past, dtype=torch.bool)
    scale = BIForecaster.scale(past, observed)
    assert scale.flatten().tolist() == [1.0, 4.0]
    assert window_weights("equal", scale, past, observed).flatten().tolist() == [1.0, 1.0]
    assert window_weights("level", scale, past, observed).flatten().tolist() == pytest.approx([0.4, 1.6])
    assert window_weights("sqrt_level", scale, past, observed).flatten().tolist() == pytest.approx([2 / 3, 4 / 3])
    # scale / mean |change| = 1 / 0.5 and 4 / 1 → 2 and 4, normalised to mean 1.
    assert window_weights("mase", scale, past, observed).flatten().tolist() == pytest.approx([2 / 3, 4 / 3])
    # Unobserved values count in neither: the first window's scale becomes 3.5 / 3, its changes 0.5 and 0.5 → 7 / 3.
    observed[0, 3] = False
    scale = BIForecaster.scale(past, observed)
    assert window_weights("mase", scale, past, observed).flatten().tolist() == pytest.approx([14 / 19, 24 / 19])
    with pytest.raises(ValueError, match="loss weighting 'volume'"):
        window_weights("volume", scale, past, observed)


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
    config = tiny(epochs=8, learning_rate=0.01, validation_periods=8, calibrate_level=True, mixup=0.0)
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
    config = tiny(epochs=1, calibrate_level=False, calibrate_spread_power=False)
    update = train_forecaster(panel, 8, 81, config, initial_model=champion).model
    # The champion's factors fitted its own weights: the update starts from 1 and fits its spread again (its level
    # and width calibrations are off here, so they stay neutral instead of inheriting the champion's).
    assert update.config.level_scale == 1.0
    assert update.config.spread_scale in SPREAD_GRID
    assert (update.config.spread_power, update.config.spread_reference) == (0.0, 1.0)
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


def test_the_model_applies_the_width_calibration(panel):
    model = train_forecaster(panel, 8, 81, tiny(epochs=1, calibrate_spread_power=False)).model
    model.config.spread_scale, model.config.level_scale = 0.9, 1.0
    cfg = model.config
    batch = gather(panel, np.arange(6), np.full(6, 82), cfg.context_length, 8, 0, 8)
    inputs = [batch[k] for k in ("past_values", "past_observed", "future_features", "static_categorical")]
    with torch.no_grad():
        members, _ = model(*inputs, batch["static_numeric"], return_members=True)
        raw = members.mean(0)
        width = (raw[..., -1] - raw[..., 0]).mean(-1)
        reference = float(width.median())
        model.config.spread_power, model.config.spread_reference = 0.5, reference
        calibrated, _ = model(*inputs, batch["static_numeric"])
    median = raw[..., 4:5]
    factor = (0.9 * (width / reference) ** 0.5).reshape(6, 1, 1)
    torch.testing.assert_close(calibrated, median + (raw - median) * factor)
    assert float(factor.min()) < 0.9 < float(factor.max())  # narrower forecasts narrow further, wider ones widen


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


@pytest.mark.parametrize("recipe", [{}, {"num_members": 2, "mixup": 0.0, "calibrate_level": False}])
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


def test_masked_pretraining_changes_the_backbone(panel):
    plain = train_forecaster(panel, 8, 81, tiny(epochs=1))
    pretrained = train_forecaster(panel, 8, 81, tiny(epochs=1, pretrain_epochs=2))
    assert pretrained.pretrain_seconds > 0
    a = plain.model.members[0].backbone.state_dict()
    b = pretrained.model.members[0].backbone.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_holdout_training_and_latest_forecasts_from_a_saved_model(tmp_path):
    history = weekly_history(periods=100)
    trained = train_with_holdout(history, "W", horizon=8, season_length=52, config=tiny(epochs=3))
    assert trained.lineage["training_end"] == str(pd.Timestamp(history["date"].unique()[-9]).date())
    assert set(trained.scores) == {"MASE", "WAPE", "WQL", "coverage_80", "bias"}
    trained.result.model.save_pretrained(tmp_path / "m")
    model = BIForecaster.from_pretrained(tmp_path / "m")
    assert holdout_score(model, history, 52) == pytest.approx(trained.scores)
    latest = forecast_latest(model, history)
    assert len(latest) == 6 * 8
    assert latest["date"].min() == history["date"].max() + pd.Timedelta(weeks=1)
    assert (latest["cutoff"] == history["date"].max()).all()


def test_ensemble_weight_is_fitted_on_validation_and_blends_quantiles():
    dates = pd.date_range("2024-01-01", periods=4, freq="W-MON")
    actual = pd.DataFrame({"store_id": "S", "item_id": "I", "date": dates, "sales": [10.0, 12, 11, 13]})
    train = pd.DataFrame(
        {"store_id": "S", "item_id": "I", "date": dates - pd.Timedelta(weeks=4), "sales": [9.0, 11, 10, 12]}
    )

    def frame(values):
        out = actual[["store_id", "item_id", "date"]].copy()
        out["mean"] = values
        for q in QUANTILES:
            out[quantile_column(q)] = np.asarray(values) + (q - 0.5)
        return out

    perfect, off = frame([10.0, 12, 11, 13]), frame([20.0, 22, 21, 23])
    assert fit_blend_weight(perfect, off, actual, train, 1) == 1.0
    assert fit_blend_weight(off, perfect, actual, train, 1) == 0.0
    mixed = blend(perfect, off, 0.5)
    assert mixed["mean"].tolist() == [15.0, 17.0, 16.0, 18.0]
    assert (np.diff(mixed[QCOLS].to_numpy(), axis=1) > 0).all()


def test_refit_trains_again_on_every_window_for_the_best_epoch_count(panel):
    result = train_forecaster(panel, 8, 81, tiny(epochs=3, refit=True))
    phases = [r["phase"] for r in result.history]
    assert phases.count("fit") == 3 and phases.count("refit") == result.best_epoch


def test_ensemble_candidate_saves_loads_and_forecasts_from_newer_history(tmp_path):
    history = weekly_history(periods=100)
    trained = train_with_holdout(history, "W", horizon=8, season_length=52, config=tiny(epochs=2))
    candidate = make_candidate(
        trained.result, trained.panel, trained.cutoff, history, "W", 8, 52, ["holiday"], ensemble=True
    )
    assert set(candidate.scores) == {"transformer", "lightgbm", "ensemble"}
    assert candidate.scores["transformer"] == pytest.approx(trained.scores)
    assert candidate.kind == ("ensemble" if candidate.weight < 1 else "transformer")
    assert len(candidate.holdout["lightgbm"]) == 6 * 8 and len(candidate.validation) > 0
    alone = make_candidate(trained.result, trained.panel, trained.cutoff, history, "W", 8, 52, None, ensemble=False)
    assert alone.kind == "transformer" and set(alone.scores) == {"transformer"}

    # An ensemble at weight 0.5 round-trips through its directory and forecasts after the newest period: the
    # transformer reads the newest context, LightGBM the newest lags, blended at the saved weight.
    train = history[history["date"] <= trained.panel.dates[trained.cutoff]]
    lightgbm = fit_lightgbm(train, 8, "W", ["holiday"])
    Forecaster(trained.result.model, lightgbm, 0.5).save(tmp_path / "ensemble")
    loaded = Forecaster.load(tmp_path / "ensemble")
    assert loaded.kind == "ensemble" and loaded.weight == 0.5 and loaded.lightgbm.covariates == ["holiday"]
    latest = forecast_latest(loaded, history)
    assert len(latest) == 6 * 8 and latest["date"].min() == history["date"].max() + pd.Timedelta(weeks=1)
    transformer_only = forecast_latest(trained.result.model, history)
    lgb_only = predict_lightgbm(lightgbm, history, 8)
    assert lgb_only["date"].min() == latest["date"].min()
    expected = blend(transformer_only, lgb_only, 0.5)
    merged = latest.merge(expected, on=["store_id", "item_id", "date"], suffixes=("", "_expected"))
    assert len(merged) == len(latest)
    np.testing.assert_allclose(merged["q0.9"], merged["q0.9_expected"], rtol=1e-6)
    # The champion is re-scored on a challenger's holdout with its own parts: the same numbers after loading.
    in_memory = Forecaster(trained.result.model, lightgbm, 0.5)
    assert holdout_score(loaded, history, 52) == pytest.approx(holdout_score(in_memory, history, 52))
    assert Forecaster.load(tmp_path / "ensemble").transformer.config.horizon == 8


def test_blend_keeps_every_row_of_the_first_forecast():
    dates = pd.date_range("2024-01-01", periods=2, freq="W-MON")
    first = pd.DataFrame({"store_id": ["A", "A", "B", "B"], "item_id": "I", "date": [*dates, *dates]})
    for column in ["mean", *QCOLS]:
        first[column] = [1.0, 2.0, 3.0, 4.0]
    second = first[first["store_id"] == "A"].copy()
    second[["mean", *QCOLS]] = 3.0
    mixed = blend(first, second, 0.5)
    assert mixed["mean"].tolist() == [2.0, 2.5, 3.0, 4.0]
