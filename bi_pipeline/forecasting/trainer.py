"""The training loop (no Dagster): fine-tuning with the pinball loss over the quantiles, AdamW, gradient clipping, a
moving average of the weights, early stopping on the validation loss (validation targets are never training targets,
see :func:`bi_pipeline.forecasting.panel.split_windows`), a checkpoint after every epoch that a restarted run resumes
from, then the calibrations and the per-series feedback. Progress goes to a callback (the Dagster log, or a bar).

One process by default; with :class:`~bi_pipeline.forecasting.device.Parallel` several data-parallel ones (started by
:mod:`bi_pipeline.forecasting.distributed`), each training on its share of every batch, with the loss of one process
training on the whole batch."""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from bi_pipeline.forecasting.calibration import CALIBRATION, calibrate
from bi_pipeline.forecasting.checkpoint import fingerprint, load_state, plain, save_state
from bi_pipeline.forecasting.configuration import (
    Progress,
    TrainConfig,
    TrainResult,
    model_config,
    new_model,
    warm_config,
)
from bi_pipeline.forecasting.device import Parallel, autocast, choose_device, seed_everything, to_device
from bi_pipeline.forecasting.feedback import fit_error_spread, fit_level_feedback
from bi_pipeline.forecasting.modeling import (
    BIForecaster,
    DropoutNoise,
    pinball_loss,
)
from bi_pipeline.forecasting.panel import (
    Panel,
    Windows,
    split_windows,
    subsample,
    validation_length,
)
from bi_pipeline.forecasting.sampling import (
    NO_MIX,
    PERIODS_PER_YEAR,
    EpochBatches,
    batches,
    epoch_sample,
    mix_plan,
    ordered_batches,
)

SINGLE = Parallel()


def run_loss(
    model: BIForecaster | DistributedDataParallel,
    batch: dict[str, torch.Tensor],
    levels: torch.Tensor,
    members: bool = False,
) -> torch.Tensor:
    """Pinball loss of the averaged quantiles; with ``members``, the sum of each member's own loss (training: every
    member learns on its own, so they stay diverse)."""
    quantiles, scale = model(
        batch["past_values"],
        batch["past_observed"],
        batch["future_features"],
        batch["static_categorical"],
        batch["static_numeric"],
        return_members=members,
    )
    target = batch["target"] / scale
    mask = batch["mask"].to(target.dtype)
    if members:
        return sum(pinball_loss(q.float(), target, mask, levels) for q in quantiles)
    return pinball_loss(quantiles.float(), target, mask, levels)


def evaluate_loss(
    model: BIForecaster,
    panel: Panel,
    windows: Windows,
    device: torch.device,
    batch_size: int = 1024,
    parallel: Parallel = SINGLE,
) -> float:
    """The mean pinball loss over the windows' targets; with several processes each scores every ``world``-th batch
    and the sums are added up, so every process gets the same loss (up to the order of the sum)."""
    cfg = model.config
    levels = torch.tensor(cfg.quantiles, device=device)
    model.eval()
    total, weight = 0.0, 0.0
    with torch.inference_mode(), autocast(device):
        for batch in ordered_batches(panel, windows, cfg, batch_size, parallel.rank, parallel.world):
            count = float(batch["mask"].sum())
            if count == 0:
                continue
            total += float(run_loss(model, to_device(batch, device), levels)) * count
            weight += count
    if parallel.world > 1:
        sums = torch.tensor([total, weight], dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        total, weight = sums.tolist()
    return total / weight if weight else float("nan")


class ShardedNoise(DropoutNoise):
    """The dropout stream of one of several data-parallel processes: every mask is drawn for the whole batch and the
    process keeps its share's rows, so a window gets the mask it gets in one process training on the whole batch
    (the price: each process draws every process's masks, cheap next to the step). Set per batch by ``shard``."""

    def __init__(self, noise: DropoutNoise) -> None:
        self.generator = noise.generator
        self.rows, self.offset, self.size = 0, 0, 0

    def shard(self, rows: int, offset: int, size: int) -> None:
        """The batch has ``rows`` windows; this process trains on ``size`` of them from ``offset``."""
        self.rows, self.offset, self.size = rows, offset, size

    def drop(self, x: torch.Tensor, p: float) -> torch.Tensor:
        if x.device.type != "cpu" or not self.rows:
            return super().drop(x, p)
        if x.shape[0] != self.size:
            raise ValueError(f"dropout on {tuple(x.shape)}: its first dimension is not the {self.size} windows'")
        bits = self.generator.integers(0, 65536, size=(self.rows, *x.shape[1:]), dtype=np.uint16)
        bits = bits[self.offset : self.offset + self.size]
        keep = torch.from_numpy(bits >= round(p * 65536))
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


def shard_noise(model: BIForecaster) -> ShardedNoise:
    """Every module that draws from the model's dropout stream draws from a :class:`ShardedNoise` instead."""
    old, noise = model.noise, ShardedNoise(model.noise)
    for module in model.modules():
        if getattr(module, "noise", None) is old:
            module.noise = noise
    return noise


def train_epoch(
    model: BIForecaster,
    optimizer: torch.optim.Optimizer,
    panel: Panel,
    windows: Windows,
    config: TrainConfig,
    epoch: int,
    device: torch.device,
    salt: int = 0,
    average: dict[str, torch.Tensor] | None = None,
    parallel: Parallel = SINGLE,
    network: DistributedDataParallel | None = None,
) -> tuple[float, int, float, int]:
    """One pass over (a sample of) the windows: (mean loss, windows seen, seconds, optimizer steps); with
    ``average``, the moving average of the weights (:func:`update_average`) follows every step.

    Every process draws the epoch's sample, order and mixup alike and trains on its share of each batch through
    ``network`` (the model wrapped in DDP, which averages the gradients): each share's loss is its targets' sum over
    the whole batch's count, times the processes, so the averaged gradient is the whole batch's. The step losses
    stay on the device until the epoch ends (one transfer, not one a step)."""
    cfg = model.config
    levels = torch.tensor(cfg.quantiles, device=device)
    for group in optimizer.param_groups:
        group["lr"] = config.learning_rate * config.lr_decay ** (epoch - 1)
    rng = np.random.default_rng(config.seed * 1000 + epoch + salt)
    halflife = config.recency_halflife * PERIODS_PER_YEAR[panel.spec.frequency]
    chosen = epoch_sample(windows, config.max_windows_per_epoch, halflife, rng)
    selections = [chosen[idx] for idx in batches(len(chosen), config.batch_size, rng)]
    # Drawn in the order the loop drew them batch by batch, so the batches are the same.
    plans = [mix_plan(panel, windows, sel, config.mixup, rng) if config.mixup else NO_MIX for sel in selections]
    loader = DataLoader(
        EpochBatches(panel, windows, cfg, selections, plans, parallel.rank, parallel.world),
        batch_size=None,
        num_workers=parallel.workers,
        pin_memory=device.type == "cuda",
    )
    model.noise.reseed([config.seed, epoch, salt])
    model.train()
    started = time.perf_counter()
    losses = []
    for item in loader:
        if item["total"] == 0:
            continue
        if isinstance(model.noise, ShardedNoise):
            model.noise.shard(item["rows"], item["offset"], len(item["batch"]["mask"]))
        with autocast(device):
            loss = run_loss(network or model, to_device(item["batch"], device), levels, members=True)
        if parallel.world > 1:
            # pinball_loss divided the share's sum by the share's count; this makes it the share of the batch's mean.
            loss = loss * (parallel.world * max(item["count"], 1) / item["total"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if average is not None:
            update_average(average, model, config.weight_average)
        losses.append(loss.detach() / parallel.world if parallel.world > 1 else loss.detach())
    mean = float("nan")
    if losses:
        steps = torch.stack(losses).double()
        if parallel.world > 1:
            dist.all_reduce(steps)  # each step's loss: the sum of the shares'
        mean = float(np.mean(steps.cpu().numpy() / len(model.members)))
    return mean, len(chosen), time.perf_counter() - started, len(losses)


def update_average(average: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    """average ← decay · average + (1 − decay) · weights, for every floating-point tensor of the state (the rest is
    copied); the average starts at zero, see :func:`averaged_weights`."""
    with torch.no_grad():
        floats, averages = [], []
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                floats.append(value)
                averages.append(average[name])
            else:
                average[name].copy_(value)
        # One fused update for all tensors instead of two operations on each of ~200 small ones.
        get_ema_multi_avg_fn(decay)(averages, floats, None)


def averaged_weights(average: dict[str, torch.Tensor], decay: float, steps: int) -> dict[str, torch.Tensor]:
    """The moving average after ``steps`` updates from zero, divided by 1 − decay**steps (as Adam corrects its
    moments): a weighted mean of the weights seen so far, with no pull towards the initial weights, even on data
    small enough for a few steps an epoch."""
    correction = 1.0 - decay**steps if steps else 1.0
    return {k: v / correction if v.is_floating_point() else v.clone() for k, v in average.items()}


def fresh_state() -> dict:
    """What a checkpoint carries besides the weights and the optimizer: the loop's position and its best epoch."""
    return {
        "epoch": 0,
        "best_loss": math.inf,
        "best_epoch": 0,
        "bad_epochs": 0,
        "history": [],
        "best_state": None,
        "average": None,
        "average_steps": 0,
        "done": False,
        **{name: (0.0 if name == "spread_power" else 1.0) for name in CALIBRATION},
    }


def train_forecaster(
    panel: Panel,
    horizon: int,
    cutoff: int,
    config: TrainConfig | None = None,
    checkpoint_dir: Path | None = None,
    progress: Progress | None = None,
    initial_model: BIForecaster | None = None,
    window_filter: Callable[[Windows], Windows] | None = None,
    parallel: Parallel = SINGLE,
) -> TrainResult:
    """Train on the panel's periods up to date index ``cutoff`` (inclusive); nothing later is read.

    ``initial_model`` warm-starts from a trained model (a copy; its architecture and encodings are kept, the panel
    must be built with its feature spec); ``window_filter`` picks the training windows (an incremental update: the
    new periods' windows and a replay sample, see :mod:`bi_pipeline.forecasting.continual`).

    Trains on targets before the validation periods and stops early on the validation loss; the forecasts' level
    (with ``calibrate_level``) and then the quantile spread are calibrated on the validation windows, then the
    per-series feedback is fitted on them.

    ``parallel``: this process's part in a data-parallel run (its process group already started, see
    :mod:`bi_pipeline.forecasting.distributed`): every process resumes from the same checkpoint, only rank 0 writes
    it and reports progress, and every process returns the same model.
    """
    config = config or TrainConfig()
    if parallel.world > 1 and not dist.is_initialized():
        raise RuntimeError("a data-parallel run needs its process group started (bi_pipeline.forecasting.distributed)")
    if parallel.rank != 0:
        progress = None
    if config.init_from == "synthetic" and initial_model is None:
        raise ValueError(
            "init_from='synthetic' names the checkpoint pretrained on the generator's corpus: resolve it to its "
            "directory first (bi_pipeline.synthetic.resolve_init_from)"
        )
    device = choose_device(config.device)
    if parallel.world > 1:
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // parallel.local))  # the processes share the cores
    seed_everything(config.seed)
    t0 = time.perf_counter()
    model_cfg = (
        warm_config(initial_model, horizon) if initial_model is not None else model_config(panel, horizon, config)
    )
    history_len = int(np.median(cutoff + 1 - panel.first))
    validation = config.validation_periods or validation_length(horizon, history_len, config.validation_horizons)
    min_context = config.min_context or 2 * model_cfg.patch_length
    train_w, valid_w = split_windows(panel, horizon, cutoff, min_context, validation)
    valid_w = subsample(valid_w, config.max_validation_windows, config.seed)
    if window_filter is not None:
        train_w = window_filter(train_w)
    if len(train_w) == 0:
        raise ValueError(
            f"no training windows: series need more than {min_context + validation} periods of history "
            f"(context {min_context} + validation {validation})"
        )
    if initial_model is not None:
        model = copy.deepcopy(initial_model).to(device)
        model.config = model_cfg
    else:
        model = new_model(config, model_cfg, device)
    # Fused: one kernel for all parameters instead of a loop over ~200 small tensors (on the CPU a tenth of a step).
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )
    warm = [initial_model.config.training_targets_end, len(train_w)] if initial_model is not None else None
    key = fingerprint(panel, horizon, cutoff, config, warm)
    state_path = checkpoint_dir / "last.pt" if checkpoint_dir else None
    state, resumed = fresh_state(), None
    saved = load_state(state_path, device, progress) if state_path is not None and state_path.exists() else None
    if saved is not None and saved.get("fingerprint") == key:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = {k: saved.get(k, v) for k, v in state.items()}
        torch.set_rng_state(saved["torch_rng"].cpu())  # map_location moved it too; the generator is on the CPU
        resumed = state["epoch"]
        if progress:
            progress({"stage": "resume", "epoch": resumed})

    def checkpoint() -> None:
        if state_path is not None and parallel.rank == 0:
            snapshot = {"fingerprint": key, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
            save_state(state_path, {**snapshot, "torch_rng": torch.get_rng_state(), **plain(state)})

    network = None
    if parallel.world > 1:
        shard_noise(model)
        # Also broadcasts rank 0's weights, so every process starts from the same ones.
        network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    seen, train_seconds = fit_epochs(
        model, optimizer, panel, train_w, valid_w, config, device, state, checkpoint, progress, parallel, network
    )
    if not state["done"]:
        if state["best_state"] is not None:
            model.load_state_dict(state["best_state"])
        if len(valid_w):
            factors = calibrate(
                model, panel, valid_w, device, level=config.calibrate_level, spread_power=config.calibrate_spread_power
            )
            state.update(factors)
            if progress:
                progress({"stage": "calibrate", **factors})
        state["done"] = True
        checkpoint()
    elif state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    for name in CALIBRATION:
        setattr(model.config, name, state[name])
    fit_feedback(model, panel, cutoff, validation, config, progress)
    model.config.training_targets_end = str(pd.Timestamp(panel.dates[cutoff - validation]).date())
    model.eval()
    return TrainResult(
        model=model,
        epochs_run=len(state["history"]),
        best_epoch=state["best_epoch"],
        best_validation_loss=float(state["best_loss"]),
        history=state["history"],
        train_windows=len(train_w),
        validation_windows=len(valid_w),
        seconds=time.perf_counter() - t0,
        windows_per_second=seen / train_seconds if train_seconds else float("nan"),
        device=str(device),
        processes=parallel.world,
        validation_periods=validation,
        resumed_from_epoch=resumed,
        init_from=config.init_from if initial_model is None else None,
    )


def fit_epochs(
    model: BIForecaster,
    optimizer: torch.optim.Optimizer,
    panel: Panel,
    train_w: Windows,
    valid_w: Windows,
    config: TrainConfig,
    device: torch.device,
    state: dict,
    checkpoint: Callable[[], None],
    progress: Progress | None,
    parallel: Parallel = SINGLE,
    network: DistributedDataParallel | None = None,
) -> tuple[int, float]:
    """The epochs from the state's next one until early stopping (or the budget), a checkpoint after each; validation
    reads the moving average of the weights, training goes on from the raw ones. Returns (windows seen, seconds).
    With several processes, every one keeps the same state: the same all-reduced gradients, so the same weights and
    average, and the same validation loss, so the same early stopping."""
    seen, train_seconds = 0, 0.0
    stopping_w = subsample(valid_w, config.early_stopping_windows, config.seed + 1)
    if config.weight_average and state["average"] is None:
        state["average"] = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        if state["done"] or state["bad_epochs"] >= config.patience:
            break
        average = state["average"] if config.weight_average else None
        loss, count, seconds, steps = train_epoch(
            model, optimizer, panel, train_w, config, epoch, device, 0, average, parallel, network
        )
        seen, train_seconds = seen + count, train_seconds + seconds
        if average is not None:
            state["average_steps"] += steps
            raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(averaged_weights(average, config.weight_average, state["average_steps"]))
        valid_loss = evaluate_loss(model, panel, stopping_w, device, parallel=parallel) if len(stopping_w) else loss
        improved = valid_loss < state["best_loss"] - 1e-6
        if improved:
            state.update(best_loss=valid_loss, best_epoch=epoch, bad_epochs=0)
            state["best_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            state["bad_epochs"] += 1
        if average is not None:
            model.load_state_dict(raw)
        record = {
            "epoch": epoch,
            "train_loss": loss,
            "validation_loss": valid_loss,
            "best": improved,
            "windows": count,
            "seconds": round(seconds, 2),
        }
        state["history"].append(record)
        state["epoch"] = epoch
        checkpoint()
        if progress:
            progress({"stage": "train", "epochs": config.epochs, **record})
    return seen, train_seconds


def fit_feedback(
    model: BIForecaster, panel: Panel, cutoff: int, validation: int, config: TrainConfig, progress: Progress | None
) -> None:
    """The per-series feedback, level first (the spread is fitted around the corrected median). Deterministic and
    cheap (a few forward passes), so it is fitted after a resume too, not checkpointed."""
    feedback = (
        ("calibrate_level_feedback", fit_level_feedback, config.level_feedback_origins),
        ("calibrate_error_spread", fit_error_spread, config.error_spread_windows),
    )
    for stage, fit, origins in feedback:
        if origins > 0 and validation < cutoff:
            fitted = fit(model, panel, cutoff, validation, origins)
            for name, value in fitted.items():
                setattr(model.config, name, value)
            if progress:
                progress({"stage": stage, **fitted})
