"""Ingestion as plain functions (no Dagster): scanning the landing zone with the scan state under the home, and a
whole landing zone through the contract, the rules and the bad-row gate into the integrated history (what
``bi-pipeline backtest`` and the benchmarks read). The assets wire the same functions stage by stage."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bi_pipeline.config import Settings
from bi_pipeline.contract import ScanResult, infer_grid, sales_index, scan_sales_dir, scan_until_stable
from bi_pipeline.integration import integrate
from bi_pipeline.quality import clean_batch, known_ids, summarize_rejections
from bi_pipeline.readers import Limits, read_master, read_period
from bi_pipeline.state import locked, read_json, removed_files, write_json


def landing_scan(
    settings: Settings, known_keys: Iterable[str] = (), assume_complete: bool = False, wait: bool = False
) -> ScanResult:
    """A scan of the landing zone that remembers what the previous one saw (``state/landing_scan.json``), so a file
    is taken once two scans agree and an unchanged file is not hashed again; content removed on purpose is skipped.
    With ``wait`` (the CLI) a file seen for the first time is looked at again after the settle time instead of on
    the next call."""
    path = settings.scan_state_path
    with locked(path):
        previous = read_json(path, {})
    kwargs = {
        "known_keys": list(known_keys),
        "frequency": settings.frequency,
        "week_start": settings.week_start,
        "removed": removed_files(settings.removals_path),
        "assume_complete": assume_complete,
    }
    scan = scan_until_stable if wait else scan_sales_dir
    result = scan(settings.landing, settings.settle_seconds, previous=previous, **kwargs)
    if result.seen != previous:
        with locked(path):
            write_json(path, result.seen)
    return result


class IngestError(ValueError):
    """The landing zone cannot become a history: no usable file, or periods over the bad-row gate (each named)."""


@dataclass
class Ingested:
    history: pd.DataFrame
    frequency: str
    covariates: list[str]  # numeric calendar covariates in the history
    periods: int
    rows_in: int
    quarantined: dict[str, int] = field(default_factory=dict)  # rows set aside, by reason
    rejected_files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        reasons = ", ".join(f"{k} ({v})" for k, v in sorted(self.quarantined.items())) or "none"
        line = (
            f"{self.periods} period(s), {self.rows_in} rows landed, {sum(self.quarantined.values())} quarantined "
            f"({reasons})"
        )
        return line + "".join(f"\n  not ingested: {r}" for r in self.rejected_files)


def ingest_landing(
    landing: Path,
    settings: Settings | None = None,
    assume_complete: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Ingested:
    """Every ready sales file of a landing zone through the contract, the rules and the bad-row gate, integrated.

    Raises IngestError naming each period over ``max_bad_row_rate``, as the blocking check stops the assets. The scan
    state is kept in memory (a data set on a read-only disk can be backtested); ``assume_complete`` False makes two
    scans a settle time apart as the CLI's ``run`` does.
    """
    landing = Path(landing)
    settings = settings or Settings(home=landing.parent, landing=landing)
    scan = scan_until_stable(landing, settings.settle_seconds, assume_complete=assume_complete)
    keys = sorted(f.key for f in scan.ready)
    if not keys:
        raise IngestError(f"{landing}: no sales files ready in sales/" + "".join(f"; {p}" for p in scan.pending[:3]))
    frequency = infer_grid(keys, settings.frequency, settings.week_start).frequency
    limits = Limits.of(settings)
    stores, items, calendar = (read_master(landing, name, limits) for name in ("stores", "items", "calendar"))
    index = sales_index(landing)
    batch = {}
    for i, key in enumerate(keys, start=1):
        read = read_period(landing, key, limits, index)
        batch[key] = (read.rows, read.issues)
        if progress:
            progress(i, len(keys))
    cleaned = clean_batch(batch, frequency, settings, known_ids(stores, "store_id"), known_ids(items, "item_id"))
    results = cleaned.results
    del batch, cleaned
    failures = summarize_rejections(results, settings.max_bad_row_rate)
    if failures:
        raise IngestError(
            f"{len(failures)} period(s) over the bad-row gate (BI_PIPELINE_MAX_BAD_ROW_RATE="
            f"{settings.max_bad_row_rate:g}); fix and re-land them:\n  " + "\n  ".join(failures)
        )
    quarantined: dict[str, int] = {}
    for result in results.values():
        for reason, count in result.reason_counts.items():
            quarantined[reason] = quarantined.get(reason, 0) + count
    rows_in = sum(r.rows_in for r in results.values())
    parts = [r.quarantine for r in results.values() if len(r.quarantine)]
    history = integrate(
        [r.clean for r in results.values()],
        frequency,
        keys,
        stores,
        items,
        calendar,
        quarantined=pd.concat(parts, ignore_index=True) if parts else None,
        implicit_zeros=settings.implicit_zeros,
    )
    skip = ("date", "store_id", "source_row")
    names = [c for c in (calendar.columns if calendar is not None else []) if c not in skip]
    numeric = [c for c in names if c in history.columns and pd.api.types.is_numeric_dtype(history[c])]
    return Ingested(history, frequency, numeric, len(keys), rows_in, quarantined, [str(e) for e in scan.rejected])
