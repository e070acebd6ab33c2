"""Data-parallel training: two CPU processes (gloo) with a global batch of B follow one process with a batch of B."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bi_pipeline.forecasting.configuration import model_config
from bi_pipeline.forecasting.device import Parallel
from bi_pipeline.forecasting.distributed import train_distributed
from bi_pipeline.forecasting.features import fit_spec
from bi_pipeline.forecasting.modeling import BIForecaster
from bi_pipeline.forecasting.panel import Panel, build_panel, split_windows
from bi_pipeline.forecasting.sampling import EpochBatches, mix_plan
from bi_pipeline.forecasting.trainer import shard_noise, train_forecaster
from bi_pipeline_tests.forecasting.helpers import tiny, weekly_history

# 256 windows an epoch in batches of 51: the last batch holds one window, so one process's share of it is empty.
# Dropout, mixup and the weight average are on (the recipe's defaults), and two members.
RECIPE = dict(epochs=3, members=2, batch_size=51)


@pytest.fixture(scope="module")
def twelve() -> Panel:
    history = weekly_history(series=12)
    return build_panel(history, fit_spec(history, "W"), horizon=8)


@pytest.fixture(scope="module")
def two_processes(twelve):
    records: list[dict] = []
    result = train_distributed(twelve, 8, 81, tiny(**RECIPE), processes=2, progress=records.append)
    return result, records


def shares(panel: Panel, world: int) -> list[list[dict]]:
    """Each process's items of one epoch's batches (batch 7 windows, mixing every other one)."""
    config = tiny()
    cfg = model_config(panel, 8, config)
    train, _ = split_windows(panel, 8, 81, 8, 16)
    rng = np.random.default_rng(0)
    selections = [rng.permutation(len(train))[:7], rng.permutation(len(train))[:1]]
    plans = [mix_plan(panel, train, sel, 0.5, rng) for sel in selections]
    return [list(EpochBatches(panel, train, cfg, selections, plans, rank, world)) for rank in range(world)]


def test_the_shares_of_a_batch_are_its_rows_mixed_as_in_the_whole_batch(twelve):
    (whole,), (first, second) = shares(twelve, 1), shares(twelve, 2)
    assert whole[0]["total"] == first[0]["total"] == second[0]["total"] == int(whole[0]["batch"]["mask"].sum()) > 0
    assert (first[0]["rows"], first[0]["offset"], second[0]["offset"]) == (7, 0, 3)
    assert first[0]["count"] + second[0]["count"] == whole[0]["total"]
    for key, value in whole[0]["batch"].items():
        assert torch.equal(torch.cat([first[0]["batch"][key], second[0]["batch"][key]]), value), key
    # A batch of one window: the empty share trains on a window without targets.
    assert (first[1]["count"], first[1]["total"], second[1]["count"]) == (0, whole[1]["total"], whole[1]["total"])
    assert not first[1]["batch"]["mask"].any() and len(first[1]["batch"]["past_values"]) == 1


def test_a_share_draws_the_dropout_masks_of_its_rows_in_the_whole_batch(twelve):
    cfg = model_config(twelve, 8, tiny())
    x = torch.ones(7, 3, 5)
    whole = BIForecaster(cfg).noise
    whole.reseed(1)
    expected = [whole.drop(x, 0.5) for _ in range(2)]
    for begin, end in ((0, 3), (3, 7)):
        noise = shard_noise(BIForecaster(cfg))
        noise.reseed(1)
        noise.shard(7, begin, end - begin)
        for mask in expected:
            assert torch.equal(noise.drop(x[begin:end], 0.5), mask[begin:end])
    with pytest.raises(ValueError, match="first dimension"):
        noise.drop(torch.ones(3, 7), 0.5)


@pytest.mark.slow
def test_two_processes_follow_one_process_with_the_same_global_batch(twelve, two_processes):
    one = train_forecaster(twelve, 8, 81, tiny(**RECIPE))
    two, records = two_processes
    assert two.processes == 2 and one.processes == 1
    assert [r["epoch"] for r in records if r["stage"] == "train"] == [1, 2, 3]
    for key in ("train_loss", "validation_loss"):
        np.testing.assert_allclose([r[key] for r in two.history], [r[key] for r in one.history], rtol=1e-5)
    assert [r["windows"] for r in two.history] == [r["windows"] for r in one.history] == [256] * 3
    assert two.best_epoch == one.best_epoch
    ours, theirs = two.model.state_dict(), one.model.state_dict()
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        torch.testing.assert_close(ours[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert two.model.config.level_scale == one.model.config.level_scale
    assert two.model.config.spread_scale == one.model.config.spread_scale


@pytest.mark.slow
def test_a_stopped_distributed_run_resumes_from_rank_0s_checkpoint_to_the_same_result(twelve, two_processes, tmp_path):
    straight, _ = two_processes
    with pytest.raises(RuntimeError, match="stopped after epoch 2"):
        train_distributed(twelve, 8, 81, tiny(**RECIPE), 2, tmp_path, progress=stop_after_epoch_2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    resumed = train_distributed(twelve, 8, 81, tiny(**RECIPE), 2, tmp_path)
    assert resumed.resumed_from_epoch == 2
    for key in ("train_loss", "validation_loss", "best"):
        assert [r[key] for r in resumed.history] == [r[key] for r in straight.history], key
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


def stop_after_epoch_2(record: dict) -> None:
    if record.get("stage") == "train" and record["epoch"] == 2:
        raise RuntimeError("stopped after epoch 2")


@pytest.mark.slow
def test_dataloader_workers_gather_the_same_batches(twelve):
    alone = train_forecaster(twelve, 8, 81, tiny(epochs=2))
    workers = train_forecaster(twelve, 8, 81, tiny(epochs=2), parallel=Parallel(workers=2))
    assert [r["train_loss"] for r in workers.history] == [r["train_loss"] for r in alone.history]
    for name, value in alone.model.state_dict().items():
        assert torch.equal(workers.model.state_dict()[name], value), name


@pytest.mark.slow
def test_the_processes_setting_trains_the_forecaster_in_that_many_processes(twelve):
    """BI_PIPELINE_PROCESSES reaches the forecaster the assets train (Transformer.fit_panel)."""
    from bi_pipeline.config import TrainingSettings, from_env
    from bi_pipeline.forecasting.interface import Task
    from bi_pipeline.forecasting.models import Transformer

    settings = from_env(TrainingSettings, {"BI_PIPELINE_PROCESSES": "2", "BI_PIPELINE_LOADER_WORKERS": "1"})
    config = tiny(epochs=1, processes=settings.processes, loader_workers=settings.loader_workers)
    model = Transformer(config).fit_panel(twelve, 81, Task("W", 8, 52))
    assert model.result.processes == 2 and model.result.epochs_run == 1
