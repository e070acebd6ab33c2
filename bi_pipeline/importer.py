"""`bi-pipeline import-csv`: turn the single big export most teams start from into the landing-zone contract.

The contract's grain is one row per date, store_id and item_id. A transaction-level export (several sales of one
item in one store on one day) is aggregated to it: sales summed, price weighted by the units sold at it, promo the
deepest; the result says how many lines were merged. Lines left as they were keep their text exactly.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from bi_pipeline.contract import SALES_DIR, infer_frequency, period_range, period_start
from bi_pipeline.quality import number_array, text_array
from bi_pipeline.state import atomic_write

ALL_ITEMS = "all"  # item_id of every row when the export has no item column (store totals)


def _atomic_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write under a hidden temporary name, then rename: the sensor never sees a half-written file."""
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def _number_text(values: np.ndarray) -> np.ndarray:
    """Numbers as the shortest text that reads back the same (no float noise from the sum)."""
    return np.array([f"{v:.15g}" if np.isfinite(v) else "" for v in values], dtype=object)


def aggregate_to_grain(out: pd.DataFrame, line: np.ndarray) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """(one row per date, store_id and item_id, the source line of each row, lines that cannot be summed).

    Keys with one line keep it as it was. Keys with several: sales summed, price weighted by the units sold at it
    (a plain mean where nothing sold), promo the maximum; their lines must have numeric sales (and price and promo
    where present), otherwise they are listed as rejects with the rule broken.
    """
    key = ["date", "store_id", "item_id"]
    repeated = out.duplicated(subset=key, keep=False).to_numpy()
    if not repeated.any():
        return out, line, pd.DataFrame()
    group = out[repeated]
    numbers = {c: number_array(text_array(group[c])) for c in ("sales", "price", "promo") if c in group}
    blank = {c: (group[c].astype(str).str.strip() == "").to_numpy() for c in numbers}
    bad = np.isnan(numbers["sales"])
    rules = np.where(bad, "sales_not_numeric", "")
    for column in ("price", "promo"):
        if column in numbers:
            wrong = np.isnan(numbers[column]) & ~blank[column] & ~bad
            rules = np.where(wrong, f"{column}_not_numeric", rules)
            bad |= wrong
    rejects = group[bad].assign(rule=rules[bad], source_row=line[repeated][bad])
    good = group[~bad]
    frame = good[key].copy()
    frame["sales"] = numbers["sales"][~bad]
    if "price" in numbers:
        price = numbers["price"][~bad]
        weight = np.where(np.isnan(price), 0.0, np.clip(frame["sales"].to_numpy(), 0.0, None))
        frame["price"], frame["_weighted"], frame["_weight"] = price, np.nan_to_num(price) * weight, weight
    if "promo" in numbers:
        frame["promo"] = numbers["promo"][~bad]
    frame["_line"] = line[repeated][~bad]
    agg = {"sales": "sum", "_line": "min"}
    agg.update({c: a for c, a in (("price", "mean"), ("_weighted", "sum"), ("_weight", "sum"), ("promo", "max"))
                if c in frame})
    merged = frame.groupby(key, sort=False, observed=True).agg(agg).reset_index()
    if "price" in merged:
        weighted = merged.pop("_weighted") / merged["_weight"].where(merged["_weight"] > 0)
        merged["price"] = np.where(merged.pop("_weight") > 0, weighted, merged["price"])
    for column in ("sales", "price", "promo"):
        if column in merged:
            merged[column] = _number_text(merged[column].to_numpy(dtype=float))
    singles = out[~repeated]
    combined = pd.concat([singles, merged.drop(columns=["_line"])[out.columns]], ignore_index=True)
    lines = np.concatenate([line[~repeated], merged["_line"].to_numpy()])
    order = np.argsort(lines, kind="stable")
    return combined.iloc[order].reset_index(drop=True), lines[order], rejects


def _parse_dates(values: pd.Series, dayfirst: bool, date_format: str | None) -> pd.Series:
    text = values.str.strip()
    if date_format:
        return pd.to_datetime(text, format=date_format, errors="coerce")
    # One format for the whole column, inferred from the first value (pandas 2), honouring day-first exports.
    return pd.to_datetime(text, dayfirst=dayfirst, errors="coerce")


def import_csv(
    file: Path,
    landing: Path,
    date_col: str,
    store_col: str,
    sales_col: str,
    item_col: str | None = None,
    dayfirst: bool = False,
    covariates: list[str] | tuple[str, ...] = (),
    price_col: str | None = None,
    promo_col: str | None = None,
    date_format: str | None = None,
    frequency: str | None = None,
) -> dict:
    """Write one sales file per period plus stores.csv, items.csv and (with covariates) calendar.csv.

    Rows whose date or keys cannot be read are not dropped silently: they go to ``import_rejects.csv`` in the landing
    zone with their line number and rule, and are counted in the result.
    """
    file = Path(file)
    if not file.exists():
        raise FileNotFoundError(f"{file}: no such file")
    frame = pd.read_csv(file, dtype=str, keep_default_na=False)
    columns = {"date": date_col, "store": store_col, "sales": sales_col}
    for optional, name in (("item", item_col), ("price", price_col), ("promo", promo_col)):
        if name:
            columns[optional] = name
    missing = [c for c in [*columns.values(), *covariates] if c not in frame.columns]
    if missing:
        raise ValueError(f"{file}: column(s) {', '.join(missing)} not found; the file has {', '.join(frame.columns)}")

    line = np.arange(2, len(frame) + 2)  # header is line 1
    dates = _parse_dates(frame[date_col], dayfirst, date_format)
    store = frame[store_col].str.strip()
    item = frame[item_col].str.strip() if item_col else pd.Series(ALL_ITEMS, index=frame.index)
    rule = np.where(dates.isna(), "unparseable_date", np.where((store == "") | (item == ""), "missing_key", ""))
    rejects = frame.loc[rule != ""].copy()
    rejects.insert(0, "rule", rule[rule != ""])
    rejects.insert(0, "source_row", line[rule != ""])

    ok = rule == ""
    out = pd.DataFrame(
        {
            "date": dates[ok].dt.date,
            "store_id": store[ok],
            "item_id": item[ok],
            "sales": frame.loc[ok, sales_col].str.strip(),
        }
    )
    if price_col:
        out["price"] = frame.loc[ok, price_col].str.strip()
    if promo_col:
        out["promo"] = frame.loc[ok, promo_col].str.strip()
    if out.empty:
        raise ValueError(f"{file}: no row has a readable date and keys (see rules in the error list)")
    lines_in = len(out)
    out, _, unsummable = aggregate_to_grain(out, line[ok])
    if len(unsummable):
        extra = frame.loc[frame.index.isin(unsummable.index)].copy()
        extra.insert(0, "rule", unsummable["rule"].to_numpy())
        extra.insert(0, "source_row", unsummable["source_row"].to_numpy())
        rejects = pd.concat([rejects, extra], ignore_index=True).sort_values("source_row", kind="stable")
        rule = np.concatenate([rule[rule != ""], unsummable["rule"].to_numpy()])
    else:
        rule = rule[rule != ""]
    merged_lines = lines_in - len(unsummable) - len(out)

    unique_dates = sorted(set(out["date"]))
    frequency = frequency or infer_frequency(unique_dates)
    grid = period_range(period_start(unique_dates[0], frequency), unique_dates[-1], frequency)
    grid_days = np.array(grid, dtype="datetime64[D]")
    day = np.array(out["date"].tolist(), dtype="datetime64[D]")
    if frequency == "M":
        day = day.astype("datetime64[M]").astype("datetime64[D]")
    out["period"] = grid_days[np.searchsorted(grid_days, day, side="right") - 1]

    sales_dir = landing / SALES_DIR
    sales_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for period, rows in out.groupby("period", sort=True):
        key = pd.Timestamp(period).date().isoformat()
        rows = rows.drop(columns=["period"]).assign(date=lambda f: pd.to_datetime(f["date"]).dt.strftime("%Y-%m-%d"))
        _atomic_csv(rows, sales_dir / f"{key}.csv")
        written += 1

    _atomic_csv(pd.DataFrame({"store_id": sorted(out["store_id"].unique())}), landing / "stores.csv")
    _atomic_csv(pd.DataFrame({"item_id": sorted(out["item_id"].unique())}), landing / "items.csv")
    calendar_rows = 0
    calendar_scope = None
    if covariates:
        cov = frame.loc[ok, list(covariates)].copy()
        cov.insert(0, "store_id", store[ok].to_numpy())
        cov.insert(0, "date", out["date"].astype(str).to_numpy())
        cov = cov.drop_duplicates(subset=["date", "store_id"], keep="last")
        # Covariates that do not vary across stores on any date are general calendar rows, otherwise store-specific.
        varies = cov.groupby("date")[list(covariates)].nunique().gt(1).any().any()
        if varies:
            calendar = cov
            calendar_scope = "store"
        else:
            calendar = cov.drop(columns=["store_id"]).drop_duplicates(subset=["date"], keep="last")
            calendar_scope = "all stores"
        _atomic_csv(calendar.sort_values(list(calendar.columns[:2])), landing / "calendar.csv")
        calendar_rows = len(calendar)
    if len(rejects):
        _atomic_csv(rejects, landing / "import_rejects.csv")

    return {
        "source": str(file),
        "landing": str(landing),
        "frequency": frequency,
        "periods": written,
        "first_period": grid[0].isoformat() if isinstance(grid[0], date) else str(grid[0]),
        "last_period": grid[-1].isoformat() if isinstance(grid[-1], date) else str(grid[-1]),
        "lines": int(len(frame)),
        "rows": int(len(out)),
        "merged_lines": int(merged_lines),
        "stores": int(out["store_id"].nunique()),
        "items": int(out["item_id"].nunique()),
        "series": int(out.groupby(["store_id", "item_id"]).ngroups),
        "calendar_rows": calendar_rows,
        "calendar_scope": calendar_scope,
        "rejected_rows": int(len(rejects)),
        "rejected_by_rule": {str(k): int(v) for k, v in pd.Series(rule).value_counts().items()},
    }
