"""Live accuracy: the published forecasts against the actuals that landed after them, over time."""

import dagster as dg
import numpy as np
import pandas as pd

from bi_pipeline.defs.collection import partition_frequency
from bi_pipeline.defs.forecasting import forecasts
from bi_pipeline.defs.resources import ForecastingResource, MLflowResource, PipelineResource
from bi_pipeline.forecasting.metrics import season_length_for
from bi_pipeline.forecasting.usecases import live_report
from bi_pipeline.plots import figure, png_base64

GROUP = "forecasting"


def _plot(table: pd.DataFrame, champion_mase: float | None) -> str:
    fig, ax = figure()
    for version, part in table.groupby("model_version"):
        ax.plot(part["cutoff"], part["MASE"], marker="o", lw=1.2, label=f"v{version}")
    if champion_mase is not None:
        ax.axhline(champion_mase, color="#c44e52", ls="--", lw=1, label="champion backtest")
    ax.set_ylabel("live MASE")
    ax.set_title("Published forecasts scored on the actuals that landed", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    return png_base64(fig)


@dg.asset(
    group_name=GROUP,
    kinds={"pandas"},
    deps=[forecasts],
    # New actuals (the integrated view) or a new publication: score again.
    automation_condition=dg.AutomationCondition.eager(),
)
def forecast_accuracy(
    context: dg.AssetExecutionContext,
    pipeline: PipelineResource,
    forecasting: ForecastingResource,
    mlflow_tracking: MLflowResource,
    integrated_sales: pd.DataFrame,
) -> dg.Output:
    """Each published forecast (by model version and cutoff) scored on the periods whose actuals have landed since:
    MASE, WAPE, WQL, 80% coverage and bias, and the latest against the champion's backtest MASE (the retrain sensor
    reads ``latest_MASE`` and ``champion_backtest_MASE``)."""
    frequency = partition_frequency(context, pipeline)
    season = season_length_for(frequency, int(integrated_sales["date"].nunique()), forecasting.season_length)
    archive = pipeline.settings().archive_dir
    report = live_report(integrated_sales, archive, mlflow_tracking.tracker(), season)
    table, scored, evidence = report.table, report.scored, report.evidence
    champion, champion_mase = report.champion_version, report.champion_mase
    metadata: dict = {
        "publications": len(table),
        "scored_publications": len(scored),
        "champion_version": champion or "none",
        "season_length": season,
    }
    if champion_mase is not None:
        metadata["champion_backtest_MASE"] = champion_mase
    if evidence is not None:
        # What the retrain sensor judges degradation on: every scored period of the champion's publications.
        metadata.update(
            live_version=evidence.version,
            live_periods=evidence.periods,
            live_MASE=evidence.mase,
            live_MASE_se=evidence.se if np.isfinite(evidence.se) else -1.0,
        )
    if len(scored):
        latest = scored.iloc[-1]
        metadata.update(
            latest_model_version=str(latest["model_version"]),
            latest_cutoff=str(pd.Timestamp(latest["cutoff"]).date()),
            latest_scored_periods=int(latest["scored_periods"]),
            latest_MASE=float(latest["MASE"]),
            latest_WQL=float(latest["WQL"]),
            latest_coverage_80=float(latest["coverage_80"]),
        )
        if champion_mase:
            metadata["degradation"] = float(latest["MASE"] / champion_mase - 1.0)
        metadata["history"] = dg.MetadataValue.md(
            scored.assign(cutoff=scored["cutoff"].dt.date).round(3).to_markdown(index=False)
        )
        metadata["plot"] = dg.MetadataValue.md(f"![live MASE](data:image/png;base64,{_plot(scored, champion_mase)})")
        context.log.info(
            f"latest publication (v{latest['model_version']}, cutoff {metadata['latest_cutoff']}): MASE "
            f"{latest['MASE']:.3f} on {latest['scored_periods']} period(s) of actuals"
        )
    else:
        context.log.info(f"{len(table)} publication(s), none with actuals yet")
    return dg.Output(table, metadata=metadata)
