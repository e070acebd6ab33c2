"""Continual learning's core without Dagster: incremental windows, warm-started updates, the promotion gate and the
replay benchmark."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bi_pipeline.forecasting.continual import (
    IncrementalConfig,
    incremental_filter,
    promotion_gate,
    replay_benchmark,
    series_groups,
    update_forecaster,
)
from bi_pipeline.forecasting.features import FeatureSpec, fit_spec
from bi_pipeline.forecasting.panel import build_panel, make_windows
from bi_pipeline.forecasting.trainer import train_forecaster
from bi_pipeline.forecasting.transformer import forecast
from bi_pipeline_tests.forecasting.helpers import tiny, weekly_history


def test_series_groups_use_the_item_category_when_there_is_one():
    history = weekly_history(series=4, periods=10).assign(category=lambda f: np.where(f["item_id"] < "I2", "A", "B"))
    groups = series_groups(history)
    assert groups["item_group"].tolist() == ["A", "A", "B", "B"]
    assert groups["store"].tolist() == ["S0", "S1", "S2", "S0"]
    assert series_groups(history.drop(columns="category"))["item_group"].tolist() == ["I0", "I1", "I2", "I3"]


def test_incremental_windows_are_the_new_periods_and_a_stratified_replay():
    history = weekly_history(series=6, periods=60)
    panel = build_panel(history, fit_spec(history, "W"), horizon=4)
    windows = make_windows(panel, 8, None, 59, 0, 60)
    groups = series_groups(history)
    chosen = incremental_filter(panel, 4, new_from=57, replay_ratio=0.5, groups=groups)(windows)
    reaches = chosen.start + 3 >= 57
    # Starts 54..59 reach period 57: six windows per series, 36 in all, every one kept.
    assert int(reaches.sum()) == 36 == int((windows.start + 3 >= 57).sum())
    # 18 replayed older windows: six store x item strata with equal shares, three each.
    old = chosen.series[~reaches]
    assert len(old) == 18 and np.bincount(old).tolist() == [3] * 6
    assert (chosen.start[~reaches] + 3 < 57).all()
    none = incremental_filter(panel, 4, new_from=57, replay_ratio=0.0)(windows)
    assert len(none) == 36


def test_an_incremental_update_warm_starts_from_the_champion_and_learns_the_new_periods():
    history = weekly_history(periods=80)
    spec = fit_spec(history[history["date"] <= history["date"].unique()[69]], "W")
    panel = build_panel(history, spec, horizon=8)
    champion = train_forecaster(panel, 8, 69, tiny(epochs=2)).model
    # Validation: two horizons (16), at most a fifth of the 70 periods up to the cutoff: 14.
    assert champion.config.training_targets_end == str(panel.dates[69 - 14].date())
    # Four more periods landed: the update reads the champion's spec and learns up to the new validation stretch.
    same_spec = build_panel(history, FeatureSpec.from_dict(champion.config.feature_spec), horizon=8)
    updated = update_forecaster(champion, same_spec, 8, 73, tiny(epochs=2), IncrementalConfig(epochs=2, patience=5))
    assert updated.model.config.training_targets_end == str(panel.dates[73 - 14].date())
    assert (
        updated.epochs_run == 2 and updated.train_windows < train_forecaster(panel, 8, 73, tiny(epochs=1)).train_windows
    )
    before = champion.members[0].backbone.state_dict()
    after = updated.model.members[0].backbone.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert updated.model.config.feature_spec == champion.config.feature_spec
    with pytest.raises(ValueError, match="no new periods"):
        update_forecaster(champion, same_spec, 8, 69 - 14, tiny(epochs=1))


def test_the_gate_vetoes_group_regressions_and_forgetting():
    champion = pd.DataFrame(
        {"family": ["store", "store", "item_group"], "group": ["S0", "S1", "A"], "MASE": [1.0, 1.0, 0.5]}
    )
    fine = champion.assign(MASE=[0.9, 1.04, 0.5])
    assert promotion_gate(fine, champion, 0.8, 0.8, tolerance=0.05).passed
    regressed = champion.assign(MASE=[0.5, 1.2, 0.5])
    gate = promotion_gate(regressed, champion, 0.8, 0.8, tolerance=0.05)
    assert not gate.passed and gate.regressions["group"].tolist() == ["S1"]
    assert gate.regressions["change"].iloc[0] == pytest.approx(0.2)
    assert "store S1 +20.0%" in gate.vetoes[0]
    forgot = promotion_gate(fine, champion, 0.9, 0.8, tolerance=0.05)
    assert not forgot.passed and forgot.vetoes[0].startswith("forgetting")
    assert forgot.older == {"challenger": 0.9, "champion": 0.8}


def test_replay_benchmark_compares_incremental_updates_with_full_retrains():
    history = weekly_history(periods=72)
    result = replay_benchmark(history, "W", 64, 4, 1, tiny(epochs=2), IncrementalConfig(epochs=1), steps=2)
    assert result["updates"] == 2 and len(result["steps"]) == 3
    assert [s["last_period"] for s in result["steps"]] == [str(d.date()) for d in history["date"].unique()[63:66]]
    for step in result["steps"][1:]:
        assert step["incremental_windows"] < step["full_windows"]
        assert np.isfinite(step["full_MASE"]) and np.isfinite(step["incremental_MASE"])
    assert result["time_ratio"] == pytest.approx(
        result["incremental"]["mean_seconds"] / result["full_retrain"]["mean_seconds"], rel=0.02
    )
    assert set(result["forgetting"]) == {"older_window", "MASE_before", "MASE_after", "full_retrain_MASE_after"}


def test_a_killed_incremental_update_resumes_from_its_checkpoint(tmp_path):
    history = weekly_history(periods=80)
    panel = build_panel(history, fit_spec(history[history["date"] <= history["date"].unique()[69]], "W"), horizon=8)
    champion = train_forecaster(panel, 8, 69, tiny(epochs=2)).model
    update = IncrementalConfig(epochs=4, patience=10)
    straight = update_forecaster(champion, panel, 8, 73, tiny(), update)

    class Killed(Exception):
        pass

    def kill_after_two(record: dict) -> None:
        if record.get("stage") == "train" and record["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        update_forecaster(champion, panel, 8, 73, tiny(), update, checkpoint_dir=tmp_path, progress=kill_after_two)
    resumed = update_forecaster(champion, panel, 8, 73, tiny(), update, checkpoint_dir=tmp_path)
    assert resumed.resumed_from_epoch == 2 and [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(forecast(straight.model, panel, 73), forecast(resumed.model, panel, 73))
    # A checkpoint of another recipe (a full training) is not resumed by an update.
    other = tmp_path / "other"
    with pytest.raises(Killed):
        train_forecaster(panel, 8, 73, tiny(epochs=4), checkpoint_dir=other, progress=kill_after_two)
    assert update_forecaster(champion, panel, 8, 73, tiny(), update, checkpoint_dir=other).resumed_from_epoch is None
