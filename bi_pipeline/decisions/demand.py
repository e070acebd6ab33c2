"""Demand over several periods from per-period quantile forecasts (no Dagster).

A forecast gives each period's P10…P90 on its own. An order must cover the demand of the whole protection interval
(lead time + review period), and summing per-period quantiles is not a quantile of the sum: it assumes every period
misses in the same direction by the same rank. Here the periods are joined by a Gaussian copula:

- **Marginals.** Each period's quantile function interpolates its nine quantiles linearly and continues beyond P10 and
  P90 with a normal tail scaled by that side's half-width (:func:`quantile_values`); floored at zero for a measure that
  cannot be negative.
- **Dependence.** The forecaster's own errors over its validation origins, turned into normal scores through each
  forecast's distribution (:func:`pit`), give one correlation per distance between steps (:func:`fit_dependence`);
  the steps' correlation matrix is the Toeplitz matrix of those, made positive definite (:meth:`Dependence.matrix`).
  Without errors to fit on, steps move together (correlation 1): the widest, most cautious choice.
- **Order level.** The order-up-to level is read at the critical ratio moved by one shift in normal scores per
  forecaster, the shift whose policy cost least on its validation forecasts
  (:func:`bi_pipeline.decisions.inventory.tune_level_shift`), never above it: a forecaster whose upper tail held more
  of the actuals than its level says is asked for less, and with lost sales the cheapest level is below the ratio
  even for a calibrated forecast.
- **Sums.** Correlated sample paths (:func:`demand_paths`), summed over each window of steps, give the quantiles of
  cumulative demand (:func:`window_quantiles`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from bi_pipeline.forecasting.metrics import QUANTILES, SERIES, quantile_column

LEVELS = np.asarray(QUANTILES, dtype="float64")
QCOLS = [quantile_column(q) for q in QUANTILES]
STEP = float(LEVELS[1] - LEVELS[0])
assert np.allclose(np.diff(LEVELS), STEP), "the quantile function assumes evenly spaced levels"
MEDIAN = int(np.argmin(np.abs(LEVELS - 0.5)))
Z_LOW, Z_HIGH = float(ndtri(LEVELS[0])), float(ndtri(LEVELS[-1]))
DRAWS = 1000
MIN_PAIRS = 30  # a lag's correlation is fitted on at least this many pairs of errors, else the last fitted one holds
CELLS_PER_CHUNK = 4_000_000  # draws × series × steps sampled at once


@dataclass(frozen=True)
class Dependence:
    """What a forecaster's validation errors say beyond its per-step quantiles.

    ``lags``: correlations of the normal scores of forecast errors ``lag`` steps apart (``lags[0]``: adjacent steps),
    and the ``pairs`` of errors each was fitted on. Lags beyond the fitted ones keep the last fitted value; none
    fitted: 1. ``level_shift``: the shift, in normal scores, of the critical ratio at which orders are set
    (:meth:`order_level`); 0 where none was tuned."""

    lags: tuple[float, ...] = ()
    pairs: tuple[int, ...] = ()
    level_shift: float = 0.0

    def order_level(self, ratio: np.ndarray | float) -> np.ndarray:
        """The probability level at which the order-up-to level is read for critical ratio ``ratio``."""
        return np.clip(ndtr(ndtri(np.asarray(ratio, dtype="float64")) + self.level_shift), 0.01, 0.995)

    def with_shift(self, shift: float) -> Dependence:
        return Dependence(self.lags, self.pairs, float(shift))

    def correlation(self, lag: int) -> float:
        if lag == 0:
            return 1.0
        if not self.lags:
            return 1.0
        return float(self.lags[min(lag, len(self.lags)) - 1])

    def matrix(self, steps: int) -> np.ndarray:
        """The steps × steps correlation matrix, repaired to the nearest positive definite one with unit diagonal."""
        index = np.arange(steps)
        distance = np.abs(index[:, None] - index[None, :])
        values = np.array([self.correlation(k) for k in range(steps)])
        matrix = values[distance]
        eigenvalues, vectors = np.linalg.eigh(matrix)
        repaired = (vectors * np.clip(eigenvalues, 1e-6, None)) @ vectors.T
        scale = np.sqrt(np.diag(repaired))
        return repaired / scale[:, None] / scale[None, :]

    def to_dict(self) -> dict:
        return {"lags": [round(v, 4) for v in self.lags], "pairs": list(self.pairs), "level_shift": self.level_shift}

    @classmethod
    def from_dict(cls, value: dict | None) -> Dependence:
        if not value:
            return cls()
        return cls(
            tuple(float(v) for v in value.get("lags", ())),
            tuple(int(v) for v in value.get("pairs", ())),
            float(value.get("level_shift", 0.0)),
        )

    def describe(self) -> str:
        shift = f"; order levels shifted by {self.level_shift:+.1f} normal scores" if self.level_shift else ""
        if not self.lags:
            return f"steps move together (no errors fitted){shift}"
        shown = ", ".join(f"{v:.2f}" for v in self.lags[:4])
        return f"error correlation by steps apart: {shown}{', …' if len(self.lags) > 4 else ''}{shift}"


def quantile_values(quantiles: np.ndarray, u: np.ndarray, floor: bool = False) -> np.ndarray:
    """The value at probability ``u`` of each forecast distribution: ``quantiles`` (..., 9), sorted on the last axis,
    and ``u`` of the same leading shape (or broadcastable to it)."""
    shape = np.broadcast_shapes(quantiles.shape[:-1], np.shape(u))
    q = np.broadcast_to(quantiles, (*shape, quantiles.shape[-1]))
    u = np.broadcast_to(u, shape)
    position = (u - LEVELS[0]) / STEP
    index = np.clip(np.floor(position).astype(np.int64), 0, len(LEVELS) - 2)
    weight = np.clip(position - index, 0.0, 1.0)
    lower = np.take_along_axis(q, index[..., None], -1)[..., 0]
    upper = np.take_along_axis(q, index[..., None] + 1, -1)[..., 0]
    values = lower + (upper - lower) * weight
    median = q[..., MEDIAN]
    z = ndtri(np.clip(u, 1e-9, 1 - 1e-9))
    below = median - (median - q[..., 0]) * (z / Z_LOW)
    above = median + (q[..., -1] - median) * (z / Z_HIGH)
    values = np.where(u < LEVELS[0], below, np.where(u > LEVELS[-1], above, values))
    return np.maximum(values, 0.0) if floor else values


def pit(quantiles: np.ndarray, y: np.ndarray, floor: bool = False) -> np.ndarray:
    """Each actual's probability under its forecast distribution (the inverse of :func:`quantile_values`): rows of
    ``quantiles`` (n, 9) and actuals ``y`` (n,). An actual on a flat stretch of the quantile function (several
    quantiles equal, e.g. zero demand under a floored forecast) gets the middle of the probabilities it spans."""
    q = np.sort(np.asarray(quantiles, dtype="float64"), axis=1)
    y = np.asarray(y, dtype="float64")
    below = (q < y[:, None]).sum(axis=1)
    equal = (q == y[:, None]).sum(axis=1)
    median = q[:, MEDIAN]
    with np.errstate(divide="ignore", invalid="ignore"):
        low_tail = ndtr(Z_LOW * (median - y) / (median - q[:, 0]))
        high_tail = ndtr(Z_HIGH * (y - median) / (q[:, -1] - median))
        inner = np.clip(below - 1, 0, len(LEVELS) - 2)
        left = np.take_along_axis(q, inner[:, None], 1)[:, 0]
        right = np.take_along_axis(q, inner[:, None] + 1, 1)[:, 0]
        between = LEVELS[inner] + STEP * (y - left) / (right - left)
    u = np.where(
        y < q[:, 0],
        np.nan_to_num(low_tail, nan=0.0),
        np.where(y > q[:, -1], np.nan_to_num(high_tail, nan=1.0), between),
    )
    # Ties: the actual equals quantiles first … first + equal − 1.
    first = np.clip(below, 0, len(LEVELS) - 1)
    last = np.clip(below + equal - 1, 0, len(LEVELS) - 1)
    tie_low = np.where(floor & (y <= 0) & (first == 0), 0.0, LEVELS[first])
    tied = (tie_low + LEVELS[last]) / 2.0
    return np.where(equal > 0, tied, u)


def fit_dependence(rows: pd.DataFrame, floor: bool = False, max_lag: int | None = None) -> Dependence:
    """The error correlations by steps apart, from forecasts with actuals over several origins: ``rows`` holds
    ``store_id``, ``item_id``, ``origin``, ``step`` (1 = the first period after the origin), the quantile columns and
    ``sales``. Errors of one series from one origin are paired step with step."""
    rows = rows.dropna(subset=["sales"])
    if rows.empty:
        return Dependence()
    u = pit(rows[QCOLS].to_numpy(dtype="float64"), rows["sales"].to_numpy(dtype="float64"), floor)
    z = ndtri(np.clip(u, 0.005, 0.995))
    group = pd.factorize(pd.MultiIndex.from_frame(rows[[*SERIES, "origin"]].astype(str)))[0]
    steps = rows["step"].to_numpy(dtype=np.int64)
    width = int(steps.max())
    scores = np.full((group.max() + 1, width), np.nan)
    scores[group, steps - 1] = z
    lags, pairs = [], []
    for lag in range(1, min(width, (max_lag or width) + 1)):
        a, b = scores[:, :-lag].ravel(), scores[:, lag:].ravel()
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.sum() < MIN_PAIRS or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
            break
        lags.append(float(np.clip(np.corrcoef(a[ok], b[ok])[0, 1], -0.99, 1.0)))
        pairs.append(int(ok.sum()))
    return Dependence(tuple(lags), tuple(pairs))


def series_chunks(series: int, steps: int, draws: int = DRAWS) -> Iterator[slice]:
    """Slices of series small enough to sample ``draws`` paths of ``steps`` for at once."""
    size = max(1, CELLS_PER_CHUNK // max(1, draws * steps))
    for start in range(0, series, size):
        yield slice(start, min(series, start + size))


def demand_paths(
    quantiles: np.ndarray, dependence: Dependence, draws: int = DRAWS, seed: int = 0, floor: bool = False
) -> np.ndarray:
    """Sample paths (series, draws, steps) of demand from per-step forecasts ``quantiles`` (series, steps, 9).

    Every series reads the same correlated draws (common random numbers): each series' paths have exactly the joint
    distribution it should, the interpolation is worked out once per draw and step rather than per series, and two
    models compared on the same series see the same draws."""
    quantiles = np.sort(np.asarray(quantiles, dtype="float64"), axis=-1)
    steps = quantiles.shape[1]
    chol = np.linalg.cholesky(dependence.matrix(steps))
    z = np.random.default_rng(seed).standard_normal((draws, steps)) @ chol.T  # (draws, steps)
    u = ndtr(z)
    position = (u - LEVELS[0]) / STEP
    index = np.clip(np.floor(position).astype(np.int64), 0, len(LEVELS) - 2)
    weight = np.clip(position - index, 0.0, 1.0)
    q = quantiles.astype(np.float32)  # single precision: half the memory traffic, ample for sums of demand
    step = np.arange(steps)[None, :]
    lower, upper = q[:, step, index], q[:, step, index + 1]  # (series, draws, steps)
    values = lower + (upper - lower) * weight.astype(np.float32)
    # The tails, only where a draw falls in one (the same draws for every series).
    for tail, edge, z_edge in ((u < LEVELS[0], 0, Z_LOW), (u > LEVELS[-1], -1, Z_HIGH)):
        draw, at = np.nonzero(tail)
        median = q[:, at, MEDIAN]
        scale = (z[draw, at] / z_edge).astype(np.float32)
        values[:, draw, at] = median + (q[:, at, edge] - median) * scale
    return np.maximum(values, 0.0) if floor else values


def window_quantiles(
    quantiles: np.ndarray,
    lengths: np.ndarray | int,
    levels: np.ndarray,
    dependence: Dependence,
    draws: int = DRAWS,
    seed: int = 0,
    floor: bool = False,
) -> np.ndarray:
    """Quantiles of cumulative demand over ``lengths`` steps (per series, or one for all) starting at every step:
    (series, steps, levels). ``levels`` is one list for all series (levels,) or a list per series (series, levels).
    A window that runs past the last forecast step sums the steps there are."""
    quantiles = np.asarray(quantiles, dtype="float64")
    series, steps = quantiles.shape[:2]
    lengths = np.broadcast_to(np.asarray(lengths, dtype=np.int64), (series,))
    levels = np.asarray(levels, dtype="float64")
    levels = np.broadcast_to(levels, (series, levels.shape[-1]))
    out = np.empty((series, steps, levels.shape[-1]))
    starts = np.arange(steps)
    for part in series_chunks(series, steps, draws):
        paths = demand_paths(quantiles[part], dependence, draws, seed, floor)  # (chunk, draws, steps)
        span = np.unique(lengths[part])
        if len(span) == 1 and span[0] <= 8:
            # One short window for every series (the usual lead time + review period): a few shifted sums.
            window = np.zeros_like(paths) if span[0] == 0 else paths.copy()
            for shift in range(1, int(span[0])):
                window[:, :, : steps - shift] += paths[:, :, shift:]
        else:
            totals = np.concatenate([np.zeros((*paths.shape[:2], 1), paths.dtype), np.cumsum(paths, axis=2)], axis=2)
            ends = np.minimum(starts[None, :] + lengths[part, None], steps)  # (chunk, steps)
            index = np.broadcast_to(ends[:, None, :], paths.shape)
            window = np.take_along_axis(totals, index, 2) - totals[:, :, :steps]
        window.sort(axis=1)
        # np.quantile's linear rule, with a level list per series.
        position = levels[part] * (draws - 1)  # (chunk, levels)
        low = np.floor(position).astype(np.int64)
        high = np.minimum(low + 1, draws - 1)
        weight = (position - low)[:, None, :]
        shape = (window.shape[0], low.shape[1], steps)
        pick_low = np.take_along_axis(window, np.broadcast_to(low[:, :, None], shape), 1)  # (chunk, levels, steps)
        pick_high = np.take_along_axis(window, np.broadcast_to(high[:, :, None], shape), 1)
        out[part] = np.moveaxis(pick_low, 1, 2) + (np.moveaxis(pick_high, 1, 2) - np.moveaxis(pick_low, 1, 2)) * weight
    return out
