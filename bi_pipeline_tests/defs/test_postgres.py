"""The production path: Dagster run, event and partition storage in PostgreSQL (dagster-postgres)."""

from __future__ import annotations

import os
import uuid

import dagster as dg
import pytest

from bi_pipeline.config import Settings
from bi_pipeline.generate import GenerationSpec, generate
from bi_pipeline_tests.defs.chain import materialize_chain

PG_HOST = os.environ.get("BI_PIPELINE_TEST_PG_HOST", "127.0.0.1")


@pytest.fixture
def postgres_url():
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"bi_pipeline_test_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg2.connect(host=PG_HOST, user="postgres", dbname="postgres", connect_timeout=3)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_HOST}: {exc}")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@{PG_HOST}:5432/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_chain_runs_on_postgres_storage(tmp_path, postgres_url):
    settings = Settings(home=tmp_path / "home", landing=tmp_path / "landing", settle_seconds=0, max_bad_row_rate=0.2)
    report = generate(settings.landing, GenerationSpec(stores=2, items=8, periods=12, frequency="W", defects=1))
    with dg.instance_for_test(overrides={"storage": {"postgres": {"postgres_url": postgres_url}}}) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = materialize_chain(settings, instance)
        assert result.success
        assert len(instance.get_dynamic_partitions("sales_periods")) == 12
        runs = instance.get_runs()
        assert len(runs) == 1 and runs[0].is_success
        quarantined = instance.get_latest_materialization_event(dg.AssetKey("sales_quarantine"))
        by_reason = quarantined.asset_materialization.metadata["by_reason"].value
        assert by_reason == {k: v for k, v in report.expected_quarantine.items() if v}
