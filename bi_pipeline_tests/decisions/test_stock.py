"""Stock snapshots: rows checked and quarantined with their rule, the sensor that picks them up, and the stock
alerts the orders raise."""

from __future__ import annotations

import os
import time

import dagster as dg
import pandas as pd
import pytest

from bi_pipeline.contract import ContractError
from bi_pipeline.decisions.alerts import stock_alerts
from bi_pipeline.decisions.stock import read_snapshot
from bi_pipeline.defs.inventory import inventory_periods, inventory_sensor
from bi_pipeline.defs.resources import PipelineResource

SNAPSHOT = """store_id,item_id,on_hand,on_order
S1,A,10,
S1,B,4,2
S1,,3,0
S2,A,x,0
S2,B,-1,0
S2,C,5,-2
S3,A,1,two
S3,B,1,0
S3,B,2,0
"""


def land(landing, name: str, text: str, age: float = 60.0):
    path = landing / "inventory" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    old = time.time() - age
    os.utime(path, (old, old))
    return path


def test_each_bad_row_is_quarantined_with_its_rule_and_row(tmp_path):
    path = land(tmp_path, "2024-01-08.csv", SNAPSHOT)
    snapshot = read_snapshot(path, tmp_path, "2024-01-08")
    assert snapshot.stock[["store_id", "item_id", "on_hand", "on_order"]].values.tolist() == [
        ["S1", "A", 10.0, 0.0],
        ["S1", "B", 4.0, 2.0],
    ]
    quarantine = snapshot.quarantine
    assert quarantine["source_row"].tolist() == [4, 5, 6, 7, 8, 9, 10]
    assert quarantine["reason"].tolist() == [
        "missing_id",
        "on_hand_not_a_number",
        "negative_stock",
        "negative_stock",
        "on_order_not_a_number",
        "duplicate_key",
        "duplicate_key",
    ]
    # Values as landed, and where they came from.
    assert quarantine.loc[1, "on_hand"] == "x" and set(quarantine["source_file"]) == {"inventory/2024-01-08.csv"}


def test_a_file_that_cannot_be_a_snapshot_is_named(tmp_path):
    path = land(tmp_path, "2024-01-08.csv", "store_id,item_id,stock\nS1,A,1\n")
    with pytest.raises(ContractError, match=r"inventory/2024-01-08.csv: rule 'missing_column': .*on_hand"):
        read_snapshot(path, tmp_path, "2024-01-08")


def test_the_sensor_requests_one_run_per_complete_snapshot(settings):
    land(settings.landing, "2024-01-08.csv", "store_id,item_id,on_hand\nS1,A,1\n")
    land(settings.landing, "2024-01-15.csv.part", "store_id,item_id,on_hand\n")
    with dg.instance_for_test() as instance:
        resources = {"pipeline": PipelineResource.from_settings(settings)}
        context = dg.build_sensor_context(instance=instance, resources=resources)
        first = inventory_sensor(context)  # seen once: complete only when a second scan agrees
        assert not first.run_requests
        second = inventory_sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor, resources=resources))
        assert [r.partition_key for r in second.run_requests] == ["2024-01-08"]
        assert second.dynamic_partitions_requests[0].partition_keys == ["2024-01-08"]
        instance.add_dynamic_partitions(inventory_periods.name, ["2024-01-08"])
        third = inventory_sensor(dg.build_sensor_context(instance=instance, cursor=second.cursor, resources=resources))
        assert not third.run_requests  # the same bytes are not read twice
        land(settings.landing, "2024-01-08.csv", "store_id,item_id,on_hand\nS1,A,2\n")
        changed = inventory_sensor(dg.build_sensor_context(instance=instance, cursor=third.cursor, resources=resources))
        again = inventory_sensor(dg.build_sensor_context(instance=instance, cursor=changed.cursor, resources=resources))
        assert [r.partition_key for r in again.run_requests] == ["2024-01-08"]
        assert not again.dynamic_partitions_requests


def test_stock_below_lead_time_demand_and_far_above_the_level_raise_alerts():
    orders = pd.DataFrame(
        {
            "store_id": ["S1", "S1", "S1"],
            "item_id": ["A", "B", "C"],
            "cutoff": pd.Timestamp("2024-01-08"),
            "model_version": "2",
            "first_period": pd.Timestamp("2024-01-15"),
            "lead_time": 2,
            "lead_time_demand_p50": [30.0, 30.0, 30.0],
            "order_up_to": [50.0, 50.0, 50.0],
            "on_hand": [10.0, 40.0, 90.0],
            "on_order": [5.0, 0.0, 20.0],
        }
    )
    out = stock_alerts(orders)
    assert out[["item_id", "kind", "severity", "units"]].values.tolist() == [
        ["A", "stockout_risk", "high", 15.0],
        ["C", "overstock", "medium", 60.0],
    ]
    assert out["message"].iloc[0] == (
        "S1 / A: 10 on hand and 5 on order, 15 short of the 30 expected to sell before an order placed now arrives "
        "(lead time 2)."
    )
    assert stock_alerts(orders.assign(on_hand=float("nan"))).empty
