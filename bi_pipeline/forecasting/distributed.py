"""Data-parallel training over several processes (no Dagster): PyTorch's DistributedDataParallel, gloo between CPU
processes, nccl between GPUs.

:func:`train_distributed` with ``processes=N`` starts N local processes, trains in all of them and returns rank 0's
result; with ``processes=None`` this process is one of those a launcher started (``torchrun``, ``accelerate
launch``: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set), and every process returns the same
result. Each process trains on its share of every batch of the one-process run, and the loss is normalised by the
whole batch's count of targets, so N processes with a batch of B follow the loss of one process with a batch of B
(see :func:`bi_pipeline.forecasting.trainer.train_epoch`).
"""

from __future__ import annotations

import os
import queue
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from bi_pipeline.forecasting.checkpoint import load_state, plain, save_state
from bi_pipeline.forecasting.configuration import Progress, TrainConfig, TrainResult
from bi_pipeline.forecasting.device import Parallel, choose_device
from bi_pipeline.forecasting.modeling import BIForecaster, BIForecasterConfig
from bi_pipeline.forecasting.panel import Panel, Windows
from bi_pipeline.forecasting.trainer import train_forecaster


class Stopped(RuntimeError):
    """Raised in rank 0 when the caller's progress callback raised: the run stops there, as a one-process run does."""


def uses_cuda(config: TrainConfig) -> bool:
    return config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available())


def join_launched(config: TrainConfig, workers: int = 0) -> Parallel:
    """This process's part in a run a launcher started (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), its process group started (nccl on CUDA, each process
    on the GPU of its local rank; gloo on the CPU). Without those variables: one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if world > 1 and not dist.is_initialized():
        cuda = uses_cuda(config)
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    return Parallel(rank=rank, world=world, local=local, workers=workers)


def train_distributed(
    panel: Panel,
    horizon: int,
    cutoff: int,
    config: TrainConfig | None = None,
    processes: int | None = None,
    checkpoint_dir: Path | None = None,
    progress: Progress | None = None,
    initial_model: BIForecaster | None = None,
    window_filter: Callable[[Windows], Windows] | None = None,
    workers: int = 0,
) -> TrainResult:
    """:func:`~bi_pipeline.forecasting.trainer.train_forecaster` in ``processes`` data-parallel processes started
    here (1: in this process; on CUDA, one GPU each), or, with ``None``, in the processes a launcher started.
    ``workers``: DataLoader workers per process that gather the batches.

    Processes started here get their arguments pickled (``window_filter`` must be a module-level function or a
    ``functools.partial`` of one); ``progress`` runs here, on rank 0's records, and an exception it raises stops
    the run after that stage's checkpoint, as in one process. Only rank 0 writes the checkpoint, and every process
    resumes from it."""
    config = config or TrainConfig()
    if processes is not None and processes < 1:
        raise ValueError(f"processes must be at least 1, not {processes}")
    if processes is None or processes == 1:
        parallel = join_launched(config, workers) if processes is None else Parallel(workers=workers)
        return train_forecaster(
            panel, horizon, cutoff, config, checkpoint_dir, progress, initial_model, window_filter, parallel
        )
    arguments = (panel, horizon, cutoff, config, checkpoint_dir, initial_model, window_filter, workers)
    if uses_cuda(config) and torch.cuda.device_count() < processes:
        raise ValueError(f"{processes} processes need {processes} GPUs, this machine has {torch.cuda.device_count()}")
    context = mp.get_context("spawn")
    records, replies = context.Queue(), context.Queue()
    with tempfile.TemporaryDirectory(prefix="bi_pipeline_ddp_") as tmp:
        out = Path(tmp) / "result.pt"
        ranks = mp.start_processes(
            _run_rank,
            args=(processes, free_port(), arguments, records, replies, out, progress is not None),
            nprocs=processes,
            join=False,
            start_method="spawn",
        )
        failure: BaseException | None = None
        try:
            while not ranks.join(timeout=0):
                try:
                    record = records.get(timeout=0.05)
                except queue.Empty:
                    continue
                if failure is None and progress is not None:
                    try:
                        progress(record)
                    except Exception as exc:  # the run stops, as it would in one process; raised once it has
                        failure = exc
                replies.put(failure is None)
        except ProcessException:
            if failure is not None:
                raise failure from None
            raise
        finally:
            for process in ranks.processes:
                if process.is_alive():
                    process.terminate()
        saved = load_state(out, torch.device("cpu"), None)
    if saved is None:
        raise RuntimeError("the data-parallel run ended without rank 0's result")
    return result_from_state(saved, choose_device(config.device))


def _run_rank(
    rank: int,
    processes: int,
    port: int,
    arguments: tuple,
    records: mp.Queue,
    replies: mp.Queue,
    out: Path,
    relay: bool,
) -> None:
    """One process of :func:`train_distributed`; rank 0 sends its progress records and writes the result."""
    panel, horizon, cutoff, config, checkpoint_dir, initial_model, window_filter, workers = arguments
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(processes),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(processes),
    )
    parallel = join_launched(config, workers)
    try:
        progress = Relay(records, replies) if rank == 0 and relay else None
        result = train_forecaster(
            panel, horizon, cutoff, config, checkpoint_dir, progress, initial_model, window_filter, parallel
        )
        if rank == 0:
            save_state(out, result_state(result))
    finally:
        dist.destroy_process_group()


class Relay:
    """Rank 0's progress callback: sends each record to the starting process and waits for its answer, so that an
    exception in the caller's callback stops the run at the same point as in one process."""

    def __init__(self, records: mp.Queue, replies: mp.Queue) -> None:
        self.records, self.replies = records, replies

    def __call__(self, record: dict) -> None:
        self.records.put(plain(record))
        if not self.replies.get():
            raise Stopped("the progress callback raised: the run stops here")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def result_state(result: TrainResult) -> dict:
    """A result as tensors and plain values (the model as its config and weights): read back with
    ``weights_only=True``, like a checkpoint."""
    fields = {k: v for k, v in vars(result).items() if k != "model"}
    model = result.model
    return plain({"config": model.config.to_dict(), "model": model.state_dict(), "fields": fields})


def result_from_state(saved: dict, device: torch.device) -> TrainResult:
    # The new model's random initial weights are overwritten: the caller's random stream is left as it was.
    with torch.random.fork_rng(devices=[]):
        model = BIForecaster(BIForecasterConfig.from_dict(saved["config"]))
    model.load_state_dict(saved["model"])
    return TrainResult(model=model.to(device).eval(), **saved["fields"])
