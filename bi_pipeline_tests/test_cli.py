"""The bi-pipeline command end to end on small generated data."""

from __future__ import annotations

import io
import json
import uuid

import dagster as dg
import pandas as pd
import pytest

from bi_pipeline.bench import bench_ingest, split_series
from bi_pipeline.cli import main
from bi_pipeline.decisions.inventory import LEVEL_SHIFTS


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("BI_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BI_PIPELINE_LANDING", raising=False)
    monkeypatch.setenv("BI_PIPELINE_MAX_BAD_ROW_RATE", "0.2")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    # A tiny training budget: these tests are about the command, test_forecaster about the model.
    for name, value in {
        "BI_PIPELINE_HORIZON": "4",
        "BI_PIPELINE_MEMBERS": "1",
        "BI_PIPELINE_EPOCHS": "2",
        "BI_PIPELINE_MAX_WINDOWS_PER_EPOCH": "256",
    }.items():
        monkeypatch.setenv(name, value)
    return tmp_path / "home"


@pytest.mark.slow
def test_demo_runs_every_stage_and_finds_exactly_the_injected_defects(home, capsys):
    code = main(["demo", "--stores", "2", "--items", "6", "--periods", "20", "--defects", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "quarantine matches the injected defects: True" in out
    assert "integrated_sales" in out and "check clean_sales:clean_sales_expectations" in out
    assert "forecaster        model v1 promoted (no champion yet; MASE " in out
    # 2 of the 12 series were discontinued before the last period: 10 are forecast, and the 2 are said why.
    assert "10 series x 4 periods" in out and "backtest on the holdout" in out and "| ensemble" in out
    assert "2 series not forecast (2 ended), each with its reason in the metadata" in out
    # The run is in the persistent instance under the home, where `make ui` will show it.
    assert (home / "dagster" / "dagster.yaml").exists()
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs = sorted(instance.get_runs(), key=lambda r: r.job_name)
        # The stock snapshot of the last period is read first, in its own partition; then every stage.
        assert [r.job_name for r in runs] == ["inventory_job", "pipeline_job"] and all(r.is_success for r in runs)
        assert len(instance.get_dynamic_partitions("sales_periods")) == 20
        assert instance.get_dynamic_partitions("inventory_periods") == ["2022-05-16"]
    assert (home / "assets" / "integrated_sales.parquet").exists()
    # Orders with quantities, from the snapshot; the demo prints the largest and where the BI tables are.
    orders = pd.read_parquet(home / "assets" / "orders.parquet")
    assert len(orders) == 10 and orders["on_hand"].notna().all() and orders["order_quantity"].notna().all()
    gap = orders["order_up_to"] - orders["on_hand"] - orders["on_order"]
    assert ((orders["order_quantity"] > 0) == (gap > 0)).all()
    assert "orders            order-up-to levels for 10 series" in out and "order_quantity" in out
    assert "BI tables         40 forecast rows, 10 order rows, 40 driver rows and " in out
    assert "  drivers           the forecast's median by part: level_trend " in out and "(LightGBM's TreeSHAP" in out
    assert f"alerts in duckdb:///{home}/warehouse.duckdb" in out
    assert "  alerts            " in out
    reports = sorted((home / "reports").glob("insights_*_v1.html"))
    assert len(reports) == 1 and f"insights report   {reports[0]}" in out
    assert "<h2>Orders</h2>" in reports[0].read_text()
    assert (home / "gx" / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html").exists()


@pytest.mark.slow
def test_long_histories_run_in_ranges_then_one_integration(home, capsys, monkeypatch):
    import bi_pipeline.defs.collection as collection

    monkeypatch.setattr(collection, "PERIODS_PER_RUN", 8)
    code = main(["demo", "--stores", "2", "--items", "6", "--periods", "20", "--defects", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "quarantine matches the injected defects: True" in out
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs = sorted(instance.get_runs(), key=lambda r: r.create_timestamp if hasattr(r, "create_timestamp") else 0)
        assert sorted(r.job_name for r in runs) == ["ingest_job"] * 3 + ["integrate_job", "inventory_job", "train_job"]
        assert all(r.is_success for r in runs)


def test_generate_and_import_csv_commands(tmp_path, capsys):
    landing = tmp_path / "landing"
    assert main(["generate", "--landing", str(landing), "--stores", "2", "--items", "6", "--periods", "8"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sales_files"] == 8 and (landing / "generation_report.json").exists()

    export = tmp_path / "export.csv"
    export.write_text("d,s,v,h\n01/02/2024,A,1,0\n08/02/2024,A,2,1\n")
    code = main(
        [
            "import-csv",
            str(export),
            "--to",
            str(tmp_path / "imported"),
            "--date",
            "d",
            "--store",
            "s",
            "--sales",
            "v",
            "--date-format",
            "%d/%m/%Y",
            "--covariates",
            "h",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["frequency"], result["periods"], result["items"]) == ("W", 2, 1)
    assert sorted(p.name for p in (tmp_path / "imported" / "sales").iterdir()) == ["2024-02-01.csv", "2024-02-08.csv"]


def test_import_csv_reports_a_missing_column_clearly(tmp_path, capsys):
    export = tmp_path / "export.csv"
    export.write_text("d,s,v\n2024-01-01,A,1\n")
    code = main(
        ["import-csv", str(export), "--to", str(tmp_path / "l"), "--date", "d", "--store", "shop", "--sales", "v"]
    )
    assert code == 2
    assert "export.csv: column(s) shop not found" in capsys.readouterr().err


def test_bench_ingest_reports_every_stage(tmp_path):
    result = bench_ingest(series=12, periods=30, frequency="W", workdir=tmp_path / "bench")
    assert result["quarantine_matches_injected"] is True
    assert set(result["seconds"]) == {"generate", "collect", "validate", "clean", "integrate"}
    assert result["rows"] > 0 and result["peak_rss_mb"] > 0
    assert result["gx_rows_validated"]["raw"] == result["rows"] - 3  # malformed lines never reach GX
    assert split_series(30490) == (10, 3049)


def test_backtest_command_writes_the_json_interface(tmp_path, capsys):
    landing = tmp_path / "landing"
    generate = ["generate", "--landing", str(landing), "--stores", "2", "--items", "5", "--periods", "70"]
    assert main(generate) == 0
    capsys.readouterr()
    # Ten rows a file: one injected defect is 10% of its period, over the 5% gate, so the backtest stops, as the
    # assets do, naming the files.
    assert main(["backtest", "--data", str(landing), "--horizon", "4"]) == 2
    assert "over the bad-row gate (BI_PIPELINE_MAX_BAD_ROW_RATE=0.05)" in capsys.readouterr().err
    assert main([*generate, "--defects", "0"]) == 0
    capsys.readouterr()
    out = tmp_path / "backtest.json"
    code = main(
        [
            "backtest",
            "--data",
            str(landing),
            "--horizon",
            "4",
            "--season-length",
            "4",
            "--windows",
            "2",
            "--members",
            "1",
            "--epochs",
            "2",
            "--calendar-effects",
            "all",
            "--seasonal-profile",
            "auto",
            "--recipe",
            "context_length=16",
            "--recipe",
            "mixup=0.25",
            "--recipe",
            "calibrate_level=0",
            "--recipe",
            "weight_average=0.9",
            "--recipe",
            "recency_halflife=5",
            "--recipe",
            "validation_horizons=1.5",
            "--recipe",
            "calibrate_spread_power=off",
            "--recipe",
            "error_spread_windows=3",
            "--recipe",
            "level_feedback_origins=0",
            "--lead-time",
            "2",
            "--service-level",
            "0.9",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert (result["horizon"], result["windows"], result["season_length"]) == (4, 2, 4)
    assert result["transformer_config"]["context_length"] == 16
    names = ("mixup", "calibrate_level", "calibrate_spread_power", "error_spread_windows")
    names += ("seasonal_profile", "level_feedback_origins", "calendar_effects", "weight_average")
    names += ("recency_halflife", "validation_horizons")
    recipe = {k: result["transformer_config"][k] for k in names}
    assert recipe == {
        "mixup": 0.25,
        "calibrate_level": False,
        "calibrate_spread_power": False,
        "error_spread_windows": 3,
        "seasonal_profile": "auto",
        "level_feedback_origins": 0,
        "calendar_effects": "all",
        "weight_average": 0.9,
        "recency_halflife": 5.0,
        "validation_horizons": 1.5,
    }
    assert result["series"] == 10
    assert list(result["models"]) == ["transformer", "seasonal_naive", "auto_ets", "lightgbm", "ensemble"]
    for metrics in result["models"].values():
        assert {"MASE", "WAPE", "WQL", "coverage_80", "bias", "fit_seconds", "predict_seconds"} <= set(metrics)
        assert metrics["MASE"] > 0 and 0 <= metrics["coverage_80"] <= 1
    assert result["models"]["transformer"]["train_windows_per_second"] > 0
    assert 0.0 <= result["models"]["ensemble"]["transformer_weight"] <= 1.0
    assert result["transformer_config"]["members"] == 1
    # Every model's forecasts through the same order-up-to policy, with the economics given.
    decisions = result["decisions"]
    assert decisions["economics"] == {"service_level": 0.9, "lead_time": 2, "review_period": 1, "priced_series": 0}
    assert decisions["series"] + decisions["series_left_out"] == 10
    assert list(decisions["models"]) == list(result["models"])
    for outcome in decisions["models"].values():
        assert outcome["total_cost"] == pytest.approx(outcome["holding_cost"] + outcome["lost_margin"])
        assert 0 < outcome["fill_rate"] <= 1 and 0 <= outcome["cumulative_coverage_80"] <= 1
        assert 0 <= outcome["service_level_achieved"] <= 1
        # Tuned on each window's validation origins (the JSON averages the windows).
        assert min(LEVEL_SHIFTS) <= outcome["level_shift"] <= max(LEVEL_SHIFTS)
        assert outcome["windows_scored"] == decisions["series"] * (4 - 3 + 1)
    assert min(m["cost_vs_lowest"] for m in decisions["models"].values()) == 1.0
    assert decisions["models"][decisions["lowest_cost"]]["cost_vs_lowest"] == 1.0
    printed = capsys.readouterr().out
    assert "transformer" in printed and "ensemble" in printed and "decisions: order-up-to" in printed


def test_bench_forecaster_reports_throughput(tmp_path):
    from bi_pipeline.bench import bench_forecaster

    result = bench_forecaster(series=6, periods=60, horizon=4, epochs=2, max_windows_per_epoch=64, workdir=tmp_path)
    assert result["series"] == 6 and result["device"] == "cpu" and result["precision"] == "fp32"
    assert result["train_windows_per_second"] > 0 and result["inference_series_per_second"] > 0
    assert result["epochs"] == 2 and result["warm_train_windows_per_second"] > 0
    # The bare PatchTST loop on the same windows, and the pipeline's share of its speed per network, warm to warm.
    assert result["bare_patchtst_windows_per_second"] > 0
    expected = result["warm_train_windows_per_second"] / result["bare_patchtst_windows_per_second"]
    assert result["pipeline_vs_bare"] == pytest.approx(expected, abs=0.002)


def test_bench_accuracy_names_an_unknown_set(capsys):
    assert main(["bench", "accuracy", "--sets", "walmart", "no_such_set"]) == 2
    assert "unknown set(s) no_such_set: choose from aus_retail, daily_intermittent" in capsys.readouterr().err


def test_bench_continual_command_writes_the_replay_json(tmp_path, capsys):
    from bi_pipeline.generate import GenerationSpec, generate

    landing = tmp_path / "landing"
    generate(landing, GenerationSpec(stores=2, items=2, periods=40, frequency="D", defects=0))
    out = tmp_path / "continual.json"
    args = ["bench", "continual", "--data", str(landing), "--start-periods", "36", "--step", "1", "--steps", "2"]
    args += ["--horizon", "3", "--members", "1", "--epochs", "1", "--incremental-epochs", "1", "--out", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["updates"] == 2 and result["horizon"] == 3 and result["season_length"] == 7
    assert result["series"] == 4 and len(result["steps"]) == 3
    assert result["incremental_config"]["epochs"] == 1 and result["train_config"]["members"] == 1
    assert {"time_ratio", "mase_ratio", "forgetting"} <= set(result)
    assert '"time_ratio"' in capsys.readouterr().out


@pytest.mark.slow
def test_demo_on_a_url_storage_root_gives_the_default_roots_results(home, tmp_path, monkeypatch, capsys):
    """Asset values, the GX context and Data Docs, checkpoints and the forecast archive under an fsspec URL (the
    memory filesystem: no rename, no local path), value for value what the default root holds."""
    from upath import UPath

    from bi_pipeline.storage import files, read_bytes, remove_tree

    args = ["demo", "--stores", "2", "--items", "6", "--periods", "20", "--defects", "1"]
    assert main(args) == 0
    other = tmp_path / "other"
    root = UPath(f"memory://bi-pipeline-{uuid.uuid4().hex[:8]}/root")
    monkeypatch.setenv("BI_PIPELINE_HOME", str(other))
    monkeypatch.setenv("BI_PIPELINE_STORAGE", str(root))
    try:
        capsys.readouterr()
        assert main(args) == 0
        assert f"assets stored under {root}/assets" in capsys.readouterr().out
        for asset in ("integrated_sales", "features", "forecasts", "backtest", "orders", "drivers"):
            stored = pd.read_parquet(io.BytesIO(read_bytes(root / "assets" / f"{asset}.parquet")))
            pd.testing.assert_frame_equal(stored, pd.read_parquet(home / "assets" / f"{asset}.parquet"), obj=asset)
        periods = sorted(p.name for p in files(root / "assets" / "clean_sales"))
        assert periods == sorted(p.name for p in (home / "assets" / "clean_sales").glob("*.parquet"))
        assert len(periods) == 20
        archive = [p.name for p in files(root / "forecast_archive")]
        assert archive == [p.name for p in (home / "forecast_archive").glob("*.parquet")] and len(archive) == 1
        # The GX context and its Data Docs are stored there too (GX itself works in a local copy under the home).
        docs = root / "gx" / "gx" / "uncommitted" / "data_docs" / "local_site"
        assert (docs / "index.html").exists() and list(files(docs / "validations"))
        assert (root / "gx" / "gx" / "great_expectations.yml").exists()
        # The training's checkpoints went there and were cleared once it succeeded; nothing is stored locally.
        assert not list(files(root / "checkpoints"))
        assert [p.name for p in files(root / "reports")] == [p.name for p in (home / "reports").glob("*.html")]
        for local in ("assets", "forecast_archive", "checkpoints", "reports"):
            assert not (other / local).exists(), local
    finally:
        remove_tree(root)
