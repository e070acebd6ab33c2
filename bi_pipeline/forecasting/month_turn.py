"""The month-turn adjustment of weekly sales (no Dagster, no torch).

Many retailers sell more in the first days of a month than late in it (paydays, benefit payments): Walmart's 45
stores sell about 10% more in a week of a month's first seven days than in a week of its days 22-28. A weekly
series repeats its year every 52 weeks, 364 days, so the week that held a month's first days a year back holds the
end of the month before now and then: a model that repeats last year's shape puts the bump in the wrong week. Inputs
that tell the transformer where a week lies in its month made it worse (it memorises dates on a few dozen series,
docs/accuracy.md), so the effect is taken out of the sales instead, as statistical agencies adjust for calendar
effects: one factor per week, estimated on the whole panel, divides the sales the network reads and multiplies its
forecasts back.

The factor is exp(Σ effect × share) over four bands of the month's days (1-7, 8-14, 15-21, 22-28; days 29-31 are the
reference), where share is the part of the week's seven days in the band. The effects are a least-absolute-deviation
fit of each week's sales against its neighbours', averaged over the panel. A week is the seven days ending on its
date or starting on it (data sets date their weeks either way): both readings are fitted and the better one is kept
when it explains enough (:data:`MIN_GAIN`); otherwise there is no adjustment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bi_pipeline.config import MONTH_TURN_SETTINGS
from bi_pipeline.forecasting.metrics import SERIES

ANCHORS = ("end", "start")  # the week is the 7 days ending on its date, or starting on it
# The month's days in four bands of a week each; days 29-31 are the reference the effects are measured against.
BANDS = ((1, 7), (8, 14), (15, 21), (22, 28))
# The adjustment is kept when the bands lower the panel's absolute deviation from its neighbourhood by this much:
# Walmart's weeks gain 22-29%, the suite's generated weekly panels (no month-turn effect) 1.9-4.4%
# (docs/accuracy.md, "The month-turn adjustment").
MIN_GAIN = 0.08
MAX_EFFECT = 0.35  # log: no band moves a week by more than about 40%
MIN_PERIODS = 52  # a year of weeks: a dozen month turns
NEIGHBOURHOOD = 5  # periods, centred: the level a week is compared with
REFITS = 3  # fits, each with the neighbours adjusted by the one before (the first: unadjusted)


@dataclass(frozen=True)
class MonthTurn:
    """exp(Σ effect × the share of the week's days in each band of :data:`BANDS`), the week read from ``anchor``."""

    anchor: str
    effects: tuple[float, ...]
    gain: float  # the share of the panel's deviation it explains

    def to_list(self) -> list:
        return [self.anchor, list(self.effects), self.gain]

    @classmethod
    def from_list(cls, values: list | None) -> MonthTurn | None:
        if not values:
            return None
        return cls(str(values[0]), tuple(float(e) for e in values[1]), float(values[2]))

    def factors(self, dates: pd.DatetimeIndex) -> np.ndarray:
        """The multiplicative factor of each week (float64)."""
        return np.exp(band_shares(dates, self.anchor) @ np.asarray(self.effects, dtype="float64"))

    def describe(self) -> str:
        week = "ending" if self.anchor == "end" else "starting"
        bands = ", ".join(f"days {lo}-{hi} {np.expm1(e):+.1%}" for (lo, hi), e in zip(BANDS, self.effects, strict=True))
        return (
            f"weeks (the 7 days {week} on their date) sell, per day of the month against days 29-31: {bands}; "
            f"explains {self.gain:.0%} of the weeks' deviation from their neighbours"
        )


def band_shares(dates: pd.DatetimeIndex, anchor: str) -> np.ndarray:
    """(T, len(BANDS)): the share of each week's seven days that falls in each band of days of the month."""
    if anchor not in ANCHORS:
        raise ValueError(f"week anchor {anchor!r}: choose one of {', '.join(ANCHORS)}")
    dates = pd.DatetimeIndex(dates).normalize()
    offsets = range(-6, 1) if anchor == "end" else range(7)
    days = np.stack([(dates + pd.Timedelta(days=o)).day.to_numpy() for o in offsets])  # (7, T)
    return np.stack([((days >= lo) & (days <= hi)).mean(axis=0) for lo, hi in BANDS], axis=1).astype("float64")


def log_sales(history: pd.DataFrame) -> pd.DataFrame:
    """(dates, series): the log of each positive week's sales (NaN elsewhere)."""
    wide = history.pivot_table(index="date", columns=SERIES, values="sales", observed=True, aggfunc="sum")
    return np.log(wide.sort_index().where(lambda frame: frame > 0))


def neighbourhood_deviation(logs: pd.DataFrame, adjustment: np.ndarray | None = None) -> pd.Series:
    """Per date, the mean over series of each week's log sales against the median of its centred
    :data:`NEIGHBOURHOOD` weeks, those read with ``adjustment`` (log, per date) taken out: what is left of a week's
    sales once level, trend and the slow seasons are gone. Taking the month turn out of the neighbours first keeps a
    neighbourhood that holds a month turn of its own from shrinking the effect."""
    adjusted = logs if adjustment is None else logs.sub(adjustment, axis=0)
    centre = adjusted.rolling(NEIGHBOURHOOD, center=True, min_periods=NEIGHBOURHOOD).median()
    return (logs - centre).mean(axis=1).dropna()


def lad_fit(deviation: np.ndarray, shares: np.ndarray, iterations: int = 100) -> tuple[np.ndarray, float]:
    """(effects, absolute loss) of the least-absolute-deviation fit deviation ≈ a + shares @ effects, by iteratively
    reweighted least squares: the holiday weeks (a Christmas week sells 30% above its neighbours) cannot pull it."""
    design = np.column_stack([np.ones(len(deviation)), shares])
    coef = np.linalg.lstsq(design, deviation, rcond=None)[0]
    for _ in range(iterations):
        weights = np.sqrt(1.0 / np.maximum(np.abs(deviation - design @ coef), 1e-4))
        coef = np.linalg.lstsq(design * weights[:, None], deviation * weights, rcond=None)[0]
    effects = np.clip(coef[1:], -MAX_EFFECT, MAX_EFFECT)
    residual = deviation - shares @ effects
    return effects, float(np.abs(residual - np.median(residual)).sum())


def fit_month_turn(history: pd.DataFrame, frequency: str, setting: str = "auto") -> MonthTurn | None:
    """The panel's month-turn adjustment, or None: off, not weekly, under a year of weeks, or too little explained."""
    if setting not in MONTH_TURN_SETTINGS:
        raise ValueError(f"month turn {setting!r}: choose one of {', '.join(MONTH_TURN_SETTINGS)}")
    if setting == "off" or frequency != "W" or history["date"].nunique() < MIN_PERIODS:
        return None
    logs = log_sales(history)
    best: MonthTurn | None = None
    for anchor in ANCHORS:
        shares = band_shares(logs.index, anchor)
        adjustment = np.zeros(len(logs))
        for _ in range(REFITS):
            deviation = neighbourhood_deviation(logs, adjustment)
            values, rows = deviation.to_numpy(), logs.index.get_indexer(deviation.index)
            base = float(np.abs(values - np.median(values)).sum()) if len(values) else 0.0
            if len(values) < MIN_PERIODS - NEIGHBOURHOOD or base <= 0:  # too few weeks with neighbours, or flat
                return None
            effects, loss = lad_fit(values, shares[rows])
            adjustment = shares @ effects
        gain = round(1.0 - loss / base, 4)
        if best is None or gain > best.gain:
            best = MonthTurn(anchor, tuple(round(float(e), 4) for e in effects), gain)
    return best if best is not None and best.gain >= MIN_GAIN else None
