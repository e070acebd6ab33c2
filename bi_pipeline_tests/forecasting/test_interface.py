"""Every model of the catalog behind the one interface: fit on a panel, predict the horizon, save, load, predict the
same again."""

from __future__ import annotations

import pandas as pd
import pytest

from bi_pipeline.forecasting.catalog import MODELS, build_models
from bi_pipeline.forecasting.ensemble import Forecaster
from bi_pipeline.forecasting.interface import Task
from bi_pipeline.forecasting.metrics import QUANTILES, quantile_column
from bi_pipeline.forecasting.models import AutoETS, LightGBM, SeasonalNaive, Transformer
from bi_pipeline_tests.forecasting.helpers import tiny, weekly_history

LOADERS = {"transformer": Transformer, "seasonal_naive": SeasonalNaive, "auto_ets": AutoETS, "lightgbm": LightGBM}
COLUMNS = ["store_id", "item_id", "date", "mean", *[quantile_column(q) for q in QUANTILES]]


def test_every_model_fits_predicts_saves_and_loads_through_the_interface(tmp_path):
    history = weekly_history(periods=100)
    dates = history["date"].unique()
    train, test = history[history["date"] <= dates[-9]], history[history["date"] > dates[-9]]
    future = test.drop(columns="sales")
    task = Task("W", 8, 52, ("holiday",))
    models = build_models(MODELS, tiny(epochs=1))
    assert list(models) == list(MODELS)
    for name, model in models.items():
        out = model.fit(train, task, future).predict(train, future)
        assert list(out.columns) == COLUMNS, name
        assert len(out) == 6 * 8 and out["date"].min() == test["date"].min(), name
        assert (out[COLUMNS[4:]].diff(axis=1).iloc[:, 1:] >= -1e-9).all().all(), name  # quantiles never cross
        model.save(tmp_path / name)
        loaded = (Forecaster if name == "ensemble" else LOADERS[name]).load(tmp_path / name)
        # A loaded model reads the history as given (newer lags, the context): the same forecasts here.
        again = loaded.predict(train, future)
        pd.testing.assert_frame_equal(
            again.sort_values(["store_id", "item_id", "date"]).reset_index(drop=True),
            out.sort_values(["store_id", "item_id", "date"]).reset_index(drop=True),
            check_exact=False,
            rtol=1e-4,
            atol=1e-4,
        )


def test_a_model_asked_to_predict_before_fitting_says_so_and_unknown_names_are_named():
    with pytest.raises(RuntimeError, match="seasonal_naive: call fit\\(\\) before predict\\(\\)"):
        SeasonalNaive().predict(weekly_history())
    with pytest.raises(ValueError, match="unknown model\\(s\\) prophet: choose from transformer"):
        build_models(("prophet", "lightgbm"))
    with pytest.raises(ValueError, match="frequency must be one of D, W, M, got 'Q'"):
        Task("Q", 4)
