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
        ("BI_PIPELINE_MAX_BAD_ROW_RATE", "lots", "BI_PIPELINE_MAX_BAD_ROW_RATE='lots': could not convert"),
        ("BI_PIPELINE_MAX_BAD_ROW_RATE", "2", "within"),
        ("BI_PIPELINE_FREQUENCY", "Q", "BI_PIPELINE_FREQUENCY='Q': choose one of D, W, M"),
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


def test_training_settings_reach_the_recipe_from_env_resource_and_flags(monkeypatch, tmp_path):
    import argparse

    from bi_pipeline.config import ForecastSettings, TrainingSettings, add_flags, from_args, from_env
    from bi_pipeline.defs.resources import ForecastingResource

    settings = Settings(home=tmp_path, landing=tmp_path / "l")
    default = ForecastingResource.from_settings(settings, ForecastSettings.from_env()).train_config()
    assert (default.members, default.epochs, default.init_from, default.calendar_effects) == (4, 40, None, "easter")
    assert (default.weight_average, default.recency_halflife, default.validation_horizons) == (0.99, 10.0, 2.0)
    monkeypatch.setenv("BI_PIPELINE_MEMBERS", "2")
    monkeypatch.setenv("BI_PIPELINE_CALENDAR_EFFECTS", "off")
    monkeypatch.setenv("BI_PIPELINE_INIT_FROM", "synthetic")
    training = from_env(TrainingSettings)
    resource = ForecastingResource.from_settings(settings, ForecastSettings.from_env(), training, {"mixup": 0.0})
    config = resource.train_config()
    assert (config.members, config.calendar_effects, config.init_from, config.mixup) == (2, "off", "synthetic", 0.0)
    # A flag overrides its variable; a flag not given leaves the variable's value.
    parser = argparse.ArgumentParser()
    add_flags(parser, TrainingSettings)
    args = parser.parse_args(["--members", "3", "--calendar-effects", "all"])
    assert (from_args(TrainingSettings, args).members, from_args(TrainingSettings, args).init_from) == (3, "synthetic")
    with pytest.raises(SystemExit):
        parser.parse_args(["--calendar-effects", "sometimes"])


def test_a_choice_or_flag_value_out_of_range_is_named(monkeypatch):
    from bi_pipeline.config import ForecastSettings, TrainingSettings, from_env

    monkeypatch.setenv("BI_PIPELINE_SEASONAL_PROFILE", "volume")
    with pytest.raises(ValueError, match="BI_PIPELINE_SEASONAL_PROFILE='volume': choose one of auto, on, off"):
        from_env(TrainingSettings)
    monkeypatch.setenv("BI_PIPELINE_ENSEMBLE", "off")
    assert ForecastSettings.from_env().ensemble is False
    monkeypatch.setenv("BI_PIPELINE_ENSEMBLE", "maybe")
    with pytest.raises(ValueError, match="BI_PIPELINE_ENSEMBLE='maybe': use 1/true/yes/on or 0/false/no/off"):
        ForecastSettings.from_env()


def test_the_configuration_docs_are_generated_from_the_declarations():
    from bi_pipeline.config import SETTINGS_CLASSES, configuration_markdown, settings_fields

    docs = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    assert configuration_markdown() in docs, "docs/configuration.md is stale: paste `bi-pipeline settings` into it"
    model = [f for cls in SETTINGS_CLASSES[1:3] for f in settings_fields(cls)]
    automation = {"retrain_after_periods", "degradation_threshold", "degradation_min_periods", "forecast_cron"}
    automation |= {"full_retrain_cron", "mlflow_tracking_uri"}
    assert len([f for f in model if f.name not in automation]) == 18
