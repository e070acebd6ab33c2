"""What needs a planner's attention (no Dagster): demand anomalies, stores that stopped reporting, periods whose
bad-row rate failed, a champion whose live accuracy is worse than its backtest. Each alert has a kind, a severity,
the series and period, the numbers and one sentence; its ``alert_id`` is a hash of what it is about, so the same
alert found again is recognised and delivered once (:func:`deliver`)."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from bi_pipeline.forecasting.live import LiveEvidence
from bi_pipeline.forecasting.metrics import SERIES
from bi_pipeline.state import atomic_write_text, locked, read_json

SEVERITY_ORDER = {"high": 0, "medium": 1, "low": 2}
COLUMNS = [
    "alert_id",
    "kind",
    "severity",
    "store_id",
    "item_id",
    "period",
    "forecast_cutoff",
    "forecast_version",
    "actual",
    "expected",
    "low",
    "high",
    "units",
    "money",
    "message",
]
KINDS = ("demand_anomaly", "stockout_risk", "overstock", "stopped_reporting", "bad_row_rate", "model_accuracy")
OVERSTOCK_FACTOR = 2.0  # stock on hand and on order above this many times the order-up-to level is overstock


def alert_id(*parts: object) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def _frame(records: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(records, columns=COLUMNS)
    for column in ("actual", "expected", "low", "high", "units", "money"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return frame


def _day(value) -> str:
    return str(pd.Timestamp(value).date())


def demand_anomalies(
    archive: pd.DataFrame,
    history: pd.DataFrame,
    periods: int = 1,
    unit_price: pd.Series | None = None,
) -> pd.DataFrame:
    """Actuals of the last ``periods`` landed periods outside the P10–P90 of the latest forecast published before
    them. Size in units beyond the band (and in money with the item's ``unit_price``); high severity beyond one band
    width outside it. Largest first."""
    if archive.empty or history.empty:
        return _frame([])
    history = history.dropna(subset=["sales"]).astype({"store_id": str, "item_id": str})
    recent = np.sort(history["date"].unique())[-periods:]
    actual = history[history["date"].isin(recent)][[*SERIES, "date", "sales"]]
    published = archive.astype({"store_id": str, "item_id": str, "model_version": str})
    published = published[published["date"].isin(recent)]
    # For each series and period, the newest publication made before it.
    published = published.sort_values("cutoff").drop_duplicates([*SERIES, "date"], keep="last")
    rows = actual.merge(published, on=[*SERIES, "date"], how="inner")
    above, below = rows["sales"] > rows["q0.9"], rows["sales"] < rows["q0.1"]
    rows = rows[above | below].copy()
    if rows.empty:
        return _frame([])
    rows["units"] = np.where(above[rows.index], rows["sales"] - rows["q0.9"], rows["q0.1"] - rows["sales"])
    rows["width"] = (rows["q0.9"] - rows["q0.1"]).clip(lower=0)
    rows["price"] = rows["item_id"].map(unit_price) if unit_price is not None else np.nan
    records = []
    for row in rows.to_dict(orient="records"):
        side = "above" if row["sales"] > row["q0.9"] else "below"
        bound = row["q0.9"] if side == "above" else row["q0.1"]
        money = row["units"] * row["price"] if pd.notna(row["price"]) else np.nan
        day, version = _day(row["date"]), str(row["model_version"])
        records.append(
            {
                "alert_id": alert_id("demand_anomaly", row["store_id"], row["item_id"], day, version),
                "kind": "demand_anomaly",
                # More than one band width outside the band: far beyond what the forecast allowed for.
                "severity": "high" if row["units"] > row["width"] else "medium",
                "store_id": row["store_id"],
                "item_id": row["item_id"],
                "period": pd.Timestamp(row["date"]),
                "forecast_cutoff": pd.Timestamp(row["cutoff"]),
                "forecast_version": version,
                "actual": row["sales"],
                "expected": row["q0.5"],
                "low": row["q0.1"],
                "high": row["q0.9"],
                "units": row["units"],
                "money": money,
                "message": (
                    f"{row['store_id']} / {row['item_id']} sold {row['sales']:,.0f} in the period of {day}, "
                    f"{row['units']:,.0f} {side} the forecast's {'P90' if side == 'above' else 'P10'} of "
                    f"{bound:,.0f} (P50 {row['q0.5']:,.0f}; v{version}, cutoff {_day(row['cutoff'])})"
                    + (f", {money:,.0f} in money" if pd.notna(money) else "")
                    + "."
                ),
            }
        )
    out = _frame(records)
    return out.sort_values(["units"], ascending=False, kind="stable").reset_index(drop=True)


def stopped_reporting(history: pd.DataFrame) -> pd.DataFrame:
    """Stores with sales rows in the period before the last landed one and none in the last: high severity."""
    landed = history.dropna(subset=["sales"]) if "observed" not in history else history[history["observed"]]
    dates = np.sort(landed["date"].unique())
    if len(dates) < 2:
        return _frame([])
    last, before = pd.Timestamp(dates[-1]), pd.Timestamp(dates[-2])
    previous = landed[landed["date"] == before].groupby("store_id", observed=True)["item_id"].nunique()
    now = set(landed.loc[landed["date"] == last, "store_id"].astype(str))
    records = []
    for store, series in previous.items():
        if str(store) in now or series == 0:
            continue
        records.append(
            {
                "alert_id": alert_id("stopped_reporting", store, _day(last)),
                "kind": "stopped_reporting",
                "severity": "high",
                "store_id": str(store),
                "item_id": "",
                "period": last,
                "units": float(series),
                "message": (
                    f"store {store} reported no sales for the period of {_day(last)}; it reported {series} series "
                    f"the period before."
                ),
            }
        )
    return _frame(records)


def stock_alerts(orders: pd.DataFrame) -> pd.DataFrame:
    """From orders with a stock snapshot: stock-out risk where on hand + on order is below the median demand before
    an order placed now arrives (high), overstock where it is above :data:`OVERSTOCK_FACTOR` times the order-up-to
    level (medium)."""
    if "on_hand" not in orders or orders["on_hand"].isna().all():
        return _frame([])
    rows = orders[orders["on_hand"].notna()]
    records = []
    for row in rows.to_dict(orient="records"):
        position = float(row["on_hand"]) + float(row.get("on_order") or 0.0)
        needed, level = float(row["lead_time_demand_p50"]), float(row["order_up_to"])
        common = {
            "store_id": str(row["store_id"]),
            "item_id": str(row["item_id"]),
            "period": pd.Timestamp(row["first_period"]),
            "forecast_cutoff": pd.Timestamp(row["cutoff"]),
            "forecast_version": str(row["model_version"]),
            "actual": position,
        }
        stock = f"{row['on_hand']:,.0f} on hand and {row.get('on_order') or 0:,.0f} on order"
        if position < needed:
            records.append(
                {
                    **common,
                    "alert_id": alert_id("stockout_risk", row["store_id"], row["item_id"], _day(row["cutoff"])),
                    "kind": "stockout_risk",
                    "severity": "high",
                    "expected": needed,
                    "units": needed - position,
                    "message": (
                        f"{row['store_id']} / {row['item_id']}: {stock}, {needed - position:,.0f} short of the "
                        f"{needed:,.0f} expected to sell before an order placed now arrives (lead time "
                        f"{row['lead_time']})."
                    ),
                }
            )
        elif level > 0 and position > OVERSTOCK_FACTOR * level:
            records.append(
                {
                    **common,
                    "alert_id": alert_id("overstock", row["store_id"], row["item_id"], _day(row["cutoff"])),
                    "kind": "overstock",
                    "severity": "medium",
                    "expected": level,
                    "high": OVERSTOCK_FACTOR * level,
                    "units": position - level,
                    "message": (
                        f"{row['store_id']} / {row['item_id']}: {stock}, {position / level:.1f} times the "
                        f"order-up-to level of {level:,.0f}."
                    ),
                }
            )
    return _frame(records)


def bad_periods(rates: dict[str, tuple[int, int]], limit: float) -> pd.DataFrame:
    """Periods whose quarantined share of rows, ``rates[period] = (quarantined, rows read)``, is over ``limit``."""
    records = []
    for period, (bad, rows) in sorted(rates.items()):
        rate = bad / rows if rows else 0.0
        if rate <= limit:
            continue
        records.append(
            {
                "alert_id": alert_id("bad_row_rate", period, bad, rows),
                "kind": "bad_row_rate",
                "severity": "high",
                "store_id": "",
                "item_id": "",
                "period": pd.Timestamp(period),
                "actual": rate,
                "high": limit,
                "units": float(bad),
                "message": (
                    f"the sales file of {period} had {bad} of {rows} rows quarantined ({rate:.1%}, over the limit of "
                    f"{limit:.1%}): the integrated view keeps its last good state until the file is fixed."
                ),
            }
        )
    return _frame(records)


def model_accuracy(
    evidence: LiveEvidence | None, champion_mase: float | None, threshold: float, min_periods: int
) -> pd.DataFrame:
    """One alert when the champion's live MASE is worse than its backtest MASE by more than ``threshold`` on at least
    ``min_periods`` scored periods, even two standard errors below the live mean (the retrain sensor's rule)."""
    if evidence is None or not champion_mase or evidence.periods < min_periods:
        return _frame([])
    limit = champion_mase * (1.0 + threshold)
    if evidence.lower_bound() <= limit:
        return _frame([])
    record = {
        "alert_id": alert_id("model_accuracy", evidence.version, evidence.periods),
        "kind": "model_accuracy",
        "severity": "high",
        "store_id": "",
        "item_id": "",
        "forecast_version": evidence.version,
        "actual": evidence.mase,
        "expected": champion_mase,
        "high": limit,
        "units": float(evidence.periods),
        "message": (
            f"champion v{evidence.version}'s {evidence.describe()} is worse than its backtest MASE "
            f"{champion_mase:.3f} by more than {threshold:.0%}: the retrain sensor asks for an update."
        ),
    }
    return _frame([record])


def combine(parts: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Every alert, most severe first, then largest."""
    frames = [p for p in parts if len(p)]
    if not frames:
        return _frame([])
    out = pd.concat(frames, ignore_index=True)
    out["_order"] = out["severity"].map(SEVERITY_ORDER)
    out = out.sort_values(["_order", "units"], ascending=[True, False], kind="stable")
    return out.drop(columns="_order").reset_index(drop=True)


def _json_records(alerts: pd.DataFrame) -> list[dict]:
    records = []
    for row in alerts.to_dict(orient="records"):
        clean = {}
        for key, value in row.items():
            if isinstance(value, pd.Timestamp):
                value = str(value.date())
            elif isinstance(value, float) and not np.isfinite(value):
                value = None
            elif value is pd.NaT:
                value = None
            clean[key] = value
        records.append(clean)
    return records


def deliver(alerts: pd.DataFrame, url: str, sent_path: Path, timeout: float = 10.0) -> tuple[int, str | None]:
    """POSTs the alerts not delivered before to ``url`` as JSON (``{"alerts": [...]}``) and records their ids in
    ``sent_path``; (alerts sent, the error when the sink refused or could not be reached). Undelivered alerts are
    sent again next time."""
    with locked(sent_path):
        sent = read_json(sent_path, {"sent": []})
        known = set(sent.get("sent", []))
        new = alerts[~alerts["alert_id"].isin(known)]
        if new.empty:
            return 0, None
        body = json.dumps({"alerts": _json_records(new)}).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - the user's own sink
                if not 200 <= response.status < 300:
                    return 0, f"the alert sink answered HTTP {response.status}"
        except (urllib.error.URLError, OSError) as exc:
            return 0, f"the alert sink could not be reached: {exc}"
        known.update(new["alert_id"])
        atomic_write_text(sent_path, json.dumps({"sent": sorted(known)}))
        return len(new), None
