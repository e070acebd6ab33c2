"""Live forecast accuracy (no Dagster): every published forecast is archived by model version and cutoff; as actuals
land, each publication is scored on the periods that have actuals so far.

The archive lives under ``<storage root>/forecast_archive/`` (the home by default; any fsspec URL with
``BI_PIPELINE_STORAGE``), one Parquet file per (cutoff, model version):
publishing the same forecast again overwrites its own file and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bi_pipeline.forecasting.baselines import attach_actuals
from bi_pipeline.forecasting.metrics import SERIES, mase, mase_scales, score
from bi_pipeline.storage import StoragePath, files, read_parquet, write_file

COLUMNS = ["model_version", "cutoff", "published_periods", "scored_periods", "series", "MASE", "WAPE", "WQL"]


def archive_path(archive: StoragePath, cutoff: pd.Timestamp, version: str) -> StoragePath:
    return archive / f"cutoff={pd.Timestamp(cutoff).date()}__v{version}.parquet"


def archive_forecasts(archive: StoragePath, forecasts: pd.DataFrame) -> StoragePath:
    """Writes one publication (a ``forecasts`` frame with ``cutoff`` and ``model_version``) atomically."""
    cutoffs, versions = forecasts["cutoff"].unique(), forecasts["model_version"].unique()
    if len(cutoffs) != 1 or len(versions) != 1:
        raise ValueError(f"a publication has one cutoff and one model version, not {len(cutoffs)} and {len(versions)}")
    path = archive_path(archive, cutoffs[0], str(versions[0]))
    return write_file(path, lambda handle: forecasts.to_parquet(handle, index=False))


def load_archive(archive: StoragePath) -> pd.DataFrame:
    published = list(files(archive, "cutoff=*__v*.parquet"))
    if not published:
        return pd.DataFrame()
    return pd.concat([read_parquet(f) for f in published], ignore_index=True)


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


@dataclass(frozen=True)
class LiveEvidence:
    """How a model version's published forecasts did on the periods whose actuals have landed since.

    ``mase`` is the mean over scored periods of each period's MASE (every publication of the version that forecast
    the period, each scaled by the history up to its own cutoff); ``se`` its standard error across periods, so a
    few noisy periods cannot pass for a degradation."""

    version: str
    periods: int
    mase: float
    se: float

    def lower_bound(self, z: float = 2.0) -> float:
        """The live MASE the evidence supports at least (mean minus ``z`` standard errors)."""
        return self.mase - z * self.se

    def describe(self) -> str:
        return f"live MASE {self.mase:.3f} ± {2 * self.se:.3f} over {self.periods} scored period(s) of v{self.version}"


def live_evidence(archive: pd.DataFrame, history: pd.DataFrame, season_length: int, version: str):
    """The ``LiveEvidence`` of one version's publications, or None while none of its periods has actuals."""
    if archive.empty:
        return None
    published = archive[archive["model_version"].astype(str) == str(version)]
    history = history.astype({"store_id": str, "item_id": str})
    per_period: dict[pd.Timestamp, list[float]] = {}
    for cutoff, publication in published.groupby("cutoff", sort=True):
        cutoff = pd.Timestamp(cutoff)
        scored = attach_actuals(
            publication.drop(columns=["cutoff", "model_version"]), history[history["date"] > cutoff]
        ).dropna(subset=["sales"])
        if scored.empty:
            continue
        scales = mase_scales(history[history["date"] <= cutoff], season_length)
        for day, rows in scored.groupby("date", sort=True):
            value = mase(rows, scales)
            if np.isfinite(value):
                per_period.setdefault(pd.Timestamp(day), []).append(value)
    if not per_period:
        return None
    values = np.array([np.mean(v) for v in per_period.values()])
    se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("inf")
    return LiveEvidence(str(version), len(values), float(values.mean()), se)
