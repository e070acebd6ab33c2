"""The landing-zone sensor across ticks: complete files only, new, unchanged, changed, restart with and without its
cursor, bad files, failed runs requested again, removed content left alone."""

from __future__ import annotations

import json
import os

import dagster as dg
import pytest

import bi_pipeline.contract as contract
from bi_pipeline.config import Settings
from bi_pipeline.contract import scan_sales_dir
from bi_pipeline.definitions import build_defs
from bi_pipeline.defs.collection import REQUEST_TAG, landing_zone_sensor, sales_periods
from bi_pipeline.defs.resources import PipelineResource
from bi_pipeline.state import record_removal, update_manifest
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
        # As the daemon does once the partitions exist: each request names valid partitions of the job.
        keys = [run_request.partition_key] if run_request.partition_key else list(requested_keys(instance, run_request))
        with dg.partition_loading_context(dynamic_partitions_store=instance) as loading:
            for key in keys:
                job.validate_partition_key(key, selected_asset_keys=None, context=loading)
    return data


def settled(instance: dg.DagsterInstance, settings: Settings, cursor: str | None):
    """Two ticks: a file is taken once two scans agree on it."""
    first = tick(instance, settings, cursor)
    return tick(instance, settings, first.cursor)


def requested_keys(instance: dg.DagsterInstance, request: dg.RunRequest) -> list[str]:
    """The partitions a request covers: its key, or every key of its range in partition order."""
    if request.partition_key:
        return [request.partition_key]
    keys = instance.get_dynamic_partitions(sales_periods.name)
    start, end = request.partition_key_range.start, request.partition_key_range.end
    return keys[keys.index(start) : keys.index(end) + 1]


def land(settings: Settings, key: str, sales: int = 1) -> None:
    write_sales(settings.landing, key, HEADER + f"{key},S1,I1,{sales}\n")


def test_a_file_is_taken_once_two_scans_agree(instance, settings):
    path = settings.landing / "sales" / "2024-01-01.csv"
    # An upload that keeps an old mtime (cp -p, rsync) and stalls mid-line.
    write_sales(settings.landing, "2024-01-01", HEADER + "2024-01-01,S1,I1,12")
    first = tick(instance, settings, None)
    assert not first.run_requests
    second = tick(instance, settings, first.cursor)
    assert not second.run_requests  # unchanged, but it does not end with a line break: still being written
    # The rest arrives, the mtime kept old again: changed since the last scan, so one more scan first.
    with path.open("a") as handle:
        handle.write("345\n")
    os.utime(path, (path.stat().st_mtime - 3600,) * 2)
    third = tick(instance, settings, second.cursor)
    assert not third.run_requests
    fourth = tick(instance, settings, third.cursor)
    assert [r.partition_key for r in fourth.run_requests] == ["2024-01-01"]


def test_new_unchanged_changed_and_restart(instance, settings):
    land(settings, "2024-01-01")
    land(settings, "2024-01-02")
    first = settled(instance, settings, None)
    # Two new periods at once: one run over both.
    assert len(first.run_requests) == 1
    assert requested_keys(instance, first.run_requests[0]) == ["2024-01-01", "2024-01-02"]
    assert first.run_requests[0].tags["bi_pipeline/reason"] == "new"
    assert instance.get_dynamic_partitions(sales_periods.name) == ["2024-01-01", "2024-01-02"]
    keys = {r.run_key for r in first.run_requests}
    assert keys == {first.run_requests[0].run_key} and first.run_requests[0].run_key.startswith("sales/2024-01-01..")

    # Nothing new: nothing requested.
    second = tick(instance, settings, first.cursor)
    assert not second.run_requests
    assert second.skip_reason.skip_message == "no new, changed or failed sales files"

    # A corrected file re-landed for an old period, and a new period.
    land(settings, "2024-01-01", sales=5)
    land(settings, "2024-01-03")
    third = settled(instance, settings, second.cursor)
    got = {r.partition_key: r.tags["bi_pipeline/reason"] for r in third.run_requests}
    assert got == {"2024-01-01": "changed", "2024-01-03": "new"}
    assert third.run_requests[0].tags["bi_pipeline/file"] == "sales/2024-01-01.csv"
    assert not {r.run_key for r in third.run_requests} & keys  # new content, new run key
    assert instance.get_dynamic_partitions(sales_periods.name) == ["2024-01-01", "2024-01-02", "2024-01-03"]

    # Restart: a fresh evaluation with the persisted cursor requests nothing again.
    restarted = tick(instance, settings, third.cursor)
    assert not restarted.run_requests


def test_same_content_gives_the_same_run_key_so_dagster_deduplicates(instance, settings):
    land(settings, "2024-01-01")
    land(settings, "2024-01-02")
    a = settled(instance, settings, None)
    b = tick(instance, settings, None)  # cursor lost, partitions known: one run per file now
    land(settings, "2024-01-03")
    c = tick(instance, settings, None)  # cursor lost again
    a_keys, b_keys, c_keys = ({r.run_key for r in x.run_requests} for x in (a, b, c))
    assert len(b_keys) == 2 and b_keys <= c_keys  # same content, same run key: Dagster launches it only once
    assert len(a_keys) == 1 and not a_keys & b_keys


def test_a_fresh_sensor_starts_from_what_was_ingested(instance, settings):
    land(settings, "2024-01-01")
    land(settings, "2024-01-02")
    settled(instance, settings, None)
    # What raw_sales records once it has read the files (e.g. in `bi-pipeline demo`).
    ready = scan_sales_dir(settings.landing, settle_seconds=0, assume_complete=True).ready
    update_manifest(settings.manifest_path, {f.relpath: f.sha256 for f in ready})
    land(settings, "2024-01-03")
    fresh = settled(instance, settings, None)
    assert [r.partition_key for r in fresh.run_requests] == ["2024-01-03"]


def test_bad_files_never_crash_the_sensor(instance, settings, tmp_path):
    write_sales(settings.landing, "sales-january", HEADER)
    write_sales(settings.landing, "2024-01-01", b"\xff\xfe garbage\n")  # read errors surface in the run, not here
    write_sales(settings.landing, "2024-01-02", HEADER, suffix=".csv.tmp")
    write_sales(settings.landing, "2024-01-03", HEADER + "2024-01-03,S1,I1,1\n", age_seconds=0)
    (tmp_path / "outside.csv").write_text(HEADER)
    (settings.landing / "sales" / "2024-01-04.csv").symlink_to(tmp_path / "outside.csv")
    os.mkfifo(settings.landing / "sales" / "2024-01-05.csv")  # opening it for reading would block forever
    slow = Settings(home=settings.home, landing=settings.landing, settle_seconds=30)
    data = settled(instance, slow, None)
    assert [r.partition_key for r in data.run_requests] == ["2024-01-01"]
    state = json.loads(data.cursor)
    assert state["warned"] == {
        "sales/sales-january.csv": "file_name_not_a_date",
        "sales/2024-01-04.csv": "path_escape",
        "sales/2024-01-05.csv": "not_a_regular_file",
    }
    # The file still being written is picked up once it has settled.
    later = tick(instance, settings, data.cursor)
    assert [r.partition_key for r in later.run_requests] == ["2024-01-03"]


def test_unchanged_files_are_not_hashed_again(instance, settings, monkeypatch):
    calls = []
    real = contract._hash_fd
    monkeypatch.setattr(contract, "_hash_fd", lambda fd: calls.append(fd) or real(fd))
    for day in range(1, 4):
        land(settings, f"2024-01-0{day}")
    cursor = settled(instance, settings, None).cursor
    assert len(calls) == 3
    for _ in range(3):
        cursor = tick(instance, settings, cursor).cursor
    assert len(calls) == 3


def test_missing_landing_zone_is_not_an_error(instance, tmp_path):
    settings = Settings(home=tmp_path / "home", landing=tmp_path / "nowhere")
    data = tick(instance, settings, None)
    assert not data.run_requests


def test_a_bulk_drop_is_split_into_ranges_covering_each_period_once(instance, settings, monkeypatch):
    import bi_pipeline.defs.collection as collection

    monkeypatch.setattr(collection, "PERIODS_PER_RUN", 2)
    for day in range(1, 6):
        land(settings, f"2024-03-0{day}")
    data = settled(instance, settings, None)
    covered = [requested_keys(instance, r) for r in data.run_requests]
    assert covered == [["2024-03-01", "2024-03-02"], ["2024-03-03", "2024-03-04"], ["2024-03-05"]]


def test_an_off_grid_file_is_rejected_and_never_becomes_a_partition(instance, settings):
    for key in ("2024-01-01", "2024-02-01", "2024-03-01", "2024-02-29"):
        land(settings, key)
    data = settled(instance, settings, None)
    assert requested_keys(instance, data.run_requests[0]) == ["2024-01-01", "2024-02-01", "2024-03-01"]
    assert json.loads(data.cursor)["warned"] == {"sales/2024-02-29.csv": "off_grid_date"}
    assert "2024-02-29" not in instance.get_dynamic_partitions(sales_periods.name)


def _launch(instance: dg.DagsterInstance, settings: Settings, request: dg.RunRequest) -> dg.DagsterRunStatus:
    """Run a request's ingestion as the daemon would, with its tags."""
    job = build_defs(settings).resolve_job_def("ingest_job")
    result = job.execute_in_process(
        instance=instance, partition_key=request.partition_key, tags=dict(request.tags), raise_on_error=False
    )
    return instance.get_run_by_id(result.run_id).status


def test_a_failed_run_is_requested_again_a_bounded_number_of_times(instance, settings):
    strict = Settings(home=settings.home, landing=settings.landing, settle_seconds=0, ingest_attempts=2)
    # Every row fails a rule: the blocking bad-row check fails the run.
    write_sales(settings.landing, "2024-01-01", HEADER + "2024-01-01,S1,I1,abc\n")
    data = settled(instance, strict, None)
    (request,) = data.run_requests
    assert _launch(instance, strict, request) == dg.DagsterRunStatus.FAILURE
    retry = tick(instance, strict, data.cursor)
    (again,) = retry.run_requests
    assert again.partition_key == "2024-01-01" and again.tags[REQUEST_TAG] == request.tags[REQUEST_TAG]
    assert again.run_key == f"{request.run_key}#attempt2" and again.tags["bi_pipeline/attempt"] == "2"
    assert _launch(instance, strict, again) == dg.DagsterRunStatus.FAILURE
    # Two attempts in all: given up until the file changes.
    gave_up = tick(instance, strict, retry.cursor)
    assert not gave_up.run_requests and json.loads(gave_up.cursor)["requests"] == {}
    # A corrected re-landing is always requested.
    write_sales(settings.landing, "2024-01-01", HEADER + "2024-01-01,S1,I1,7\n")
    fixed = settled(instance, strict, gave_up.cursor)
    (new,) = fixed.run_requests
    assert new.tags["bi_pipeline/reason"] == "changed"
    assert _launch(instance, strict, new) == dg.DagsterRunStatus.SUCCESS
    done = tick(instance, strict, fixed.cursor)
    assert not done.run_requests and json.loads(done.cursor)["requests"] == {}


def test_content_removed_on_purpose_is_not_requested_again(instance, settings):
    land(settings, "2024-01-01")
    land(settings, "2024-01-02")
    sha = scan_sales_dir(settings.landing, 0, assume_complete=True).ready[1].sha256
    record_removal(settings.removals_path, "2024-01-02", {"sales/2024-01-02.csv": sha}, "duplicate export")
    data = settled(instance, settings, None)
    assert [r.partition_key for r in data.run_requests] == ["2024-01-01"]
    land(settings, "2024-01-02", sales=9)  # new content for the period is ingested again
    later = settled(instance, settings, data.cursor)
    assert [r.partition_key for r in later.run_requests] == ["2024-01-02"]
