"""The Dagster chain end to end with materialize(): collection -> validated cleaning -> integrated view."""

from __future__ import annotations

import json
import re
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from bi_pipeline.config import DecisionSettings, ForecastSettings, Settings, TrainingSettings
from bi_pipeline.defs.resources import DecisionResource, ForecastingResource, PipelineResource
from bi_pipeline.generate import GenerationSpec, generate
from bi_pipeline_tests.conftest import write_sales
from bi_pipeline_tests.defs.chain import materialize_chain


def checks(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Settings, dict]:
    root = tmp_path_factory.mktemp("chain")
    # Small files (24 rows): one injected defect is 4% of a file, so the threshold sits above that. 40 periods hold
    # the 30 row defects one per file, so some files have none.
    settings = Settings(home=root / "home", landing=root / "landing", settle_seconds=0, max_bad_row_rate=0.15)
    report = generate(settings.landing, GenerationSpec(stores=3, items=8, periods=40, frequency="W", defects=3, seed=3))
    return settings, report.to_dict()


def test_whole_chain_quarantines_exactly_the_injected_defects(generated):
    settings, report = generated
    with dg.instance_for_test() as instance:
        result = materialize_chain(settings, instance)
        assert result.success
        # One run for all 40 periods (single-run backfill).
        assert len(instance.get_runs()) == 1

        quarantine = pd.concat(result.output_for_node("clean_sales", "sales_quarantine").values())
        expected = {k: v for k, v in report["expected_quarantine"].items() if v}
        assert quarantine["reason"].value_counts().to_dict() == expected
        clean = pd.concat(result.output_for_node("clean_sales", "clean_sales").values())
        assert len(clean) == report["valid_rows"]
        # Every quarantined row names its file and line.
        assert quarantine["source_file"].str.match(r"^sales/\d{4}-\d{2}-\d{2}\.csv$").all()
        assert (quarantine["source_row"] >= 2).all()

        evaluations = checks(result)
        assert evaluations["clean_sales_expectations"].passed
        assert evaluations["bad_row_rate"].passed
        assert evaluations["stores_expectations"].passed
        raw_check = evaluations["landed_rows_expectations"]
        # Every defect GX finds on the landed rows was quarantined with a reason: a passing run.
        assert raw_check.passed
        assert raw_check.severity == dg.AssetCheckSeverity.WARN
        # GX's count of each defect in the landed rows is exactly what was injected. Missing keys rotate over date,
        # store_id and item_id (one each for 3 instances); an unparseable date is a null date too.
        unexpected = {
            (r["expectation"], r["column"]): r["unexpected_count"] for r in raw_check.metadata["results"].value
        }
        injected = {
            ("expect_column_values_to_not_be_null", "date"): 1 + expected["unparseable_date"],
            ("expect_column_values_to_not_be_null", "store_id"): 1,
            ("expect_column_values_to_not_be_null", "item_id"): 1,
            ("expect_column_values_to_not_be_null", "sales"): expected["sales_not_numeric"],
            ("expect_column_values_to_be_between", "period_offset"): expected["date_outside_period"],
            ("expect_column_values_to_be_between", "key_repeat"): expected["duplicate_exact"]
            + expected["duplicate_conflict"],
            ("expect_column_values_to_be_between", "price"): expected["price_out_of_range"],
            ("expect_column_values_to_be_between", "sales"): expected["sales_negative"],
            ("expect_column_values_to_be_in_set", "store_in_master"): expected["unknown_store"],
            ("expect_column_values_to_be_in_set", "item_in_master"): expected["unknown_item"],
        }
        assert {k: v for k, v in unexpected.items() if v} == injected
        assert unexpected[("expect_column_values_to_be_between", "key_repeat")] == 6
        assert raw_check.metadata["unexpected_by_expectation"].value == {
            f"{e}({c})": n for (e, c), n in injected.items()
        }
        assert raw_check.metadata["by_reason"].value == expected
        assert raw_check.metadata["kept_unexpected"].value == {}
        # The files named are exactly those with injected defects (malformed lines included).
        defect_files = {f"sales/{f}" for files in report["defect_files"].values() for f in files}
        assert len(defect_files) == 31
        assert set(raw_check.metadata["defect_files"].value) == defect_files
        assert set(re.findall(r"sales/\d{4}-\d{2}-\d{2}\.csv", raw_check.description)) == defect_files
        assert raw_check.description.startswith(
            f"every defect GX found on the {report['rows_written'] - expected['malformed_row']} landed rows "
            "was quarantined with a reason\n"
        )
        assert "expect_column_values_to_be_between(key_repeat): 6" in raw_check.description
        assert f"files with defects (31): {', '.join(sorted(defect_files))}" in raw_check.description
        clean_check = evaluations["clean_sales_expectations"]
        assert all(r["success"] and r["unexpected_count"] == 0 for r in clean_check.metadata["results"].value)
        # The Data Docs link opens from the UI: the page served by `bi-pipeline docs`, and its path on disk.
        docs = raw_check.metadata["data_docs"].value
        page = Path(raw_check.metadata["data_docs_path"].value)
        assert page.is_file() and page.is_relative_to(settings.home)
        site = settings.gx_dir / "gx" / "uncommitted" / "data_docs" / "local_site"
        assert docs == f"http://127.0.0.1:{settings.docs_port}/{page.relative_to(site).as_posix()}"
        assert docs.startswith(f"http://127.0.0.1:{settings.docs_port}/validations/landed_sales/")
        assert not re.search(r"(src|href)=[\"']https?://", page.read_text())

        integrated = result.output_for_node("integrated_sales")
        assert {
            "date",
            "store_id",
            "item_id",
            "sales",
            "observed",
            "price",
            "promo",
            "region",
            "category",
            "holiday",
        } <= set(integrated.columns)
        assert integrated["sales"].dtype == "float32"
        assert integrated["observed"].sum() == clean.groupby(["store_id", "item_id", "date"], observed=True).ngroups
        assert integrated.groupby(["store_id", "item_id"], observed=True).ngroups <= report["series"]
        # Stored as Parquet under the home, one file per partition.
        assert len(list((settings.asset_dir / "raw_sales").glob("*.parquet"))) == report["sales_files"]
        manifest = json.loads(settings.manifest_path.read_text())
        assert len(manifest) == report["sales_files"]


def test_a_partition_over_the_bad_row_threshold_blocks_integration(tmp_path):
    settings = Settings(home=tmp_path / "home", landing=tmp_path / "landing", settle_seconds=0, max_bad_row_rate=0.2)
    header = "date,store_id,item_id,sales\n"
    write_sales(settings.landing, "2024-01-01", header + "2024-01-01,S1,I1,3\n2024-01-01,S1,I2,4\n")
    write_sales(
        settings.landing,
        "2024-01-02",
        header + "2024-01-02,S1,I1,x\n2024-01-02,S1,I2,-1\n2024-01-02,S1,I3,1\n",
    )
    with dg.instance_for_test() as instance:
        result = materialize_chain(settings, instance, raise_on_error=False)
        assert not result.success
        evaluation = checks(result)["bad_row_rate"]
        assert not evaluation.passed
        assert evaluation.description.startswith("sales/2024-01-02.csv: 2 of 3 rows quarantined")
        assert "sales_not_numeric (1)" in evaluation.description and "sales_negative (1)" in evaluation.description
        materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert "clean_sales" in materialized and "sales_quarantine" in materialized
        assert "integrated_sales" not in materialized


def test_unreadable_file_fails_its_partition_with_a_named_error(tmp_path):
    settings = Settings(home=tmp_path / "home", landing=tmp_path / "landing", settle_seconds=0)
    write_sales(settings.landing, "2024-01-01", "date,store_id,item_id,sales\n2024-01-01,S1,I1,3\n")
    write_sales(settings.landing, "2024-01-02", "day,shop,sku,units\n2024-01-02,S1,I1,3\n")
    with dg.instance_for_test() as instance:
        result = materialize_chain(settings, instance, raise_on_error=False)
        evaluation = checks(result)["bad_row_rate"]
        assert not evaluation.passed
        assert "sales/2024-01-02.csv" in evaluation.description and "missing_columns" in evaluation.description
        quarantine = result.output_for_node("clean_sales", "sales_quarantine")["2024-01-02"]
        assert quarantine[["source_file", "source_row", "reason"]].values.tolist() == [
            ["sales/2024-01-02.csv", 1, "missing_columns"]
        ]
        assert (settings.landing / "sales" / "2024-01-02.csv").read_text().startswith("day,shop")


def test_big_runs_count_landed_defects_with_the_rules_and_still_gate_with_gx(tmp_path):
    settings = Settings(
        home=tmp_path / "home",
        landing=tmp_path / "landing",
        settle_seconds=0,
        max_bad_row_rate=0.2,
        gx_landed_max_rows=0,
    )
    report = generate(settings.landing, GenerationSpec(stores=2, items=8, periods=12, frequency="W", defects=1))
    with dg.instance_for_test() as instance:
        result = materialize_chain(settings, instance)
        evaluations = checks(result)
        landed = evaluations["landed_rows_expectations"]
        assert landed.metadata["validated_by"].value == "rules"
        assert landed.metadata["by_reason"].value == {k: v for k, v in report.expected_quarantine.items() if v}
        assert "counted by the rules, not GX" in landed.description
        # Everything was quarantined with a reason: it passes, and names the files with defects.
        assert landed.passed
        defect_files = {f"sales/{f}" for files in report.defect_files.values() for f in files}
        assert set(landed.metadata["defect_files"].value) == defect_files
        assert set(re.findall(r"sales/\d{4}-\d{2}-\d{2}\.csv", landed.description)) == defect_files
        assert evaluations["clean_sales_expectations"].passed
        assert evaluations["clean_sales_expectations"].metadata["rows"].value == report.valid_rows


def test_run_config_for_some_fields_of_a_resource_keeps_the_others_from_the_environment(tmp_path):
    """A run launched with part of a resource's config (the Launchpad, a sensor's request) keeps every other field at
    the environment's value, not at the declared default."""
    seen: dict = {}

    @dg.asset
    def probe(pipeline: PipelineResource, forecasting: ForecastingResource, decisions: DecisionResource) -> None:
        seen.update(settings=pipeline.settings(), training=forecasting.training(), economics=decisions.economics())

    settings = Settings(home=tmp_path / "home", max_bad_row_rate=0.3)
    resources = {
        "pipeline": PipelineResource.from_settings(settings),
        "forecasting": ForecastingResource.from_settings(settings, ForecastSettings(), TrainingSettings(members=2)),
        "decisions": DecisionResource.from_settings(DecisionSettings(service_level=0.9)),
    }
    landing = tmp_path / "elsewhere"
    config = {
        "pipeline": {"config": {"landing": str(landing)}},
        "forecasting": {"config": {"epochs": 3}},
        "decisions": {"config": {"lead_time": 2}},
    }
    assert dg.materialize([probe], resources=resources, run_config={"resources": config}).success
    assert seen["settings"].landing == landing and seen["settings"].home == tmp_path / "home"
    assert seen["settings"].max_bad_row_rate == 0.3
    assert (seen["training"].epochs, seen["training"].members) == (3, 2)
    assert (seen["economics"].lead_time, seen["economics"].service_level) == (2, 0.9)
