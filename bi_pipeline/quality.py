"""Quality rules for landed sales: each row is kept or quarantined with exactly one reason code.

The rules run vectorised in pandas (they decide which rows are kept); the same rules are declared as Great
Expectations suites in ``bi_pipeline.expectations`` and validated on the rows before and after cleaning, so the
GX report and the quarantine agree.

Duplicate rule (documented in README): among rows that pass every other rule, exact copies of a row (same key and
same values) keep the first occurrence; rows that share (date, store_id, item_id) but disagree on a value keep the
last occurrence in the file (a later line corrects an earlier one) and quarantine the earlier ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd

from bi_pipeline.config import Settings
from bi_pipeline.contract import (
    QUARANTINE_COLUMNS,
    SALES_OPTIONAL,
    SALES_REQUIRED,
    SOURCE_COLUMNS,
    empty_quarantine,
    period_bounds,
)

# Priority order: a row failing several rules is quarantined under the first.
ROW_RULES: dict[str, str] = {
    "missing_key": "date, store_id or item_id is empty",
    "unparseable_date": "date is not an ISO date (YYYY-MM-DD)",
    "date_outside_period": "date does not fall inside the period the file is named after",
    "sales_missing": "sales is empty",
    "sales_not_numeric": "sales is not a finite number",
    "sales_negative": "sales is negative and returns are not allowed (BI_PIPELINE_ALLOW_RETURNS)",
    "unknown_store": "store_id is not in stores.csv",
    "unknown_item": "item_id is not in items.csv",
    "price_not_numeric": "price is present but not a number",
    "price_out_of_range": "price is outside [BI_PIPELINE_PRICE_MIN, BI_PIPELINE_PRICE_MAX]",
    "promo_not_numeric": "promo is present but not a number",
}
DUPLICATE_RULES: dict[str, str] = {
    "duplicate_exact": "an exact copy of an earlier row (the first is kept)",
    "duplicate_conflict": "same (date, store_id, item_id) as a later row with other values (the last is kept)",
}
FILE_RULES: dict[str, str] = {
    "malformed_row": "the line has the wrong number of fields",
    "invalid_encoding": "the line is not UTF-8",
    "malformed_csv": "the file cannot be parsed as CSV",
    "malformed_parquet": "the file cannot be read as Parquet",
    "missing_columns": "a required column is missing",
    "duplicate_column": "a column name appears twice",
    "empty_file": "the file holds no rows",
    "file_missing": "the partition's file is gone from the landing zone",
    "duplicate_period": "two files (.csv and .parquet) for one period",
    "path_escape": "the file resolves outside the landing zone",
    "unreadable": "the file cannot be opened",
}
REASONS: dict[str, str] = {**ROW_RULES, **DUPLICATE_RULES, **FILE_RULES}
KEY = ["date", "store_id", "item_id"]


@dataclass
class CleanResult:
    clean: pd.DataFrame
    quarantine: pd.DataFrame
    # Rows read from the file (kept + quarantined, including lines that could not be parsed).
    rows_in: int = 0
    reason_counts: dict[str, int] = field(default_factory=dict)

    @property
    def bad_rows(self) -> int:
        return len(self.quarantine)

    @property
    def bad_row_rate(self) -> float:
        return self.bad_rows / self.rows_in if self.rows_in else 1.0


def _blank(series: pd.Series) -> np.ndarray:
    return (series.isna() | (series.str.strip() == "")).to_numpy(dtype=bool)


def _numeric(series: pd.Series) -> np.ndarray:
    values = pd.to_numeric(series.str.strip(), errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    values[~np.isfinite(values)] = np.nan
    return values


def parse_dates(series: pd.Series) -> np.ndarray:
    """ISO dates (a time part is allowed) as datetime64[D]; NaT where the text is not a date."""
    text = series.str.strip().str.slice(0, 10)
    parsed = pd.to_datetime(text, format="%Y-%m-%d", errors="coerce")
    return parsed.to_numpy(dtype="datetime64[D]")


def clean_period(
    raw: pd.DataFrame,
    period: str,
    frequency: str,
    settings: Settings,
    known_stores: set[str] | None = None,
    known_items: set[str] | None = None,
    issues: pd.DataFrame | None = None,
) -> CleanResult:
    """Apply the rules to the raw text rows of one period. ``issues`` are lines the reader already set aside."""
    issues = issues if issues is not None else empty_quarantine()
    n = len(raw)
    reason = np.full(n, "", dtype=object)

    def flag(mask: np.ndarray, code: str) -> None:
        mask = mask & (reason == "")
        reason[mask] = code

    blank_date, blank_store, blank_item = _blank(raw["date"]), _blank(raw["store_id"]), _blank(raw["item_id"])
    flag(blank_date | blank_store | blank_item, "missing_key")
    dates = parse_dates(raw["date"])
    flag(np.isnat(dates), "unparseable_date")
    start, end = period_bounds(date.fromisoformat(period), frequency)
    inside = (dates >= np.datetime64(start, "D")) & (dates < np.datetime64(end, "D"))
    flag(~np.isnat(dates) & ~inside, "date_outside_period")
    flag(_blank(raw["sales"]), "sales_missing")
    sales = _numeric(raw["sales"])
    flag(np.isnan(sales), "sales_not_numeric")
    if not settings.allow_returns:
        flag(sales < 0, "sales_negative")
    store = raw["store_id"].str.strip()
    item = raw["item_id"].str.strip()
    if known_stores is not None:
        flag(~store.isin(known_stores).to_numpy(dtype=bool), "unknown_store")
    if known_items is not None:
        flag(~item.isin(known_items).to_numpy(dtype=bool), "unknown_item")
    price_blank = _blank(raw["price"])
    price = _numeric(raw["price"])
    flag(~price_blank & np.isnan(price), "price_not_numeric")
    flag(~np.isnan(price) & ((price < settings.price_min) | (price > settings.price_max)), "price_out_of_range")
    promo_blank = _blank(raw["promo"])
    promo = _numeric(raw["promo"])
    flag(~promo_blank & np.isnan(promo), "promo_not_numeric")

    extras = [c for c in raw.columns if c not in (*SALES_REQUIRED, *SALES_OPTIONAL, *SOURCE_COLUMNS)]
    typed = pd.DataFrame(
        {
            "date": dates.astype("datetime64[ns]"),
            "store_id": store.astype(object),
            "item_id": item.astype(object),
            "sales": sales,
            "price": price,
            "promo": np.where(promo_blank, 0.0, promo),
        }
    )
    for column in extras:
        values = _numeric(raw[column])
        blank = _blank(raw[column])
        # A numeric extra stays numeric; anything else is carried as text.
        typed[column] = values if np.isnan(values[~blank]).sum() == 0 else raw[column].astype(object).to_numpy()

    ok = reason == ""
    # Duplicates are judged among rows that pass every other rule.
    candidates = typed[ok]
    if len(candidates):
        exact = candidates.duplicated(keep="first").to_numpy()
        idx = np.flatnonzero(ok)
        reason[idx[exact]] = "duplicate_exact"
        ok = reason == ""
        remaining = typed[ok]
        conflict = remaining.duplicated(subset=KEY, keep="last").to_numpy()
        idx = np.flatnonzero(ok)
        reason[idx[conflict]] = "duplicate_conflict"
        ok = reason == ""

    bad = ~ok
    if bad.any():
        bad_raw = raw.loc[bad]
        row_quarantine = pd.DataFrame(
            {
                "period": period,
                "source_file": bad_raw["source_file"].astype(str).to_numpy(),
                "source_row": bad_raw["source_row"].to_numpy(dtype=np.int64),
                "reason": reason[bad],
                "detail": [ROW_RULES.get(r) or DUPLICATE_RULES[r] for r in reason[bad]],
                **{c: bad_raw[c].astype(str).to_numpy() for c in (*SALES_REQUIRED, *SALES_OPTIONAL)},
            }
        )
        quarantine = pd.concat(
            [issues, row_quarantine.astype({c: "string" for c in QUARANTINE_COLUMNS if c != "source_row"})]
        )
    else:
        quarantine = issues
    quarantine = quarantine.sort_values("source_row", kind="stable").reset_index(drop=True)

    clean = typed[ok].reset_index(drop=True)
    clean.insert(0, "period", pd.Timestamp(period))
    clean["store_id"] = clean["store_id"].astype("category")
    clean["item_id"] = clean["item_id"].astype("category")
    for column in ("sales", "price", "promo"):
        clean[column] = clean[column].astype("float32")
    clean["source_file"] = raw["source_file"].astype(str).to_numpy()[ok]
    clean["source_file"] = clean["source_file"].astype("category")
    clean["source_row"] = raw["source_row"].to_numpy(dtype=np.int64)[ok]
    counts = quarantine["reason"].value_counts().to_dict()
    return CleanResult(clean=clean, quarantine=quarantine, rows_in=n + len(issues), reason_counts=counts)


def clean_columns() -> list[str]:
    return ["period", "date", "store_id", "item_id", "sales", "price", "promo", "source_file", "source_row"]


def known_ids(master: pd.DataFrame | None, key: str) -> set[str] | None:
    """The ids a master file declares; None (no check) when the file was not landed."""
    if master is None:
        return None
    return set(master[key].astype(str).str.strip())


def summarize_rejections(results: dict[str, CleanResult], threshold: float) -> list[str]:
    """One line per partition over the bad-row threshold, naming the file and the rules broken."""
    lines = []
    for key, result in sorted(results.items()):
        if result.bad_row_rate > threshold:
            files = sorted(set(result.quarantine["source_file"].astype(str))) or [f"sales/{key}"]
            rules = ", ".join(f"{r} ({n})" for r, n in sorted(result.reason_counts.items(), key=lambda kv: -kv[1]))
            lines.append(
                f"{', '.join(files)}: {result.bad_rows} of {result.rows_in} rows quarantined "
                f"({result.bad_row_rate:.1%} > {threshold:.1%}); rules broken: {rules}"
            )
    return lines
