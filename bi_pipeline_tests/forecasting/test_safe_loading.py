"""Nothing the pipeline reads back runs code: training checkpoints load with ``weights_only=True``, LightGBM from its
own text format and a JSON recipe, the registered MLflow model from code; pickled files are refused unread."""

from __future__ import annotations

import pickle
from pathlib import Path

import cloudpickle
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from bi_pipeline.forecasting.candidate import forecast_latest, model_input, train_with_holdout
from bi_pipeline.forecasting.checkpoint import plain, save_state
from bi_pipeline.forecasting.ensemble import Forecaster
from bi_pipeline.forecasting.lightgbm import LightGBMModel, UnsafeModelFormat, fit_lightgbm, predict_lightgbm
from bi_pipeline.forecasting.registry import MODEL_NAME, Tracker
from bi_pipeline.forecasting.trainer import train_forecaster
from bi_pipeline.forecasting.transformer import forecast
from bi_pipeline_tests.forecasting.helpers import tiny, weekly_history


class WritesMarker:
    """Unpickling it calls ``open(marker, "w")``: a harmless stand-in for a payload that runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_that_would_run_code_is_refused_and_the_training_starts_fresh(panel, tmp_path):
    marker = tmp_path / "marker"
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    crafted = {"fingerprint": "anything", "epoch": 3, "payload": WritesMarker(marker)}
    torch.save(crafted, checkpoints / "last.pt")
    torch.save(crafted, tmp_path / "copy.pt")
    records: list[dict] = []
    result = train_forecaster(panel, 8, 81, tiny(epochs=2), checkpoint_dir=checkpoints, progress=records.append)

    assert not marker.exists()
    skipped = [r for r in records if r["stage"] == "resume_skipped"]
    assert len(skipped) == 1 and skipped[0]["checkpoint"] == str(checkpoints / "last.pt")
    assert skipped[0]["error"].startswith("UnpicklingError: Weights only load failed")
    assert not [r for r in records if r["stage"] == "resume"]
    assert result.resumed_from_epoch is None and [r["epoch"] for r in result.history] == [1, 2]
    # The training's own checkpoint replaced the refused file; no temporary file is left beside it.
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.pt"]
    assert torch.load(checkpoints / "last.pt", weights_only=True)["epoch"] == 2
    # The payload is live: an unsafe load runs it.
    torch.load(tmp_path / "copy.pt", weights_only=False)
    assert marker.exists()


def test_an_unreadable_checkpoint_is_skipped_with_the_file_named(panel, tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    records: list[dict] = []
    result = train_forecaster(panel, 8, 81, tiny(epochs=1), checkpoint_dir=tmp_path, progress=records.append)
    (skipped,) = [r for r in records if r["stage"] == "resume_skipped"]
    assert skipped["checkpoint"] == str(tmp_path / "last.pt") and result.resumed_from_epoch is None


def test_a_training_crashed_mid_way_resumes_from_a_weights_only_checkpoint(panel, tmp_path):
    recipe = {"epochs": 3, "patience": 100}
    straight = train_forecaster(panel, 8, 81, tiny(**recipe))

    class Crash(Exception):
        pass

    def crash_after_epoch_2(record: dict) -> None:
        if record.get("stage") == "train" and record["epoch"] == 2:
            raise Crash

    with pytest.raises(Crash):
        train_forecaster(panel, 8, 81, tiny(**recipe), checkpoint_dir=tmp_path, progress=crash_after_epoch_2)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["torch_rng"].dtype == torch.uint8
    resumed = train_forecaster(panel, 8, 81, tiny(**recipe), checkpoint_dir=tmp_path)
    assert resumed.resumed_from_epoch == 2
    pd.testing.assert_frame_equal(forecast(straight.model, panel, 81), forecast(resumed.model, panel, 81))


def test_numpy_values_are_saved_as_plain_values(tmp_path):
    state = {"a": np.float64(0.5), "b": [np.bool_(True), np.int64(3)], "c": np.ones(2)}
    save_state(tmp_path / "last.pt", plain(state))
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["a"] == 0.5 and type(state["a"]) is float
    assert state["b"] == [True, 3] and type(state["b"][0]) is bool
    assert torch.equal(state["c"], torch.ones(2, dtype=torch.float64))


def _no_unpickling(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("unpickled")

    for module in (pickle, cloudpickle):
        monkeypatch.setattr(module, "load", refuse)
        monkeypatch.setattr(module, "loads", refuse)


def test_lightgbm_is_saved_in_its_text_format_and_forecasts_the_same_from_newer_history(tmp_path, monkeypatch):
    history = weekly_history(periods=100)
    dates = np.sort(history["date"].unique())
    train = history[history["date"] <= dates[-9]]
    fitted = fit_lightgbm(train, 8, "W", ["holiday"])
    fitted.save(tmp_path / "lgb")
    names = sorted(p.name for p in (tmp_path / "lgb").iterdir())
    assert names == ["lightgbm.json", *(f"model_{n}.txt" for n in range(9))]
    assert (tmp_path / "lgb" / "model_0.txt").read_text().startswith("tree\n")

    _no_unpickling(monkeypatch)
    loaded = LightGBMModel.load(tmp_path / "lgb")
    assert (loaded.frequency, loaded.freq, loaded.covariates) == ("W", "W-MON", ["holiday"])
    assert list(loaded.forecaster.models_) == list(fitted.forecaster.models_)
    # Newer history than the fit, with planned covariates for the periods ahead: the same numbers.
    future = (
        history[["store_id", "item_id"]]
        .drop_duplicates()
        .merge(
            pd.DataFrame({"date": pd.date_range(dates[-1], periods=9, freq="W-MON")[1:], "holiday": 1.0}), how="cross"
        )
    )
    expected = predict_lightgbm(fitted, history, 8, future=future)
    got = predict_lightgbm(loaded, history, 8, future=future)
    assert got["date"].min() == dates[-1] + pd.Timedelta(weeks=1) and len(got) == 6 * 8
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    # And from an older one (the champion re-scored on a challenger's holdout).
    older = history[history["date"] <= dates[-5]]
    pd.testing.assert_frame_equal(
        predict_lightgbm(loaded, older, 8), predict_lightgbm(fitted, older, 8), check_exact=True
    )


def test_a_pickled_lightgbm_directory_is_refused_unread(tmp_path):
    marker = tmp_path / "marker"
    saved = tmp_path / "ensemble"
    weekly = weekly_history(series=2, periods=40)
    trained = train_with_holdout(weekly, "W", horizon=4, season_length=52, config=tiny(epochs=1))
    trained.result.model.save_pretrained(saved)
    (saved / "ensemble.json").write_text('{"kind": "ensemble", "transformer_weight": 0.5}')
    # The layout versions before the text format saved: mlforecast's pickles and a lightgbm.json without a format.
    (saved / "lightgbm" / "mlforecast").mkdir(parents=True)
    (saved / "lightgbm" / "mlforecast" / "models.pkl").write_bytes(pickle.dumps(WritesMarker(marker)))
    (saved / "lightgbm" / "lightgbm.json").write_text('{"frequency": "W", "freq": "W-MON", "covariates": []}')
    message = r"saved in an unsafe format \(pickled mlforecast objects\) and is not loaded: retrain the model"
    with pytest.raises(UnsafeModelFormat, match=message):
        LightGBMModel.load(saved / "lightgbm")
    with pytest.raises(UnsafeModelFormat, match=message):
        Forecaster.load(saved)
    assert not marker.exists()


def test_the_registered_model_is_logged_as_code_and_predicts_what_the_forecaster_does(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)
    history = weekly_history(periods=80)
    trained = train_with_holdout(history, "W", horizon=8, season_length=52, config=tiny(epochs=1))
    train = history[history["date"] <= trained.panel.dates[trained.cutoff]]
    weights = {"transformer": 0.5, "lightgbm": 0.5}
    Forecaster(trained.result.model, fit_lightgbm(train, 8, "W", ["holiday"]), weights).save(tmp_path / "model")
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "artifacts").as_uri())
    _, version = tracker.log_training(tmp_path / "model", {}, [], {"MASE": 0.8}, {"data_hash": "x"})

    logged = sorted(p for p in (tmp_path / "artifacts").rglob("*") if p.is_file())
    assert [p.name for p in logged if p.suffix in (".pkl", ".pickle", ".bin", ".joblib")] == []
    assert "pyfunc.py" in [p.name for p in logged]
    requirements = next(p for p in logged if p.name == "requirements.txt").read_text().split()
    assert f"torch=={torch.__version__}" in requirements and f"mlflow=={mlflow.__version__}" in requirements
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version}")
    loaded = Forecaster.load(tracker.model_dir(version))
    assert loaded.kind == "ensemble" and loaded.weight == 0.5
    pd.testing.assert_frame_equal(pyfunc.predict(history), forecast_latest(loaded, history))
    # The planned future through the one-frame input: a horizon without any holiday (the column empty, as
    # future_covariates leaves it) forecasts as the forecaster does with that future frame.
    cut = history["date"].sort_values().unique()[-9]
    past = history[history["date"] <= cut]
    future = history[history["date"] > cut][["store_id", "item_id", "date", "holiday"]].assign(holiday=np.nan)
    pd.testing.assert_frame_equal(
        pyfunc.predict(model_input(past, future)),
        forecast_latest(loaded, past.assign(store_id=past["store_id"].astype(str)), future),
        check_dtype=False,
    )
