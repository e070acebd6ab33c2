"""Settings come from the environment in one place, and every piece of state lives under the home."""

from __future__ import annotations

from pathlib import Path

import pytest

from bi_pipeline.config import Settings, prepare_dagster_home
from bi_pipeline.defs.resources import PipelineResource


def test_settings_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BI_PIPELINE_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("BI_PIPELINE_LANDING", raising=False)
    monkeypatch.setenv("BI_PIPELINE_FREQUENCY", "W")
    monkeypatch.setenv("BI_PIPELINE_ALLOW_RETURNS", "yes")
    monkeypatch.setenv("BI_PIPELINE_MAX_BAD_ROW_RATE", "0.1")
    settings = Settings.from_env()
    assert settings.landing == tmp_path / "h" / "landing"
    assert (settings.frequency, settings.allow_returns, settings.max_bad_row_rate) == ("W", True, 0.1)
    for path in (settings.dagster_home, settings.asset_dir, settings.gx_dir, settings.manifest_path):
        assert path.is_relative_to(settings.home)
    assert settings.mlflow_uri == f"sqlite:///{tmp_path / 'h' / 'mlflow.db'}"
    monkeypatch.setenv("BI_PIPELINE_LANDING", str(tmp_path / "drop"))
    assert Settings.from_env().landing == tmp_path / "drop"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BI_PIPELINE_MAX_BAD_ROW_RATE", "lots", "is not a number"),
        ("BI_PIPELINE_MAX_BAD_ROW_RATE", "2", "within"),
        ("BI_PIPELINE_FREQUENCY", "Q", "frequency must be one of"),
    ],
)
def test_bad_settings_are_named(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        Settings.from_env()


def test_resource_round_trips_every_setting(tmp_path):
    settings = Settings(home=tmp_path, landing=tmp_path / "l", frequency="M", implicit_zeros=True, price_max=5.0)
    assert PipelineResource.from_settings(settings).settings() == settings


def test_dagster_home_gets_the_project_config_and_keeps_user_edits(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    settings = Settings(home=tmp_path, landing=tmp_path / "landing")
    home = prepare_dagster_home(settings)
    config = home / "dagster.yaml"
    assert config.read_text() == (Path(__file__).resolve().parents[1] / "dagster.yaml").read_text()
    config.write_text("storage:\n  postgres: {}\n")  # a production edit
    prepare_dagster_home(settings)
    assert config.read_text() == "storage:\n  postgres: {}\n"


def test_loss_weighting_reaches_the_training_recipe_and_a_typo_is_named(monkeypatch, tmp_path):
    from bi_pipeline.config import ForecastSettings
    from bi_pipeline.defs.resources import ForecastingResource

    monkeypatch.setenv("BI_PIPELINE_LOSS_WEIGHTING", "sqrt_level")
    forecast = ForecastSettings.from_env()
    settings = Settings(home=tmp_path, landing=tmp_path / "l")
    assert ForecastingResource.from_settings(settings, forecast).train_config().loss_weighting == "sqrt_level"
    monkeypatch.setenv("BI_PIPELINE_LOSS_WEIGHTING", "volume")
    with pytest.raises(ValueError, match="BI_PIPELINE_LOSS_WEIGHTING='volume': choose one of equal, level"):
        ForecastSettings.from_env()


def test_calibration_and_pretrained_start_reach_the_training_recipe(monkeypatch, tmp_path):
    from bi_pipeline.config import ForecastSettings
    from bi_pipeline.defs.resources import ForecastingResource

    settings = Settings(home=tmp_path, landing=tmp_path / "l")
    default = ForecastingResource.from_settings(settings, ForecastSettings.from_env()).train_config()
    assert (default.calibrate_spread_power, default.init_from, default.error_spread_windows) == (True, None, 5)
    assert (default.seasonal_profile, default.level_feedback_origins, default.calendar_effects) == ("off", 4, "easter")
    assert (default.calibrate_shape, default.weight_average, default.recency_halflife) == (False, 0.99, 10.0)
    assert default.validation_horizons == 2.0
    monkeypatch.setenv("BI_PIPELINE_VALIDATION_HORIZONS", "1")
    monkeypatch.setenv("BI_PIPELINE_RECENCY_HALFLIFE", "0")
    monkeypatch.setenv("BI_PIPELINE_CALIBRATE_SHAPE", "on")
    monkeypatch.setenv("BI_PIPELINE_WEIGHT_AVERAGE", "0")
    monkeypatch.setenv("BI_PIPELINE_CALENDAR_EFFECTS", "off")
    monkeypatch.setenv("BI_PIPELINE_CALIBRATE_SPREAD_POWER", "0")
    monkeypatch.setenv("BI_PIPELINE_ERROR_SPREAD_WINDOWS", "0")
    monkeypatch.setenv("BI_PIPELINE_SEASONAL_PROFILE", "auto")
    monkeypatch.setenv("BI_PIPELINE_LEVEL_FEEDBACK_ORIGINS", "0")
    monkeypatch.setenv("BI_PIPELINE_INIT_FROM", "synthetic")
    config = ForecastingResource.from_settings(settings, ForecastSettings.from_env()).train_config()
    assert (config.calibrate_spread_power, config.init_from, config.error_spread_windows) == (False, "synthetic", 0)
    assert (config.seasonal_profile, config.level_feedback_origins, config.calendar_effects) == ("auto", 0, "off")
    assert (config.calibrate_shape, config.weight_average, config.recency_halflife) == (True, 0.0, 0.0)
    assert config.validation_horizons == 1.0


def test_a_flag_that_is_neither_on_nor_off_is_named(monkeypatch):
    from bi_pipeline.config import ForecastSettings

    monkeypatch.setenv("BI_PIPELINE_CALIBRATE_LEVEL", "off")
    assert ForecastSettings.from_env().calibrate_level is False
    monkeypatch.setenv("BI_PIPELINE_CALIBRATE_LEVEL", "maybe")
    with pytest.raises(ValueError, match="BI_PIPELINE_CALIBRATE_LEVEL='maybe': use 1/true/yes/on or 0/false/no/off"):
        ForecastSettings.from_env()
