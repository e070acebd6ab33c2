"""Live forecast accuracy (no Dagster): every published forecast is archived by model version and cutoff; as actuals
land, each publication is scored on the periods that have actuals so far.

The archive lives under ``$BI_PIPELINE_HOME/forecast_archive/``, one Parquet file per (cutoff, model version):
publishing the same forecast again overwrites its own file and nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from bi_pipeline.baselines import attach_actuals
from bi_pipeline.evaluation import SERIES, score

COLUMNS = ["model_version", "cutoff", "published_periods", "scored_periods", "series", "MASE", "WAPE", "WQL"]


def archive_path(archive: Path, cutoff: pd.Timestamp, version: str) -> Path:
    return archive / f"cutoff={pd.Timestamp(cutoff).date()}__v{version}.parquet"


def archive_forecasts(archive: Path, forecasts: pd.DataFrame) -> Path:
    """Writes one publication (a ``forecasts`` frame with ``cutoff`` and ``model_version``) atomically."""
    cutoffs, versions = forecasts["cutoff"].unique(), forecasts["model_version"].unique()
    if len(cutoffs) != 1 or len(versions) != 1:
        raise ValueError(f"a publication has one cutoff and one model version, not {len(cutoffs)} and {len(versions)}")
    archive.mkdir(parents=True, exist_ok=True)
    path = archive_path(archive, cutoffs[0], str(versions[0]))
    tmp = path.with_suffix(".tmp")
    forecasts.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def load_archive(archive: Path) -> pd.DataFrame:
    files = sorted(archive.glob("cutoff=*__v*.parquet")) if archive.exists() else []
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def live_accuracy(archive: pd.DataFrame, history: pd.DataFrame, season_length: int) -> pd.DataFrame:
    """Per publication (model version, cutoff): how many of its periods have actuals, and MASE/WAPE/WQL/80% coverage/
    bias on them (MASE scaled by the history up to the cutoff). Publications without actuals yet are listed with
    ``scored_periods`` 0 and NaN metrics."""
    if archive.empty:
        return pd.DataFrame(columns=[*COLUMNS, "coverage_80", "bias"])
    rows = []
    history = history.astype({"store_id": str, "item_id": str})
    for (version, cutoff), published in archive.groupby(["model_version", "cutoff"], sort=True):
        cutoff = pd.Timestamp(cutoff)
        later = history[history["date"] > cutoff].dropna(subset=["sales"])
        scored = attach_actuals(published.drop(columns=["cutoff", "model_version"]), later)
        row = {
            "model_version": str(version),
            "cutoff": cutoff,
            "published_periods": int(published["date"].nunique()),
            "scored_periods": int(scored["date"].nunique()),
            "series": int(published[SERIES].drop_duplicates().shape[0]),
        }
        if len(scored):
            row.update(score(scored, history[history["date"] <= cutoff], season_length))
        rows.append(row)
    out = pd.DataFrame(rows)
    for column in ("MASE", "WAPE", "WQL", "coverage_80", "bias"):
        if column not in out:
            out[column] = np.nan
    return out.sort_values(["cutoff", "model_version"]).reset_index(drop=True)
