"""Forward passes of a trained network: quantile forecasts in sales units from any origin of a panel, and the actuals
they are compared with (what calibration, feedback and forecasting read)."""

from __future__ import annotations

import numpy as np
import torch

from bi_pipeline.forecasting.device import autocast
from bi_pipeline.forecasting.modeling import (
    BIForecaster,
)
from bi_pipeline.forecasting.panel import (
    Panel,
)
from bi_pipeline.forecasting.sampling import batches, gather

INPUTS = ("past_values", "past_observed", "future_features", "static_categorical", "static_numeric")


def quantile_forecasts(
    model: BIForecaster, panel: Panel, series: np.ndarray, origin: int, batch_size: int = 1024
) -> np.ndarray:
    """(len(series), horizon, Q) quantiles in sales units for the periods after date index ``origin``, with the
    model's own calibration (level, spread, width power) but not the per-series error spread."""
    cfg = model.config
    device = next(model.parameters()).device
    model.eval()
    outputs = []
    with torch.no_grad(), autocast(device):
        for idx in batches(len(series), batch_size, None):
            sel = series[idx]
            batch = gather(panel, sel, np.full(len(sel), origin + 1), cfg.context_length, cfg.horizon, 0, 0)
            quantiles, scale = model(*(batch[k].to(device) for k in INPUTS))
            outputs.append((quantiles.float() * scale.unsqueeze(-1)).cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, cfg.horizon, len(cfg.quantiles)), dtype="float32")


def actuals(panel: Panel, series: np.ndarray, origin: int, horizon: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, usable) for the ``horizon`` periods after ``origin``: landed values at date indices ≤ ``end``."""
    steps = origin + 1 + np.arange(horizon)
    inside = steps < min(end + 1, panel.values.shape[1])
    safe = np.minimum(steps, panel.values.shape[1] - 1)
    usable = panel.observed[series[:, None], safe] & inside[None, :] & (steps[None, :] <= panel.last[series][:, None])
    return np.nan_to_num(panel.values[series[:, None], safe], nan=0.0), usable


def past_forecasts(model: BIForecaster, panel: Panel, origin: int, series: np.ndarray, origins: int, step: int):
    """The model's own forecasts from the ``origins`` origins ``step`` apart before ``origin`` (origin − step, …):
    per origin (rows of ``series`` with at least one patch of context, quantiles, actuals, usable), where only the
    targets at or before ``origin`` are usable. What the per-series feedback reads; nothing after ``origin``."""
    cfg = model.config
    for k in range(1, origins + 1):
        start = origin - step * k
        rows = np.flatnonzero(panel.first[series] + cfg.patch_length <= start + 1)
        if not len(rows):
            return
        quantiles = quantile_forecasts(model, panel, series[rows], start)
        actual, usable = actuals(panel, series[rows], start, cfg.horizon, origin)
        yield rows, quantiles, actual, usable
