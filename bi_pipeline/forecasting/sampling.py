"""The windows a training step reads: tensors gathered from the panel, batches, the recency-weighted sample an
epoch draws, and mixup between series over the same dates."""

from __future__ import annotations

from dataclasses import dataclass

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
    safe = np.minimum(start[:, None] + np.arange(horizon)[None, :], t - 1)
    target = np.nan_to_num(panel.values[series[:, None], safe], nan=0.0)
    mask = target_mask(panel, series, start, horizon, step_begin, step_end)
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


def target_mask(
    panel: Panel, series: np.ndarray, start: np.ndarray, horizon: int, step_begin: int, step_end: int
) -> np.ndarray:
    """(windows, horizon): which targets of windows (series, start) the loss reads: observed, inside the panel and
    the series, and between ``step_begin`` and ``step_end``."""
    t = panel.values.shape[1]
    step_idx = start[:, None] + np.arange(horizon)[None, :]
    safe = np.minimum(step_idx, t - 1)
    return (
        (step_idx < t)
        & panel.observed[series[:, None], safe]
        & (step_idx >= step_begin)
        & (step_idx < step_end)
        & (step_idx <= panel.last[series][:, None])
    )


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


def ordered_batches(
    panel: Panel, windows: Windows, cfg: BIForecasterConfig, batch_size: int, rank: int = 0, world: int = 1
):
    """The windows' tensors in order, ``batch_size`` at a time (evaluation: no shuffling); with ``world`` processes,
    the batches numbered ``rank`` modulo ``world``."""
    for j, idx in enumerate(batches(len(windows), batch_size, None)):
        if j % world == rank:
            yield gather_windows(panel, windows, idx, cfg)


def shard_bounds(rows: int, rank: int, world: int) -> tuple[int, int]:
    """The rows ``begin:end`` of a batch of ``rows`` that process ``rank`` of ``world`` trains on: a contiguous share,
    the shares' sizes differing by at most one."""
    return rows * rank // world, rows * (rank + 1) // world


class EpochBatches(torch.utils.data.Dataset):
    """An epoch's training batches for a DataLoader, one item a batch, in order. Every draw is made before (the
    sample, the order, the mixup ``plans``), so the items, whichever worker gathers them, are what the loop gathered
    on its own. An item: this process's share of the batch (``shard_bounds``; mixed as the whole batch is), ``rows``
    and ``offset`` (the batch's size and where the share starts in it), ``count`` (the share's targets) and ``total``
    (the whole batch's: the loss is a mean over all of them)."""

    def __init__(
        self,
        panel: Panel,
        windows: Windows,
        cfg: BIForecasterConfig,
        selections: list[np.ndarray],
        plans: list[MixPlan],
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.panel, self.windows, self.cfg = panel, windows, cfg
        self.selections, self.plans = selections, plans
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return len(self.selections)

    def __getitem__(self, i: int) -> dict:
        sel, plan = self.selections[i], self.plans[i]
        begin, end = shard_bounds(len(sel), self.rank, self.world)
        empty = begin == end
        if empty:
            # A share of no windows (a last batch smaller than the processes) trains on one window with no targets:
            # the process still runs forward and backward, so its dropout draws and the gradients' all-reduce keep
            # step with the others', and adds nothing.
            begin, end = 0, 1
        local = sel[begin:end]
        batch = apply_mix(
            self.panel,
            gather_windows(self.panel, self.windows, local, self.cfg),
            self.windows,
            local,
            self.cfg,
            plan.shard(begin, end),
        )
        if empty:
            batch["mask"].zero_()
        count = int(batch["mask"].sum())
        total = count
        if self.world > 1:
            total = int(mixed_mask(self.panel, self.windows, sel, plan, self.cfg.horizon).sum())
        return {"batch": batch, "rows": len(sel), "offset": begin, "count": count, "total": total}


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
    return apply_mix(panel, batch, windows, sel, cfg, mix_plan(panel, windows, sel, share, rng))


@dataclass(frozen=True)
class MixPlan:
    """Which rows of a batch :func:`mix_windows` mixes, with which series and weight: the draws, apart from the
    tensors, so that a process training on a share of the batch mixes its rows as the whole batch would."""

    rows: np.ndarray
    partner: np.ndarray
    weight: np.ndarray  # float32

    def shard(self, begin: int, end: int) -> MixPlan:
        """The plan for the batch's rows ``begin:end``, numbered from 0."""
        keep = (self.rows >= begin) & (self.rows < end)
        return MixPlan(self.rows[keep] - begin, self.partner[keep], self.weight[keep])


NO_MIX = MixPlan(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))


def mix_plan(panel: Panel, windows: Windows, sel: np.ndarray, share: float, rng: np.random.Generator) -> MixPlan:
    """The random part of :func:`mix_windows` for the windows at ``sel``, drawn from ``rng`` in its order."""
    if panel.series < 2:
        return NO_MIX
    series = windows.series[sel]
    rows = np.flatnonzero(rng.random(len(sel)) < share)
    partner = (series[rows] + rng.integers(1, panel.series, len(rows))) % panel.series
    keep = panel.first[partner] <= panel.first[series[rows]]
    rows, partner = rows[keep], partner[keep]
    if not len(rows):
        return NO_MIX
    return MixPlan(rows, partner, rng.beta(1.5, 1.5, len(rows)).astype("float32"))


def mixed_mask(panel: Panel, windows: Windows, sel: np.ndarray, plan: MixPlan, horizon: int) -> np.ndarray:
    """The target mask of the windows at ``sel`` once mixed by ``plan``, without gathering their tensors (cheap: a
    process reads the whole batch's count of targets from it)."""
    mask = target_mask(panel, windows.series[sel], windows.start[sel], horizon, windows.step_begin, windows.step_end)
    if len(plan.rows):
        start = windows.start[sel][plan.rows]
        mask[plan.rows] &= target_mask(panel, plan.partner, start, horizon, windows.step_begin, windows.step_end)
    return mask


def apply_mix(
    panel: Panel,
    batch: dict[str, torch.Tensor],
    windows: Windows,
    sel: np.ndarray,
    cfg: BIForecasterConfig,
    plan: MixPlan,
) -> dict[str, torch.Tensor]:
    """:func:`mix_windows` with its draws given (``plan``, rows numbered within ``sel``)."""
    rows, partner = plan.rows, plan.partner
    if not len(rows):
        return batch
    start = windows.start[sel]
    other = gather(panel, partner, start[rows], cfg.context_length, cfg.horizon, windows.step_begin, windows.step_end)
    weight = torch.from_numpy(plan.weight)[:, None]
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
