"""The storage root on a URL: the storage helpers, the Parquet IO manager and training checkpoints on fsspec's memory
filesystem (what an object store looks like to the code: no rename, no local path)."""

import io
import uuid
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from upath import UPath

from bi_pipeline.config import Settings
from bi_pipeline.defs.resources import ParquetIOManager
from bi_pipeline.storage import files, is_local, pull, push, read_bytes, remove_tree, storage_path, write_file


@pytest.fixture
def root() -> UPath:
    path = UPath(f"memory://bi-pipeline-test-{uuid.uuid4().hex[:8]}/store")
    yield path
    remove_tree(path)


def test_paths_and_urls_map_to_local_paths_or_upaths(tmp_path):
    assert storage_path(str(tmp_path)) == tmp_path and is_local(storage_path(str(tmp_path)))
    assert storage_path(f"file://{tmp_path}/x") == tmp_path / "x"
    remote = storage_path("memory://bucket/prefix")
    assert isinstance(remote, UPath) and not is_local(remote) and str(remote / "a") == "memory://bucket/prefix/a"
    settings = Settings(home=tmp_path / "home", storage="memory://bucket/prefix")
    assert str(settings.asset_dir) == "memory://bucket/prefix/assets"
    assert str(settings.archive_dir) == "memory://bucket/prefix/forecast_archive"
    assert str(settings.checkpoint_dir) == "memory://bucket/prefix/checkpoints"
    # GX needs a real directory: a local copy under the home, kept in step with the stored one.
    assert settings.gx_dir == tmp_path / "home" / "gx" and str(settings.gx_store) == "memory://bucket/prefix/gx"
    local = Settings(home=tmp_path / "home", storage=f"file://{tmp_path}/shared")
    assert local.asset_dir == tmp_path / "shared" / "assets" and local.gx_dir == tmp_path / "shared" / "gx"
    default = Settings(home=tmp_path / "home")
    assert default.asset_dir == tmp_path / "home" / "assets" and default.gx_dir == tmp_path / "home" / "gx"


def test_write_read_list_and_remove_on_a_remote_root(root, tmp_path):
    write_file(root / "a" / "one.bin", lambda handle: handle.write(b"1"))
    write_file(root / "a" / "b" / "two.bin", lambda handle: handle.write(b"22"))
    assert read_bytes(root / "a" / "b" / "two.bin") == b"22"
    with pytest.raises(FileNotFoundError):
        read_bytes(root / "missing.bin")
    assert [str(p) for p in files(root / "a")] == [str(root / "a" / "b" / "two.bin"), str(root / "a" / "one.bin")]
    assert list(files(root / "nowhere")) == []

    # pull copies what the local copy lacks; push copies what changed since a time.
    local = tmp_path / "copy"
    assert pull(root / "a", local) == 2 and (local / "b" / "two.bin").read_bytes() == b"22"
    assert pull(root / "a", local) == 0
    (local / "three.bin").write_bytes(b"333")
    (local / "x.lock").write_bytes(b"")
    since = (local / "three.bin").stat().st_mtime
    assert push(local, root / "a", since=since, skip=lambda name: name.endswith(".lock")) == 1
    assert read_bytes(root / "a" / "three.bin") == b"333" and not (root / "a" / "x.lock").exists()

    remove_tree(root / "a")
    assert not (root / "a").exists() and list(files(root)) == []


PERIODS = dg.DynamicPartitionsDefinition(name="storage_test_periods")


@dg.asset(partitions_def=PERIODS)
def per_period(context: dg.AssetExecutionContext) -> dict[str, pd.DataFrame]:
    return {key: pd.DataFrame({"period": [key], "sales": [float(i)]}) for i, key in enumerate(context.partition_keys)}


@dg.asset
def summary(per_period: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(per_period.values(), ignore_index=True)


def test_parquet_io_manager_on_a_url_root(root):
    keys = ["2024-01-01", "2024-01-08", "2024-01-15"]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(PERIODS.name, keys)
        resources = {"io_manager": ParquetIOManager(base_dir=str(root))}
        # One run over every partition hands the IO manager a mapping: one file per partition.
        result = dg.materialize(
            [per_period],
            instance=instance,
            resources=resources,
            tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
        )
        assert result.success
        assert sorted(p.name for p in files(root / "per_period")) == [f"{k}.parquet" for k in keys]
        instance.add_dynamic_partitions(PERIODS.name, ["2024-01-22"])  # registered, never materialized: skipped
        result = dg.materialize([per_period, summary], instance=instance, resources=resources, selection=[summary])
        assert result.success
        stored = pd.read_parquet(UPath(root / "summary.parquet").open("rb"))
        assert stored["period"].tolist() == keys and stored["sales"].tolist() == [0.0, 1.0, 2.0]
        warnings = [
            e.message for e in instance.all_logs(result.run_id) if e.level >= 30 and "not materialized yet" in e.message
        ]
        assert len(warnings) == 1 and "1 partition(s) not materialized yet, skipped: 2024-01-22" in warnings[0]


def test_a_crashed_training_resumes_from_its_checkpoint_on_a_url_root(root):
    from bi_pipeline.forecasting.features import fit_spec
    from bi_pipeline.forecasting.panel import build_panel
    from bi_pipeline.forecasting.trainer import train_forecaster
    from bi_pipeline.forecasting.transformer import forecast
    from bi_pipeline_tests.forecasting.helpers import tiny, weekly_history

    history = weekly_history()
    panel = build_panel(history, fit_spec(history, "W"), horizon=8)
    straight = train_forecaster(panel, 8, 81, tiny(epochs=3))

    def crash_after_two(record: dict) -> None:
        if record.get("stage") == "train" and record["epoch"] == 2:
            raise KeyboardInterrupt

    checkpoints = root / "checkpoints" / "forecaster" / "run-1"
    with pytest.raises(KeyboardInterrupt):
        train_forecaster(panel, 8, 81, tiny(epochs=3), checkpoint_dir=checkpoints, progress=crash_after_two)
    assert (checkpoints / "last.pt").exists() and not Path(checkpoints.path).exists()  # stored, not on local disk
    resumed = train_forecaster(panel, 8, 81, tiny(epochs=3), checkpoint_dir=checkpoints)
    assert resumed.resumed_from_epoch == 2 and [r["epoch"] for r in resumed.history] == [1, 2, 3]
    pd.testing.assert_frame_equal(forecast(straight.model, panel, 81), forecast(resumed.model, panel, 81))


def test_a_frame_written_in_slices_reads_back_as_one_with_its_attrs(root):
    from bi_pipeline.storage import read_parquet, write_parquet

    frame = pd.DataFrame(
        {
            "store_id": pd.Categorical(["S1", "S2", "S1", "S3", "S2"]),
            "split": pd.Categorical.from_codes([0, 0, 1, 1, 2], ["train", "validation", "test"]),
            "sales": [1.5, 2.0, None, 4.0, 5.25],
            "date": pd.date_range("2024-01-01", periods=5, freq="D"),
        }
    )
    frame.attrs["feature_spec"] = '{"frequency": "D"}'
    frame["text"] = ["a", None, "c", "d", "e"]
    frame["flag"] = [True, False, True, True, False]
    frame["count"] = np.arange(5, dtype="int32")
    write_file(root / "sliced.parquet", lambda handle: write_parquet(frame, handle, chunk_rows=2))
    write_file(root / "whole.parquet", lambda handle: write_parquet(frame, handle))
    sliced = pd.read_parquet(io.BytesIO(read_bytes(root / "sliced.parquet")))
    whole = pd.read_parquet(io.BytesIO(read_bytes(root / "whole.parquet")))
    pd.testing.assert_frame_equal(sliced, frame)
    pd.testing.assert_frame_equal(whole, frame)
    assert sliced.attrs == whole.attrs == {"feature_spec": '{"frequency": "D"}'}
    # read_parquet: what pandas reads, dtypes and attrs included, with Arrow's copy handed back column by column.
    for name in ("sliced.parquet", "whole.parquet"):
        read = read_parquet(root / name)
        pd.testing.assert_frame_equal(read, frame, check_exact=True)
        assert read.attrs == frame.attrs
