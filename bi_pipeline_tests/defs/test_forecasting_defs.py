"""The forecasting assets with materialize(), MLflow runs and the registry's champion/challenger rules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest

from bi_pipeline.config import DecisionSettings, ForecastSettings, Settings, TrainingSettings
from bi_pipeline.contract import scan_sales_dir
from bi_pipeline.decisions.warehouse import Warehouse, default_url
from bi_pipeline.definitions import build_defs
from bi_pipeline.defs.collection import RANGE_END_TAG, RANGE_START_TAG, sales_periods
from bi_pipeline.forecasting.calendar import pandas_freq
from bi_pipeline.forecasting.candidate import forecast_latest, future_covariates, input_example, model_input
from bi_pipeline.forecasting.ensemble import Forecaster, saved_dependence
from bi_pipeline.forecasting.lightgbm import fit_lightgbm
from bi_pipeline.forecasting.metrics import QUANTILES, quantile_column
from bi_pipeline.forecasting.registry import CHALLENGER, CHAMPION, MODEL_NAME, PREVIOUS, Tracker
from bi_pipeline.generate import GenerationSpec, generate
from bi_pipeline_tests.decisions.test_alerts import Sink

TINY = ForecastSettings(horizon=6)
REPOSITORY = Path(__file__).resolve().parents[2]
TINY_TRAINING = TrainingSettings(members=1, epochs=2, max_windows_per_epoch=256)


def run_all(
    settings: Settings,
    instance: dg.DagsterInstance,
    forecast: ForecastSettings = TINY,
    decisions: DecisionSettings | None = None,
):
    keys = sorted(f.key for f in scan_sales_dir(settings.landing, settle_seconds=0, assume_complete=True).ready)
    new = [k for k in keys if not instance.has_dynamic_partition(sales_periods.name, k)]
    instance.add_dynamic_partitions(sales_periods.name, new)
    defs = build_defs(settings, forecast, TINY_TRAINING, decisions=decisions)
    tags = {RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]}
    return defs.resolve_job_def("pipeline_job").execute_in_process(instance=instance, tags=tags)


@pytest.fixture
def landed(settings: Settings) -> Settings:
    generate(settings.landing, GenerationSpec(stores=2, items=4, periods=60, frequency="W", defects=0))
    return settings


@pytest.mark.slow
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
        # The candidate is one member or a blend, whichever the validation origins chose; each member's holdout
        # metrics are in the run, and the candidate's own are the ensemble row's.
        kind = version.tags["kind"]
        assert kind == run.data.params["kind"] and kind in ("transformer", "lightgbm", "auto_ets", "ensemble")
        assert run.data.params["members"].startswith(kind if kind != "ensemble" else "")
        parts = ("transformer", "lightgbm", "auto_ets", "ensemble")
        assert {f"{part}_holdout_MASE" for part in parts} <= set(run.data.metrics)
        assert run.data.metrics["holdout_MASE"] == pytest.approx(run.data.metrics["ensemble_holdout_MASE"])

        trained = result.asset_materializations_for_node("forecaster")[0].metadata
        assert trained["model_version"].value == "1" and trained["decision"].value == "promoted"
        assert trained["model_kind"].value == kind
        # No champion yet: promoted for beating seasonal naive on the same holdout (the floor).
        floor = trained["seasonal_naive_holdout_MASE"].value
        assert trained["decision_reason"].value == (
            f"no champion yet; MASE {run.data.metrics['holdout_MASE']:.4f} beats seasonal naive's {floor:.4f}"
        )
        assert run.data.metrics["holdout_MASE"] < floor
        assert tracker.client.get_run(run.info.run_id).data.metrics["seasonal_naive_holdout_MASE"] == floor
        # The run's checkpoint folder and model directory are removed once the version is registered.
        assert not any((landed.home / "models").iterdir())
        assert not (landed.checkpoint_dir / "forecaster" / result.run_id).exists()

        forecasts = pd.read_parquet(landed.asset_dir / "forecasts.parquet")
        integrated = pd.read_parquet(landed.asset_dir / "integrated_sales.parquet")
        last = integrated["date"].max()
        active = integrated[integrated["date"] == last][["store_id", "item_id"]].drop_duplicates()
        assert len(forecasts) == len(active) * 6
        assert forecasts["date"].min() > last and (forecasts["model_version"] == "1").all()
        assert (np.diff(forecasts[[quantile_column(q) for q in QUANTILES]].to_numpy(), axis=1) >= 0).all()
        published = result.asset_materializations_for_node("forecasts")[0].metadata
        # Every series not forecast is counted with its reason: here, those whose sales ended before the last period.
        ended = len(integrated[["store_id", "item_id"]].drop_duplicates()) - len(active)
        assert published["series_not_forecast"].value == ended
        assert published["not_forecast_by_reason"].value == ({"ended": ended} if ended else {})
        assert (forecasts[[quantile_column(q) for q in QUANTILES]] >= 0).all().all()
        plots = published["plots"].value
        assert plots.count("data:image/png;base64,") == 4

        table = pd.read_parquet(landed.asset_dir / "backtest.parquet")
        assert table["model"].tolist() == ["transformer", "seasonal_naive", "auto_ets", "lightgbm", "ensemble"]
        assert table.loc[table["model"] == "seasonal_naive", "skill"].iloc[0] == 1.0
        assert table.loc[table["model"] == "seasonal_naive", "MASE"].iloc[0] == pytest.approx(floor)
        assert table[["MASE", "WAPE", "WQL"]].notna().all().all()
        # The backtest shows the very parts that competed for champion.
        for part in parts:
            mase = table.loc[table["model"] == part, "MASE"].iloc[0]
            assert mase == pytest.approx(run.data.metrics[f"{part}_holdout_MASE"])

        # Orders for every forecast series, from the champion's fitted error dependence; the publication in the BI
        # database (DuckDB under the home by default).
        planned = pd.read_parquet(landed.asset_dir / "orders.parquet")
        assert len(planned) == len(active) and (planned["model_version"] == "1").all()
        assert (planned["protection_periods"] == 2).all() and (planned["economics"] == "service level").all()
        assert (planned["demand_p10"] <= planned["demand_p50"]).all() and (planned["order_up_to"] >= 0).all()
        saved = saved_dependence(tracker.model_dir("1"))
        ordered = result.asset_materializations_for_node("orders")[0].metadata
        assert ordered["dependence"].value == saved.describe()
        # Each order is read at the critical ratio moved by the champion's saved shift.
        assert saved.level_shift <= 0.0
        assert planned["order_level"].to_numpy() == pytest.approx(saved.order_level(planned["critical_ratio"]))
        warehouse = Warehouse(default_url(landed.home))
        assert len(warehouse.read("forecasts")) == len(forecasts) and len(warehouse.read("orders")) == len(active)

        # A second training on the same data competes with the champion on the same holdout.
        again = (
            build_defs(landed, TINY, TINY_TRAINING).resolve_job_def("train_job").execute_in_process(instance=instance)
        )
        assert again.success
        meta = again.asset_materializations_for_node("forecaster")[0].metadata
        assert meta["model_version"].value == "2"
        assert "champion_holdout_MASE" in meta
        expected = "2" if meta["decision"].value == "promoted" else "1"
        assert tracker.alias_version(CHAMPION) == expected and tracker.alias_version(CHALLENGER) == "2"
        # The same cutoff from the same champion replaces its rows; a new champion's publication is added.
        published = warehouse.read("forecasts").groupby("model_version").size().to_dict()
        assert published == ({"1": len(forecasts), "2": len(forecasts)} if expected == "2" else {"1": len(forecasts)})

        # An ensemble champion serves the forecasts: the transformer of v1 blended with a LightGBM.
        integrated = pd.read_parquet(landed.asset_dir / "integrated_sales.parquet")
        v1 = Forecaster.load(tracker.model_dir("1"))
        weights = {"transformer": 0.3, "lightgbm": 0.7}
        blended = Forecaster(v1.transformer, fit_lightgbm(integrated, 6, "W"), weights)
        blended.save(landed.home / "ensemble")
        _, v3 = tracker.log_training(
            landed.home / "ensemble",
            {},
            [],
            {"MASE": 0.5},
            {},
            version_tags={"kind": "ensemble"},
            example=input_example(blended, integrated, 6),
        )
        tracker.client.set_registered_model_alias(MODEL_NAME, CHAMPION, v3)
        served = (
            build_defs(landed, TINY, TINY_TRAINING)
            .resolve_implicit_global_asset_job_def()
            .execute_in_process(instance=instance, asset_selection=[dg.AssetKey("forecasts")])
        )
        assert served.success
        meta = served.asset_materializations_for_node("forecasts")[0].metadata
        assert meta["model_kind"].value == "ensemble" and meta["model_version"].value == v3
        out = pd.read_parquet(landed.asset_dir / "forecasts.parquet")
        assert len(out) == len(active) * 6 and (out["model_version"] == v3).all()
        # The same forecast, with the holidays and events the calendar plans for the periods ahead.
        calendar = pd.read_parquet(landed.asset_dir / "calendar.parquet")
        future = future_covariates(calendar, integrated, 6, pandas_freq(integrated, "W"))
        assert future["holiday"].notna().all()
        expected = forecast_latest(Forecaster.load(tracker.model_dir(v3)), integrated, future)
        np.testing.assert_allclose(out["q0.5"].to_numpy(), expected["q0.5"].to_numpy(), rtol=1e-5)
        # Anyone can load the champion: a fresh process given the tracking URI alone, reading this package from the
        # model's own code, returns the published forecasts value for value from the history and the planned future.
        model_input(integrated, future).to_parquet(landed.home / "input.parquet")
        script = (
            "import sys, mlflow, pandas as pd\n"
            f"model = mlflow.pyfunc.load_model('models:/{MODEL_NAME}@{CHAMPION}')\n"
            f"model.predict(pd.read_parquet({str(landed.home / 'input.parquet')!r})).to_parquet(sys.argv[1])\n"
            "print(sys.modules['bi_pipeline'].__file__)\n"
        )
        environment = {"MLFLOW_TRACKING_URI": landed.mlflow_uri, "PATH": os.environ["PATH"], "HOME": str(landed.home)}
        done = subprocess.run(
            [sys.executable, "-c", script, str(landed.home / "loaded.parquet")],
            env=environment,
            cwd=landed.home,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert Path(REPOSITORY) not in Path(done.stdout.strip().splitlines()[-1]).parents
        loaded = pd.read_parquet(landed.home / "loaded.parquet")
        columns = [quantile_column(q) for q in QUANTILES]
        assert loaded[["store_id", "item_id", "date"]].equals(out[["store_id", "item_id", "date"]])
        np.testing.assert_allclose(loaded[columns].to_numpy(), out[columns].to_numpy(), rtol=1e-6)
        info = mlflow.models.get_model_info(f"models:/{MODEL_NAME}/{v3}")
        assert {"store_id", "item_id", "date", "sales", "holiday"} <= set(info.signature.inputs.input_names())
        assert set(columns) <= set(info.signature.outputs.input_names())

        # A new week lands in which store S002 reports nothing and one series sells 50 times its usual: the alerts
        # hold a high-severity anomaly for it and the stopped store, the webhook gets each alert once.
        last_file = sorted((landed.landing / "sales").iterdir())[-1]
        week = pd.read_csv(last_file, dtype=str)
        week["date"] = str((pd.Timestamp(week["date"].iloc[0]) + pd.Timedelta(days=7)).date())
        week = week[week["store_id"] == "S001"].copy()
        spike = week["item_id"].iloc[0]
        usual = float(integrated.loc[integrated["item_id"].astype(str) == spike, "sales"].mean())
        week.loc[week.index[0], "sales"] = str(int(50 * max(usual, 1.0)) + 100)
        week.to_csv(landed.landing / "sales" / f"{week['date'].iloc[0]}.csv", index=False)
        sink = Sink()
        try:
            decisions = DecisionSettings(alert_webhook=sink.url)
            assert run_all(landed, instance, decisions=decisions).success
            raised = pd.read_parquet(landed.asset_dir / "alerts.parquet")
            stopped = raised[raised["kind"] == "stopped_reporting"]
            assert stopped["store_id"].tolist() == ["S002"] and stopped["severity"].tolist() == ["high"]
            anomaly = raised[(raised["kind"] == "demand_anomaly") & (raised["item_id"] == spike)]
            assert anomaly["severity"].tolist() == ["high"] and anomaly["forecast_version"].tolist() == [v3]
            assert anomaly["period"].iloc[0] == pd.Timestamp(week["date"].iloc[0])
            delivered = [a["alert_id"] for body in sink.bodies for a in body["alerts"]]
            assert sorted(delivered) == sorted(raised["alert_id"])
            # Run again on the same data: the same alerts, none sent twice.
            forecast_job = build_defs(landed, TINY, TINY_TRAINING, decisions=decisions).resolve_job_def("forecast_job")
            assert forecast_job.execute_in_process(instance=instance).success
            assert len(sink.bodies) == 1
            check = instance.get_latest_asset_check_evaluation_record(
                dg.AssetCheckKey(dg.AssetKey("alerts"), "no_high_severity_alerts")
            )
            assert check.event.dagster_event.event_specific_data.passed is False
            warehouse_alerts = Warehouse(default_url(landed.home)).read("alerts")
            assert set(warehouse_alerts["alert_id"]) == set(raised["alert_id"])
        finally:
            sink.close()


def tiny_model_dir(path):
    from bi_pipeline.forecasting.modeling import BIForecaster, BIForecasterConfig

    config = BIForecasterConfig(
        context_length=8,
        patch_length=2,
        horizon=2,
        d_model=8,
        ffn_dim=8,
        num_attention_heads=1,
        num_hidden_layers=1,
        members=1,
    )
    BIForecaster(config).save_pretrained(path)
    return path


def test_champion_is_kept_against_a_worse_challenger_and_rolled_forward_with_a_better_one(tmp_path):
    from bi_pipeline.forecasting.modeling import BIForecaster

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "artifacts").as_uri())
    tiny_model_dir(tmp_path / "m")

    def log(score: float) -> str:
        _, version = tracker.log_training(tmp_path / "m", {"p": 1}, [], {"MASE": score}, {"data_hash": "x"})
        return version

    first = log(0.8)
    assert tracker.decide(first, 0.8, None, floor_score=1.0).promoted
    worse = log(0.9)
    decision = tracker.decide(worse, 0.9, 0.8, floor_score=1.0)
    assert not decision.promoted and "does not beat" in decision.reason
    assert tracker.alias_version(CHAMPION) == first and tracker.alias_version(CHALLENGER) == worse
    assert tracker.client.get_model_version(MODEL_NAME, worse).tags["decision"] == "kept"
    assert tracker.client.get_run(tracker.run_of(worse)).data.metrics["champion_holdout_MASE"] == 0.8
    # Within the margin is not enough.
    assert not tracker.decide(log(0.79), 0.79, 0.8, floor_score=1.0, margin=0.05).promoted
    better = log(0.7)
    assert tracker.decide(better, 0.7, 0.8, floor_score=1.0, margin=0.05).promoted
    assert tracker.alias_version(CHAMPION) == better and tracker.alias_version(PREVIOUS) == first
    # The champion's files can be fetched and loaded again (rollback and serving read this).
    assert BIForecaster.from_pretrained(tracker.model_dir(first)).config.horizon == 2


def test_no_challenger_is_promoted_unless_finite_and_better_than_seasonal_naive(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "artifacts").as_uri())
    tiny_model_dir(tmp_path / "m")
    first = tracker.log_training(tmp_path / "m", {}, [], {"MASE": 0.71}, {})[1]

    def kept(version: str, *args, **kwargs) -> str:
        decision = tracker.decide(version, *args, **kwargs)
        assert not decision.promoted
        assert tracker.client.get_model_version(MODEL_NAME, version).tags["decision"] == "kept"
        return decision.reason

    # No champion yet: the floor alone decides, and nothing that is not finite passes it.
    assert kept(first, float("nan"), None, floor_score=1.0) == "MASE nan is not finite: never promoted"
    assert kept(first, float("inf"), None, floor_score=1.0) == "MASE inf is not finite: never promoted"
    assert kept(first, 0.95, None, floor_score=0.9) == (
        "no champion yet; MASE 0.9500 does not beat seasonal naive's 0.9000"
    )
    assert kept(first, 0.9, None, floor_score=0.9).endswith("does not beat seasonal naive's 0.9000")  # strictly lower
    assert kept(first, 0.5, None, floor_score=float("nan")) == (
        "no champion yet; MASE 0.5000 does not beat seasonal naive (not scored)"
    )
    assert tracker.alias_version(CHAMPION) is None
    decision = tracker.decide(first, 0.71, None, floor_score=1.0)
    assert decision.promoted and decision.reason == "no champion yet; MASE 0.7100 beats seasonal naive's 1.0000"
    assert decision.floor_score == 1.0 and tracker.alias_version(CHAMPION) == first
    assert tracker.client.get_run(tracker.run_of(first)).data.metrics["seasonal_naive_holdout_MASE"] == 1.0

    # With a champion: a challenger that beats it is still kept when it does not beat seasonal naive.
    second = tracker.log_training(tmp_path / "m", {}, [], {"MASE": 0.6}, {})[1]
    assert kept(second, float("nan"), 0.71, floor_score=1.0) == "MASE nan is not finite: never promoted"
    assert kept(second, 0.6, 0.71, floor_score=0.5) == (
        f"MASE 0.6000 beats champion v{first}'s 0.7100 but not seasonal naive's 0.5000"
    )
    assert kept(second, 0.8, 0.71, floor_score=1.0) == f"MASE 0.8000 does not beat champion v{first}'s 0.7100"
    # A champion that could not be scored: the challenger is judged against the floor alone.
    assert kept(second, 1.1, None, floor_score=1.0) == (
        f"champion v{first} could not be scored on this holdout; MASE 1.1000 does not beat seasonal naive's 1.0000"
    )
    assert tracker.alias_version(CHAMPION) == first
    assert tracker.decide(second, 0.6, 0.71, floor_score=1.0).promoted
    assert tracker.alias_version(CHAMPION) == second and tracker.alias_version(PREVIOUS) == first


def test_a_corrupt_champion_is_reported_and_the_challenger_judged_against_the_floor(tmp_path):
    from bi_pipeline.forecasting.candidate import load_champion

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "artifacts").as_uri())
    tiny_model_dir(tmp_path / "m")
    first = tracker.log_training(tmp_path / "m", {}, [], {"MASE": 0.8}, {})[1]
    assert tracker.decide(first, 0.8, None, floor_score=1.0).promoted
    (stored,) = (tmp_path / "artifacts").rglob("model.safetensors")
    stored.write_bytes(b"\x00" * 64)  # the champion's weights, corrupted in the artifact store
    second = tracker.log_training(tmp_path / "m", {}, [], {"MASE": 0.7}, {})[1]

    warnings: list[str] = []
    assert load_champion(tracker, first, warnings.append) is None
    (warning,) = warnings
    assert warning.startswith(f"champion v{first} could not be loaded (")
    assert warning.endswith("); the challenger is judged against seasonal naive alone")
    decision = tracker.decide(second, 0.7, None, floor_score=1.0)
    assert decision.promoted and decision.reason == (
        f"champion v{first} could not be scored on this holdout; MASE 0.7000 beats seasonal naive's 1.0000"
    )
    assert tracker.alias_version(CHAMPION) == second and tracker.alias_version(PREVIOUS) == first


def test_the_tracking_uri_in_the_forecaster_metadata_holds_no_credentials():
    from bi_pipeline.defs.forecasting import mlflow_metadata

    uri = "postgresql://bi:s3cret@db.internal:5432/mlflow?sslmode=require&password=hunter2"
    metadata = mlflow_metadata(uri, "bi_pipeline", "abc123", "3")
    assert metadata["mlflow_tracking_uri"] == "postgresql://***@db.internal:5432/mlflow?sslmode=require&password=***"
    assert metadata["mlflow_run_id"] == "abc123"
    rendered = " ".join(str(getattr(v, "value", v)) for v in metadata.values())
    assert "s3cret" not in rendered and "hunter2" not in rendered and "bi:" not in rendered
    assert "`mlflow ui --backend-store-uri postgresql://***@db.internal:5432/mlflow" in metadata["mlflow_ui"].value


def test_a_tracking_uri_from_the_environment_reaches_dagster_as_the_variable_name(settings, monkeypatch):
    monkeypatch.setenv("BI_PIPELINE_MLFLOW_URI", "postgresql://bi:s3cret@db/mlflow")
    resource = build_defs(settings, ForecastSettings.from_env()).resources["mlflow_tracking"]
    assert isinstance(resource.tracking_uri, dg.EnvVar) and resource.tracking_uri == "BI_PIPELINE_MLFLOW_URI"
    assert "s3cret" not in repr(resource)
    monkeypatch.delenv("BI_PIPELINE_MLFLOW_URI")
    resource = build_defs(settings, ForecastSettings.from_env()).resources["mlflow_tracking"]
    assert not isinstance(resource.tracking_uri, dg.EnvVar) and resource.tracking_uri == settings.mlflow_uri


def test_a_retried_run_keeps_its_root_runs_checkpoint_folder(tmp_path):
    from bi_pipeline.defs.forecasting import run_checkpoints

    first = dg.DagsterRun(job_name="train_job", run_id="first")
    retry = dg.DagsterRun(job_name="train_job", run_id="retry", root_run_id="first", parent_run_id="first")
    other = dg.DagsterRun(job_name="train_job", run_id="other")
    assert run_checkpoints(tmp_path, first) == run_checkpoints(tmp_path, retry) == tmp_path / "forecaster" / "first"
    assert run_checkpoints(tmp_path, other) == tmp_path / "forecaster" / "other"
