"""The production path: Dagster run, event and partition storage in PostgreSQL (dagster-postgres)."""

from __future__ import annotations

import dagster as dg

from bi_pipeline.config import Settings
from bi_pipeline.generate import GenerationSpec, generate
from bi_pipeline_tests.defs.chain import materialize_chain


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
