"""Orders from forecasts, and what an ordering policy would have cost (no Dagster).

The policy is periodic review, order-up-to: every ``review_period`` periods, order what lifts the inventory position
(on hand + on order) to the order-up-to level, rounded up to whole packs and at least the minimum order. The level
is the quantile at the **critical ratio** of cumulative demand over the protection interval (``lead_time`` +
``review_period`` periods, :mod:`bi_pipeline.decisions.demand`):

- with a unit price and a unit cost, underage is the margin lost on a unit short (price − cost), overage the cost
  of holding a unit one period (cost × yearly holding rate ÷ periods a year), and the ratio underage ÷ (underage +
  overage);
- without them, the ratio is the service-level target, and costs are stated in units of sales: a unit short costs 1,
  a unit held one period (1 − target) ÷ target, the economics that target implies.

Each parameter is read per series: the item's attribute, else the store's, else the setting
(:class:`bi_pipeline.config.DecisionSettings`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from bi_pipeline.config import DecisionSettings
from bi_pipeline.decisions.demand import QCOLS, Dependence, window_quantiles
from bi_pipeline.forecasting.metrics import SERIES

PERIODS_PER_YEAR = {"D": 365.0, "W": 52.0, "M": 12.0}
# Attributes of items.csv / stores.csv the decisions read when present (the item's value wins over the store's).
PARAMETERS = ("unit_cost", "unit_price", "holding_cost_rate", "lead_time", "review_period", "pack_size", "min_order")
INTERVAL = (0.1, 0.9)  # the cumulative-demand interval reported beside each order and scored in the backtest


def series_parameters(
    series: pd.DataFrame,
    frequency: str,
    economics: DecisionSettings | None = None,
    sources: list[pd.DataFrame | None] | None = None,
) -> pd.DataFrame:
    """One row per series of ``series`` (store_id, item_id): every parameter of :data:`PARAMETERS` (from the first of
    ``sources`` that has it, e.g. items then stores, each keyed by the id columns it holds; else the default), the
    critical ratio, underage and overage per unit, and ``economics`` (``costs`` or ``service level``)."""
    economics = economics or DecisionSettings()
    out = series[SERIES].astype(str).drop_duplicates().reset_index(drop=True)
    defaults = {f.name: getattr(economics, f.name) for f in fields(DecisionSettings) if f.name in PARAMETERS}
    for name in PARAMETERS:
        value = pd.Series(np.nan, index=out.index)
        for table in sources or ():
            if table is None or name not in table.columns:
                continue
            keys = [k for k in SERIES if k in table.columns]
            if not keys:
                continue
            lookup = table[keys].astype(str).assign(_value=pd.to_numeric(table[name], errors="coerce"))
            lookup = lookup.dropna(subset=["_value"]).drop_duplicates(keys)
            value = value.fillna(out[keys].merge(lookup, on=keys, how="left")["_value"])
        out[name] = value.fillna(defaults[name]) if name in defaults else value
    out["lead_time"] = out["lead_time"].round().astype(int)
    out["review_period"] = out["review_period"].round().clip(lower=1).astype(int)
    priced = out["unit_price"].notna() & out["unit_cost"].notna() & (out["unit_price"] > out["unit_cost"])
    underage = np.where(priced, out["unit_price"] - out["unit_cost"], 1.0)
    overage = np.where(
        priced,
        out["unit_cost"] * out["holding_cost_rate"] / PERIODS_PER_YEAR[frequency],
        (1.0 - economics.service_level) / economics.service_level,
    )
    out["underage"], out["overage"] = underage, overage
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(priced, underage / (underage + overage), economics.service_level)
    # A free-to-hold item would be stocked without limit: the ratio is capped where the copula's tails still hold.
    out["critical_ratio"] = np.clip(np.nan_to_num(ratio, nan=economics.service_level), 0.5, 0.995)
    out["economics"] = np.where(priced, "costs", "service level")
    return out


# Each attribute's rule: (test on the parsed number, what the rule says).
RULES: dict[str, tuple] = {
    "unit_cost": (lambda v: v >= 0, "a number ≥ 0"),
    "unit_price": (lambda v: v >= 0, "a number ≥ 0"),
    "holding_cost_rate": (lambda v: v >= 0, "a number ≥ 0 (a yearly share of unit_cost)"),
    "lead_time": (lambda v: (v >= 0) & (v == v.round()), "a whole number of periods ≥ 0"),
    "review_period": (lambda v: (v >= 1) & (v == v.round()), "a whole number of periods ≥ 1"),
    "pack_size": (lambda v: v > 0, "a number > 0"),
    "min_order": (lambda v: v >= 0, "a number ≥ 0"),
}


def attribute_errors(table: pd.DataFrame | None, file: str) -> list[str]:
    """Every decision attribute of a master file that breaks its rule, as ``file, row N: rule 'name': …`` (rows as
    in the file, header = row 1). Empty cells are allowed: the default applies."""
    if table is None:
        return []
    errors = []
    for name, (test, says) in RULES.items():
        if name not in table.columns:
            continue
        text = table[name].astype("string").str.strip()
        given = text.notna() & (text != "")
        number = pd.to_numeric(text.where(given), errors="coerce")
        bad = given & ~(number.notna() & test(number.fillna(0)).astype(bool) & number.notna())
        rows = table["source_row"] if "source_row" in table.columns else pd.Series(table.index + 2, index=table.index)
        for index in bad[bad].index:
            errors.append(f"{file}, row {int(rows[index])}: rule '{name}': must be {says}, got {text[index]!r}")
    return errors


def order_quantities(
    order_up_to: np.ndarray, on_hand: np.ndarray, on_order: np.ndarray, pack_size: np.ndarray, min_order: np.ndarray
) -> np.ndarray:
    """What to order: the gap between the order-up-to level and the inventory position, in whole packs, and at least
    the minimum order (in whole packs) whenever anything is ordered."""
    pack = np.asarray(pack_size, dtype="float64")
    need = np.maximum(np.asarray(order_up_to, dtype="float64") - on_hand - on_order, 0.0)
    quantity = np.ceil(need / pack - 1e-9) * pack
    least = np.ceil(np.asarray(min_order, dtype="float64") / pack - 1e-9) * pack
    return np.where(quantity > 0, np.maximum(quantity, least), 0.0)


def forecast_arrays(
    forecasts: pd.DataFrame, dates: pd.DatetimeIndex | None = None
) -> tuple[pd.DataFrame, pd.DatetimeIndex, np.ndarray]:
    """(series, dates, quantiles (series, dates, 9)) of a long forecast frame over ``dates`` (default: every date it
    holds); a series without a forecast for each of them is left out."""
    frame = forecasts.assign(store_id=forecasts["store_id"].astype(str), item_id=forecasts["item_id"].astype(str))
    dates = pd.DatetimeIndex(np.sort(frame["date"].unique()) if dates is None else dates)
    wide = frame[frame["date"].isin(dates)].set_index([*SERIES, "date"])[QCOLS].unstack("date")
    wide = wide.reindex(columns=pd.MultiIndex.from_product([QCOLS, dates], names=[None, "date"])).dropna()
    series = wide.index.to_frame(index=False)
    values = wide.to_numpy(dtype="float64").reshape(len(wide), len(QCOLS), len(dates)).transpose(0, 2, 1)
    return series, dates, values


def plan_orders(
    forecasts: pd.DataFrame,
    parameters: pd.DataFrame,
    dependence: Dependence,
    inventory: pd.DataFrame | None = None,
    floor: bool = True,
    seed: int = 0,
) -> pd.DataFrame:
    """Per series of ``forecasts`` (one publication): the cumulative demand over its protection interval (P10, P50,
    P90), the order-up-to level at its critical ratio and, with an ``inventory`` snapshot (store_id, item_id, on_hand
    [, on_order]), the quantity to order now. Without a snapshot the order is the order-up-to level alone."""
    series, dates, quantiles = forecast_arrays(forecasts)
    params = series.merge(parameters, on=SERIES, how="left")
    protection = (params["lead_time"] + params["review_period"]).to_numpy()
    levels = np.column_stack(
        [
            np.tile(INTERVAL[0], len(params)),
            np.full(len(params), 0.5),
            np.tile(INTERVAL[1], len(params)),
            dependence.order_level(params["critical_ratio"]),
        ]
    )
    window = window_quantiles(quantiles, protection, levels, dependence, seed=seed, floor=floor)[:, 0, :]
    # Demand before an order placed now arrives: what the stock on hand and on order must cover.
    lead = params["lead_time"].to_numpy()
    before = window_quantiles(quantiles, lead, [0.5], dependence, seed=seed, floor=floor)[:, 0, 0]
    out = series.copy()
    meta = forecasts.drop_duplicates(SERIES).assign(
        store_id=lambda f: f["store_id"].astype(str), item_id=lambda f: f["item_id"].astype(str)
    )
    for column in ("cutoff", "model_version"):
        if column in forecasts:
            out[column] = out[SERIES].merge(meta[[*SERIES, column]], on=SERIES, how="left")[column].to_numpy()
    out["first_period"] = dates[0]
    for name in ("lead_time", "review_period", "critical_ratio", "economics", "pack_size", "min_order"):
        out[name] = params[name].to_numpy()
    out["order_level"] = levels[:, 3]
    out["protection_periods"] = protection
    out["protection_truncated"] = protection > len(dates)
    out["demand_p10"], out["demand_p50"], out["demand_p90"] = window[:, 0], window[:, 1], window[:, 2]
    out["order_up_to"] = window[:, 3]
    out["lead_time_demand_p50"] = np.where(lead > 0, before, 0.0)
    if inventory is not None:
        stock = inventory.assign(store_id=inventory["store_id"].astype(str), item_id=inventory["item_id"].astype(str))
        stock = out[SERIES].merge(stock, on=SERIES, how="left")
        on_hand = stock["on_hand"].to_numpy(dtype="float64")
        on_order = stock["on_order"].fillna(0.0).to_numpy(dtype="float64") if "on_order" in stock else 0.0
        out["on_hand"], out["on_order"] = on_hand, on_order
        quantity = order_quantities(out["order_up_to"], on_hand, on_order, params["pack_size"], params["min_order"])
        out["order_quantity"] = np.where(np.isnan(on_hand), np.nan, quantity)
    else:
        out["on_hand"], out["on_order"], out["order_quantity"] = np.nan, np.nan, np.nan
    return out


@dataclass
class PolicyResult:
    """What the order-up-to policy did over a holdout, summed over its series."""

    demand: float
    sold: float
    lost: float
    holding_cost: float
    lost_margin: float
    average_stock: float
    coverage_80: float  # cumulative demand over each protection window inside its P10–P90
    service_level: float  # the protection windows whose demand stayed at or under the order-up-to level
    windows_scored: int
    series: int

    @property
    def total_cost(self) -> float:
        return self.holding_cost + self.lost_margin

    @property
    def fill_rate(self) -> float:
        return self.sold / self.demand if self.demand > 0 else float("nan")

    def to_dict(self) -> dict:
        return {
            "total_cost": self.total_cost,
            "holding_cost": self.holding_cost,
            "lost_margin": self.lost_margin,
            "fill_rate": self.fill_rate,
            "average_stock": self.average_stock,
            "cumulative_coverage_80": self.coverage_80,
            "service_level_achieved": self.service_level,
            "windows_scored": self.windows_scored,
            "series": self.series,
        }


def simulate_policy(
    quantiles: np.ndarray,
    demand: np.ndarray,
    parameters: pd.DataFrame,
    dependence: Dependence,
    floor: bool = True,
    seed: int = 0,
) -> PolicyResult:
    """The order-up-to policy run on actual ``demand`` (series, periods) with forecasts ``quantiles`` (series,
    periods, 9) made at the holdout's start, lost sales: each review's level is the quantile of the forecast's
    cumulative demand over the protection interval from that period at the order level
    (:meth:`Dependence.order_level` of the critical ratio). Each series starts with its first level on hand and
    nothing on order; an order placed in period t arrives before period t + lead time's demand."""
    series, periods = demand.shape
    protection = (parameters["lead_time"] + parameters["review_period"]).to_numpy(dtype=np.int64)
    levels = np.column_stack(
        [
            np.tile(INTERVAL[0], series),
            np.tile(INTERVAL[1], series),
            dependence.order_level(parameters["critical_ratio"]),
        ]
    )
    window = window_quantiles(quantiles, protection, levels, dependence, seed=seed, floor=floor)
    result = run_policy(window[:, :, 2], demand, parameters)
    # Calibration of cumulative demand: every window that fits inside the holdout.
    actual, fits = window_actuals(demand, protection)
    inside = (actual >= window[:, :, 0] - 1e-9) & (actual <= window[:, :, 1] + 1e-9)
    result.coverage_80 = float(inside[fits].mean()) if fits.any() else float("nan")
    return result


def window_actuals(demand: np.ndarray, protection: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Actual demand over the protection window from each period (series, periods), and which windows fit inside."""
    series, periods = demand.shape
    totals = np.concatenate([np.zeros((series, 1)), np.cumsum(demand, axis=1)], axis=1)
    ends = np.arange(periods)[None, :] + protection[:, None]
    actual = np.take_along_axis(totals, np.minimum(ends, periods), 1) - totals[:, :periods]
    return actual, ends <= periods


def run_policy(order_up_to: np.ndarray, demand: np.ndarray, parameters: pd.DataFrame) -> PolicyResult:
    """The policy of :func:`simulate_policy` with its levels given (series, periods); ``coverage_80`` is left NaN."""
    series, periods = demand.shape
    lead = parameters["lead_time"].to_numpy(dtype=np.int64)
    review = parameters["review_period"].to_numpy(dtype=np.int64)
    actual, fits = window_actuals(demand, lead + review)
    covered = actual <= order_up_to + 1e-9
    pack, least = parameters["pack_size"].to_numpy(dtype="float64"), parameters["min_order"].to_numpy(dtype="float64")
    underage, overage = parameters["underage"].to_numpy(), parameters["overage"].to_numpy()
    on_hand = order_up_to[:, 0].copy()
    arrivals = np.zeros((series, periods + int(lead.max()) + 1))
    rows = np.arange(series)
    sold = lost = holding = lost_margin = stock = 0.0
    for t in range(periods):
        due = t % review == 0
        on_order = arrivals[:, t:].sum(axis=1)
        quantity = order_quantities(order_up_to[:, t], on_hand, on_order, pack, least)
        arrivals[rows[due], t + lead[due]] += quantity[due]
        on_hand += arrivals[:, t]
        served = np.minimum(on_hand, demand[:, t])
        on_hand -= served
        short = demand[:, t] - served
        sold, lost = sold + served.sum(), lost + short.sum()
        holding += float((on_hand * overage).sum())
        lost_margin += float((short * underage).sum())
        stock += on_hand.sum()
    return PolicyResult(
        demand=float(demand.sum()),
        sold=float(sold),
        lost=float(lost),
        holding_cost=holding,
        lost_margin=lost_margin,
        average_stock=float(stock / periods),
        coverage_80=float("nan"),
        service_level=float(covered[fits].mean()) if fits.any() else float("nan"),
        windows_scored=int(fits.sum()),
        series=series,
    )


# The shifts of the order level tried on validation forecasts (normal scores: at a ratio of 0.95, −0.6 asks for
# 0.83), and the most series they are tried on. None above 0: with lost sales the cheapest base-stock level is at
# most the backorder one, the ratio's, so a validation stretch asking for more measures its own surprises (Walmart's
# validation origins fall in the holiday weeks and asked AutoETS for +0.6, which cost 22% more on the holdout).
LEVEL_SHIFTS = tuple(float(round(v, 1)) + 0.0 for v in np.arange(-0.6, 0.01, 0.1))
TUNING_SERIES = 2000


def tuning_sample(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` of at most :data:`TUNING_SERIES` series, with string ids: those whose ids hash lowest, so that every
    model is tuned on the same series wherever they all have rows."""
    rows = rows.assign(store_id=rows["store_id"].astype(str), item_id=rows["item_id"].astype(str))
    keys = rows[SERIES].drop_duplicates()
    if len(keys) <= TUNING_SERIES:
        return rows
    order = np.argsort(pd.util.hash_pandas_object(keys, index=False).to_numpy(), kind="stable")
    return rows.merge(keys.iloc[order[:TUNING_SERIES]], on=SERIES)


def tune_level_shift(
    rows: pd.DataFrame,
    parameters: pd.DataFrame,
    dependence: Dependence,
    floor: bool = True,
    seed: int = 0,
    shifts: tuple[float, ...] = LEVEL_SHIFTS,
) -> float:
    """The shift of the order level (:meth:`Dependence.order_level`) whose policy cost least in total over a
    forecaster's validation forecasts: ``rows`` holds ``store_id``, ``item_id``, ``origin``, ``step``, the quantile
    columns and ``sales``; ``parameters`` the economics of its series (:func:`series_parameters`). Each origin's
    series with an actual for every step it forecast are simulated as from a holdout's start (at most
    :data:`TUNING_SERIES` of them, :func:`tuning_sample`); ties go to the smaller shift. 0 when no origin can be
    scored."""
    rows = tuning_sample(rows.dropna(subset=["sales"]))
    costs = np.zeros(len(shifts))
    scored = False
    for _, part in rows.groupby("origin", sort=True):
        width = int(part["step"].max())
        complete = part.groupby(SERIES, observed=True)["step"].transform("nunique") == width
        part = part[complete].sort_values([*SERIES, "step"])
        series = len(part) // width
        if series == 0 or width < 2:
            continue
        params = part[SERIES].drop_duplicates().merge(parameters, on=SERIES, how="left")
        if params["critical_ratio"].isna().any():
            raise ValueError("tune_level_shift: parameters lack series that the validation rows hold")
        quantiles = part[QCOLS].to_numpy(dtype="float64").reshape(series, width, len(QCOLS))
        demand = part["sales"].to_numpy(dtype="float64").reshape(series, width)
        protection = (params["lead_time"] + params["review_period"]).to_numpy(dtype=np.int64)
        levels = np.column_stack([dependence.with_shift(v).order_level(params["critical_ratio"]) for v in shifts])
        window = window_quantiles(quantiles, protection, levels, dependence, seed=seed, floor=floor)
        for k in range(len(shifts)):
            costs[k] += run_policy(window[:, :, k], demand, params).total_cost
        scored = True
    if not scored:
        return 0.0
    best = min(range(len(shifts)), key=lambda k: (round(costs[k], 9), abs(shifts[k])))
    return float(shifts[best])
