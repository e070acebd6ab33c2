"""Training checkpoints: one file per run, written atomically, read with ``torch.load(weights_only=True)`` (tensors
and plain values, never arbitrary objects), and a fingerprint of what the run trains on so a resume never mixes runs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch

from bi_pipeline.forecasting.configuration import Progress, TrainConfig
from bi_pipeline.forecasting.panel import (
    Panel,
)


def fingerprint(panel: Panel, horizon: int, cutoff: int, config: TrainConfig, warm: list | None = None) -> str:
    digest = hashlib.sha256()
    # The epoch budget is left out: a resumed run may be given more epochs than the one that crashed.
    recipe = {k: v for k, v in config.to_dict().items() if k not in ("epochs", "patience")}
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


def load_state(path: Path, device: torch.device, progress: Progress | None) -> dict | None:
    """The checkpoint's state, read with ``weights_only=True``: tensors and plain containers only, so a file that
    holds anything else (a crafted pickle that would run code, or a checkpoint from an older version) is refused
    without running any of it. A refused or unreadable checkpoint is not resumed from: the training starts fresh,
    reports it (stage ``resume_skipped``, with the file and the error) and overwrites it with its own."""
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(saved, dict):
            raise ValueError(f"a checkpoint holds a dict, not {type(saved).__name__}")
        return saved
    except Exception as exc:  # whatever is wrong with the file, it is not resumed from
        if progress:
            progress({"stage": "resume_skipped", "checkpoint": str(path), "error": f"{type(exc).__name__}: {exc}"})
        return None


def save_state(path: Path, state: dict) -> None:
    """Written to a temporary file of its own (two writers never share one), synced to disk and renamed: a crash
    mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def clear_checkpoints(checkpoint_dir: Path) -> None:
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
