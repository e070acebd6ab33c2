"""The integrated view: one row per series and period, joined with stores, items, calendar, price and promotion.

Rules (docs/landing-zone.md, "The integrated view"):
- a series is (store_id, item_id); it is active from its first to its last landed row; no row exists outside that span;
- inside the span the index is regular (every period of the frequency); a period with no row is *missing* (sales NaN,
  ``observed`` False), or a zero when the landing zone declares implicit zeros (``BI_PIPELINE_IMPLICIT_ZEROS``) and the
  period's file landed and no row of that series was quarantined for it;
- rows dated inside a period are summed to the period (``date`` is the period date), their price weighted by sales;
- period dates lie on one grid (every day, one weekday, the first of each month): a partition off the grid would
  sum its rows into another partition's period, so integration refuses it and names both files;
- price is carried forward inside a series; promo is 0 where no row says otherwise;
- calendar covariates are aggregated to the period (0/1 flags: max, other numbers: mean, text: first);
  rows with a store_id apply to that store only and override the general rows.
Columns are compact (categoricals and float32) so that M5 scale (59M rows) fits in a few GB.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

import numpy as np
import pandas as pd

from bi_pipeline.contract import SALES_DIR, infer_grid, period_range
from bi_pipeline.quality import parse_dates, typed_text

BASE_COLUMNS = ["date", "store_id", "item_id", "sales", "observed", "price", "promo"]
_SKIP = {"source_row", "source_file", "period", "date", "store_id", "item_id", "sales", "price", "promo"}


def _compact_attributes(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """Master attributes typed compactly: all-numeric columns become float32, the rest categoricals."""
    frame = frame.drop(columns=[c for c in ("source_row",) if c in frame.columns]).copy()
    frame[key] = frame[key].astype(str).str.strip()
    frame = frame.drop_duplicates(subset=[key], keep="last").set_index(key)
    for column in frame.columns:
        typed = typed_text(frame[column].astype(str))
        # Numbers and boolean flags as float32, text as categories.
        frame[column] = typed.astype("float32") if typed.dtype.kind == "f" else typed.astype("category")
    return frame


def _categories(values: pd.Series) -> list[str]:
    if isinstance(values.dtype, pd.CategoricalDtype):
        return [str(c) for c in values.cat.categories]
    return [str(v) for v in values.unique()]


def _codes(values: pd.Series, categories: pd.Index, cache: dict) -> np.ndarray:
    """Positions in ``categories``; through the frame's own categories when it has them (no string per row).

    Consecutive periods usually share their categories, so the last mapping is reused when they are equal.
    """
    if isinstance(values.dtype, pd.CategoricalDtype):
        own = values.cat.categories
        last = cache.get("categories")
        if last is None or not (len(last) == len(own) and last.equals(own)):
            cache["categories"], cache["mapping"] = own, categories.get_indexer(own.astype(str))
        return cache["mapping"][values.array.codes]
    return categories.get_indexer(values.astype(str))


def _grid_index(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Position of each period date on the regular grid; -1 where it is not a grid date."""
    pos = np.searchsorted(grid, values)
    pos = np.clip(pos, 0, len(grid) - 1)
    return np.where(grid[pos] == values, pos, -1)


def _to_period(dates: np.ndarray, grid: np.ndarray, frequency: str) -> np.ndarray:
    """Grid position of the period containing each date (-1 outside the grid)."""
    if frequency == "M":
        months = dates.astype("datetime64[M]").astype("datetime64[D]")
        return _grid_index(months, grid)
    pos = np.searchsorted(grid, dates, side="right") - 1
    step = np.timedelta64(1 if frequency == "D" else 7, "D")
    valid = (pos >= 0) & (dates < grid[np.clip(pos, 0, len(grid) - 1)] + step)
    return np.where(valid, pos, -1)


def _aggregate_calendar(calendar: pd.DataFrame, grid: np.ndarray, frequency: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(general covariates by grid position, store covariates by (grid position, store_id))."""
    calendar = calendar.drop(columns=[c for c in ("source_row",) if c in calendar.columns]).copy()
    dates = parse_dates(calendar["date"].astype("string"))
    calendar["_p"] = _to_period(dates, grid, frequency)
    calendar = calendar[calendar["_p"] >= 0].drop(columns=["date"])
    has_store = "store_id" in calendar.columns
    store = calendar.pop("store_id").astype(str).str.strip() if has_store else pd.Series("", index=calendar.index)
    covariates = [c for c in calendar.columns if c != "_p"]
    aggregations = {}
    for column in covariates:
        typed = typed_text(calendar[column].astype(str))
        calendar[column] = typed
        if typed.dtype.kind == "f":
            binary = bool(typed.dropna().isin([0, 1]).all())
            aggregations[column] = "max" if binary else "mean"
        else:
            aggregations[column] = "first"
    calendar["_store"] = store.to_numpy()
    general = calendar[calendar["_store"] == ""].groupby("_p").agg(aggregations) if covariates else pd.DataFrame()
    specific = (
        calendar[calendar["_store"] != ""].groupby(["_p", "_store"]).agg(aggregations)
        if covariates and has_store
        else pd.DataFrame()
    )
    return general, specific


def integrate(
    clean: pd.DataFrame | Iterable[pd.DataFrame],
    frequency: str,
    periods: Iterable[date | str],
    stores: pd.DataFrame | None = None,
    items: pd.DataFrame | None = None,
    calendar: pd.DataFrame | None = None,
    quarantined: pd.DataFrame | None = None,
    implicit_zeros: bool = False,
    release: bool = False,
    week_start: str | None = None,
) -> pd.DataFrame:
    """Build the integrated history from cleaned rows (one frame or a list of per-period frames, in the order of
    ``periods`` when they are per period).

    With ``release`` the given list is emptied as its frames are converted, so that the input and the output are
    never both whole in memory (what keeps M5 scale under 8 GB).
    """
    source_list = clean if release and isinstance(clean, list) else None
    frames = [clean] if isinstance(clean, pd.DataFrame) else list(clean)
    keys = [str(p)[:10] for p in periods]
    landed = sorted({p if isinstance(p, date) else date.fromisoformat(str(p)[:10]) for p in periods})
    if not landed:
        raise ValueError("no sales periods have landed yet")
    period_grid = infer_grid(landed, frequency, week_start)
    off_grid = [d for d in landed if not period_grid.on_grid(d)]
    if off_grid:
        files = {k: _file_of(f, k) for k, f in zip(keys, frames, strict=False)} if len(frames) == len(keys) else {}
        raise ValueError(_off_grid_message(off_grid, landed, period_grid, files))
    grid = np.array(period_range(landed[0], landed[-1], frequency), dtype="datetime64[D]")
    landed_mask = np.zeros(len(grid), dtype=bool)
    landed_mask[_grid_index(np.array(landed, dtype="datetime64[D]"), grid)] = True

    store_master = _compact_attributes(stores, "store_id") if stores is not None else None
    item_master = _compact_attributes(items, "item_id") if items is not None else None

    # Category universes: every id seen in sales or master data.
    store_ids = set(store_master.index) if store_master is not None else set()
    item_ids = set(item_master.index) if item_master is not None else set()
    frames = [f for f in frames if len(f)]
    if not frames:
        raise ValueError("no clean sales rows to integrate")
    for frame in frames:
        store_ids.update(_categories(frame["store_id"]))
        item_ids.update(_categories(frame["item_id"]))
    store_cats = pd.Index(sorted(store_ids))
    item_cats = pd.Index(sorted(item_ids))
    n_items = max(len(item_cats), 1)

    extras = sorted({c for f in frames for c in f.columns if c not in _SKIP})
    # Plain arrays per frame, concatenated once: per-frame DataFrames cost more than the work for small periods.
    columns: dict[str, list] = {"p": [], "key": [], "sales": [], "price": [], "promo": [], **{c: [] for c in extras}}
    store_cache: dict = {}
    item_cache: dict = {}
    if source_list is not None:
        source_list.clear()
    for i in range(len(frames)):
        frame = frames[i]
        if release:
            frames[i] = None  # type: ignore[call-overload]
        columns["p"].append(_to_period(frame["date"].to_numpy(dtype="datetime64[D]"), grid, frequency))
        columns["key"].append(
            _codes(frame["store_id"], store_cats, store_cache).astype(np.int64) * n_items
            + _codes(frame["item_id"], item_cats, item_cache)
        )
        for name in ("sales", "price", "promo"):
            columns[name].append(frame[name].to_numpy(dtype="float32"))
        for name in extras:
            columns[name].append(frame[name].to_numpy() if name in frame else np.full(len(frame), np.nan))
    values = {name: np.concatenate(parts) for name, parts in columns.items()}
    del columns
    p = values.pop("p").astype(np.int64)
    key = values.pop("key")
    inside = p >= 0
    if not inside.all():
        p, key = p[inside], key[inside]
        values = {name: v[inside] for name, v in values.items()}

    # Series ids without sorting 50M keys: the key space (stores x items) is small enough to index directly.
    n_keys = len(store_cats) * n_items
    if n_keys <= 50_000_000:
        present = np.zeros(n_keys, dtype=bool)
        present[key] = True
        series_key = np.flatnonzero(present)
        lookup = np.full(n_keys, -1, dtype=np.int64)
        lookup[series_key] = np.arange(len(series_key))
        sid = lookup[key]
        del present, lookup
    else:
        series_key, sid = np.unique(key, return_inverse=True)
    del key
    n_series = len(series_key)
    first = np.full(n_series, np.iinfo(np.int64).max, dtype=np.int64)
    last = np.full(n_series, -1, dtype=np.int64)
    np.minimum.at(first, sid, p)
    np.maximum.at(last, sid, p)
    lengths = last - first + 1
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    total = int(lengths.sum())
    pos = offsets[sid] + p - first[sid]
    del sid, p
    observed = np.zeros(total, dtype=bool)
    observed[pos] = True
    if int(observed.sum()) < len(pos):
        # Several rows of a series inside one period (daily rows in a weekly file, a transactions export): sales
        # summed, price weighted by the units sold at it (a plain mean where nothing sold), promo the deepest.
        rows = pd.DataFrame({"pos": pos, **values})
        weight = np.where(np.isnan(rows["price"]), 0.0, np.clip(np.nan_to_num(rows["sales"]), 0.0, None))
        rows["_weighted"] = np.nan_to_num(rows["price"].to_numpy()) * weight
        rows["_weight"] = weight
        agg = {"sales": "sum", "price": "mean", "promo": "max", "_weighted": "sum", "_weight": "sum"}
        agg.update({c: ("mean" if pd.api.types.is_numeric_dtype(rows[c]) else "first") for c in extras})
        rows = rows.groupby("pos", sort=False).agg(agg)
        weighted = rows.pop("_weighted").to_numpy() / np.where(rows["_weight"] > 0, rows["_weight"], np.nan)
        rows["price"] = np.where(rows.pop("_weight").to_numpy() > 0, weighted, rows["price"].to_numpy())
        pos = rows.index.to_numpy()
        values = {name: rows[name].to_numpy() for name in rows.columns}
        del rows
    row_sid = np.repeat(np.arange(n_series, dtype=np.int32), lengths)
    row_p = (np.arange(total, dtype=np.int64) - offsets[row_sid] + first[row_sid]).astype(np.int32)

    def scatter(source: np.ndarray, fill: float = np.nan, dtype: str = "float32") -> np.ndarray:
        out = np.full(total, fill, dtype=dtype)
        out[pos] = source
        return out

    sales = scatter(values.pop("sales"))
    if implicit_zeros:
        zero = ~observed & landed_mask[row_p]
        if quarantined is not None and len(quarantined):
            zero &= ~_quarantined_positions(
                quarantined,
                grid,
                frequency,
                store_cats,
                item_cats,
                n_items,
                series_key,
                first,
                lengths,
                offsets,
                total,
            )
        sales[zero] = 0.0
    price = _ffill_within(scatter(values.pop("price")), offsets)
    promo = scatter(values.pop("promo"), fill=0.0)
    promo[np.isnan(promo)] = 0.0
    store_code = (series_key // n_items).astype(np.int32)[row_sid]
    item_code = (series_key % n_items).astype(np.int32)[row_sid]
    del row_sid
    out = pd.DataFrame(
        {
            "date": grid[row_p].astype("datetime64[ns]"),
            "store_id": pd.Categorical.from_codes(store_code, categories=store_cats),
            "item_id": pd.Categorical.from_codes(item_code, categories=item_cats),
            "sales": sales,
            "observed": observed,
            "price": price,
            "promo": promo,
        },
        copy=False,
    )
    del sales, price, promo, observed
    for column in extras:
        source = values.pop(column)
        if pd.api.types.is_numeric_dtype(source):
            out[column] = scatter(source.astype("float32"))
        else:
            full = np.full(total, None, dtype=object)
            full[pos] = source
            out[column] = pd.Categorical(full)
    if store_master is not None:
        _join_codes(out, store_master, store_cats, store_code)
    if item_master is not None:
        _join_codes(out, item_master, item_cats, item_code)
    if calendar is not None and len(calendar):
        general, specific = _aggregate_calendar(calendar, grid, frequency)
        _join_calendar(out, general, specific, row_p, store_code, store_cats, len(grid))
    return out


def _file_of(frame: pd.DataFrame, key: str) -> str:
    if "source_file" in frame.columns and len(frame):
        return str(frame["source_file"].iloc[0])
    return f"{SALES_DIR}/{key}.*"


def _off_grid_message(off_grid: list[date], landed: list[date], grid, files: dict[str, str]) -> str:
    """Which partitions lie off the period grid and whose period their rows would be summed into."""
    lines = []
    for day in off_grid:
        home = grid.floor(day)
        own = files.get(day.isoformat(), f"{SALES_DIR}/{day.isoformat()}.*")
        if home in landed:
            other = files.get(home.isoformat(), f"{SALES_DIR}/{home.isoformat()}.*")
            lines.append(f"{own} falls in the period of {home} ({other}): its rows would be summed into that period")
        else:
            lines.append(f"{own} is dated {day}, not a period date (expected {home})")
    return f"partitions off the period grid ({grid.describe()}): " + "; ".join(lines)


def _ffill_within(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Carry the last non-NaN value forward inside each block (a series) starting at ``starts``, never across."""
    index = np.where(np.isnan(values), 0, np.arange(len(values)))
    # A block's first row points at itself, so the running maximum never reaches back into the previous block.
    index[starts] = np.maximum(index[starts], starts)
    np.maximum.accumulate(index, out=index)
    return values[index]


def _join_codes(out: pd.DataFrame, master: pd.DataFrame, cats: pd.Index, codes: np.ndarray) -> None:
    aligned = master.reindex(cats)
    for column in aligned.columns:
        if column in out.columns:
            continue
        values = aligned[column]
        if isinstance(values.dtype, pd.CategoricalDtype):
            out[column] = pd.Categorical.from_codes(
                values.cat.codes.to_numpy()[codes], categories=values.cat.categories
            )
        else:
            out[column] = values.to_numpy(dtype="float32")[codes]


def _join_calendar(
    out: pd.DataFrame,
    general: pd.DataFrame,
    specific: pd.DataFrame,
    row_p: np.ndarray,
    store_code: np.ndarray,
    store_cats: pd.Index,
    n_periods: int,
) -> None:
    columns = list(dict.fromkeys([*general.columns, *specific.columns]))
    for column in columns:
        if column in out.columns:
            continue
        source = general[column] if column in general.columns else None
        numeric = pd.api.types.is_numeric_dtype(source if source is not None else specific[column])
        if numeric:
            table = np.full((n_periods, len(store_cats)), np.nan, dtype="float32")
            if source is not None:
                table[source.index.to_numpy(), :] = source.to_numpy(dtype="float32")[:, None]
        else:
            table = np.full((n_periods, len(store_cats)), None, dtype=object)
            if source is not None:
                table[source.index.to_numpy(), :] = source.to_numpy(dtype=object)[:, None]
        if column in specific.columns:
            values = specific[column].dropna()
            p_idx = values.index.get_level_values(0).to_numpy()
            s_idx = store_cats.get_indexer(values.index.get_level_values(1))
            keep = s_idx >= 0
            table[p_idx[keep], s_idx[keep]] = values.to_numpy()[keep]
        flat = table[row_p, store_code]
        if numeric:
            # Known-in-advance flags: no calendar row means no event.
            out[column] = np.nan_to_num(flat, nan=0.0).astype("float32") if _is_flag(flat) else flat
        else:
            out[column] = pd.Categorical(flat)


def _is_flag(values: np.ndarray) -> bool:
    finite = values[~np.isnan(values)]
    return bool(len(finite)) and bool(np.isin(finite, [0.0, 1.0]).all())


def _quarantined_positions(
    quarantined: pd.DataFrame,
    grid: np.ndarray,
    frequency: str,
    store_cats: pd.Index,
    item_cats: pd.Index,
    n_items: int,
    series_key: np.ndarray,
    first: np.ndarray,
    lengths: np.ndarray,
    offsets: np.ndarray,
    total: int,
) -> np.ndarray:
    """Mask of grid rows whose landed value was quarantined: unknown, not zero, even with implicit zeros."""
    mask = np.zeros(total, dtype=bool)
    period = pd.to_datetime(quarantined["period"], errors="coerce").to_numpy(dtype="datetime64[D]")
    p = _to_period(period, grid, frequency)
    store = store_cats.get_indexer(quarantined["store_id"].astype(str).str.strip())
    item = item_cats.get_indexer(quarantined["item_id"].astype(str).str.strip())
    ok = (p >= 0) & (store >= 0) & (item >= 0)
    key = store[ok].astype(np.int64) * n_items + item[ok]
    where = np.searchsorted(series_key, key)
    where = np.clip(where, 0, len(series_key) - 1)
    found = series_key[where] == key
    sid, pp = where[found], p[ok][found]
    inside = (pp >= first[sid]) & (pp < first[sid] + lengths[sid])
    mask[offsets[sid[inside]] + pp[inside] - first[sid[inside]]] = True
    return mask
