"""The windows a training step reads: tensors gathered from the panel, batches, the recency-weighted sample an
epoch draws, and mixup between series over the same dates."""

from __future__ import annotations

import numpy as np
import torch

from bi_pipeline.forecasting.modeling import (
    BIForecaster,
    BIForecasterConfig,
)
from bi_pipeline.forecasting.panel import (
    Panel,
    Windows,
)


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


def batches(n: int, size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i : i + size] for i in range(0, n, size)]


def gather_windows(
    panel: Panel, windows: Windows, rows: np.ndarray, cfg: BIForecasterConfig
) -> dict[str, torch.Tensor]:
    """:func:`gather` for the windows at ``rows``, with the network's context and horizon."""
    return gather(
        panel,
        windows.series[rows],
        windows.start[rows],
        cfg.context_length,
        cfg.horizon,
        windows.step_begin,
        windows.step_end,
    )


def ordered_batches(panel: Panel, windows: Windows, cfg: BIForecasterConfig, batch_size: int):
    """The windows' tensors in order, ``batch_size`` at a time (evaluation: no shuffling)."""
    for idx in batches(len(windows), batch_size, None):
        yield gather_windows(panel, windows, idx, cfg)


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
