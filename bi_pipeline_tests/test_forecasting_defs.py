"""The forecasting assets with materialize(), MLflow runs and the registry's champion/challenger rules."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from bi_pipeline.baselines import fit_lightgbm
from bi_pipeline.config import ForecastSettings, Settings
from bi_pipeline.contract import scan_sales_dir
from bi_pipeline.definitions import build_defs
from bi_pipeline.defs.collection import sales_periods
from bi_pipeline.ensemble import Forecaster
from bi_pipeline.evaluation import QUANTILES, quantile_column
from bi_pipeline.forecasting import forecast_latest
from bi_pipeline.generate import GenerationSpec, generate
from bi_pipeline.tracking import CHALLENGER, CHAMPION, MODEL_NAME, PREVIOUS, Tracker

TINY = ForecastSettings(horizon=6, members=1, epochs=2, max_windows_per_epoch=256)


def run_all(settings: Settings, instance: dg.DagsterInstance, forecast: ForecastSettings = TINY):
    keys = sorted(f.key for f in scan_sales_dir(settings.landing, settle_seconds=0).ready)
    new = [k for k in keys if not instance.has_dynamic_partition(sales_periods.name, k)]
    instance.add_dynamic_partitions(sales_periods.name, new)
    defs = build_defs(settings, forecast)
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    tags = {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}
    return defs.resolve_job_def("pipeline_job").execute_in_process(instance=instance, tags=tags)


@pytest.fixture
def landed(settings: Settings) -> Settings:
    generate(settings.landing, GenerationSpec(stores=2, items=4, periods=60, frequency="W", defects=0))
    return settings


def test_pipeline_trains_registers_promotes_and_forecasts(landed: Settings):
    with dg.instance_for_test() as instance:
        result = run_all(landed, instance)
        assert result.success
        tracker = Tracker(landed.mlflow_uri, landed.mlflow_artifacts.as_uri())
        assert tracker.alias_version(CHAMPION) == "1" and tracker.alias_version(CHALLENGER) == "1"
        version = tracker.client.get_model_version(MODEL_NAME, "1")
        run = tracker.client.get_run(version.run_id)
        assert run.data.params["horizon"] == "6"
        assert run.data.tags["lineage.training_end"] < run.data.tags["lineage.last_period"]
        assert len(run.data.tags["lineage.data_hash"]) == 16
        assert {"holdout_MASE", "holdout_WQL", "fit_train_loss", "fit_validation_loss"} <= set(run.data.metrics)
        assert tracker.client.get_metric_history(run.info.run_id, "fit_train_loss")[-1].step == 2
        assert version.tags["decision"] == "promoted"
        # The candidate is the transformer or its blend with LightGBM, whichever validation chose; each part's
        # holdout metrics are in the run.
        assert version.tags["kind"] == run.data.params["kind"]
        assert version.tags["kind"] == (
            "ensemble" if float(run.data.params["transformer_weight"]) < 1 else "transformer"
        )
        parts = ("transformer", "lightgbm", "ensemble")
        assert {f"{part}_holdout_MASE" for part in parts} <= set(run.data.metrics)
        kind = version.tags["kind"]
        assert run.data.metrics["holdout_MASE"] == pytest.approx(run.data.metrics[f"{kind}_holdout_MASE"])

        trained = result.asset_materializations_for_node("forecaster")[0].metadata
        assert trained["model_version"].value == "1" and trained["decision"].value == "promoted"
        assert trained["model_kind"].value == kind

        forecasts = pd.read_parquet(landed.asset_dir / "forecasts.parquet")
        integrated = pd.read_parquet(landed.asset_dir / "integrated_sales.parquet")
        last = integrated["date"].max()
        active = integrated[integrated["date"] == last][["store_id", "item_id"]].drop_duplicates()
        assert len(forecasts) == len(active) * 6
        assert forecasts["date"].min() > last and (forecasts["model_version"] == "1").all()
        assert (np.diff(forecasts[[quantile_column(q) for q in QUANTILES]].to_numpy(), axis=1) >= 0).all()
        plots = result.asset_materializations_for_node("forecasts")[0].metadata["plots"].value
        assert plots.count("data:image/png;base64,") == 4

        table = pd.read_parquet(landed.asset_dir / "backtest.parquet")
        assert table["model"].tolist() == ["transformer", "seasonal_naive", "auto_ets", "lightgbm", "ensemble"]
        assert table.loc[table["model"] == "seasonal_naive", "skill"].iloc[0] == 1.0
        assert table[["MASE", "WAPE", "WQL"]].notna().all().all()
        # The backtest shows the very parts that competed for champion.
        for part in parts:
            mase = table.loc[table["model"] == part, "MASE"].iloc[0]
            assert mase == pytest.approx(run.data.metrics[f"{part}_holdout_MASE"])

        # A second training on the same data competes with the champion on the same holdout.
        again = build_defs(landed, TINY).resolve_job_def("train_job").execute_in_process(instance=instance)
        assert again.success
        meta = again.asset_materializations_for_node("forecaster")[0].metadata
        assert meta["model_version"].value == "2"
        assert "champion_holdout_MASE" in meta
        expected = "2" if meta["decision"].value == "promoted" else "1"
        assert tracker.alias_version(CHAMPION) == expected and tracker.alias_version(CHALLENGER) == "2"

        # An ensemble champion serves the forecasts: the transformer of v1 blended with a LightGBM.
        integrated = pd.read_parquet(landed.asset_dir / "integrated_sales.parquet")
        v1 = Forecaster.load(tracker.model_dir("1"))
        blended = Forecaster(v1.transformer, fit_lightgbm(integrated, 6, "W"), 0.3)
        blended.save(landed.home / "ensemble")
        _, v3 = tracker.log_training(
            landed.home / "ensemble", {}, [], {"MASE": 0.5}, {}, version_tags={"kind": "ensemble"}
        )
        tracker.client.set_registered_model_alias(MODEL_NAME, CHAMPION, v3)
        served = (
            build_defs(landed, TINY)
            .resolve_implicit_global_asset_job_def()
            .execute_in_process(instance=instance, asset_selection=[dg.AssetKey("forecasts")])
        )
        assert served.success
        meta = served.asset_materializations_for_node("forecasts")[0].metadata
        assert meta["model_kind"].value == "ensemble" and meta["model_version"].value == v3
        out = pd.read_parquet(landed.asset_dir / "forecasts.parquet")
        assert len(out) == len(active) * 6 and (out["model_version"] == v3).all()
        expected = forecast_latest(Forecaster.load(tracker.model_dir(v3)), integrated)
        np.testing.assert_allclose(out["q0.5"].to_numpy(), expected["q0.5"].to_numpy(), rtol=1e-5)


def test_champion_is_kept_against_a_worse_challenger_and_rolled_forward_with_a_better_one(tmp_path):
    from bi_pipeline.models import BIForecaster, BIForecasterConfig

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "artifacts").as_uri())
    model = BIForecaster(
        BIForecasterConfig(
            context_length=8,
            patch_length=2,
            horizon=2,
            d_model=8,
            ffn_dim=8,
            num_attention_heads=1,
            num_hidden_layers=1,
            num_members=1,
        )
    )
    model.save_pretrained(tmp_path / "m")

    def log(score: float) -> str:
        _, version = tracker.log_training(tmp_path / "m", {"p": 1}, [], {"MASE": score}, {"data_hash": "x"})
        return version

    first = log(0.8)
    assert tracker.decide(first, 0.8, None).promoted
    worse = log(0.9)
    decision = tracker.decide(worse, 0.9, 0.8)
    assert not decision.promoted and "does not beat" in decision.reason
    assert tracker.alias_version(CHAMPION) == first and tracker.alias_version(CHALLENGER) == worse
    assert tracker.client.get_model_version(MODEL_NAME, worse).tags["decision"] == "kept"
    assert tracker.client.get_run(tracker.run_of(worse)).data.metrics["champion_holdout_MASE"] == 0.8
    # Within the margin is not enough.
    assert not tracker.decide(log(0.79), 0.79, 0.8, margin=0.05).promoted
    better = log(0.7)
    assert tracker.decide(better, 0.7, 0.8, margin=0.05).promoted
    assert tracker.alias_version(CHAMPION) == better and tracker.alias_version(PREVIOUS) == first
    # The champion's files can be fetched and loaded again (rollback and serving read this).
    assert BIForecaster.from_pretrained(tracker.model_dir(first)).config.horizon == 2
