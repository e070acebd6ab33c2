"""Where training and inference run: CUDA with bf16 autocast when present, otherwise every CPU core (shared out
between the processes of a data-parallel run, :class:`Parallel`)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Parallel:
    """How one training run is spread: this process is ``rank`` of ``world`` data-parallel processes (1: a single
    process, no process group), ``local`` of them on this machine (they share its cores), each gathering its batches
    with ``workers`` DataLoader worker processes (0: on its main thread)."""

    rank: int = 0
    world: int = 1
    local: int = 1
    workers: int = 0


def choose_device(requested: str = "auto") -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return torch.autocast(device_type="cpu", enabled=False)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
