"""The use cases the assets call, run directly: no Dagster, a local MLflow store under the test's directory."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bi_pipeline.forecasting.features import fit_spec
from bi_pipeline.forecasting.interface import Task
from bi_pipeline.forecasting.panel import build_panel
from bi_pipeline.forecasting.registry import CHAMPION, Tracker
from bi_pipeline.forecasting.usecases import (
    NoChampion,
    Promotion,
    lightgbm_covariates,
    live_report,
    publish_forecasts,
    train_and_promote,
)
from bi_pipeline_tests.forecasting.helpers import tiny, weekly_history

HORIZON = 8


def setup(history: pd.DataFrame):
    """The features asset's panel, cutoff and task for ``history``: the last ``HORIZON`` periods held out."""
    cutoff_date = pd.Timestamp(history["date"].unique()[-HORIZON - 1])
    train = history[history["date"] <= cutoff_date]
    panel = build_panel(history, fit_spec(train, "W"), reference_end=cutoff_date)
    task = Task("W", HORIZON, 52, lightgbm_covariates(history, cutoff_date, "W"))
    return panel, int(panel.dates.get_loc(cutoff_date)), task


@pytest.fixture
def tracker(tmp_path) -> Tracker:
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "artifacts").as_uri())


@pytest.mark.slow
def test_train_and_promote_registers_and_judges_a_candidate(tmp_path, tracker):
    history = weekly_history(periods=100)
    panel, cutoff, task = setup(history)
    logged: list[str] = []
    first = train_and_promote(
        history, panel, cutoff, task, tiny(epochs=2), tracker, tmp_path / "work", log=logged.append, warn=logged.append
    )
    assert (first.version, first.mode, first.champion_version, first.gate) == ("1", "full", None, None)
    assert set(first.candidate.scores) == {"transformer", "lightgbm", "auto_ets", "ensemble"}
    assert first.params["members"] == first.candidate.model.describe()
    # With no champion, the floor alone decides: promoted exactly when the candidate beats seasonal naive.
    beats_floor = first.candidate.own_scores["MASE"] < first.floor
    assert first.decision.promoted == beats_floor
    assert tracker.alias_version(CHAMPION) == ("1" if beats_floor else None)
    assert first.params["kind"] == first.candidate.kind and first.params["horizon"] == HORIZON
    assert any(line.startswith("holdout transformer: MASE") for line in logged)
    assert not list((tmp_path / "work").iterdir())  # the saved model is removed once MLflow has its copy

    # Version 1 as champion either way, so the comparison below always runs.
    tracker.client.set_registered_model_alias("bi_pipeline_forecaster", CHAMPION, "1")
    # A second training competes with the champion on the same holdout, per group and on the older window.
    second = train_and_promote(
        history,
        panel,
        cutoff,
        task,
        tiny(epochs=1, seed=1),
        tracker,
        tmp_path / "work",
        Promotion(ensemble=False, margin=0.0, group_tolerance=10.0),
        log=logged.append,
    )
    assert second.version == "2" and second.champion_version == "1" and second.gate is not None
    assert set(second.candidate.scores) == {"transformer"}
    better = second.candidate.own_scores["MASE"] < second.champion_scores["MASE"]
    assert second.decision.promoted == (better and second.candidate.own_scores["MASE"] < second.floor)


def test_an_incremental_request_without_a_champion_trains_from_scratch(tmp_path, tracker):
    history = weekly_history(periods=100)
    panel, cutoff, task = setup(history)
    warnings: list[str] = []
    outcome = train_and_promote(
        history,
        panel,
        cutoff,
        task,
        tiny(epochs=1),
        tracker,
        tmp_path / "work",
        Promotion(ensemble=False),
        mode="incremental",
        warn=warnings.append,
        log=lambda _: None,
    )
    assert outcome.mode == "full"
    assert warnings == ["incremental training requested but there is no champion yet: training from scratch"]
    with pytest.raises(ValueError, match="training mode 'sometimes': use full or incremental"):
        train_and_promote(history, panel, cutoff, task, tiny(), tracker, tmp_path, mode="sometimes")


@pytest.mark.slow
def test_forecasts_are_published_from_the_champion_and_scored_as_actuals_land(tmp_path, tracker):
    history = weekly_history(periods=100)
    landed, later = history[history["date"] < history["date"].unique()[-4]], history
    with pytest.raises(NoChampion, match="no champion model yet"):
        publish_forecasts(landed, None, tracker, tmp_path / "archive")
    panel, cutoff, task = setup(landed)
    outcome = train_and_promote(
        landed, panel, cutoff, task, tiny(epochs=1), tracker, tmp_path / "work", Promotion(ensemble=False)
    )
    tracker.client.set_registered_model_alias("bi_pipeline_forecaster", CHAMPION, outcome.version)

    published = publish_forecasts(landed, None, tracker, tmp_path / "archive")
    out = published.forecasts
    assert published.version == outcome.version and published.archived.exists()
    assert len(out) == 6 * HORIZON and (out["model_version"] == outcome.version).all()
    assert out["date"].min() == landed["date"].max() + pd.Timedelta(weeks=1)

    # Nothing has landed after the publication yet; then four periods land and are scored.
    before = live_report(landed, tmp_path / "archive", tracker, 52)
    assert before.table["scored_periods"].tolist() == [0] and len(before.scored) == 0
    assert before.champion_version == outcome.version and math.isfinite(before.champion_mase)
    after = live_report(later, tmp_path / "archive", tracker, 52)
    assert after.table["scored_periods"].tolist() == [4]
    assert after.evidence is not None and after.evidence.periods == 4


def test_future_covariates_take_general_rows_from_a_calendar_as_landed():
    from bi_pipeline.forecasting.candidate import future_covariates

    # calendar.csv as the calendar asset holds it: text, a general row's store_id empty, no event an empty cell.
    calendar = pd.DataFrame(
        {
            "date": ["2024-01-08", "2024-01-15", "2024-01-15"],
            "store_id": ["", "", "S2"],
            "holiday": ["1", "0", "0"],
            "event": ["New Year", "", "Street market"],
            "source_row": [2, 3, 4],
        }
    )
    history = pd.DataFrame(
        {"store_id": ["S1", "S2"], "item_id": ["A", "A"], "date": pd.to_datetime(["2024-01-01"] * 2), "sales": 1.0}
    )
    future = future_covariates(calendar, history, 2, "W-MON").sort_values(["store_id", "date"])
    assert future["holiday"].tolist() == [1.0, 0.0, 1.0, 0.0]
    # The store's own row wins over the general one; an empty event is no event.
    assert future["event"].isna().tolist() == [False, True, False, False]
    assert future["event"].dropna().tolist() == ["New Year", "New Year", "Street market"]


def test_the_model_input_holds_history_then_the_planned_future_and_splits_back():
    from mlflow.types import DataType

    from bi_pipeline.forecasting.candidate import model_input, split_model_input
    from bi_pipeline.forecasting.registry import model_signature

    history = pd.DataFrame(
        {
            "store_id": pd.Categorical(["S1", "S1"]),
            "item_id": ["A", "A"],
            "date": pd.to_datetime(["2024-01-01", "2024-01-08"]),
            "sales": [3, 0],
            "price": pd.array([2.5, 2.5], dtype="float32"),
            "region": pd.Categorical(["north", "north"]),
        }
    )
    future = pd.DataFrame(
        {"store_id": ["S1"], "item_id": ["A"], "date": pd.to_datetime(["2024-01-15"]), "holiday": [1.0]}
    )
    frame = model_input(history, future)
    assert frame["sales"].tolist()[:2] == [3.0, 0.0] and frame["sales"].isna().tolist() == [False, False, True]
    assert frame["store_id"].dtype == object and frame["region"].dtype == object  # no categoricals in the schema
    past, ahead = split_model_input(frame)
    assert past["date"].tolist() == history["date"].tolist() and past["sales"].tolist() == [3.0, 0.0]
    # The future rows keep only what they carry: the planned holiday, not the history's price or region.
    assert ahead.columns.tolist() == ["store_id", "item_id", "date", "holiday"] and ahead["holiday"].tolist() == [1.0]
    assert split_model_input(model_input(history))[1] is None
    with pytest.raises(ValueError, match="no row with sales"):
        split_model_input(frame.assign(sales=float("nan")))
    # The signature types every column, numbers as double, and requires only the keys and the date.
    signature = model_signature(frame, pd.DataFrame({"q0.5": [1.0]}))
    columns = {c.name: c for c in signature.inputs.inputs}
    assert [n for n, c in columns.items() if c.required] == ["store_id", "item_id", "date"]
    assert columns["price"].type == DataType.double and columns["region"].type == DataType.string
