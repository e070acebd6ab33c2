"""Decisions: orders from the published forecasts, and the tables BI tools read. Wiring around
:mod:`bi_pipeline.decisions`."""

import json

import dagster as dg
import pandas as pd

from bi_pipeline.decisions.alerts import (
    KINDS,
    bad_periods,
    combine,
    deliver,
    demand_anomalies,
    model_accuracy,
    stock_alerts,
    stopped_reporting,
)
from bi_pipeline.decisions.drivers import PARTS, category_table, forecast_drivers, shares, treeshap_parts
from bi_pipeline.decisions.inventory import attribute_errors, plan_orders, series_parameters
from bi_pipeline.decisions.report import insights as build_insights
from bi_pipeline.decisions.warehouse import Warehouse, default_url
from bi_pipeline.defs.checks import master_or_none
from bi_pipeline.defs.collection import partition_frequency
from bi_pipeline.defs.inventory import latest_snapshot
from bi_pipeline.defs.resources import DecisionResource, ForecastingResource, MLflowResource, PipelineResource
from bi_pipeline.forecasting.calendar import pandas_freq
from bi_pipeline.forecasting.candidate import forecast_latest, future_covariates
from bi_pipeline.forecasting.ensemble import Forecaster, saved_dependence
from bi_pipeline.forecasting.lightgbm import median_contributions
from bi_pipeline.forecasting.live import load_archive
from bi_pipeline.forecasting.metrics import season_length_for
from bi_pipeline.forecasting.usecases import live_report
from bi_pipeline.privacy import redact_uri
from bi_pipeline.storage import is_local, write_file

GROUP = "decisions"


@dg.asset(
    group_name=GROUP,
    kinds={"pandas"},
    # The newest stock snapshot, when one has landed.
    ins={"inventory": dg.AssetIn(partition_mapping=dg.LastPartitionMapping())},
)
def orders(
    context: dg.AssetExecutionContext,
    pipeline: PipelineResource,
    decisions: DecisionResource,
    mlflow_tracking: MLflowResource,
    forecasts: pd.DataFrame,
    items: pd.DataFrame,
    stores: pd.DataFrame,
    inventory: dict[str, pd.DataFrame],
) -> dg.Output:
    """Per series, the order-up-to level for the next review: the quantile at the critical ratio (from unit price,
    unit cost and holding cost, or the service level) of cumulative demand over lead time + review period, drawn from
    the forecast's per-period quantiles joined by the champion's fitted error dependence; with the P10–P90 of that
    demand. Rounded to whole packs and the minimum order when a stock snapshot gives the quantity to order."""
    economics = decisions.economics()
    master = [master_or_none(items), master_or_none(stores)]
    errors = [*attribute_errors(master[0], "items.csv"), *attribute_errors(master[1], "stores.csv")]
    if errors:
        raise dg.Failure("decision attributes break their rules:\n" + "\n".join(errors[:20]))
    if forecasts.empty:
        raise dg.Failure("the forecasts hold no rows: nothing to order")
    version = str(forecasts["model_version"].iloc[0])
    dependence = saved_dependence(mlflow_tracking.tracker().model_dir(version))
    frequency = partition_frequency(context, pipeline)
    parameters = series_parameters(forecasts, frequency, economics, master)
    floor = bool((forecasts["q0.5"] >= 0).all())
    period, stock = latest_snapshot(inventory)
    out = plan_orders(forecasts, parameters, dependence, inventory=stock, floor=floor)
    if stock is not None:
        context.log.info(f"stock from the snapshot of {period}: {int(out['on_hand'].notna().sum())} series matched")
    by_economics = out["economics"].value_counts().to_dict()
    top = out.sort_values("order_up_to", ascending=False).head(10)
    context.log.info(
        f"order-up-to levels for {len(out)} series from v{version}; {dependence.describe()}; "
        + ", ".join(f"{n} by {k}" for k, n in by_economics.items())
    )
    return dg.Output(
        out,
        metadata={
            "series": len(out),
            "model_version": version,
            "cutoff": str(pd.Timestamp(out["cutoff"].iloc[0]).date()) if len(out) else "",
            "dependence": dependence.describe(),
            "economics": dg.MetadataValue.json({str(k): int(v) for k, v in by_economics.items()}),
            "service_level": economics.service_level,
            "lead_time_default": economics.lead_time,
            "review_period_default": economics.review_period,
            "protection_truncated": int(out["protection_truncated"].sum()),
            "stock_snapshot": period or "none: orders are stated as order-up-to levels",
            "series_without_stock": int(out["on_hand"].isna().sum()) if stock is not None else len(out),
            "total_order_quantity": float(out["order_quantity"].sum()) if stock is not None else 0.0,
            "total_order_up_to": float(out["order_up_to"].sum()),
            "largest": dg.MetadataValue.md(
                top[["store_id", "item_id", "demand_p10", "demand_p50", "demand_p90", "order_up_to", "order_quantity"]]
                .round(1)
                .to_markdown(index=False)
            ),
        },
    )


ALERT_CHECK = "no_high_severity_alerts"


@dg.asset(
    group_name=GROUP,
    kinds={"pandas"},
    deps=["forecasts"],
    ins={
        # The newest landed period's rows only: its bad-row rate is what a data alert is about.
        "clean_sales": dg.AssetIn(partition_mapping=dg.LastPartitionMapping()),
        "sales_quarantine": dg.AssetIn(partition_mapping=dg.LastPartitionMapping()),
    },
    check_specs=[
        dg.AssetCheckSpec(
            ALERT_CHECK, asset="alerts", description="No high-severity alert is open (a warning, not a block)"
        )
    ],
)
def alerts(
    context: dg.AssetExecutionContext,
    pipeline: PipelineResource,
    forecasting: ForecastingResource,
    decisions: DecisionResource,
    mlflow_tracking: MLflowResource,
    integrated_sales: pd.DataFrame,
    clean_sales: dict[str, pd.DataFrame],
    sales_quarantine: dict[str, pd.DataFrame],
    items: pd.DataFrame,
    orders: pd.DataFrame,
):
    """What needs attention: actuals of the newest periods outside the published P10–P90 of their forecast (ranked by
    units beyond the band, and money with a unit price), stock-out risk and overstock against the orders' demand,
    stores that stopped reporting, a newest period whose bad-row
    rate failed, and a champion whose live accuracy is worse than its backtest. Each alert has a kind, severity,
    series, period, numbers and a sentence; new ones are POSTed once to the alert webhook when one is set."""
    settings, economics = pipeline.settings(), decisions.economics()
    frequency = partition_frequency(context, pipeline)
    season = season_length_for(frequency, int(integrated_sales["date"].nunique()), forecasting.season_length)
    archive = load_archive(settings.archive_dir)
    report = live_report(integrated_sales, settings.archive_dir, mlflow_tracking.tracker(), season)
    rates = {
        key: (len(sales_quarantine.get(key, ())), len(clean_sales.get(key, ())) + len(sales_quarantine.get(key, ())))
        for key in set(clean_sales) | set(sales_quarantine)
    }
    master = master_or_none(items)
    price = None
    if master is not None and "unit_price" in master.columns:
        price = pd.to_numeric(master.set_index(master["item_id"].astype(str))["unit_price"], errors="coerce")
    out = combine(
        [
            bad_periods(rates, settings.max_bad_row_rate),
            stopped_reporting(integrated_sales),
            model_accuracy(
                report.evidence,
                report.champion_mase,
                forecasting.degradation_threshold,
                forecasting.degradation_min_periods,
            ),
            demand_anomalies(archive, integrated_sales, economics.alert_periods, price),
            stock_alerts(orders),
        ]
    )
    counts = {f"{kind}": int((out["kind"] == kind).sum()) for kind in KINDS}
    high = int((out["severity"] == "high").sum())
    sent, error = 0, None
    if economics.alert_webhook:
        sent, error = deliver(out, economics.alert_webhook, settings.state_dir / "alerts_sent.json")
        if error:
            context.log.warning(f"alerts not delivered ({error}); they are sent again on the next run")
    context.log.info(
        f"{len(out)} alert(s), {high} high: "
        + ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        + (f"; {sent} new sent to the webhook" if economics.alert_webhook else "")
    )
    shown = out[["severity", "kind", "store_id", "item_id", "period", "units", "message"]].head(20).round({"units": 1})
    yield dg.Output(
        out,
        metadata={
            "alerts": len(out),
            "high_severity": high,
            "by_kind": dg.MetadataValue.json(counts),
            "delivered": sent,
            "delivery_error": error or "none",
            "webhook": redact_uri(economics.alert_webhook) if economics.alert_webhook else "unset",
            "top": dg.MetadataValue.md(shown.assign(period=shown["period"].dt.date).to_markdown(index=False))
            if len(out)
            else "none",
        },
    )
    yield dg.AssetCheckResult(
        check_name=ALERT_CHECK,
        passed=high == 0,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{high} high-severity alert(s) open" if high else "no high-severity alert",
        metadata={"high_severity": high, **{k: v for k, v in counts.items()}},
    )


@dg.asset(group_name=GROUP, kinds={"duckdb", "postgres"})
def bi_tables(
    context: dg.AssetExecutionContext,
    pipeline: PipelineResource,
    decisions: DecisionResource,
    forecasts: pd.DataFrame,
    orders: pd.DataFrame,
    alerts: pd.DataFrame,
    drivers: pd.DataFrame,
    forecast_accuracy: pd.DataFrame,
) -> dg.MaterializeResult:
    """The publication's forecasts, orders, alerts and drivers, and every publication's live accuracy, in the BI
    database (DuckDB under the home, or PostgreSQL): a re-run replaces the rows of the same cutoff and model version,
    earlier publications stay (docs/decisions.md)."""
    url = decisions.warehouse_url or default_url(pipeline.settings().home)
    warehouse = Warehouse(url)
    publication = {"cutoff": forecasts["cutoff"].iloc[0], "model_version": str(forecasts["model_version"].iloc[0])}
    written = {
        "forecasts": warehouse.write("forecasts", forecasts),
        "orders": warehouse.write("orders", orders),
        "drivers": warehouse.write("drivers", drivers),
        "live_accuracy": warehouse.write("live_accuracy", forecast_accuracy),
        # Alerts are raised with a publication: its cutoff and model version are their keys.
        "alerts": warehouse.write("alerts", alerts.assign(**publication), publication=publication),
    }
    context.log.info(f"wrote {json.dumps(written)} rows to {redact_uri(url)}")
    return dg.MaterializeResult(
        metadata={
            "warehouse": redact_uri(url),
            **{f"{table}_rows": rows for table, rows in written.items()},
            "cutoff": str(pd.Timestamp(forecasts["cutoff"].iloc[0]).date()) if len(forecasts) else "",
            "model_version": str(forecasts["model_version"].iloc[0]) if len(forecasts) else "",
        }
    )


@dg.asset(group_name=GROUP, kinds={"pandas"})
def drivers(
    context: dg.AssetExecutionContext,
    pipeline: PipelineResource,
    forecasting: ForecastingResource,
    mlflow_tracking: MLflowResource,
    integrated_sales: pd.DataFrame,
    calendar: pd.DataFrame,
    items: pd.DataFrame,
    forecasts: pd.DataFrame,
) -> dg.Output:
    """Why the forecast says what it says. Per series and period, the published median split into level and trend,
    seasonality, calendar and holiday effects, and promotion and price: the champion forecasts again with each group of
    planned inputs neutralised (a Shapley split over the groups, 2^k − 1 passes beside the published one) and the
    rest is split by the series' seasonal index. Per category, the price elasticity and promotion uplift, with 95%
    intervals, from a Poisson regression with series and category-period effects on the history
    (docs/decisions.md)."""
    version = str(forecasts["model_version"].iloc[0])
    model = Forecaster.load(mlflow_tracking.tracker().model_dir(version))
    history = integrated_sales
    frequency = partition_frequency(context, pipeline)
    season = season_length_for(frequency, int(history["date"].nunique()), forecasting.season_length)
    future = future_covariates(master_or_none(calendar), history, model.horizon, pandas_freq(history, model.frequency))
    # The published forecasts are the pass with every input as planned: only the neutralised ones are made here.
    parts, info = forecast_drivers(
        lambda rows: forecast_latest(model, history, rows), history, future, season, published=forecasts
    )
    parts["cutoff"], parts["model_version"] = forecasts["cutoff"].iloc[0], version
    effects = category_table(history, master_or_none(items))
    split = shares(parts)
    # LightGBM's own TreeSHAP on the same parts: a second opinion, when the champion holds a LightGBM.
    second = None
    if model.lightgbm is not None:
        contributions = median_contributions(model.lightgbm, history, model.horizon, future)
        second = shares(treeshap_parts(contributions, model.lightgbm.covariates))
    context.log.info(
        f"drivers of v{version}'s forecasts ({info['passes']} passes; groups {', '.join(info['groups']) or 'none'}): "
        + ", ".join(f"{k} {v:.1%}" for k, v in split.items())
    )
    shown = effects.round(3) if effects is not None else None
    return dg.Output(
        parts,
        metadata={
            "model_version": version,
            "planned_input_groups": dg.MetadataValue.json(info["groups"]),
            "forward_passes": info["passes"],
            "share_of_forecast": dg.MetadataValue.json(split),
            "lightgbm_treeshap_share": dg.MetadataValue.json(second) if second else "the champion holds no LightGBM",
            "category_effects": dg.MetadataValue.md(shown.to_markdown(index=False))
            if shown is not None
            else "needs price and promo in the sales and category in items.csv",
            "largest_calendar_effects": dg.MetadataValue.md(
                parts.reindex(parts["calendar"].abs().sort_values(ascending=False).index)
                .head(10)[["store_id", "item_id", "date", "median", *PARTS]]
                .round(1)
                .to_markdown(index=False)
            ),
        },
    )


@dg.asset(group_name=GROUP, kinds={"html"})
def insights(
    context: dg.AssetExecutionContext,
    pipeline: PipelineResource,
    integrated_sales: pd.DataFrame,
    forecasts: pd.DataFrame,
    orders: pd.DataFrame,
    alerts: pd.DataFrame,
    drivers: pd.DataFrame,
    items: pd.DataFrame,
) -> dg.MaterializeResult:
    """One self-contained HTML report per publication: headline numbers against the same periods last year by store
    and category, the top movers, the drivers, the open alerts and the orders, written under
    ``reports/`` of the storage root (``$BI_PIPELINE_HOME`` by default)."""
    settings = pipeline.settings()
    frequency = partition_frequency(context, pipeline)
    master = master_or_none(items)
    effects = category_table(integrated_sales, master)
    report = build_insights(integrated_sales, forecasts, frequency, orders, alerts, master, drivers, effects)
    cutoff = pd.Timestamp(forecasts["cutoff"].iloc[0]).date()
    path = settings.storage_root / "reports" / f"insights_{cutoff}_v{forecasts['model_version'].iloc[0]}.html"
    write_file(path, lambda handle: handle.write(report.html.encode("utf-8")))
    context.log.info(f"insights report: {path}")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "open": dg.MetadataValue.url(path.as_uri() if is_local(path) else str(path)),
            "sections": ", ".join(report.sections),
            "bytes": len(report.html.encode()),
        }
    )
