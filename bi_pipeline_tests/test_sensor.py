"""The landing-zone sensor across ticks: new, unchanged, changed, restart with and without its cursor, bad files."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from bi_pipeline.config import Settings
from bi_pipeline.contract import update_manifest
from bi_pipeline.definitions import build_defs
from bi_pipeline.defs.collection import landing_zone_sensor, sales_periods
from bi_pipeline.defs.resources import PipelineResource
from bi_pipeline_tests.conftest import write_sales

HEADER = "date,store_id,item_id,sales\n"


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def tick(instance: dg.DagsterInstance, settings: Settings, cursor: str | None):
    """One sensor evaluation, applying its partition requests as the daemon would."""
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"pipeline": PipelineResource.from_settings(settings)},
        definitions=build_defs(settings),
    )
    data = landing_zone_sensor(context)
    for request in data.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    job = build_defs(settings).resolve_job_def("ingest_job")
    for run_request in data.run_requests or []:
        # As the daemon does once the partitions exist: each request names a valid partition of the job.
        with dg.partition_loading_context(dynamic_partitions_store=instance) as loading:
            job.validate_partition_key(run_request.partition_key, selected_asset_keys=None, context=loading)
    return data


def land(settings: Settings, key: str, sales: int = 1) -> None:
    write_sales(settings.landing, key, HEADER + f"{key},S1,I1,{sales}\n")


def test_new_unchanged_changed_and_restart(instance, settings):
    land(settings, "2024-01-01")
    land(settings, "2024-01-02")
    first = tick(instance, settings, None)
    assert sorted(r.partition_key for r in first.run_requests) == ["2024-01-01", "2024-01-02"]
    assert {r.tags["bi_pipeline/reason"] for r in first.run_requests} == {"new"}
    assert instance.get_dynamic_partitions(sales_periods.name) == ["2024-01-01", "2024-01-02"]
    keys = {r.run_key for r in first.run_requests}
    assert all(k.startswith("sales/2024-01-0") and "@" in k for k in keys)

    # Nothing new: nothing requested.
    second = tick(instance, settings, first.cursor)
    assert not second.run_requests
    assert second.skip_reason.skip_message == "no new or changed sales files"

    # A corrected file re-landed for an old period, and a new period.
    land(settings, "2024-01-01", sales=5)
    land(settings, "2024-01-03")
    third = tick(instance, settings, second.cursor)
    got = {r.partition_key: r.tags["bi_pipeline/reason"] for r in third.run_requests}
    assert got == {"2024-01-01": "changed", "2024-01-03": "new"}
    assert not {r.run_key for r in third.run_requests} & keys  # new content, new run key
    assert instance.get_dynamic_partitions(sales_periods.name) == ["2024-01-01", "2024-01-02", "2024-01-03"]

    # Restart: a fresh evaluation with the persisted cursor requests nothing again.
    restarted = tick(instance, settings, third.cursor)
    assert not restarted.run_requests


def test_same_content_gives_the_same_run_key_so_dagster_deduplicates(instance, settings):
    land(settings, "2024-01-01")
    a = tick(instance, settings, None)
    b = tick(instance, settings, None)  # cursor lost
    assert [r.run_key for r in a.run_requests] == [r.run_key for r in b.run_requests]


def test_a_fresh_sensor_starts_from_what_was_ingested(instance, settings):
    land(settings, "2024-01-01")
    land(settings, "2024-01-02")
    first = tick(instance, settings, None)
    update_manifest(
        settings.manifest_path,
        {r.tags["bi_pipeline/file"]: r.tags["bi_pipeline/sha256"] for r in first.run_requests},
    )
    land(settings, "2024-01-03")
    fresh = tick(instance, settings, None)
    assert [r.partition_key for r in fresh.run_requests] == ["2024-01-03"]


def test_bad_files_never_crash_the_sensor(instance, settings, tmp_path):
    write_sales(settings.landing, "sales-january", HEADER)
    write_sales(settings.landing, "2024-01-01", b"\xff\xfe garbage")  # read errors surface in the run, not here
    write_sales(settings.landing, "2024-01-02", HEADER, suffix=".csv.tmp")
    write_sales(settings.landing, "2024-01-03", HEADER + "2024-01-03,S1,I1,1\n", age_seconds=0)
    (tmp_path / "outside.csv").write_text(HEADER)
    (settings.landing / "sales" / "2024-01-04.csv").symlink_to(tmp_path / "outside.csv")
    slow = Settings(home=settings.home, landing=settings.landing, settle_seconds=30)
    data = tick(instance, slow, None)
    assert [r.partition_key for r in data.run_requests] == ["2024-01-01"]
    state = json.loads(data.cursor)
    assert set(state["warned"]) == {"sales/sales-january.csv", "sales/2024-01-04.csv"}
    # The file still being written is picked up once it has settled.
    later = tick(instance, settings, data.cursor)
    assert [r.partition_key for r in later.run_requests] == ["2024-01-03"]


def test_missing_landing_zone_is_not_an_error(instance, tmp_path):
    settings = Settings(home=tmp_path / "home", landing=tmp_path / "nowhere")
    data = tick(instance, settings, None)
    assert not data.run_requests
