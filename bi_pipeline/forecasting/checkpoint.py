"""Training checkpoints: one file per run, written atomically, read with ``torch.load(weights_only=True)`` (tensors
and plain values, never arbitrary objects), and a fingerprint of what the run trains on so a resume never mixes runs."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import torch

from bi_pipeline.forecasting.configuration import Progress, TrainConfig
from bi_pipeline.forecasting.panel import (
    Panel,
)
from bi_pipeline.storage import StoragePath, read_bytes, remove_tree, write_file


def fingerprint(panel: Panel, horizon: int, cutoff: int, config: TrainConfig, warm: list | None = None) -> str:
    digest = hashlib.sha256()
    # The epoch budget is left out: a resumed run may be given more epochs than the one that crashed; so are the
    # loader workers, which change how batches are gathered, not what they hold.
    recipe = {k: v for k, v in config.to_dict().items() if k not in ("epochs", "patience", "loader_workers")}
    digest.update(json.dumps([recipe, horizon, cutoff, list(panel.values.shape), warm], sort_keys=True).encode())
    digest.update(np.ascontiguousarray(panel.values[:, : cutoff + 1]).tobytes())
    return digest.hexdigest()[:16]


def plain(value):
    """``value`` with numpy scalars and arrays as Python numbers and tensors, so the checkpoint loads with
    ``weights_only=True`` (which refuses every class it does not know)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return value


def load_state(path: StoragePath, device: torch.device, progress: Progress | None) -> dict | None:
    """The checkpoint's state, read with ``weights_only=True``: tensors and plain containers only, so a file that
    holds anything else (a crafted pickle that would run code, or a checkpoint from an older version) is refused
    without running any of it. A refused or unreadable checkpoint is not resumed from: the training starts fresh,
    reports it (stage ``resume_skipped``, with the file and the error) and overwrites it with its own."""
    try:
        saved = torch.load(io.BytesIO(read_bytes(path)), map_location=device, weights_only=True)
        if not isinstance(saved, dict):
            raise ValueError(f"a checkpoint holds a dict, not {type(saved).__name__}")
        return saved
    except Exception as exc:  # whatever is wrong with the file, it is not resumed from
        if progress:
            progress({"stage": "resume_skipped", "checkpoint": str(path), "error": f"{type(exc).__name__}: {exc}"})
        return None


def save_state(path: StoragePath, state: dict) -> None:
    """On a local disk, written to a temporary file of its own (two writers never share one), synced and renamed; on
    an object store, one ``put``: either way a crash mid-write leaves the previous checkpoint intact."""
    write_file(path, lambda handle: torch.save(state, handle))


def clear_checkpoints(checkpoint_dir: StoragePath) -> None:
    remove_tree(checkpoint_dir)
