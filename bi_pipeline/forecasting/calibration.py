"""Calibration of a trained network on its validation windows: a factor on the level, and a factor on the quantiles'
spread that may follow each forecast's own interval width (docs/model.md, "Calibrations")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bi_pipeline.forecasting.device import autocast, to_device
from bi_pipeline.forecasting.modeling import (
    BIForecaster,
    forecast_width,
    smooth_floor,
    width_factor,
)
from bi_pipeline.forecasting.panel import (
    Panel,
    Windows,
)
from bi_pipeline.forecasting.sampling import ordered_batches

SPREAD_GRID = tuple(np.round(np.arange(0.4, 1.61, 0.05), 2))


LEVEL_GRID = tuple(np.round(np.arange(0.9, 1.1001, 0.005), 3))


POWER_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)


# The config fields calibration sets (each 1, or 0 for the power, before it runs).
CALIBRATION = ("level_scale", "spread_scale", "spread_power", "spread_reference")


def validation_outputs(
    model: BIForecaster, panel: Panel, windows: Windows, device: torch.device, batch_size: int = 1024
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per batch: the members' averaged quantiles before any calibration, the scaled targets and the mask.
    The forward pass runs once; every calibration factor is then scored on these (evaluate_loss's aggregation)."""
    cfg = model.config
    spread, level, power = cfg.spread_scale, cfg.level_scale, cfg.spread_power
    cfg.spread_scale, cfg.level_scale, cfg.spread_power = 1.0, 1.0, 0.0
    model.eval()
    out = []
    with torch.no_grad(), autocast(device):
        for batch in ordered_batches(panel, windows, cfg, batch_size):
            batch = to_device(batch, device)
            if not bool(batch["mask"].any()):
                continue
            keys = ("past_values", "past_observed", "future_features", "static_categorical", "static_numeric")
            quantiles, scale = model(*(batch[k] for k in keys))
            out.append((quantiles.float(), batch["target"] / scale, batch["mask"].to(scale.dtype)))
    cfg.spread_scale, cfg.level_scale, cfg.spread_power = spread, level, power
    return out


def calibrate(
    model: BIForecaster,
    panel: Panel,
    windows: Windows,
    device: torch.device,
    level: bool = True,
    spread_power: bool = True,
) -> dict[str, float]:
    """The calibration factors that minimise the validation pinball loss (model config fields), fitted in turn.

    The level: one factor on every quantile (a small model's level drifts from epoch to epoch with its last batches,
    and the validation periods show which way it drifted); 1 when ``level`` is off. The spread: a factor on the
    quantiles' distances from the median (pinball training on older, noisier windows tends to give intervals wider,
    or narrower, than recent data needs) and, with ``spread_power``, a power of each forecast's own interval width
    relative to the median width (see :func:`bi_pipeline.forecasting.modeling.spread_factor`), fitted jointly."""
    outputs = validation_outputs(model, panel, windows, device)
    floor = model.members[0].nonnegative
    return fit_calibration(outputs, list(model.config.quantiles), level, spread_power, floor)


def fit_calibration(
    outputs: list, quantiles: list[float], level: bool = True, spread_power: bool = True, floor: bool = False
) -> dict[str, float]:
    """:func:`calibrate` on cached validation outputs: per batch (averaged quantiles, scaled targets, mask). Each
    factor on the grid is scored by the validation pinball loss of the quantiles the model's forward pass would make
    with it, on the masked-in steps alone (:class:`CalibrationRows`)."""
    rows = CalibrationRows.of(outputs, quantiles)

    def best(grid: list, loss, default: tuple) -> tuple:
        # Ties go to the factors nearest no calibration.
        losses = {f: loss(*f) for f in grid}
        return min(losses, key=lambda f: (losses[f], float(np.abs(np.subtract(f, default)).sum())))

    level_scale = 1.0
    if level:
        base = smooth_floor(rows.centre + rows.distance, hard=True) if floor else rows.centre + rows.distance
        (level_scale,) = best([(float(f),) for f in LEVEL_GRID], lambda f: rows.loss(base * f), (1.0,))
    powers = POWER_GRID if spread_power else (0.0,)
    spread_scale, power = best(
        [(float(f), float(p)) for p in powers for f in SPREAD_GRID],
        lambda f, p: rows.loss(rows.calibrated(f, level_scale, p, floor)),
        (1.0, 0.0),
    )
    return {
        "level_scale": float(level_scale),
        "spread_scale": spread_scale,
        "spread_power": power,
        "spread_reference": rows.reference if power else 1.0,
    }


@dataclass
class CalibrationRows:
    """The validation outputs' masked-in steps, one row each, with what every factor on the grid reuses: the
    median, the distances from it, the target and the width of the row's window (:func:`spread_factor`'s). A
    validation stretch shorter than the horizon masks out many steps of every window; scoring only the rest, with
    the median and distances computed once, makes the grid search several times faster."""

    centre: torch.Tensor  # (N, 1)
    distance: torch.Tensor  # (N, Q)
    target: torch.Tensor  # (N, 1)
    width: torch.Tensor  # (N, 1)
    reference: float
    levels: torch.Tensor  # (Q,)

    @classmethod
    def of(cls, outputs: list, quantiles: list[float]) -> CalibrationRows:
        if outputs:
            predicted, target, mask = (torch.cat(parts) for parts in zip(*outputs, strict=True))
        else:
            predicted, target, mask = torch.zeros(0, 1, len(quantiles)), torch.zeros(0, 1), torch.zeros(0, 1)
        widths = forecast_width(predicted)  # (B, 1), over the whole horizon, masked steps too
        reference = max(float(np.median(widths.float().cpu().numpy())), 1e-6) if len(widths) else 1.0
        keep = mask != 0
        rows = predicted[keep]
        median = quantiles.index(0.5)
        centre = rows[:, median : median + 1]
        return cls(
            centre=centre,
            distance=rows - centre,
            target=target[keep].unsqueeze(-1),
            width=widths.expand_as(mask)[keep].unsqueeze(-1),
            reference=reference,
            levels=torch.tensor(quantiles, device=rows.device, dtype=rows.dtype),
        )

    def calibrated(self, spread: float, level: float, power: float, floor: bool) -> torch.Tensor:
        """The quantiles as the model's forward calibrates them: the spread, the floor, then the level."""
        factor = width_factor(self.width, spread, power, self.reference) if power else spread
        out = self.centre + self.distance * factor
        return (smooth_floor(out, hard=True) if floor else out) * level

    def loss(self, quantiles: torch.Tensor) -> float:
        """Mean pinball loss over the rows and levels: max(a·d, (a − 1)·d) = a·d + max(−d, 0)."""
        if not len(quantiles):
            return float("nan")
        diff = self.target - quantiles
        return float((diff @ self.levels).mean() / len(self.levels) + torch.relu(-diff).mean())
