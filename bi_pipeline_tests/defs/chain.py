"""The data chain (collection → cleaning → integration) materialized over the landed periods, as a single-run
backfill: what the data-half Dagster tests run."""

from __future__ import annotations

import dagster as dg

from bi_pipeline.config import Settings
from bi_pipeline.contract import scan_sales_dir
from bi_pipeline.defs.cleaning import clean_sales
from bi_pipeline.defs.collection import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    calendar,
    items,
    raw_sales,
    sales_periods,
    stores,
)
from bi_pipeline.defs.integration import integrated_sales
from bi_pipeline.defs.resources import ParquetIOManager, PipelineResource

ASSETS = [stores, items, calendar, raw_sales, clean_sales, integrated_sales]


def resources(settings: Settings) -> dict:
    return {
        "pipeline": PipelineResource.from_settings(settings),
        "io_manager": ParquetIOManager(base_dir=str(settings.asset_dir)),
    }


def materialize_chain(
    settings: Settings, instance: dg.DagsterInstance, keys: list[str] | None = None, raise_on_error: bool = True
):
    """Registers every complete landed period as a partition, then materializes the chain over ``keys`` (default:
    every registered period) in one run."""
    ready = sorted(f.key for f in scan_sales_dir(settings.landing, settle_seconds=0, assume_complete=True).ready)
    known = set(instance.get_dynamic_partitions(sales_periods.name))
    instance.add_dynamic_partitions(sales_periods.name, [k for k in ready if k not in known])
    keys = keys or instance.get_dynamic_partitions(sales_periods.name)
    return dg.materialize(
        ASSETS,
        instance=instance,
        resources=resources(settings),
        tags={RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]},
        raise_on_error=raise_on_error,
    )
