"""Training and forecasting with :class:`bi_pipeline.models.BIForecaster` (no Dagster).

- device chosen automatically: CUDA with bf16 autocast when present, otherwise CPU with every core;
- optional self-supervised masked-patch pretraining of the PatchTST backbone (transformers' PatchTSTForPretraining)
  on every series' contexts before fine-tuning;
- fine-tuning with the pinball loss over the quantiles, AdamW, gradient clipping, early stopping on the validation
  loss (validation targets are never training targets, see :func:`bi_pipeline.features.split_windows`);
- a checkpoint after every epoch; a run restarted with the same checkpoint directory resumes where it stopped (the
  checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain values, never arbitrary objects);
- progress reported through a callback (the Dagster log, or a bar in the CLI).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bi_pipeline.evaluation import QUANTILES, quantile_column
from bi_pipeline.features import (
    DEFAULT_CONTEXT,
    DEFAULT_PATCH,
    Panel,
    Windows,
    make_windows,
    split_windows,
    validation_length,
)
from bi_pipeline.models import (
    SPREAD_LIMITS,
    BIForecaster,
    BIForecasterConfig,
    pinball_loss,
    reshape,
    spread_factor,
    window_weights,
)

Progress = Callable[[dict], None]


@dataclass
class TrainConfig:
    """Everything that shapes a training run; defaults are the measured product defaults (docs/accuracy.md)."""

    context_length: int | None = None  # None: by frequency (56 daily, 52 weekly, 48 monthly)
    patch_length: int | None = None
    d_model: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    ffn_dim: int = 128
    dropout: float = 0.1
    num_members: int = 4
    epochs: int = 40
    patience: int = 6
    batch_size: int = 128
    learning_rate: float = 1e-3
    # With a decay per step, early stopping and the model kept read an exponential moving average of the weights over
    # the fitting phase's steps (a refit phase keeps its raw weights); 0: the raw weights. With recency sampling it
    # made aus_retail better on both seeds and the earlier window (docs/accuracy.md).
    weight_average: float = 0.99
    lr_decay: float = 0.95  # per epoch: later epochs take smaller steps, so the result depends less on the last batch
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    max_windows_per_epoch: int = 8192
    # With more windows than an epoch takes, draw recent ones more often: a window this many years older than the
    # latest is half as likely to be drawn; 0: every window alike. Measured on aus_retail (docs/accuracy.md); Walmart's
    # 3,420 windows fit in one epoch, so it is unaffected.
    recency_halflife: float = 10.0
    pretrain_epochs: int = 0
    pretrain_learning_rate: float = 1e-3
    validation_periods: int | None = None  # None: validation_horizons horizons, at most a fifth of the history
    validation_horizons: float = 2.0  # see features.validation_length
    min_context: int | None = None  # None: two patches
    refit: bool = False  # after early stopping, train again on every window up to the cutoff (see train_forecaster)
    loss_weighting: str = "equal"  # see bi_pipeline.models.window_weights
    calibrate_level: bool = True  # fit a factor on the forecasts' level on the validation windows
    # Fit a factor on the median path's swing around its mean (models.reshape). Off by default: it helped one Walmart
    # seed and hurt the other (docs/accuracy.md).
    calibrate_shape: bool = False
    calibrate_spread_power: bool = True  # let the spread factor follow each forecast's own interval width
    # Let each series' spread follow the model's own past errors on it (see past_error_ratio), from this many of its
    # latest forecasts; 0: off.
    error_spread_windows: int = 5
    # Let each series' level follow the model's own recent errors on it (see recent_level_ratio), from this many
    # recent origins; 0: off.
    level_feedback_origins: int = 4
    # Each series' long-history seasonal profile as a known-future input (features.seasonal_profile): on, off, or
    # auto (on when the series have several seasons of history beyond the horizon, features.seasonal_profile_lag).
    seasonal_profile: str = "off"
    # Calendar effects among the calendar encodings (features.calendar_effects): easter, all (also trading days of
    # monthly data), off.
    calendar_effects: str = "easter"
    mixup: float = 0.5  # share of each training batch replaced by mixtures of two series at the same dates
    seed: int = 0
    device: str = "auto"
    # A save_pretrained directory or hub id to start from; "synthetic": the checkpoint pretrained on the generator's
    # corpus for this frequency and horizon (bi_pipeline.pretraining), built once under $BI_PIPELINE_HOME.
    init_from: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    model: BIForecaster
    epochs_run: int
    best_epoch: int
    best_validation_loss: float
    history: list[dict]
    train_windows: int
    validation_windows: int
    seconds: float
    pretrain_seconds: float
    windows_per_second: float
    device: str
    validation_periods: int = 0
    resumed_from_epoch: int | None = None
    init_from: str | None = None  # the checkpoint it started from ("synthetic" resolved to its directory)


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


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return torch.autocast(device_type="cpu", enabled=False)


def gather(
    panel: Panel, series: np.ndarray, start: np.ndarray, context: int, horizon: int, step_begin: int, step_end: int
) -> dict[str, torch.Tensor]:
    """Tensors for windows (series, start): context before ``start``, covariates and targets from ``start`` on."""
    t = panel.values.shape[1]
    ctx_idx = start[:, None] + np.arange(-context, 0)[None, :]
    first = panel.first[series][:, None]
    # Before a series begins, the context repeats its first value and is marked unobserved.
    clipped = np.clip(np.maximum(ctx_idx, first), 0, t - 1)
    past = panel.values[series[:, None], clipped]
    past_observed = panel.observed[series[:, None], clipped] & (ctx_idx >= first)
    step_idx = start[:, None] + np.arange(horizon)[None, :]
    inside = step_idx < t
    safe = np.minimum(step_idx, t - 1)
    target = np.nan_to_num(panel.values[series[:, None], safe], nan=0.0)
    mask = (
        inside
        & panel.observed[series[:, None], safe]
        & (step_idx >= step_begin)
        & (step_idx < step_end)
        & (step_idx <= panel.last[series][:, None])
    )
    future = panel.future[series[:, None], safe]
    relative = np.asarray(panel.spec.relative_mask, dtype=bool)
    if relative.any():
        context_mean = panel.future[series[:, None], clipped][..., relative].mean(axis=1, keepdims=True)
        future[..., relative] -= context_mean
    return {
        "past_values": torch.from_numpy(np.nan_to_num(past, nan=0.0).astype("float32")),
        "past_observed": torch.from_numpy(past_observed),
        "future_features": torch.from_numpy(np.ascontiguousarray(future)),
        "static_categorical": torch.from_numpy(panel.static_cat[series]),
        "static_numeric": torch.from_numpy(panel.static_num[series]),
        "target": torch.from_numpy(target.astype("float32")),
        "mask": torch.from_numpy(mask),
    }


# Fine-tuning keeps the checkpoint's architecture: these fields come from its config, not from TrainConfig.
ARCHITECTURE = (
    "context_length",
    "patch_length",
    "d_model",
    "num_hidden_layers",
    "num_attention_heads",
    "ffn_dim",
    "head_dim",
    "embedding_dim",
    "num_members",
)


def model_config(panel: Panel, horizon: int, config: TrainConfig) -> BIForecasterConfig:
    """The model's config for this panel and horizon; with ``init_from``, the architecture is the checkpoint's (a
    PatchTST backbone only carries over to the same context, patches and widths), the covariate and static layers
    follow the panel, and the dropout is the training's."""
    spec = panel.spec
    architecture = {
        "context_length": config.context_length or DEFAULT_CONTEXT[spec.frequency],
        "patch_length": config.patch_length or DEFAULT_PATCH[spec.frequency],
        "d_model": config.d_model,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "ffn_dim": config.ffn_dim,
        "num_members": config.num_members,
    }
    if config.init_from:
        source = BIForecasterConfig.from_pretrained(config.init_from)
        architecture = {name: getattr(source, name) for name in ARCHITECTURE}
    return BIForecasterConfig(
        horizon=horizon,
        dropout=config.dropout,
        **architecture,
        quantiles=QUANTILES,
        num_future_features=len(spec.future_names),
        static_cardinalities=spec.static_cardinalities,
        num_static_numeric=spec.static_numeric_count,
        feature_spec=spec.to_dict(),
        loss_weighting=config.loss_weighting,
    )


def load_model(source: str, config: BIForecasterConfig | None = None) -> BIForecaster:
    """A forecaster from a ``save_pretrained`` directory or hub id. With ``config``, layers whose shape differs
    (another horizon or covariate set) start fresh and the backbones' weights are kept: fine-tuning a checkpoint."""
    if config is None:
        return BIForecaster.from_pretrained(source)
    return BIForecaster.from_pretrained(source, config=config, ignore_mismatched_sizes=True)


def _fingerprint(panel: Panel, horizon: int, cutoff: int, config: TrainConfig, warm: list | None = None) -> str:
    digest = hashlib.sha256()
    # The epoch budget is left out: a resumed run may be given more epochs than the one that crashed.
    recipe = {k: v for k, v in config.to_dict().items() if k not in ("epochs", "patience")}
    digest.update(json.dumps([recipe, horizon, cutoff, list(panel.values.shape), warm], sort_keys=True).encode())
    digest.update(np.ascontiguousarray(panel.values[:, : cutoff + 1]).tobytes())
    return digest.hexdigest()[:16]


def _batches(n: int, size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i : i + size] for i in range(0, n, size)]


def _run_loss(
    model: BIForecaster, batch: dict[str, torch.Tensor], levels: torch.Tensor, members: bool = False
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
    weights = window_weights(model.config.loss_weighting, scale, batch["past_values"], batch["past_observed"])
    mask = batch["mask"].to(target.dtype) * weights
    if members:
        return sum(pinball_loss(q.float(), target, mask, levels) for q in quantiles)
    return pinball_loss(quantiles.float(), target, mask, levels)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _ordered_batches(panel: Panel, windows: Windows, cfg: BIForecasterConfig, batch_size: int):
    """The windows' tensors in order, ``batch_size`` at a time (evaluation: no shuffling)."""
    for idx in _batches(len(windows), batch_size, None):
        yield gather(
            panel,
            windows.series[idx],
            windows.start[idx],
            cfg.context_length,
            cfg.horizon,
            windows.step_begin,
            windows.step_end,
        )


def evaluate_loss(
    model: BIForecaster, panel: Panel, windows: Windows, device: torch.device, batch_size: int = 1024
) -> float:
    cfg = model.config
    levels = torch.tensor(cfg.quantiles, device=device)
    model.eval()
    total, weight = 0.0, 0.0
    with torch.no_grad(), _autocast(device):
        for batch in _ordered_batches(panel, windows, cfg, batch_size):
            count = float(batch["mask"].sum())
            if count == 0:
                continue
            total += float(_run_loss(model, _to(batch, device), levels)) * count
            weight += count
    return total / weight if weight else float("nan")


SPREAD_GRID = tuple(np.round(np.arange(0.4, 1.61, 0.05), 2))
LEVEL_GRID = tuple(np.round(np.arange(0.9, 1.1001, 0.005), 3))
SHAPE_GRID = tuple(np.round(np.arange(0.7, 1.3001, 0.025), 3))
POWER_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
CALIBRATION = ("level_scale", "shape_scale", "spread_scale", "spread_power", "spread_reference")
ERROR_POWER_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
ERROR_SCALE_GRID = tuple(np.round(np.arange(0.5, 1.501, 0.05), 2))
INPUTS = ("past_values", "past_observed", "future_features", "static_categorical", "static_numeric")


def _validation_outputs(
    model: BIForecaster, panel: Panel, windows: Windows, device: torch.device, batch_size: int = 1024
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per batch: the members' averaged quantiles before any calibration, the scaled targets and the loss weights.
    The forward pass runs once; every calibration factor is then scored on these (evaluate_loss's aggregation)."""
    cfg = model.config
    spread, level, power, shape = cfg.spread_scale, cfg.level_scale, cfg.spread_power, cfg.shape_scale
    cfg.spread_scale, cfg.level_scale, cfg.spread_power, cfg.shape_scale = 1.0, 1.0, 0.0, 1.0
    model.eval()
    out = []
    with torch.no_grad(), _autocast(device):
        for batch in _ordered_batches(panel, windows, cfg, batch_size):
            batch = _to(batch, device)
            if not bool(batch["mask"].any()):
                continue
            keys = ("past_values", "past_observed", "future_features", "static_categorical", "static_numeric")
            quantiles, scale = model(*(batch[k] for k in keys))
            weights = window_weights(cfg.loss_weighting, scale, batch["past_values"], batch["past_observed"])
            out.append((quantiles.float(), batch["target"] / scale, batch["mask"].to(scale.dtype) * weights))
    cfg.spread_scale, cfg.level_scale, cfg.spread_power, cfg.shape_scale = spread, level, power, shape
    return out


def _calibrated_loss(
    outputs: list,
    levels: torch.Tensor,
    median: int,
    spread: float,
    level: float,
    power: float = 0.0,
    reference: float = 1.0,
    shape: float = 1.0,
) -> float:
    total, weight = 0.0, 0.0
    for quantiles, target, mask in outputs:
        quantiles = reshape(quantiles, shape, median)
        centre = quantiles[..., median : median + 1]
        factor = spread_factor(quantiles, spread, power, reference)
        calibrated = (centre + (quantiles - centre) * factor) * level
        count = float((mask != 0).sum())
        total += float(pinball_loss(calibrated, target, mask, levels)) * count
        weight += count
    return total / weight if weight else float("nan")


def calibrate(
    model: BIForecaster,
    panel: Panel,
    windows: Windows,
    device: torch.device,
    level: bool = True,
    spread_power: bool = True,
    shape: bool = True,
) -> dict[str, float]:
    """The calibration factors that minimise the validation pinball loss (model config fields), fitted in turn.

    The level: one factor on every quantile (a small model's level drifts from epoch to epoch with its last batches,
    and the validation periods show which way it drifted); 1 when ``level`` is off. The spread: a factor on the
    quantiles' distances from the median (pinball training on older, noisier windows tends to give intervals wider,
    or narrower, than recent data needs) and, with ``spread_power``, a power of each forecast's own interval width
    relative to the median width (see :func:`bi_pipeline.models.spread_factor`), fitted jointly."""
    outputs = _validation_outputs(model, panel, windows, device)
    return fit_calibration(outputs, list(model.config.quantiles), level, spread_power, shape)


def fit_calibration(
    outputs: list, quantiles: list[float], level: bool = True, spread_power: bool = True, shape: bool = True
) -> dict[str, float]:
    """:func:`calibrate` on cached validation outputs: per batch (averaged quantiles, scaled targets, mask)."""
    device = outputs[0][0].device if outputs else torch.device("cpu")
    levels = torch.tensor(quantiles, device=device)
    median = quantiles.index(0.5)
    widths = torch.cat([(q[..., -1] - q[..., 0]).mean(-1) for q, _, _ in outputs]) if outputs else torch.ones(1)
    reference = max(float(np.median(widths.float().cpu().numpy())), 1e-6)

    def best(grid: list, loss, default: tuple) -> tuple:
        # Ties go to the factors nearest no calibration.
        losses = {f: loss(*f) for f in grid}
        return min(losses, key=lambda f: (losses[f], float(np.abs(np.subtract(f, default)).sum())))

    level_scale = 1.0
    if level:
        (level_scale,) = best(
            [(float(f),) for f in LEVEL_GRID], lambda f: _calibrated_loss(outputs, levels, median, 1.0, f), (1.0,)
        )
    shape_scale = 1.0
    if shape:
        (shape_scale,) = best(
            [(float(f),) for f in SHAPE_GRID],
            lambda f: _calibrated_loss(outputs, levels, median, 1.0, level_scale, shape=f),
            (1.0,),
        )
        # Reshaped once, so the spread grid below scores the reshaped quantiles (reshaping moves every quantile
        # alike: the widths the spread power reads are unchanged).
        outputs = [(reshape(q, shape_scale, median), target, mask) for q, target, mask in outputs]
    powers = POWER_GRID if spread_power else (0.0,)
    spread_scale, power = best(
        [(float(f), float(p)) for p in powers for f in SPREAD_GRID],
        lambda f, p: _calibrated_loss(outputs, levels, median, f, level_scale, p, reference),
        (1.0, 0.0),
    )
    return {
        "level_scale": float(level_scale),
        "shape_scale": float(shape_scale),
        "spread_scale": spread_scale,
        "spread_power": power,
        "spread_reference": reference if power else 1.0,
    }


def pretrain_backbone(
    model: BIForecaster,
    panel: Panel,
    windows: Windows,
    config: TrainConfig,
    device: torch.device,
    progress: Progress | None = None,
) -> float:
    """Masked-patch pretraining (PatchTSTForPretraining) on the windows' contexts; the encoder's weights move into
    each member's backbone. Returns seconds spent."""
    from transformers import PatchTSTForPretraining

    started = time.perf_counter()
    cfg = model.config
    for number, member in enumerate(model.members):
        pretrainer = PatchTSTForPretraining(cfg.backbone_config(masked=True)).to(device)
        pretrainer.model.load_state_dict(member.backbone.state_dict(), strict=False)
        optimizer = torch.optim.AdamW(pretrainer.parameters(), lr=config.pretrain_learning_rate)
        rng = np.random.default_rng(config.seed + 1 + number)
        for epoch in range(1, config.pretrain_epochs + 1):
            pretrainer.train()
            chosen = rng.permutation(len(windows))[: config.max_windows_per_epoch]
            losses = []
            for idx in _batches(len(chosen), config.batch_size, rng):
                sel = chosen[idx]
                batch = gather(panel, windows.series[sel], windows.start[sel], cfg.context_length, 1, 0, 0)
                past = batch["past_values"].to(device)
                scaled = past / BIForecaster.scale(past, batch["past_observed"].to(device))
                with _autocast(device):
                    loss = pretrainer(past_values=scaled.unsqueeze(-1)).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(pretrainer.parameters(), config.grad_clip)
                optimizer.step()
                losses.append(float(loss.detach()))
            if progress:
                progress(
                    {
                        "stage": "pretrain",
                        "member": number + 1,
                        "epoch": epoch,
                        "epochs": config.pretrain_epochs,
                        "loss": float(np.mean(losses)),
                    }
                )
        member.backbone.load_state_dict(pretrainer.model.state_dict(), strict=False)
    return time.perf_counter() - started


PERIODS_PER_YEAR = {"D": 365.25, "W": 52.18, "M": 12.0}


def recency_weights(windows: Windows, halflife: float) -> np.ndarray:
    """Per window: 0.5 ** (periods its first target lies before the latest window's / ``halflife``); 1 when off."""
    if not halflife or not len(windows):
        return np.ones(len(windows))
    return 0.5 ** ((windows.start.max() - windows.start) / halflife)


def epoch_sample(windows: Windows, size: int, halflife: float, rng: np.random.Generator) -> np.ndarray:
    """The windows one epoch trains on, in random order: all of them when there are at most ``size``; else ``size``
    drawn without replacement, recent ones more often with a ``halflife`` (in periods; 0: all alike). Decades of
    monthly history hold far more windows than an epoch takes, and its oldest years are the least like the next."""
    if len(windows) <= size or not halflife:
        return rng.permutation(len(windows))[:size]
    weight = recency_weights(windows, halflife)
    return rng.choice(len(windows), size, replace=False, p=weight / weight.sum())


def _train_epoch(
    model: BIForecaster,
    optimizer: torch.optim.Optimizer,
    panel: Panel,
    windows: Windows,
    config: TrainConfig,
    epoch: int,
    device: torch.device,
    salt: int = 0,
    average: dict[str, torch.Tensor] | None = None,
) -> tuple[float, int, float, int]:
    """One pass over (a sample of) the windows: (mean loss, windows seen, seconds, optimizer steps); with
    ``average``, the moving average of the weights (:func:`update_average`) follows every step."""
    cfg = model.config
    levels = torch.tensor(cfg.quantiles, device=device)
    for group in optimizer.param_groups:
        group["lr"] = config.learning_rate * config.lr_decay ** (epoch - 1)
    rng = np.random.default_rng(config.seed * 1000 + epoch + salt)
    halflife = config.recency_halflife * PERIODS_PER_YEAR[panel.spec.frequency]
    chosen = epoch_sample(windows, config.max_windows_per_epoch, halflife, rng)
    model.train()
    started = time.perf_counter()
    losses = []
    for idx in _batches(len(chosen), config.batch_size, rng):
        sel = chosen[idx]
        batch = gather(
            panel,
            windows.series[sel],
            windows.start[sel],
            cfg.context_length,
            cfg.horizon,
            windows.step_begin,
            windows.step_end,
        )
        if config.mixup:
            batch = mix_windows(panel, batch, windows, sel, cfg, config.mixup, rng)
        if not bool(batch["mask"].any()):
            continue
        with _autocast(device):
            loss = _run_loss(model, _to(batch, device), levels, members=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if average is not None:
            update_average(average, model, config.weight_average)
        losses.append(float(loss.detach()) / len(model.members))
    mean = float(np.mean(losses)) if losses else float("nan")
    return mean, len(chosen), time.perf_counter() - started, len(losses)


def update_average(average: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    """average ← decay · average + (1 − decay) · weights, for every floating-point tensor of the state (the rest is
    copied); the average starts at zero, see :func:`averaged_weights`."""
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                average[name].mul_(decay).add_(value, alpha=1.0 - decay)
            else:
                average[name].copy_(value)


def averaged_weights(average: dict[str, torch.Tensor], decay: float, steps: int) -> dict[str, torch.Tensor]:
    """The moving average after ``steps`` updates from zero, divided by 1 − decay**steps (as Adam corrects its
    moments): a weighted mean of the weights seen so far, with no pull towards the initial weights, even on data
    small enough for a few steps an epoch."""
    correction = 1.0 - decay**steps if steps else 1.0
    return {k: v / correction if v.is_floating_point() else v.clone() for k, v in average.items()}


def mix_windows(
    panel: Panel,
    batch: dict[str, torch.Tensor],
    windows: Windows,
    sel: np.ndarray,
    cfg: BIForecasterConfig,
    share: float,
    rng: np.random.Generator,
) -> dict[str, torch.Tensor]:
    """The batch with about ``share`` of its windows replaced by a mixture with another series over the same dates
    (TSMixup, as in Chronos): each series scaled by its own context, weights drawn from Beta(1.5, 1.5). A business
    with few series gets new, plausible ones to learn from; calendars match because the dates do. The partner's
    history must reach at least as far back, so the mixture's context is as observed as the original's."""
    if panel.series < 2:
        return batch
    series, start = windows.series[sel], windows.start[sel]
    rows = np.flatnonzero(rng.random(len(sel)) < share)
    partner = (series[rows] + rng.integers(1, panel.series, len(rows))) % panel.series
    keep = panel.first[partner] <= panel.first[series[rows]]
    rows, partner = rows[keep], partner[keep]
    if not len(rows):
        return batch
    other = gather(panel, partner, start[rows], cfg.context_length, cfg.horizon, windows.step_begin, windows.step_end)
    weight = torch.from_numpy(rng.beta(1.5, 1.5, len(rows)).astype("float32"))[:, None]
    own_scale = BIForecaster.scale(batch["past_values"][rows], batch["past_observed"][rows])
    other_scale = BIForecaster.scale(other["past_values"], other["past_observed"])
    out = {k: v.clone() for k, v in batch.items()}
    for key in ("past_values", "target"):
        out[key][rows] = weight * batch[key][rows] / own_scale + (1 - weight) * other[key] / other_scale
    for key in ("past_observed", "mask"):
        out[key][rows] = batch[key][rows] & other[key]
    out["future_features"][rows] = (
        weight[:, :, None] * batch["future_features"][rows] + (1 - weight[:, :, None]) * other["future_features"]
    )
    return out


def _new_model(config: TrainConfig, model_cfg: BIForecasterConfig, device: torch.device) -> BIForecaster:
    model = load_model(config.init_from, model_cfg) if config.init_from else BIForecaster(model_cfg)
    return model.to(device)


def train_forecaster(
    panel: Panel,
    horizon: int,
    cutoff: int,
    config: TrainConfig | None = None,
    checkpoint_dir: Path | None = None,
    progress: Progress | None = None,
    initial_model: BIForecaster | None = None,
    window_filter: Callable[[Windows], Windows] | None = None,
) -> TrainResult:
    """Train on the panel's periods up to date index ``cutoff`` (inclusive); nothing later is read.

    ``initial_model`` warm-starts from a trained model (a copy; its architecture and encodings are kept, the panel
    must be built with its feature spec); ``window_filter`` picks the training windows (an incremental update: the
    new periods' windows and a replay sample, see :mod:`bi_pipeline.continual`).

    Phase 1 trains on targets before the validation periods and stops early on the validation loss; the forecasts'
    level (with ``calibrate_level``) and then the quantile spread are calibrated on the validation windows. With
    ``refit`` (off by default: measured worse, docs/accuracy.md), phase 2 trains the same recipe again from its initial
    weights on every window up to the cutoff for the epochs phase 1 found best, so the most recent periods are learnt
    too.
    """
    config = config or TrainConfig()
    if config.init_from == "synthetic" and initial_model is None:
        from bi_pipeline.pretraining import resolve_init_from

        config = resolve_init_from(config, panel.spec.frequency, horizon, progress=progress)
    device = choose_device(config.device)
    seed_everything(config.seed)
    t0 = time.perf_counter()
    if initial_model is not None:
        if initial_model.config.horizon != horizon:
            raise ValueError(f"warm start: the model forecasts {initial_model.config.horizon} periods, not {horizon}")
        model_cfg = copy.deepcopy(initial_model.config)
        # The calibrations belong to the old weights: training sees raw quantiles, and they are fitted again after.
        model_cfg.spread_scale, model_cfg.level_scale, model_cfg.shape_scale = 1.0, 1.0, 1.0
        model_cfg.spread_power, model_cfg.spread_reference = 0.0, 1.0
        model_cfg.error_spread_power, model_cfg.error_spread_reference = 0.0, 1.0
        model_cfg.level_feedback_power = 0.0
    else:
        model_cfg = model_config(panel, horizon, config)
    history_len = int(np.median(cutoff + 1 - panel.first))
    validation = config.validation_periods or validation_length(horizon, history_len, config.validation_horizons)
    min_context = config.min_context or 2 * model_cfg.patch_length
    train_w, valid_w = split_windows(panel, horizon, cutoff, min_context, validation)
    full_w = make_windows(panel, min_context, None, cutoff, 0, cutoff + 1)
    if window_filter is not None:
        train_w = window_filter(train_w)
        full_w = window_filter(full_w)
    if len(train_w) == 0:
        raise ValueError(
            f"no training windows: series need more than {min_context + validation} periods of history "
            f"(context {min_context} + validation {validation})"
        )
    if initial_model is not None:
        model = copy.deepcopy(initial_model).to(device)
        model.config = model_cfg
    else:
        model = _new_model(config, model_cfg, device)
    initial_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)

    warm = [initial_model.config.training_targets_end, len(train_w)] if initial_model is not None else None
    fingerprint = _fingerprint(panel, horizon, cutoff, config, warm)
    state_path = checkpoint_dir / "last.pt" if checkpoint_dir else None
    state = {
        "phase": "fit",
        "epoch": 0,
        "best_loss": math.inf,
        "best_epoch": 0,
        "bad_epochs": 0,
        "history": [],
        "best_state": None,
        "average": None,
        "average_steps": 0,
        "spread_scale": 1.0,
        "level_scale": 1.0,
        "shape_scale": 1.0,
        "spread_power": 0.0,
        "spread_reference": 1.0,
    }
    resumed = None
    pretrain_seconds = 0.0
    saved = _load_state(state_path, device, progress) if state_path is not None and state_path.exists() else None
    if saved is not None:
        if saved.get("fingerprint") == fingerprint:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            initial_state = saved["initial_state"]
            state = {k: saved.get(k, v) for k, v in state.items()}
            torch.set_rng_state(saved["torch_rng"].cpu())  # map_location moved it too; the generator is on the CPU
            resumed = state["epoch"]
            if progress:
                progress({"stage": "resume", "phase": state["phase"], "epoch": resumed})
    if resumed is None and config.pretrain_epochs > 0:
        pretrain_seconds = pretrain_backbone(model, panel, train_w, config, device, progress)
        initial_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def checkpoint() -> None:
        if state_path is not None:
            _save_state(
                state_path,
                {
                    "fingerprint": fingerprint,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "initial_state": initial_state,
                    "torch_rng": torch.get_rng_state(),
                    **_plain(state),
                },
            )

    seen, train_seconds = 0, 0.0
    if config.weight_average and state["average"] is None:
        state["average"] = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    if state["phase"] == "fit":
        for epoch in range(state["epoch"] + 1, config.epochs + 1):
            if state["bad_epochs"] >= config.patience:
                break
            average = state["average"] if config.weight_average else None
            loss, count, seconds, steps = _train_epoch(
                model, optimizer, panel, train_w, config, epoch, device, 0, average
            )
            seen, train_seconds = seen + count, train_seconds + seconds
            if average is not None:
                # Validation reads the averaged weights; training goes on from the raw ones.
                state["average_steps"] += steps
                raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
                model.load_state_dict(averaged_weights(average, config.weight_average, state["average_steps"]))
            valid_loss = evaluate_loss(model, panel, valid_w, device) if len(valid_w) else loss
            improved = valid_loss < state["best_loss"] - 1e-6
            if improved:
                state.update(best_loss=valid_loss, best_epoch=epoch, bad_epochs=0)
                state["best_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                state["bad_epochs"] += 1
            if average is not None:
                model.load_state_dict(raw)
            record = {
                "phase": "fit",
                "epoch": epoch,
                "train_loss": loss,
                "validation_loss": valid_loss,
                "best": improved,
                "seconds": round(seconds, 2),
            }
            state["history"].append(record)
            state["epoch"] = epoch
            checkpoint()
            if progress:
                progress({"stage": "train", "epochs": config.epochs, **record})
        if state["best_state"] is not None:
            model.load_state_dict(state["best_state"])
        if len(valid_w):
            factors = calibrate(
                model,
                panel,
                valid_w,
                device,
                level=config.calibrate_level,
                spread_power=config.calibrate_spread_power,
                shape=config.calibrate_shape,
            )
            state.update(factors)
            if progress:
                progress({"stage": "calibrate", **factors})
        if config.refit and state["best_epoch"] > 0 and len(full_w) > len(train_w):
            # Phase 2 restarts from the initial weights with a fresh optimizer.
            model.load_state_dict(initial_state)
            optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
            state.update(phase="refit", epoch=0)
            checkpoint()
        else:
            state["phase"] = "done"
    if state["phase"] == "refit":
        for epoch in range(state["epoch"] + 1, state["best_epoch"] + 1):
            loss, count, seconds, _ = _train_epoch(model, optimizer, panel, full_w, config, epoch, device, salt=7)
            seen, train_seconds = seen + count, train_seconds + seconds
            record = {"phase": "refit", "epoch": epoch, "train_loss": loss, "seconds": round(seconds, 2)}
            state["history"].append(record)
            state["epoch"] = epoch
            checkpoint()
            if progress:
                progress({"stage": "refit", "epochs": state["best_epoch"], **record})
        state["phase"] = "done"
    for name in CALIBRATION:
        setattr(model.config, name, state[name])
    # The per-series feedback, level first (the spread is fitted around the corrected median). Deterministic and cheap
    # (a few forward passes), so it is fitted after a resume too, not checkpointed.
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
    targets_end = cutoff if state["history"] and state["history"][-1].get("phase") == "refit" else cutoff - validation
    model.config.training_targets_end = str(pd.Timestamp(panel.dates[targets_end]).date())
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
        pretrain_seconds=pretrain_seconds,
        windows_per_second=seen / train_seconds if train_seconds else float("nan"),
        device=str(device),
        validation_periods=validation,
        resumed_from_epoch=resumed,
        init_from=config.init_from if initial_model is None else None,
    )


def _plain(value):
    """``value`` with numpy scalars and arrays as Python numbers and tensors, so the checkpoint loads with
    ``weights_only=True`` (which refuses every class it does not know)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return value


def _load_state(path: Path, device: torch.device, progress: Progress | None) -> dict | None:
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


def _save_state(path: Path, state: dict) -> None:
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


def _quantile_forecasts(
    model: BIForecaster, panel: Panel, series: np.ndarray, origin: int, batch_size: int = 1024
) -> np.ndarray:
    """(len(series), horizon, Q) quantiles in sales units for the periods after date index ``origin``, with the
    model's own calibration (level, spread, width power) but not the per-series error spread."""
    cfg = model.config
    device = next(model.parameters()).device
    model.eval()
    outputs = []
    with torch.no_grad(), _autocast(device):
        for idx in _batches(len(series), batch_size, None):
            sel = series[idx]
            batch = gather(panel, sel, np.full(len(sel), origin + 1), cfg.context_length, cfg.horizon, 0, 0)
            quantiles, scale = model(*(batch[k].to(device) for k in INPUTS))
            outputs.append((quantiles.float() * scale.unsqueeze(-1)).cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, cfg.horizon, len(cfg.quantiles)), dtype="float32")


def _actuals(panel: Panel, series: np.ndarray, origin: int, horizon: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, usable) for the ``horizon`` periods after ``origin``: landed values at date indices ≤ ``end``."""
    steps = origin + 1 + np.arange(horizon)
    inside = steps < min(end + 1, panel.values.shape[1])
    safe = np.minimum(steps, panel.values.shape[1] - 1)
    usable = panel.observed[series[:, None], safe] & inside[None, :] & (steps[None, :] <= panel.last[series][:, None])
    return np.nan_to_num(panel.values[series[:, None], safe], nan=0.0), usable


def _past_forecasts(model: BIForecaster, panel: Panel, origin: int, series: np.ndarray, origins: int, step: int):
    """The model's own forecasts from the ``origins`` origins ``step`` apart before ``origin`` (origin − step, …):
    per origin (rows of ``series`` with at least one patch of context, quantiles, actuals, usable), where only the
    targets at or before ``origin`` are usable. What the per-series feedback reads; nothing after ``origin``."""
    cfg = model.config
    for k in range(1, origins + 1):
        start = origin - step * k
        rows = np.flatnonzero(panel.first[series] + cfg.patch_length <= start + 1)
        if not len(rows):
            return
        quantiles = _quantile_forecasts(model, panel, series[rows], start)
        actual, usable = _actuals(panel, series[rows], start, cfg.horizon, origin)
        yield rows, quantiles, actual, usable


def past_error_ratio(model: BIForecaster, panel: Panel, origin: int, series: np.ndarray, windows: int) -> np.ndarray:
    """Per series: the model's mean absolute error of the median over its own forecasts from the ``windows``
    origins before ``origin`` (``origin`` − H, − 2H, …, so every target lies at or before ``origin``), divided by
    the mean width of their 10–90% intervals; NaN where a series has no such forecast.

    What a per-series model such as ETS reads from its own residuals, and a global model trained on scaled windows
    cannot know: how predictable this particular series has been. On aus_retail the model's intervals for the large,
    smooth state series were twice as wide as their errors warranted (docs/accuracy.md)."""
    median = list(model.config.quantiles).index(0.5)
    error, width = np.zeros(len(series)), np.zeros(len(series))
    for rows, quantiles, actual, usable in _past_forecasts(model, panel, origin, series, windows, model.config.horizon):
        error[rows] += np.where(usable, np.abs(actual - quantiles[..., median]), 0.0).sum(1)
        width[rows] += np.where(usable, quantiles[..., -1] - quantiles[..., 0], 0.0).sum(1)
    with np.errstate(all="ignore"):
        return np.where(width > 0, error / width, np.nan)


def error_spread_factor(ratio: np.ndarray, reference: float, power: float) -> np.ndarray:
    """Per series: (its past error ratio / the reference ratio) ** ``power``, within the spread factor's limits;
    1 where the ratio is unknown (a series too new to have past forecasts)."""
    with np.errstate(all="ignore"):
        factor = np.clip((ratio / reference) ** power, *SPREAD_LIMITS)
    return np.where(np.isfinite(factor), factor, 1.0)


def _respread(quantiles: np.ndarray, factor: np.ndarray, median: int) -> np.ndarray:
    centre = quantiles[..., median : median + 1]
    return centre + (quantiles - centre) * factor[:, None, None]


def fit_error_spread(model: BIForecaster, panel: Panel, cutoff: int, validation: int, windows: int) -> dict:
    """The per-series error spread (power and reference of :func:`error_spread_factor`) and a common factor on the
    spread, chosen together to minimise the weighted quantile loss (WQL) of the forecast from the origin before the
    validation periods, scored on those periods only (never later ones). Ties go to no change."""
    cfg = model.config
    origin = cutoff - validation
    median = list(cfg.quantiles).index(0.5)
    series = np.flatnonzero((panel.first + cfg.patch_length <= origin + 1) & (panel.last > origin))
    off = {"error_spread_power": 0.0, "error_spread_reference": 1.0, "error_spread_windows": windows}
    if not len(series):
        return off
    quantiles = _adjusted_forecasts(model, panel, series, origin, spread=False).astype("float64")
    actual, usable = _actuals(panel, series, origin, cfg.horizon, cutoff)
    ratio = past_error_ratio(model, panel, origin, series, windows)
    known = np.isfinite(ratio) & (ratio > 0)
    reference = float(np.median(ratio[known])) if known.any() else 1.0
    levels = np.asarray(cfg.quantiles)[None, None, :]
    weight = usable[..., None]
    denominator = max(float(np.abs(actual[usable]).sum()), 1e-12)

    def loss(power: float, scale: float) -> float:
        spread = _respread(quantiles, error_spread_factor(ratio, reference, power) * scale, median)
        diff = actual[..., None] - spread
        return float((np.maximum(levels * diff, (levels - 1.0) * diff) * weight).sum() / denominator)

    losses = {(p, float(c)): loss(p, float(c)) for p in ERROR_POWER_GRID for c in ERROR_SCALE_GRID}
    power, scale = min(losses, key=lambda f: (losses[f], f[0] + abs(f[1] - 1.0)))
    # The common factor is folded into spread_scale, so every later interval, the past ones whose ratio is read at
    # forecast time included, is that much wider: their error ratios that much smaller. The reference follows, so
    # the factor applied is the one fitted here.
    return {
        "error_spread_power": power,
        "error_spread_reference": reference / scale if power else 1.0,
        "error_spread_windows": windows,
        "spread_scale": float(cfg.spread_scale) * scale,
    }


LEVEL_POWER_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
LEVEL_RATIO_LIMITS = (0.5, 2.0)


def level_feedback_step(horizon: int) -> int:
    """Periods between the origins whose errors level feedback reads: a fifth of the horizon (8 weeks at 39)."""
    return max(1, -(-horizon // 5))


def recent_level_ratio(model: BIForecaster, panel: Panel, origin: int, series: np.ndarray, origins: int) -> np.ndarray:
    """Per series: Σ actual ÷ Σ median over the model's own forecasts from the ``origins`` origins before ``origin``
    (spaced :func:`level_feedback_step` apart), counting only their targets at or before ``origin``; 1 where a
    series has none. Above 1: the model has been under-forecasting this series lately.

    A global model reads each series' level from its context and shares one idea of how levels move; a store whose
    sales drift away from that (Walmart's store 36, falling for two years) is forecast from the shared idea for the
    whole horizon. Per-series models correct such drift through their residuals; this is that correction."""
    median, step = list(model.config.quantiles).index(0.5), level_feedback_step(model.config.horizon)
    actual_sum, forecast_sum = np.zeros(len(series)), np.zeros(len(series))
    for rows, quantiles, actual, usable in _past_forecasts(model, panel, origin, series, origins, step):
        actual_sum[rows] += np.where(usable, actual, 0.0).sum(1)
        forecast_sum[rows] += np.where(usable, quantiles[..., median], 0.0).sum(1)
    with np.errstate(all="ignore"):
        ratio = np.where((forecast_sum > 0) & (actual_sum > 0), actual_sum / forecast_sum, 1.0)
    return np.clip(ratio, *LEVEL_RATIO_LIMITS)


def _adjusted_forecasts(
    model: BIForecaster,
    panel: Panel,
    series: np.ndarray,
    origin: int,
    spread: bool = True,
    batch_size: int = 1024,
) -> np.ndarray:
    """:func:`_quantile_forecasts` with the model's level feedback and (with ``spread``) its error spread."""
    cfg = model.config
    values = _quantile_forecasts(model, panel, series, origin, batch_size)
    if not len(series):
        return values
    level = getattr(cfg, "level_feedback_power", 0.0)
    if level:
        ratio = recent_level_ratio(model, panel, origin, series, int(cfg.level_feedback_origins))
        values = values * (ratio**level)[:, None, None]
    power = getattr(cfg, "error_spread_power", 0.0)
    if spread and power:
        ratio = past_error_ratio(model, panel, origin, series, int(cfg.error_spread_windows))
        factor = error_spread_factor(ratio, cfg.error_spread_reference, power)
        values = _respread(values, factor, list(cfg.quantiles).index(0.5))
    return values


def fit_level_feedback(model: BIForecaster, panel: Panel, cutoff: int, validation: int, origins: int) -> dict:
    """The power on :func:`recent_level_ratio` that minimises the median's error on the validation periods, forecast
    from the origin before them (never later periods): the mean over series of the absolute error divided by the
    series' mean absolute one-step change before that origin, as MASE weighs series. Ties go to no feedback."""
    cfg = model.config
    origin = cutoff - validation
    median = list(cfg.quantiles).index(0.5)
    series = np.flatnonzero((panel.first + cfg.patch_length <= origin + 1) & (panel.last > origin))
    off = {"level_feedback_power": 0.0, "level_feedback_origins": origins}
    if not len(series):
        return off
    forecast_median = _quantile_forecasts(model, panel, series, origin)[..., median].astype("float64")
    actual, usable = _actuals(panel, series, origin, cfg.horizon, cutoff)
    history = panel.values[series, : origin + 1].astype("float64")
    with np.errstate(all="ignore"):
        scale = np.nanmean(np.abs(np.diff(history, axis=1)), axis=1)
    keep = np.isfinite(scale) & (scale > 0) & usable.any(1)
    if not keep.any():
        return off
    ratio = recent_level_ratio(model, panel, origin, series, origins)

    def loss(power: float) -> float:
        error = np.where(usable, np.abs(actual - forecast_median * (ratio**power)[:, None]), 0.0).sum(1)
        per_series = error[keep] / usable[keep].sum(1) / scale[keep]
        return float(per_series.mean())

    losses = {p: loss(p) for p in LEVEL_POWER_GRID}
    power = min(losses, key=lambda p: (losses[p], p))
    return {"level_feedback_power": power, "level_feedback_origins": origins}


def forecast(
    model: BIForecaster, panel: Panel, origin: int, series: np.ndarray | None = None, batch_size: int = 1024
) -> pd.DataFrame:
    """Quantile forecasts for the ``horizon`` periods after date index ``origin``: store_id, item_id, date, mean
    (the median, the point forecast that minimises absolute error) and q0.1 … q0.9, in sales units. With fitted
    level feedback and error spread, each series' level follows the model's recent errors on it
    (:func:`recent_level_ratio`) and its distances from the median its past errors (:func:`past_error_ratio`)."""
    cfg = model.config
    if series is None:
        series = np.flatnonzero(panel.first <= origin)
    horizon = cfg.horizon
    if origin + horizon >= len(panel.dates):
        raise ValueError(f"the panel's date grid ends before origin + horizon ({origin} + {horizon})")
    values = _adjusted_forecasts(model, panel, series, origin, batch_size=batch_size)
    n = len(series)
    dates = panel.dates[origin + 1 : origin + 1 + horizon]
    out = pd.DataFrame(
        {
            "store_id": np.repeat(panel.keys["store_id"].to_numpy()[series], horizon),
            "item_id": np.repeat(panel.keys["item_id"].to_numpy()[series], horizon),
            "date": np.tile(dates.to_numpy(), n),
        }
    )
    flat = values.reshape(n * horizon, len(cfg.quantiles))
    for j, q in enumerate(cfg.quantiles):
        out[quantile_column(q)] = flat[:, j].astype("float64")
    out["mean"] = out[quantile_column(0.5)]
    return out[["store_id", "item_id", "date", "mean", *[quantile_column(q) for q in QUANTILES]]]
