"""Distributed runs: the local cluster of `make prod-up` (deploy/cluster.sh: two Celery workers on Redis, the Dagster
daemon and webserver on PostgreSQL storage from deploy/dagster.yaml, the MLflow server), `pipeline_job` launched
through its webserver end to end, its steps executed by the workers, and the same asset values as an in-process run
of the same job on the same data and settings."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from bi_pipeline.contract import scan_sales_dir
from bi_pipeline.defs.build import build_defs
from bi_pipeline.defs.collection import RANGE_END_TAG, RANGE_START_TAG, sales_periods
from bi_pipeline.generate import GenerationSpec, generate

REPOSITORY = Path(__file__).resolve().parents[2]
REDIS_HOST = os.environ.get("BI_PIPELINE_TEST_REDIS_HOST", "127.0.0.1")
PG_HOST = os.environ.get("BI_PIPELINE_TEST_PG_HOST", "127.0.0.1")
WORKERS = ("bi-pipeline-worker-1", "bi-pipeline-worker-2")  # deploy/cluster.sh names them
CLAIM = "bi_pipeline_tests:claimed"
# A tiny training budget: this test is about where steps run and what they produce, test_forecaster about the model.
FAST = {
    "BI_PIPELINE_HORIZON": "4",
    "BI_PIPELINE_MEMBERS": "1",
    "BI_PIPELINE_EPOCHS": "2",
    "BI_PIPELINE_MAX_WINDOWS_PER_EPOCH": "256",
    "BI_PIPELINE_SETTLE_SECONDS": "0",
    "BI_PIPELINE_MAX_BAD_ROW_RATE": "0.2",
    "BI_PIPELINE_DEVICE": "cpu",
}
# Variables of the surrounding environment that would point a run elsewhere than this test's folders.
CLEARED = ("BI_PIPELINE_MLFLOW_URI", "BI_PIPELINE_STORAGE", "BI_PIPELINE_WAREHOUSE_URL", "BI_PIPELINE_ALERT_WEBHOOK")


def celery_pipeline_job() -> dg.JobDefinition:
    """What the submitting process and every worker reconstruct: `pipeline_job` of the code location built from the
    environment (BI_PIPELINE_EXECUTOR=celery, BI_PIPELINE_HOME, the fast training settings), as in production."""
    return build_defs().resolve_job_def("pipeline_job")


def _claim_redis_dbs(redis) -> list[int]:
    """Two empty Redis databases (broker, result backend), each claimed with a key set only where absent, so that no
    other worker or test run shares the queue."""
    claimed = []
    for n in random.sample(range(2, 16), 14):
        client = redis.Redis(host=REDIS_HOST, port=6379, db=n, socket_connect_timeout=3)
        if client.dbsize() == 0 and client.set(CLAIM, str(os.getpid()), nx=True):
            claimed.append(n)
        client.close()
        if len(claimed) == 2:
            return claimed
    for n in claimed:
        redis.Redis(host=REDIS_HOST, port=6379, db=n).flushdb()
    pytest.skip(f"no two empty Redis databases on {REDIS_HOST}:6379")


@pytest.fixture
def redis_urls():
    """Broker and backend URLs on two empty Redis databases, flushed afterwards; a clean skip without Redis."""
    redis = pytest.importorskip("redis")
    try:
        redis.Redis(host=REDIS_HOST, port=6379, socket_connect_timeout=3).ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.skip(f"Redis not reachable at {REDIS_HOST}:6379: {exc}")
    broker, backend = _claim_redis_dbs(redis)
    try:
        yield f"redis://{REDIS_HOST}:6379/{broker}", f"redis://{REDIS_HOST}:6379/{backend}"
    finally:
        for n in (broker, backend):
            redis.Redis(host=REDIS_HOST, port=6379, db=n).flushdb()


def _landed(root: Path) -> Path:
    landing = root / "landing"
    generate(landing, GenerationSpec(stores=2, items=4, periods=20, frequency="W", defects=1))
    return landing


def _register(instance: dg.DagsterInstance, landing: Path) -> dict[str, str]:
    """Every landed period as a partition; the run tags of a single-run backfill over all of them."""
    keys = sorted(f.key for f in scan_sales_dir(landing, settle_seconds=0, assume_complete=True).ready)
    instance.add_dynamic_partitions(sales_periods.name, keys)
    return {RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]}


def _pg_env(postgres_url: str) -> dict[str, str]:
    """The BI_PIPELINE_PG_* variables deploy/dagster.yaml reads, for the throwaway database."""
    rest = postgres_url.removeprefix("postgresql://")
    user, rest = rest.split("@", 1)
    host_port, db = rest.split("/", 1)
    host, port = host_port.split(":")
    return {
        "BI_PIPELINE_PG_USER": user,
        "BI_PIPELINE_PG_PASSWORD": "",
        "BI_PIPELINE_PG_HOST": host,
        "BI_PIPELINE_PG_PORT": port,
        "BI_PIPELINE_PG_DB": db,
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _drop_database(name: str) -> None:
    import psycopg2

    admin = psycopg2.connect(host=PG_HOST, user="postgres", dbname="postgres", connect_timeout=3)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def cluster(tmp_path, redis_urls, postgres_url, monkeypatch):
    """`deploy/cluster.sh up` (what `make prod-up` runs): the MLflow server on PostgreSQL, two Celery workers, the
    Dagster daemon and the webserver, on the throwaway database, the fresh Redis databases and free ports, with the
    fast training settings; `down` at the end. The landing zone the daemon's sensors watch stays empty, so the only
    run is the one the test launches (it names the landed files in its run config)."""
    broker, backend = redis_urls
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    env = _pg_env(postgres_url)
    home, watched = tmp_path / "cluster_home", tmp_path / "watched"
    watched.mkdir()
    web_port, mlflow_port = _free_port(), _free_port()
    bin_dir = Path(sys.executable).parent
    env |= FAST | {
        "BI_PIPELINE_HOME": str(home),
        "BI_PIPELINE_LANDING": str(watched),
        "BI_PIPELINE_CELERY_BROKER": broker,
        "BI_PIPELINE_CELERY_BACKEND": backend,
        "CLUSTER_WEB_PORT": str(web_port),
        "CLUSTER_MLFLOW_PORT": str(mlflow_port),
        "CLUSTER_BIN": str(bin_dir),
        "CLUSTER_START_TIMEOUT": "300",
        "GX_ANALYTICS_ENABLED": "false",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    script = [str(REPOSITORY / "deploy" / "cluster.sh")]
    shell_env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    try:
        up = subprocess.run([*script, "up"], env=shell_env, capture_output=True, text=True, timeout=900)
        assert up.returncode == 0, up.stdout + up.stderr
        status = subprocess.run([*script, "status"], env=shell_env, capture_output=True, text=True, timeout=120)
        assert status.returncode == 0, status.stdout
        # What the cluster's processes read: its DAGSTER_HOME, its MLflow server, the celery executor.
        monkeypatch.setenv("DAGSTER_HOME", str(home / "cluster" / "dagster"))
        monkeypatch.setenv("BI_PIPELINE_MLFLOW_URI", f"http://127.0.0.1:{mlflow_port}")
        monkeypatch.setenv("BI_PIPELINE_EXECUTOR", "celery")
        yield {"home": home, "landing": _landed(tmp_path), "web_port": web_port, "mlflow_port": mlflow_port}
    finally:
        down = subprocess.run([*script, "down"], env=shell_env, capture_output=True, text=True, timeout=300)
        _drop_database(env["BI_PIPELINE_PG_DB"] + "_mlflow")
        assert down.returncode == 0, down.stdout + down.stderr


def _asset_values(home: Path) -> dict[str, pd.DataFrame]:
    # BI_PIPELINE_STORAGE is unset here: the asset values are under the home.
    root = home / "assets"
    return {str(p.relative_to(root)): pd.read_parquet(p) for p in sorted(root.rglob("*.parquet"))}


def _landing_config(landing: Path) -> dict:
    """Run config naming the landed files; the pipeline resource's other fields keep the environment's values."""
    return {"resources": {"pipeline": {"config": {"landing": str(landing)}}}}


@pytest.mark.slow
# dagster-celery registers its step task on the app again in the submitting process: harmless, same callable.
@pytest.mark.filterwarnings("ignore::celery.exceptions.DuplicateTaskNameWarning")
def test_pipeline_job_on_the_local_cluster_runs_on_its_workers_as_it_runs_in_process(cluster, tmp_path, monkeypatch):
    from dagster_graphql import DagsterGraphQLClient
    from mlflow import MlflowClient

    started = time.monotonic()
    instance = dg.DagsterInstance.get()
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        # The production instance's pool settings reached the instance: the `gpu` pool of the forecaster is limited
        # to one step at a time, whichever worker takes it.
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        tags = _register(instance, cluster["landing"])
        run_config = _landing_config(cluster["landing"])

        # Launched as a user launches it, through the webserver: queued, then launched by the daemon.
        client = DagsterGraphQLClient("127.0.0.1", port_number=cluster["web_port"])
        run_id = client.submit_job_execution("pipeline_job", run_config=run_config, tags=tags)
        status = _wait(client, run_id)
        events = instance.all_logs(run_id)
        failures = [
            e.dagster_event.step_failure_data.error
            for e in events
            if e.is_dagster_event and e.dagster_event.is_step_failure
        ]
        assert status == dg.DagsterRunStatus.SUCCESS, [f.to_string() if f else None for f in failures]
        types = [e.dagster_event.event_type for e in events if e.is_dagster_event]
        # Queued by the webserver, launched by the daemon (the queued run coordinator of deploy/dagster.yaml).
        assert dg.DagsterEventType.RUN_ENQUEUED in types and dg.DagsterEventType.RUN_STARTING in types
        steps = {
            e.step_key
            for e in events
            if e.is_dagster_event and e.dagster_event.event_type == dg.DagsterEventType.STEP_START
        }
        succeeded = {
            e.step_key
            for e in events
            if e.is_dagster_event and e.dagster_event.event_type == dg.DagsterEventType.STEP_SUCCESS
        }
        assert steps and steps == succeeded and "forecaster" in succeeded
        # Each step ran in a worker process (one process per worker: CLUSTER_WORKER_CONCURRENCY=1), not in the run's
        # process or here; the delegation events name the worker; both workers took steps.
        ran = (
            dg.DagsterEventType.STEP_START,
            dg.DagsterEventType.STEP_SUCCESS,
            dg.DagsterEventType.ASSET_MATERIALIZATION,
        )
        step_pids = {e.dagster_event.pid for e in events if e.is_dagster_event and e.dagster_event.event_type in ran}
        run_pids = {
            e.dagster_event.pid
            for e in events
            if e.is_dagster_event and e.dagster_event.event_type == dg.DagsterEventType.RUN_START
        }
        assert len(step_pids) == 2 and not step_pids & (run_pids | {os.getpid()}), (step_pids, run_pids)
        hosts = {
            e.dagster_event.engine_event_data.metadata["Celery worker"].value
            for e in events
            if e.is_dagster_event
            and e.dagster_event.event_type == dg.DagsterEventType.ENGINE_EVENT
            and "Celery worker" in (e.dagster_event.engine_event_data.metadata or {})
        }
        assert {h.split("@")[0] for h in hosts} == set(WORKERS), hosts
        # The forecaster's step claimed its slot in the `gpu` pool (limit 1) and gave it back.
        assert {p.name: p.limit for p in instance.event_log_storage.get_pool_limits()}.get("gpu") == 1
        assert instance.event_log_storage.get_concurrency_info("gpu").active_slot_count == 0
    finally:
        instance.dispose()
    # The model is registered on the cluster's MLflow server, its champion alias set there.
    server = MlflowClient(tracking_uri=f"http://127.0.0.1:{cluster['mlflow_port']}")
    assert server.get_model_version_by_alias("bi_pipeline_forecaster", "champion").version == "1"
    distributed = time.monotonic() - started

    # The same job on the same landed files and settings, in process, in a home of its own, embedded storage.
    for name in ("BI_PIPELINE_MLFLOW_URI", "DAGSTER_HOME"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("BI_PIPELINE_HOME", str(tmp_path / "embedded_home"))
    monkeypatch.setenv("BI_PIPELINE_EXECUTOR", "in_process")
    with dg.instance_for_test() as embedded:
        local = (
            build_defs()
            .resolve_job_def("pipeline_job")
            .execute_in_process(
                instance=embedded,
                run_config=_landing_config(cluster["landing"]),
                tags=_register(embedded, cluster["landing"]),
            )
        )
        assert local.success
    distributed_values, embedded_values = _asset_values(cluster["home"]), _asset_values(tmp_path / "embedded_home")
    assert distributed_values.keys() == embedded_values.keys() and distributed_values
    # Equal exactly, the forecasts and everything computed from them included: the members' seeds are fixed and
    # both runs train on this machine's CPU with the same thread count. Workers on other hardware (a GPU, another
    # core count) would give forecasts equal only to float tolerance (another order of float reductions).
    for name, frame in embedded_values.items():
        pd.testing.assert_frame_equal(distributed_values[name], frame, check_exact=True, obj=name)
    print(f"cluster run {distributed:.0f}s, embedded run {time.monotonic() - started - distributed:.0f}s")

    # Two trainings launched at once: both runs start (two may run at once), each on the workers, and their forecaster
    # steps, in the `gpu` pool with its limit of one, run one after the other, whichever worker takes them.
    monkeypatch.setenv("DAGSTER_HOME", str(cluster["home"] / "cluster" / "dagster"))
    monkeypatch.setenv("BI_PIPELINE_MLFLOW_URI", f"http://127.0.0.1:{cluster['mlflow_port']}")
    monkeypatch.setenv("BI_PIPELINE_HOME", str(cluster["home"]))
    monkeypatch.setenv("BI_PIPELINE_EXECUTOR", "celery")
    config = _landing_config(cluster["landing"])
    runs = [client.submit_job_execution("train_job", run_config=config) for _ in range(2)]
    assert [_wait(client, run) for run in runs] == [dg.DagsterRunStatus.SUCCESS] * 2
    instance = dg.DagsterInstance.get()
    try:
        spans, run_spans = [], []
        for run in runs:
            logged = [e for e in instance.all_logs(run) if e.is_dagster_event]
            kinds = {e.dagster_event.event_type: e.timestamp for e in logged}
            run_spans.append((kinds[dg.DagsterEventType.RUN_START], kinds[dg.DagsterEventType.RUN_SUCCESS]))
            events = [e for e in logged if e.step_key == "forecaster"]
            start = min(e.timestamp for e in events if e.dagster_event.event_type == dg.DagsterEventType.STEP_START)
            end = max(e.timestamp for e in events if e.dagster_event.event_type == dg.DagsterEventType.STEP_SUCCESS)
            spans.append((start, end))
        (_, first_run_end), (second_run_start, _) = sorted(run_spans)
        assert second_run_start < first_run_end, run_spans  # the two runs ran at the same time
        (_, first_end), (second_start, _) = sorted(spans)
        assert first_end <= second_start, spans  # but never two trainings at once
        assert instance.event_log_storage.get_concurrency_info("gpu").active_slot_count == 0
    finally:
        instance.dispose()


def _wait(client, run_id: str, timeout: float = 900) -> dg.DagsterRunStatus:
    deadline = time.monotonic() + timeout
    while (status := client.get_run_status(run_id)) not in (
        dg.DagsterRunStatus.SUCCESS,
        dg.DagsterRunStatus.FAILURE,
        dg.DagsterRunStatus.CANCELED,
    ):
        assert time.monotonic() < deadline, f"run {run_id} still {status}"
        time.sleep(2)
    return status
