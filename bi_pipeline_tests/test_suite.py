"""The accuracy suite: landing zones made from its declarations, every model on every set, aggregates per half."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from bi_pipeline import suite
from bi_pipeline.forecasting.interface import MODELS
from bi_pipeline.generate import GenerationSpec
from bi_pipeline.suite import SPEED, SUITE, SuiteSet, aggregate, prepare, run_suite, speed_table, table
from bi_pipeline_tests.forecasting.helpers import tiny


def test_the_suite_declares_both_halves_every_frequency_and_the_shapes_users_bring():
    halves = {entry.half for entry in SUITE}
    assert halves == {"choose", "check"}
    generated = [e for e in SUITE if e.spec is not None]
    assert {e.spec.frequency for e in generated} == {"D", "W", "M"}
    assert any(e.totals for e in generated) and any(e.spec.level_shift_share for e in generated)
    assert any(e.spec.closure_share for e in generated if e.half == "check")
    assert any(e.spec.intermittent_item_share >= 0.5 for e in generated)
    assert len({e.name for e in SUITE}) == len(SUITE)


@pytest.mark.slow
def test_run_suite_backtests_every_model_and_aggregates_per_half(tmp_path, monkeypatch):
    monkeypatch.setenv("BI_PIPELINE_SHARED_DATA", str(tmp_path / "no_such_dir"))
    entries = (
        SuiteSet("tiny_weekly", "choose", "weekly", 4, spec=GenerationSpec(stores=2, items=3, periods=60, defects=0)),
        SuiteSet(
            "tiny_totals",
            "check",
            "weekly totals",
            4,
            spec=GenerationSpec(stores=3, items=4, periods=60, defects=0, seed=3),
            totals=True,
        ),
        SuiteSet("absent", "check", "a shared file", 4, shared="nothing/here.csv", columns={}),
    )
    resolved = []

    def resolve(config, frequency, horizon, progress=None):  # the synthetic checkpoint's own tests pretrain one
        resolved.append((config.init_from, frequency, horizon))
        return dataclasses.replace(config, init_from=None)

    monkeypatch.setattr(suite, "resolve_init_from", resolve)
    lines = []
    report = run_suite(entries, tmp_path / "work", tiny(epochs=1, init_from="synthetic"), say=lines.append)
    # `synthetic` is resolved per set, for its frequency and horizon, before its backtest trains.
    assert resolved == [("synthetic", "W", 4), ("synthetic", "W", 4)]
    assert all(r["pretraining_seconds"] >= 0 and r["init_from"] is None for r in report["sets"].values())
    assert set(report["sets"]) == {"tiny_weekly", "tiny_totals"}
    assert "absent" in report["skipped"] and any("skipped" in line for line in lines)
    totals = report["sets"]["tiny_totals"]
    assert totals["series"] == 3  # store totals: one series per store
    for result in report["sets"].values():
        assert set(result["models"]) == set(MODELS)
        assert result["models"]["seasonal_naive"]["skill"] == 1.0
        assert result["best_baseline"] in ("seasonal_naive", "auto_ets", "lightgbm")
    check = report["halves"]["check"]
    assert check["sets"] == ["tiny_totals"]
    assert check["ensemble"]["geomean_skill"] == pytest.approx(totals["models"]["ensemble"]["skill"])
    assert (tmp_path / "work" / "tiny_weekly" / "sales").exists()  # kept for a rerun
    assert "target_seconds" not in totals  # only bench speed's sets carry a target
    assert prepare(entries[0], tmp_path / "work") == tmp_path / "work" / "tiny_weekly"
    assert "| check | ensemble |" in table(report)


def test_the_aggregate_is_the_geometric_mean_of_skill_and_counts_wins():
    def result(name, skills):
        models = {m: {"MASE": s, "skill": s, "WQL": s, "coverage_80": 0.8} for m, s in zip(MODELS, skills, strict=True)}
        models["seasonal_naive"]["skill"] = 1.0
        return {"name": name, "seconds": 1.0, "models": models, "best_baseline": "lightgbm"}

    # MODELS order: transformer, seasonal_naive, auto_ets, lightgbm, ensemble.
    a, b = result("a", [0.5, 1.0, 0.9, 0.6, 0.4]), result("b", [0.8, 1.0, 0.7, 0.5, 0.6])
    out = aggregate([a, b])
    assert out["ensemble"]["geomean_skill"] == pytest.approx(math.sqrt(0.4 * 0.6))
    assert out["ensemble"]["wins_against_best_baseline"] == ["a"]
    assert out["ensemble"]["losses_against_best_baseline"] == ["b"]
    assert out["transformer"]["wins_against_best_baseline"] == ["a"]
    assert np.isclose(out["lightgbm"]["geomean_relative_WQL"], math.sqrt(0.6 * 0.5))


def test_bench_speed_times_the_shapes_with_runtime_targets_and_tabulates_each_model():
    assert {e.name: (e.horizon, e.target_seconds) for e in SPEED} == {
        "walmart": (39, 120),
        "weekly_3000": (39, 480),
        "monthly_350": (12, 240),
    }
    weekly = next(e for e in SPEED if e.name == "weekly_3000").spec
    assert weekly.stores * weekly.items == 2970 and weekly.frequency == "W"
    models = {m: {"fit_seconds": 1.0, "predict_seconds": 0.5} for m in MODELS}
    models["transformer"]["fit_seconds"] = 60.0
    # The ensemble's fit holds its members' fits (62) and the choice (13); its forecast time is its members'.
    models["ensemble"].update(fit_seconds=75.0, predict_seconds=2.0)
    result = {"name": "w", "series": 45, "horizon": 39, "seconds": 100.4, "target_seconds": 120, "models": models}
    assert speed_table({"sets": {"w": result}}).splitlines()[-1] == "| w | 45 | 39 | 100 | 120 | 60 | 2 | 2 | 13 |"
