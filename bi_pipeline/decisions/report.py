"""The insights report (no Dagster): one self-contained HTML page per publication, with the headline numbers against
the same periods last year by store and category, the top movers, the open alerts and the orders. Styles and plots
are inline, so the file can be mailed or opened offline."""

from __future__ import annotations

import html
from dataclasses import dataclass

import pandas as pd

from bi_pipeline.forecasting.metrics import SERIES
from bi_pipeline.plots import figure, png_base64

SECTIONS = ("Headline", "By store", "By category", "Top movers", "Drivers", "Open alerts", "Orders")
LAST_YEAR = {"D": pd.Timedelta(days=364), "W": pd.Timedelta(days=364), "M": pd.DateOffset(years=1)}
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:72rem;color:#222}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85rem}
td,th{padding:.25rem .6rem;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child,td.text{text-align:left}.up{color:#1a7f37}.down{color:#b42318}.note{color:#666}
.kpi{display:inline-block;margin-right:2.5rem}.kpi b{display:block;font-size:1.4rem}
"""


@dataclass
class Report:
    html: str
    sections: tuple[str, ...]


def last_year(dates: pd.Series, frequency: str) -> pd.Series:
    """The same period a year before: 52 weeks (364 days) for daily and weekly data, 12 months for monthly."""
    return pd.to_datetime(dates) - LAST_YEAR[frequency]


def _table(frame: pd.DataFrame, text_columns: tuple[str, ...] = ()) -> str:
    if frame.empty:
        return '<p class="note">none</p>'
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for record in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, record, strict=True):
            if isinstance(value, float):
                shown = f"{value:,.1%}" if column.endswith("%") else f"{value:,.0f}"
                css = ' class="up"' if column.endswith("%") and value > 0 else ' class="down"' if value < 0 else ""
            else:
                shown, css = html.escape(str(value)), ' class="text"' if column in text_columns else ""
            cells.append(f"<td{css}>{shown}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _elasticity_table(frame: pd.DataFrame) -> str:
    """Elasticities with two decimals (the generic table rounds numbers to units)."""
    shown = frame.copy()
    for column in ("elasticity", "elasticity_low", "elasticity_high"):
        shown[column] = shown[column].map(lambda v: f"{v:.2f}")
    shown["items"] = shown["items"].astype(str)
    return _table(shown, ("category",))


def _versus(forecasts: pd.DataFrame, history: pd.DataFrame, frequency: str) -> pd.DataFrame:
    """Each forecast row with ``last_year``: the actual of the same series a year before (NaN where none)."""
    actual = history[[*SERIES, "date", "sales"]].astype({"store_id": str, "item_id": str})
    out = forecasts.assign(store_id=forecasts["store_id"].astype(str), item_id=forecasts["item_id"].astype(str))
    out["before"] = last_year(out["date"], frequency)
    merged = out.merge(
        actual.rename(columns={"date": "before", "sales": "last_year"}), on=[*SERIES, "before"], how="left"
    )
    return merged


def _by(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    grouped = frame.groupby(key, observed=True).agg(forecast=("q0.5", "sum"), last_year=("last_year", "sum"))
    grouped["change %"] = grouped["forecast"] / grouped["last_year"].where(grouped["last_year"] > 0) - 1.0
    return grouped.reset_index().sort_values("forecast", ascending=False)


def _plot(history: pd.DataFrame, forecasts: pd.DataFrame) -> str:
    total = history.groupby("date", as_index=False)["sales"].sum()
    recent = total[total["date"] > total["date"].max() - pd.Timedelta(days=int(2 * 365.25))]
    ahead = forecasts.groupby("date", as_index=False)[["q0.1", "q0.5", "q0.9"]].sum()
    fig, ax = figure()
    ax.plot(recent["date"], recent["sales"], color="#333333", lw=1.2, label="actual")
    ax.fill_between(ahead["date"], ahead["q0.1"], ahead["q0.9"], color="#4c72b0", alpha=0.25, label="P10–P90 (summed)")
    ax.plot(ahead["date"], ahead["q0.5"], color="#4c72b0", lw=1.5, label="forecast (P50)")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("All series", fontsize=10)
    return png_base64(fig)


def insights(
    history: pd.DataFrame,
    forecasts: pd.DataFrame,
    frequency: str,
    orders: pd.DataFrame | None = None,
    alerts: pd.DataFrame | None = None,
    items: pd.DataFrame | None = None,
    drivers: pd.DataFrame | None = None,
    effects: pd.DataFrame | None = None,
    top: int = 10,
) -> Report:
    """The report of one publication (``forecasts`` with ``cutoff`` and ``model_version``)."""
    cutoff = pd.Timestamp(forecasts["cutoff"].iloc[0]).date()
    version = str(forecasts["model_version"].iloc[0])
    frame = _versus(forecasts, history, frequency)
    total, before = float(frame["q0.5"].sum()), float(frame["last_year"].sum())
    covered = frame["last_year"].notna().mean() if len(frame) else 0.0
    change = total / before - 1.0 if before > 0 else float("nan")
    first, last = frame["date"].min().date(), frame["date"].max().date()
    parts = [
        f"<h1>Sales outlook {first} – {last}</h1>",
        f'<p class="note">Forecasts of model v{html.escape(version)} from the data up to {cutoff}; last year is the '
        f"same periods a year before ({covered:.0%} of forecast rows have one).</p>",
        "<h2>Headline</h2>",
        f'<div class="kpi">forecast (sum of medians)<b>{total:,.0f}</b></div>'
        f'<div class="kpi">same periods last year<b>{before:,.0f}</b></div>'
        f'<div class="kpi">change<b class="{"up" if change >= 0 else "down"}">{change:+.1%}</b></div>',
        f'<p><img alt="history and forecast" src="data:image/png;base64,{_plot(history, forecasts)}"></p>',
        "<h2>By store</h2>",
        _table(_by(frame, "store_id").head(3 * top), ("store_id",)),
    ]
    category = None
    if items is not None and len(items) and "category" in items.columns:
        category = items.set_index(items["item_id"].astype(str))["category"].astype(str)
        category = category[~category.index.duplicated()]
    parts.append("<h2>By category</h2>")
    if category is not None:
        parts.append(_table(_by(frame.assign(category=frame["item_id"].map(category)), "category"), ("category",)))
    else:
        parts.append('<p class="note">items.csv has no <code>category</code> column.</p>')
    movers = frame.groupby(SERIES, observed=True).agg(forecast=("q0.5", "sum"), last_year=("last_year", "sum"))
    movers = movers[movers["last_year"] > 0]
    movers["change"] = movers["forecast"] - movers["last_year"]
    movers["change %"] = movers["forecast"] / movers["last_year"] - 1.0
    movers = movers.reset_index()
    ups = movers.sort_values("change", ascending=False).head(top)
    downs = movers.sort_values("change").head(top)
    parts += [
        "<h2>Top movers</h2>",
        "<p>Largest rises against last year</p>",
        _table(ups[ups["change"] > 0], ("store_id", "item_id")),
        "<p>Largest falls</p>",
        _table(downs[downs["change"] < 0], ("store_id", "item_id")),
        "<h2>Drivers</h2>",
    ]
    if drivers is not None and len(drivers):
        parts_total = drivers[["level_trend", "seasonality", "calendar", "promotion_price"]].sum()
        shares = pd.DataFrame(
            {
                "part": ["level and trend", "seasonality", "calendar and holidays", "promotion and price"],
                "units": parts_total.to_numpy(),
                "share %": (parts_total / max(float(drivers["median"].sum()), 1e-12)).to_numpy(),
            }
        )
        largest = drivers.reindex(drivers["calendar"].abs().sort_values(ascending=False).index).head(top)
        largest = largest[largest["calendar"].abs() > 0]
        parts.append(
            "<p>The forecast's median by part (summed over series and periods)</p>" + _table(shares, ("part",))
        )
        if len(largest):
            shown = largest.assign(date=largest["date"].dt.date.astype(str))[
                ["store_id", "item_id", "date", "median", "calendar", "promotion_price"]
            ]
            parts.append("<p>Largest calendar effects</p>" + _table(shown, ("store_id", "item_id", "date")))
    else:
        parts.append('<p class="note">no drivers for this publication</p>')
    if effects is not None and len(effects):
        shown = effects[["category", "items", "elasticity", "elasticity_low", "elasticity_high"]].copy()
        shown[["uplift %", "uplift low %", "uplift high %"]] = effects[["uplift", "uplift_low", "uplift_high"]]
        parts.append(
            "<p>Price elasticity (sales change per 1% price change) and promotion uplift on top of the price cut, "
            "per category, with 95% intervals</p>" + _elasticity_table(shown)
        )
    parts.append("<h2>Open alerts</h2>")
    if alerts is not None and len(alerts):
        shown = alerts[["severity", "kind", "message"]].head(3 * top)
        parts.append(_table(shown, ("severity", "kind", "message")))
    else:
        parts.append('<p class="note">no open alerts</p>')
    parts.append("<h2>Orders</h2>")
    if orders is not None and len(orders):
        key = "order_quantity" if orders["order_quantity"].notna().any() else "order_up_to"
        columns = [*SERIES, "demand_p50", "demand_p90", "order_up_to", "on_hand", "on_order", "order_quantity"]
        shown = orders.sort_values(key, ascending=False)[columns].head(3 * top)
        parts.append(
            f'<p class="note">Largest by {key.replace("_", " ")}; demand over lead time + review period.</p>'
            + _table(shown.fillna(float("nan")), ("store_id", "item_id"))
        )
    else:
        parts.append('<p class="note">no orders</p>')
    body = "\n".join(parts)
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sales outlook {first}</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )
    return Report(page, SECTIONS)
