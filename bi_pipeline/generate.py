"""Deterministic synthetic retail business: writes a landing zone of per-period sales files plus master data.

Scales from a few store x item series to M5 size (30,490 series x 1,941 days): demand is computed vectorised
over blocks of periods of a (periods x series) float32 matrix and each period's file is written as soon as its
block is drawn, so memory stays at a few hundred MB.

Defects are injected at exact counts (``GenerationSpec.defects`` instances of each type) and the report states
how many rows a correct cleaner must quarantine under each reason code. All randomness comes from
``numpy.random.default_rng`` streams spawned from ``spec.seed``: the same spec gives byte-identical files, and
the clean data do not depend on ``defects`` or ``fmt`` (clean and dirty landing zones hold one business).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from bi_pipeline.forecasting.calendar import easter_date
from bi_pipeline.quality import DUPLICATE_RULES, ROW_RULES

FREQUENCIES = ("D", "W", "M")
FORMATS = ("csv", "parquet")
SALES_COLUMNS = ("date", "store_id", "item_id", "sales", "price", "promo")

# Every row reason code the cleaner knows, in its priority order (malformed lines are set aside on reading).
REASON_CODES = ("malformed_row", *ROW_RULES, *DUPLICATE_RULES)
# Defects applied to one chosen row each (duplicates append one extra line after their source row).
ROW_DEFECTS = (
    "duplicate_exact",
    "duplicate_conflict",
    "sales_negative",
    "sales_not_numeric",
    "missing_key",
    "unknown_store",
    "unknown_item",
    "unparseable_date",
    "date_outside_period",
    "price_out_of_range",
)
UNKNOWN_STORE = "S999X"
UNKNOWN_ITEM = "I99999X"
# None of these parses as a finite number (pd.to_numeric / float()).
_NOT_NUMERIC = ("12a", "n/a", "abc", "seven")
# Share of a file's rows that may be defects before a file takes more than one (the cleaner fails at 5%).
_MAX_DEFECT_SHARE = 0.02
# Promo depths by code; a lookup table keeps written values exact literals (0.15, not 0.15000000000000002).
PROMO_DEPTHS = np.array([0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4])
# Elements per demand block: bounds the temporaries (a few 8 MB float32 arrays) whatever the series count.
_BLOCK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class GenerationSpec:
    stores: int = 5
    items: int = 20
    periods: int = 156
    frequency: str = "W"  # "D", "W" or "M"
    start: str = "2022-01-03"  # first period date (for M, normalised to the first of its month)
    seed: int = 42
    defects: int = 3  # instances per defect type; 0 = clean
    fmt: str = "csv"  # "csv" or "parquet" for sales files
    new_item_share: float = 0.1
    discontinued_item_share: float = 0.1
    intermittent_item_share: float = 0.25
    # A share of series whose level steps once, for good (a lost contract, a new listing): × 0.5–0.7 or × 1.4–1.8 from
    # a period in the later two thirds of the history.
    level_shift_share: float = 0.0
    # The share of periods each store is closed (renovations, strikes: runs of up to a week of days), announced in
    # calendar.csv as a store row with ``closed`` = 1; a closed store sells nothing.
    closure_share: float = 0.0
    # A stock snapshot for the last period, inventory/<date>.csv (on hand about 0–3 periods of recent sales, some on
    # order), so that orders come with quantities.
    inventory: bool = False

    def __post_init__(self) -> None:
        if self.frequency not in FREQUENCIES:
            raise ValueError(f"frequency must be one of {FREQUENCIES}, got {self.frequency!r}")
        if self.fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}, got {self.fmt!r}")
        for name in ("stores", "items", "periods"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.defects < 0:
            raise ValueError(f"defects must be >= 0, got {self.defects}")
        shares = ("new_item_share", "discontinued_item_share", "intermittent_item_share", "level_shift_share")
        for name in (*shares, "closure_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        date.fromisoformat(self.start)  # fail early on a bad start date


@dataclass
class GenerationReport:
    landing: str
    series: int
    periods: int
    frequency: str
    sales_files: int
    # Data lines written across all sales files (including defective, duplicate and malformed lines).
    rows_written: int
    # Rows a correct cleaner keeps = rows_written - sum(expected_quarantine.values()).
    valid_rows: int
    expected_quarantine: dict[str, int]
    defect_files: dict[str, list[str]]
    malformed_file: str | None
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


# --- calendar -----------------------------------------------------------------------------------------------


def _period_dates(spec: GenerationSpec, count: int) -> np.ndarray:
    """``count`` consecutive period dates (datetime64[D]) from the spec's start."""
    start = np.datetime64(spec.start, "D")
    if spec.frequency == "D":
        return start + np.arange(count)
    if spec.frequency == "W":
        return start + 7 * np.arange(count)
    return (start.astype("datetime64[M]") + np.arange(count)).astype("datetime64[D]")


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> date:
    """n-th (1-based; -1 = last) given weekday (Mon=0) of a month."""
    if n > 0:
        first = date(year, month, 1)
        return first + timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))
    last = date(year + (month == 12), month % 12 + 1, 1) - timedelta(days=1)
    return last - timedelta(days=(last.weekday() - weekday) % 7)


def _events(year: int) -> list[tuple[date, str, int, float]]:
    """(day, name, public holiday, demand multiplier before category sensitivity) of one year's events."""
    thanksgiving = _nth_weekday(year, 11, 3, 4)
    # The Super Bowl moved to the second Sunday of February in 2022.
    superbowl = _nth_weekday(year, 2, 6, 2 if year >= 2022 else 1)
    return [
        (date(year, 1, 1), "New Year", 1, 0.8),
        (superbowl, "SuperBowl", 0, 1.25),
        (date(year, 2, 14), "Valentines Day", 0, 1.1),
        (easter_date(year), "Easter", 1, 1.2),
        (_nth_weekday(year, 5, 6, 2), "Mothers Day", 0, 1.1),
        (_nth_weekday(year, 5, 0, -1), "Memorial Day", 1, 1.15),
        (date(year, 7, 4), "Independence Day", 1, 1.2),
        (_nth_weekday(year, 9, 0, 1), "Labor Day", 1, 1.15),
        (date(year, 10, 31), "Halloween", 0, 1.15),
        (thanksgiving, "Thanksgiving", 1, 0.9),
        (thanksgiving + timedelta(days=1), "Black Friday", 0, 1.8),
        # Shops close early: the peak is in the days before (see the ramp below).
        (date(year, 12, 25), "Christmas", 1, 0.35),
    ]


@dataclass
class _Calendar:
    holiday: np.ndarray  # (P,) int
    event: list[str]  # (P,) ';'-joined event names of the period's days
    pattern: np.ndarray  # (n_categories, P) float32: summed daily category multipliers over the period's days
    days: np.ndarray  # (P,) days in each period
    day_offset: np.ndarray  # (P + 3,) days since the first period date (period P closes the last one)


def _calendar(dates: np.ndarray, periods: int, n_cat: int, rng: np.random.Generator) -> _Calendar:
    first = dates[0]
    n_days = int((dates[periods] - first).astype(int))
    days = first + np.arange(n_days)
    day_offset = (dates - first).astype(np.int64)
    starts = day_offset[:periods]
    period_of_day = np.repeat(np.arange(periods), np.diff(day_offset[: periods + 1]))

    log_event = np.zeros(n_days)
    holiday = np.zeros(periods, dtype=np.int64)
    names: list[list[str]] = [[] for _ in range(periods)]
    first_date = first.astype(object)
    last_date = (days[-1]).astype(object)
    for year in range(first_date.year, last_date.year + 1):
        for day, name, is_holiday, mult in _events(year):
            k = (day - first_date).days
            if 0 <= k < n_days:
                log_event[k] += math.log(mult)
                t = period_of_day[k]
                names[t].append(name)
                holiday[t] |= is_holiday
        # Christmas peak: demand ramps up through December to the 24th.
        k0 = (date(year, 12, 1) - first_date).days
        dom = np.arange(1, 25)
        k = k0 + dom - 1
        ok = (k >= 0) & (k < n_days)
        log_event[k[ok]] += 0.5 * (dom[ok] / 24.0) ** 2

    # Per-category sensitivities and shapes (category-level patterns shared by their items).
    sens = rng.uniform(0.5, 1.5, n_cat)
    weekly = np.log([0.92, 0.86, 0.86, 0.9, 1.02, 1.22, 1.22])[None, :] + rng.normal(0, 0.06, (n_cat, 7))
    weekly -= weekly.mean(axis=1, keepdims=True)
    amp = np.stack([rng.uniform(0.05, 0.25, n_cat), rng.uniform(0.0, 0.08, n_cat)], axis=1)
    phase = rng.uniform(0, 2 * np.pi, (n_cat, 2))
    dow = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    doy = (days - days.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.float64) / 365.25
    log_day = sens[:, None] * log_event[None, :] + weekly[:, dow]
    for h in range(2):
        log_day += amp[:, h, None] * np.sin(2 * np.pi * (h + 1) * doy[None, :] + phase[:, h, None])
    # Summing daily multipliers makes a weekly/monthly mean the total over its days.
    pattern = np.add.reduceat(np.exp(log_day), starts, axis=1).astype(np.float32)
    return _Calendar(
        holiday=holiday,
        event=[";".join(n) for n in names],
        pattern=pattern,
        days=np.diff(day_offset[: periods + 1]),
        day_offset=day_offset,
    )


# --- master data --------------------------------------------------------------------------------------------

# category -> department -> [(product, size, typical price)]
_CATALOG: dict[str, dict[str, list[tuple[str, str, float]]]] = {
    "Food": {
        "Dairy": [
            ("whole milk", "1L", 1.2),
            ("skimmed milk", "2L", 1.9),
            ("greek yogurt", "500g", 2.5),
            ("cheddar cheese", "200g", 3.2),
            ("salted butter", "250g", 2.8),
            ("free-range eggs", "12 pack", 3.6),
        ],
        "Bakery": [
            ("sourdough bread", "800g", 3.5),
            ("croissants", "4 pack", 2.6),
            ("bagels", "6 pack", 2.9),
            ("blueberry muffins", "4 pack", 3.4),
            ("rye bread", "500g", 2.4),
        ],
        "Produce": [
            ("bananas", "1kg", 1.3),
            ("gala apples", "1kg", 2.6),
            ("cherry tomatoes", "250g", 1.9),
            ("baby spinach", "200g", 2.2),
            ("avocados", "2 pack", 2.8),
        ],
        "Beverages": [
            ("orange juice", "1L", 2.7),
            ("sparkling water", "6x500ml", 3.1),
            ("cola", "2L", 2.2),
            ("green tea", "20 bags", 2.9),
            ("ground coffee", "250g", 5.5),
        ],
        "Snacks": [
            ("sea salt crisps", "150g", 1.8),
            ("dark chocolate", "100g", 2.1),
            ("salted peanuts", "200g", 1.9),
            ("oat cookies", "300g", 2.4),
        ],
    },
    "Household": {
        "Cleaning": [
            ("dish soap", "500ml", 2.3),
            ("laundry detergent", "2L", 9.5),
            ("glass cleaner", "750ml", 3.4),
            ("kitchen sponges", "6 pack", 2.6),
        ],
        "Paper goods": [
            ("toilet paper", "9 rolls", 6.9),
            ("kitchen towels", "2 rolls", 2.9),
            ("facial tissues", "3 pack", 3.9),
        ],
        "Kitchen": [
            ("aluminium foil", "10m", 2.9),
            ("food storage bags", "50 pack", 3.5),
            ("baking paper", "8m", 2.2),
        ],
    },
    "Personal care": {
        "Hair care": [("shampoo", "400ml", 4.9), ("conditioner", "400ml", 4.9), ("hair gel", "150ml", 3.9)],
        "Oral care": [
            ("toothpaste", "75ml", 2.9),
            ("toothbrush", "2 pack", 3.9),
            ("mouthwash", "500ml", 4.5),
        ],
        "Skin care": [
            ("hand cream", "75ml", 3.9),
            ("body lotion", "250ml", 5.9),
            ("sunscreen SPF50", "200ml", 9.9),
        ],
    },
    "Hobbies": {
        "Toys": [
            ("building blocks set", "250 pieces", 24.9),
            ("plush bear", "30cm", 14.9),
            ("jigsaw puzzle", "1000 pieces", 12.9),
        ],
        "Crafts": [
            ("acrylic paint set", "12 colours", 11.9),
            ("sketchbook", "A4", 6.9),
            ("knitting yarn", "100g", 4.9),
        ],
        "Books": [("paperback novel", "", 9.9), ("colouring book", "A4", 5.9), ("notebook", "A5", 3.9)],
    },
}
_CATEGORY_WEIGHTS = {"Food": 0.5, "Household": 0.2, "Personal care": 0.15, "Hobbies": 0.15}
_ADJECTIVES = {
    "Food": ("Organic", "Fresh", "Classic", "Value", "Premium", "Local"),
    "Household": ("Classic", "Value", "Premium", "Eco", "Family size"),
    "Personal care": ("Classic", "Sensitive", "Premium", "Natural", "Travel"),
    "Hobbies": ("Classic", "Deluxe", "Junior", "Collector's", "Starter"),
}
_REGIONS = ("North", "South", "East", "West", "Central")
_FORMATS = ("supercenter", "neighborhood", "express")
_FORMAT_SIZE = {"supercenter": (8000, 16000), "neighborhood": (2000, 5000), "express": (250, 900)}
_LOCAL_EVENTS = ("Store anniversary", "Local festival", "Community sports final", "Street market")


def _charm(price: np.ndarray) -> np.ndarray:
    """Shelf prices end in 9 cents."""
    return np.round(np.floor(np.maximum(price, 0.1) * 10) / 10 + 0.09, 2)


@dataclass
class _Stores:
    ids: list[str]
    region: list[str]
    format: list[str]
    size_sqm: np.ndarray
    scale: np.ndarray


@dataclass
class _Items:
    ids: list[str]
    category: list[str]
    cat_code: np.ndarray
    department: list[str]
    description: list[str]
    base_price: np.ndarray


def _make_stores(n: int, rng: np.random.Generator) -> _Stores:
    width = max(3, len(str(n)))
    fmt = rng.choice(len(_FORMATS), n, p=[0.3, 0.45, 0.25])
    region = rng.integers(0, len(_REGIONS), n)
    lo = np.array([_FORMAT_SIZE[f][0] for f in _FORMATS])[fmt]
    hi = np.array([_FORMAT_SIZE[f][1] for f in _FORMATS])[fmt]
    size = np.round(rng.uniform(lo, hi) / 10) * 10
    # Bigger stores sell more, not proportionally.
    scale = (size / 3000.0) ** 0.5 * rng.lognormal(0.0, 0.25, n)
    return _Stores(
        ids=[f"S{i + 1:0{width}d}" for i in range(n)],
        region=[_REGIONS[r] for r in region],
        format=[_FORMATS[f] for f in fmt],
        size_sqm=size.astype(np.int64),
        scale=scale,
    )


def _make_items(n: int, rng: np.random.Generator) -> _Items:
    width = max(5, len(str(n)))
    categories = list(_CATALOG)
    weights = np.array([_CATEGORY_WEIGHTS[c] for c in categories])
    cat_code = rng.choice(len(categories), n, p=weights / weights.sum())
    dept_u, prod_u, adj_u = rng.random(n), rng.random(n), rng.random(n)
    noise = rng.lognormal(0.0, 0.25, n)
    category, department, description, typical = [], [], [], np.empty(n)
    for i in range(n):
        cat = categories[cat_code[i]]
        depts = list(_CATALOG[cat])
        dept = depts[int(dept_u[i] * len(depts))]
        products = _CATALOG[cat][dept]
        product, size, price = products[int(prod_u[i] * len(products))]
        adjectives = _ADJECTIVES[cat]
        adj = adjectives[int(adj_u[i] * len(adjectives))]
        category.append(cat)
        department.append(dept)
        description.append(f"{adj} {product} {size}".strip())
        typical[i] = price
    return _Items(
        ids=[f"I{i + 1:0{width}d}" for i in range(n)],
        category=category,
        cat_code=cat_code,
        department=department,
        description=description,
        base_price=_charm(typical * noise),
    )


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="")
    os.replace(tmp, path)


def _csv_text(header: tuple[str, ...], rows: list[tuple]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


# --- demand model -------------------------------------------------------------------------------------------


@dataclass
class _Business:
    """Everything that fixes the demand of every series at every period."""

    spec: GenerationSpec
    date_str: list[str]  # P + 2 period dates (the two extra feed date_outside_period defects)
    cal: _Calendar
    stores: _Stores
    items: _Items
    store_of: np.ndarray  # (S,) series -> store, series ordered by store then item
    item_of: np.ndarray  # (S,) series -> item
    launch: np.ndarray  # (I,) first active period
    end: np.ndarray  # (I,) first period after the last active one
    is_new: np.ndarray
    is_disc: np.ndarray
    is_slow: np.ndarray
    active_item: np.ndarray  # (P, I) bool
    n_rows: np.ndarray  # (P,) active series per period
    series_base: np.ndarray  # (S,) float32 mean units per day
    slope: np.ndarray  # (S,) float32 log change over the history
    shape: np.ndarray  # (S,) float32 gamma shape: small = overdispersed (negative binomial sales)
    elasticity: np.ndarray  # (I,) float32
    promo_bump: np.ndarray  # (I,) float32
    store_price_index: np.ndarray  # (n_stores,)
    regular_price: np.ndarray  # (P, I) float64
    promo_code: np.ndarray  # (P, S) uint8 index into PROMO_DEPTHS
    stockout: np.ndarray  # (P, S) bool
    local_mult: np.ndarray  # (P, n_stores) float32
    local_rows: list[tuple[int, int, str]]  # (period, store, event name) for calendar.csv
    shift_at: np.ndarray | None = None  # (S,) the period a series' level steps (periods: never), or None
    shift_factor: np.ndarray | None = None  # (S,) float32
    closed: np.ndarray | None = None  # (P, n_stores) bool, or None


def _spans(n_items: int, periods: int, spec: GenerationSpec, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Launch / end periods: new items start late, discontinued ones stop early; one item spans it all."""
    launch = np.zeros(n_items, dtype=np.int64)
    end = np.full(n_items, periods, dtype=np.int64)
    n_new = round(spec.new_item_share * n_items)
    n_disc = round(spec.discontinued_item_share * n_items)
    if periods < 4:
        n_new = n_disc = 0
    # Never every item: a period without rows would land as an empty file.
    while n_new + n_disc > n_items - 1:
        if n_new >= n_disc:
            n_new -= 1
        else:
            n_disc -= 1
    order = rng.permutation(n_items)
    new, disc = order[:n_new], order[n_new : n_new + n_disc]
    launch[new] = rng.integers(max(1, periods // 10), max(2, (8 * periods) // 10), n_new)
    end[disc] = rng.integers(max(1, (3 * periods) // 10), max(2, (9 * periods) // 10), n_disc)
    is_new = np.zeros(n_items, dtype=bool)
    is_disc = np.zeros(n_items, dtype=bool)
    is_new[new] = True
    is_disc[disc] = True
    return launch, end, is_new, is_disc


def _windows(
    rng: np.random.Generator, rate: np.ndarray, periods: int, max_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random windows per series: (series, start, length) with Poisson-many windows of 1..max_len periods."""
    counts = rng.poisson(rate)
    series = np.repeat(np.arange(len(rate)), counts)
    start = rng.integers(0, periods, len(series))
    length = rng.integers(1, max_len + 1, len(series))
    return series, start, length


def _paint(
    matrix: np.ndarray, series: np.ndarray, start: np.ndarray, length: np.ndarray, value: np.ndarray | bool
) -> None:
    periods = matrix.shape[0]
    for offset in range(int(length.max(initial=0))):
        m = (length > offset) & (start + offset < periods)
        v = value[m] if isinstance(value, np.ndarray) else value
        matrix[start[m] + offset, series[m]] = v


def _build(spec: GenerationSpec, rng: np.random.Generator) -> _Business:
    periods, freq = spec.periods, spec.frequency
    dates = _period_dates(spec, periods + 3)  # + 1 closes the last period, + 2 for out-of-period dates
    date_str = list(np.datetime_as_string(dates[: periods + 2], unit="D"))
    stores = _make_stores(spec.stores, rng)
    items = _make_items(spec.items, rng)
    n_cat = len(_CATALOG)
    cal = _calendar(dates, periods, n_cat, rng)
    n_st, n_it = spec.stores, spec.items
    n_series = n_st * n_it
    store_of = np.repeat(np.arange(n_st, dtype=np.int32), n_it)
    item_of = np.tile(np.arange(n_it, dtype=np.int32), n_st)

    launch, end, is_new, is_disc = _spans(n_it, periods, spec, rng)
    t = np.arange(periods)[:, None]
    active_item = (t >= launch[None, :]) & (t < end[None, :])
    n_rows = active_item.sum(axis=1).astype(np.int64) * n_st

    # Slow movers: a share of items sells a fraction of a unit a day, so many zeros.
    n_slow = round(spec.intermittent_item_share * n_it)
    is_slow = np.zeros(n_it, dtype=bool)
    is_slow[rng.permutation(n_it)[:n_slow]] = True
    item_scale = np.where(is_slow, rng.lognormal(np.log(0.08), 0.5, n_it), rng.lognormal(np.log(1.5), 0.8, n_it))
    # Cheap items sell more units.
    item_scale *= (3.0 / items.base_price) ** 0.3
    item_shape = np.where(is_slow, rng.uniform(0.3, 0.8, n_it), rng.uniform(4.0, 12.0, n_it))
    series_base = stores.scale[store_of] * item_scale[item_of] * rng.lognormal(0.0, 0.3, n_series)
    cat_slope = rng.normal(0.0, 0.2, n_cat)
    slope = cat_slope[items.cat_code][item_of] + rng.normal(0.0, 0.35, n_series)

    elasticity = rng.uniform(-2.5, -0.5, n_it)
    promo_bump = rng.uniform(0.1, 0.6, n_it)
    store_price_index = rng.choice([0.97, 1.0, 1.0, 1.03], n_st)

    # Permanent regular-price steps, mostly up (inflation), about one every 16 months per item.
    years = max(float(cal.day_offset[periods]) / 365.25, 1e-9)
    n_steps = rng.poisson(0.75 * years, n_it) if periods > 1 else np.zeros(n_it, dtype=np.int64)
    step_item = np.repeat(np.arange(n_it), n_steps)
    step_at = rng.integers(1, max(2, periods), len(step_item))
    step_factor = rng.choice([0.9, 0.95, 1.05, 1.08, 1.1, 1.15, 1.2], len(step_item))
    log_steps = np.zeros((periods, n_it))
    np.add.at(log_steps, (step_at, step_item), np.log(step_factor))
    regular_price = _charm(items.base_price[None, :] * np.exp(np.cumsum(log_steps, axis=0)))

    # Promotions: windows of 1-3 periods, roughly 2-10% of a series' periods on promotion.
    promo_share = rng.uniform(0.02, 0.1, n_it)[item_of]
    ser, start, length = _windows(rng, promo_share * periods / 2.0, periods, 3)
    promo_code = np.zeros((periods, n_series), dtype=np.uint8)
    _paint(promo_code, ser, start, length, rng.integers(1, len(PROMO_DEPTHS), len(ser)).astype(np.uint8))

    # Stock-outs: short runs (up to a week of days) on about 1% of series-periods.
    max_out = {"D": 7, "W": 2, "M": 1}[freq]
    ser, start, length = _windows(rng, np.full(n_series, 0.01 * periods * 2.0 / (max_out + 1)), periods, max_out)
    stockout = np.zeros((periods, n_series), dtype=bool)
    _paint(stockout, ser, start, length, True)

    # Store-specific local events, about one a quarter per store; a one-day effect diluted over the period.
    local_mult = np.ones((periods, n_st), dtype=np.float32)
    local_rows: list[tuple[int, int, str]] = []
    per_store = min(periods, max(1, round(float(cal.day_offset[periods]) / 90.0)))
    for s in range(n_st):
        at = np.sort(rng.choice(periods, per_store, replace=False))
        lift = rng.uniform(1.3, 1.7, per_store)
        kind = rng.integers(0, len(_LOCAL_EVENTS), per_store)
        local_mult[at, s] = 1.0 + (lift - 1.0) / cal.days[at]
        local_rows.extend((int(p), s, _LOCAL_EVENTS[k]) for p, k in zip(at, kind, strict=True))

    return _Business(
        spec=spec,
        date_str=date_str,
        cal=cal,
        stores=stores,
        items=items,
        store_of=store_of,
        item_of=item_of,
        launch=launch,
        end=end,
        is_new=is_new,
        is_disc=is_disc,
        is_slow=is_slow,
        active_item=active_item,
        n_rows=n_rows,
        series_base=series_base.astype(np.float32),
        slope=slope.astype(np.float32),
        shape=item_shape[item_of].astype(np.float32),
        elasticity=elasticity.astype(np.float32),
        promo_bump=promo_bump.astype(np.float32),
        store_price_index=store_price_index,
        regular_price=regular_price,
        promo_code=promo_code,
        stockout=stockout,
        local_mult=local_mult,
        local_rows=local_rows,
        **_shifts_and_closures(spec, n_series, n_st),
    )


def _shifts_and_closures(spec: GenerationSpec, n_series: int, n_stores: int) -> dict:
    """Level shifts and store closures, from their own random stream: with both shares 0 (the default) nothing is
    drawn, so a business is the same whether or not these options exist."""
    out: dict = {}
    if not (spec.level_shift_share or spec.closure_share):
        return out
    rng = np.random.default_rng([spec.seed, 1])
    periods = spec.periods
    if spec.level_shift_share:
        shifted = rng.random(n_series) < spec.level_shift_share
        at = rng.integers(max(1, periods // 3), max(2, (9 * periods) // 10), n_series)
        up = rng.random(n_series) < 0.5
        factor = np.where(up, rng.uniform(1.4, 1.8, n_series), rng.uniform(0.5, 0.7, n_series))
        out["shift_at"] = np.where(shifted, at, periods)
        out["shift_factor"] = factor.astype(np.float32)
    if spec.closure_share:
        max_len = {"D": 7, "W": 1, "M": 1}[spec.frequency]
        rate = np.full(n_stores, spec.closure_share * periods * 2.0 / (max_len + 1))
        store, start, length = _windows(rng, rate, periods, max_len)
        closed = np.zeros((periods, n_stores), dtype=bool)
        _paint(closed, store, start, length, True)
        out["closed"] = closed
    return out


def _draw_block(
    biz: _Business, t0: int, t1: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sales (int64), price in cents (int64) and promo codes for periods [t0, t1) x all series."""
    periods = biz.spec.periods
    item_of, store_of = biz.item_of, biz.store_of
    cal = biz.cal
    # Item-level multipliers (category pattern, launch ramp-up, run-down before discontinuation): (C, I).
    offs = cal.day_offset[t0:t1, None].astype(np.float64)
    age = np.maximum(offs - cal.day_offset[biz.launch][None, :], 0.0)
    ramp = np.where(biz.is_new[None, :], 1.0 - 0.75 * np.exp(-age / 28.0), 1.0)
    left = cal.day_offset[np.minimum(biz.end, periods)][None, :] - offs
    fade = np.where(biz.is_disc[None, :], 0.4 + 0.6 * np.clip(left / 56.0, 0.0, 1.0), 1.0)
    item_level = (cal.pattern[biz.items.cat_code][:, t0:t1].T * ramp * fade).astype(np.float32)

    lam = item_level[:, item_of]
    lam *= biz.series_base[None, :]
    x = (np.arange(t0, t1, dtype=np.float32) / max(periods - 1, 1) - 0.5)[:, None]
    lam *= np.exp(x * biz.slope[None, :])
    lam *= biz.local_mult[t0:t1][:, store_of]

    code = biz.promo_code[t0:t1]
    depth = PROMO_DEPTHS[code]
    price = biz.regular_price[t0:t1][:, item_of] * biz.store_price_index[store_of][None, :]
    price *= 1.0 - depth
    cents = np.rint(price * 100.0).astype(np.int64)
    del price
    # Price elasticity on the actual shelf price, plus a display/feature bump while on promotion.
    ratio = (cents / 100.0 / biz.items.base_price[item_of][None, :]).astype(np.float32)
    lam *= ratio ** biz.elasticity[item_of][None, :]
    del ratio
    lam *= np.where(code > 0, 1.0 + biz.promo_bump[item_of][None, :], np.float32(1.0))
    # Gamma-Poisson mixture = negative binomial; small shapes make slow items lumpy and zero-heavy.
    gamma = rng.standard_gamma(np.broadcast_to(biz.shape, lam.shape), dtype=np.float32)
    lam *= gamma / biz.shape[None, :]
    del gamma
    sales = rng.poisson(lam)
    if biz.shift_at is not None:
        # Poisson thinning for a step down, extra Poisson demand for a step up.
        after = np.arange(t0, t1)[:, None] >= biz.shift_at[None, :]
        sales = np.where(after, rng.binomial(sales, np.minimum(biz.shift_factor, 1.0)[None, :]), sales)
        sales = sales + rng.poisson(np.where(after, lam * np.maximum(biz.shift_factor - 1.0, 0.0)[None, :], 0.0))
    sales[biz.stockout[t0:t1]] = 0
    if biz.closed is not None:
        sales[biz.closed[t0:t1][:, store_of]] = 0
    return sales, cents, code


def simulate_totals(spec: GenerationSpec) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One business's demand in memory, summed per store and per store and category (no files, no defects).

    Returns the period dates and, per level (``"all"`` and each category name present), a (periods, stores) array of
    units sold: the same business and draws as :func:`generate` with this spec (the same random streams), so the
    totals equal the landing zone's clean rows summed. Aggregates are what a pretraining corpus needs
    (:mod:`bi_pipeline.forecasting.pretraining`): store and category totals are smoother than single items."""
    world_seed, noise_seed, _ = np.random.SeedSequence(spec.seed).spawn(3)
    biz = _build(spec, np.random.default_rng(world_seed))
    noise_rng = np.random.default_rng(noise_seed)
    block = max(1, _BLOCK_ELEMENTS // len(biz.store_of))
    sales = np.concatenate(
        [_draw_block(biz, t0, min(spec.periods, t0 + block), noise_rng)[0] for t0 in range(0, spec.periods, block)]
    )
    sales = np.where(biz.active_item[:, biz.item_of], sales, 0).astype(np.float64)
    n_stores = spec.stores
    categories = biz.items.cat_code[biz.item_of]
    totals: dict[str, np.ndarray] = {}
    names = list(_CATALOG)
    for code in [None, *sorted(set(categories.tolist()))]:
        chosen = slice(None) if code is None else categories == code
        out = np.zeros((spec.periods, n_stores))
        np.add.at(out.T, biz.store_of[chosen], sales[:, chosen].T)
        totals["all" if code is None else names[code]] = out
    dates = np.array(biz.date_str[: spec.periods], dtype="datetime64[D]")
    return dates, totals


# --- defects ------------------------------------------------------------------------------------------------


@dataclass
class _Defect:
    kind: str
    row: int  # 0-based position among the file's generated rows
    instance: int  # 0-based instance number within its kind (rotates the variants)
    param: int


def _plan_defects(
    biz: _Business, rng: np.random.Generator
) -> tuple[dict[int, list[_Defect]], int | None, list[tuple[int, int, int]]]:
    """Which rows of which files get which defect; the malformed file and its (insert at, source, kind)."""
    d = biz.spec.defects
    n_rows = biz.n_rows
    periods = len(n_rows)
    if d == 0:
        return {}, None, []
    malformed_file: int | None = None
    malformed: list[tuple[int, int, int]] = []
    if biz.spec.fmt == "csv":
        # The biggest file dilutes the malformed lines best.
        malformed_file = int(rng.choice(np.flatnonzero(n_rows == n_rows.max())))
        size = int(n_rows[malformed_file])
        at = rng.integers(0, size + 1, d)
        src = rng.integers(0, size, d)
        malformed = [(int(a), int(s), j % 2) for j, (a, s) in enumerate(zip(at, src, strict=True))]

    # Spread row defects: one per file across as many files as possible, then more per file, never above ~2%
    # of a file's rows (and never in the malformed file) unless the data set is too small for that.
    needed = d * len(ROW_DEFECTS)
    limit = np.maximum(1, np.floor(_MAX_DEFECT_SHARE * n_rows).astype(np.int64))
    limit = np.minimum(limit, n_rows)
    if malformed_file is not None and periods > 1:
        limit[malformed_file] = 0
    order = rng.permutation(periods)
    slots: list[int] = []
    level, relaxed = 1, False
    while len(slots) < needed:
        eligible = order[limit[order] >= level]
        if eligible.size == 0:
            if relaxed:
                raise ValueError(
                    f"{int(n_rows.sum())} rows cannot hold {needed} row defects; lower defects or add data"
                )
            limit, relaxed = n_rows.copy(), True
            continue
        slots.extend(int(t) for t in eligible[: needed - len(slots)])
        level += 1
    kinds = [kind for kind in ROW_DEFECTS for _ in range(d)]
    instances = [j for _ in ROW_DEFECTS for j in range(d)]
    assign = rng.permutation(needed)
    params = rng.integers(0, 20, needed)
    by_file: dict[int, list[int]] = {}
    for slot, a in zip(slots, assign, strict=True):
        by_file.setdefault(slot, []).append(int(a))
    plan: dict[int, list[_Defect]] = {}
    for t in sorted(by_file):
        picks = by_file[t]
        rows = rng.choice(int(n_rows[t]), len(picks), replace=False)
        plan[t] = [_Defect(kinds[a], int(r), instances[a], int(params[a])) for a, r in zip(picks, rows, strict=True)]
    return plan, malformed_file, malformed


def _apply_defects(
    rows: list[list[str]],
    defects: list[_Defect],
    t: int,
    date_str: list[str],
    malformed: list[tuple[int, int, int]],
) -> list[str | list[str]]:
    """Edit a file's rows (fields as text) in place; returns the lines to write (malformed ones as text)."""
    original = {m[1]: list(rows[m[1]]) for m in malformed}
    appended: list[list[str]] = []
    period = date.fromisoformat(date_str[t])
    for dfx in defects:
        row = rows[dfx.row]
        j = dfx.instance
        if dfx.kind == "duplicate_exact":
            appended.append(list(row))
        elif dfx.kind == "duplicate_conflict":
            # A correction: the later line wins, the original is quarantined.
            appended.append([*row[:3], str(int(row[3]) + 1 + dfx.param), *row[4:]])
        elif dfx.kind == "sales_negative":
            row[3] = str(-(1 + dfx.param))
        elif dfx.kind == "sales_not_numeric":
            row[3] = _NOT_NUMERIC[j % len(_NOT_NUMERIC)]
        elif dfx.kind == "missing_key":
            row[(0, 1, 2)[j % 3]] = ""
        elif dfx.kind == "unknown_store":
            row[1] = UNKNOWN_STORE
        elif dfx.kind == "unknown_item":
            row[2] = UNKNOWN_ITEM
        elif dfx.kind == "unparseable_date":
            variants = (f"{period.year}-02-30", period.strftime("%d/%m/%Y"), "not a date")
            row[0] = variants[j % 3]
        elif dfx.kind == "date_outside_period":
            row[0] = date_str[t + 2]
        elif dfx.kind == "price_out_of_range":
            row[4] = ("-1.00", "250000.00")[j % 2]
        else:  # pragma: no cover - ROW_DEFECTS is closed
            raise AssertionError(dfx.kind)
    # Appended copies land in a shuffled-but-fixed order after every original line.
    lines: list[str | list[str]] = [*rows, *appended]
    for at, src, kind in sorted(malformed, key=lambda m: -m[0]):
        fields = original[src]
        lines.insert(at, ",".join(fields) + ",x" if kind == 0 else ",".join(fields[:4]))
    return lines


# --- writing ------------------------------------------------------------------------------------------------


def _const_strings(value: str, n: int) -> pa.Array:
    """A string column holding one value n times, built from buffers (no Python objects per row)."""
    raw = value.encode()
    offsets = np.arange(0, len(raw) * (n + 1), len(raw), dtype=np.int32) if raw else np.zeros(n + 1, np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(raw * n))


def _cents_to_decimal(cents: np.ndarray) -> pa.Array:
    """decimal128(12, 2) from integer cents, so prices are written with exactly two decimals ("3.50")."""
    words = np.empty((len(cents), 2), dtype=np.int64)
    words[:, 0] = cents
    words[:, 1] = np.where(cents < 0, -1, 0)
    return pa.Array.from_buffers(pa.decimal128(12, 2), len(cents), [None, pa.py_buffer(words)])


_CSV_HEADER = (",".join(SALES_COLUMNS) + "\n").encode()
_CSV_OPTIONS = pa_csv.WriteOptions(include_header=False, quoting_style="none")


def _write_file(
    path: Path,
    table: pa.Table,
    fmt: str,
    defects: list[_Defect] | None,
    t: int,
    date_str: list[str],
    malformed: list[tuple[int, int, int]],
) -> int:
    """Write one sales file atomically; returns the number of data lines written."""
    tmp = path.with_name(f".{path.name}.tmp")
    if fmt == "csv":
        if not defects and not malformed:
            with open(tmp, "wb") as handle:
                handle.write(_CSV_HEADER)
                pa_csv.write_csv(table, handle, _CSV_OPTIONS)
            os.replace(tmp, path)
            return table.num_rows
        buf = io.BytesIO()
        pa_csv.write_csv(table, buf, _CSV_OPTIONS)
        rows = [line.split(",") for line in buf.getvalue().decode().split("\n")[:-1]]
        lines = _apply_defects(rows, defects or [], t, date_str, malformed)
        text = "".join((line if isinstance(line, str) else ",".join(line)) + "\n" for line in lines)
        with open(tmp, "wb") as handle:
            handle.write(_CSV_HEADER)
            handle.write(text.encode())
        os.replace(tmp, path)
        return len(lines)
    # Parquet holds the same text a CSV would (all columns strings) so defects like "12a" fit one schema.
    text_table = pa.table([col.cast(pa.string()) for col in table.columns], names=list(SALES_COLUMNS))
    if defects:
        columns = [col.to_pylist() for col in text_table.columns]
        rows = [list(r) for r in zip(*columns, strict=True)]
        lines = _apply_defects(rows, defects, t, date_str, [])
        text_table = pa.table(
            [pa.array([line[k] for line in lines], pa.string()) for k in range(len(SALES_COLUMNS))],
            names=list(SALES_COLUMNS),
        )
    pq.write_table(text_table, tmp)
    os.replace(tmp, path)
    return text_table.num_rows


def _write_inventory(
    landing: Path, biz: _Business, t: int, sales: np.ndarray, rows: slice | np.ndarray, rng: np.random.Generator
) -> None:
    """The stock at the end of period ``t`` of the series active in it: on hand a random 0–3 periods of its sales
    there (a few at 0), an order of about one period's sales on the way for a third of them."""
    index = np.arange(len(biz.store_of))[rows]
    level = np.maximum(np.asarray(sales, dtype="float64")[rows], 1.0)
    on_hand = np.round(level * rng.uniform(0.0, 3.0, len(index)))
    on_hand[rng.random(len(index)) < 0.05] = 0
    on_order = np.where(rng.random(len(index)) < 1 / 3, np.round(level * rng.uniform(0.5, 1.5, len(index))), 0)
    lines = [
        (biz.stores.ids[biz.store_of[i]], biz.items.ids[biz.item_of[i]], int(h), int(o))
        for i, h, o in zip(index, on_hand, on_order, strict=True)
    ]
    (landing / "inventory").mkdir(parents=True, exist_ok=True)
    _write_text(
        landing / "inventory" / f"{biz.date_str[t]}.csv",
        _csv_text(("store_id", "item_id", "on_hand", "on_order"), lines),
    )


FUTURE_PERIODS = {"D": 365, "W": 52, "M": 12}


def _planned_calendar(spec: GenerationSpec) -> list[tuple]:
    """A year of calendar rows after the last period: the holidays and events a business knows in advance (local
    events and closures are announced later), so forecasts see the ones ahead of them."""
    ahead = FUTURE_PERIODS[spec.frequency]
    dates = _period_dates(spec, spec.periods + ahead + 1)[spec.periods :].astype(object)
    events: dict[date, list[tuple[str, int]]] = {}
    for year in range(dates[0].year, dates[-1].year + 1):
        for day, name, is_holiday, _ in _events(year):
            events.setdefault(day, []).append((name, is_holiday))
    rows = []
    for start, end in zip(dates[:-1], dates[1:], strict=True):
        found = [events[d] for d in sorted(events) if start <= d < end]
        names = [name for day in found for name, _ in day]
        holiday = int(any(flag for day in found for _, flag in day))
        rows.append((str(start), "", holiday, ";".join(names), 0))
    return rows


def _write_master(landing: Path, biz: _Business) -> None:
    st, it, cal = biz.stores, biz.items, biz.cal
    _write_text(
        landing / "stores.csv",
        _csv_text(
            ("store_id", "region", "format", "size_sqm"),
            [(st.ids[s], st.region[s], st.format[s], int(st.size_sqm[s])) for s in range(len(st.ids))],
        ),
    )
    _write_text(
        landing / "items.csv",
        _csv_text(
            ("item_id", "category", "department", "description", "base_price"),
            [
                (it.ids[i], it.category[i], it.department[i], it.description[i], f"{it.base_price[i]:.2f}")
                for i in range(len(it.ids))
            ],
        ),
    )
    periods = biz.spec.periods
    rows: list[tuple] = [(biz.date_str[t], "", int(cal.holiday[t]), cal.event[t], 0) for t in range(periods)]
    rows.extend(_planned_calendar(biz.spec))
    rows.extend((biz.date_str[t], st.ids[s], int(cal.holiday[t]), name, 1) for t, s, name in biz.local_rows)
    header: tuple[str, ...] = ("date", "store_id", "holiday", "event", "local_event")
    if biz.closed is not None:
        # One row per store and date: a closure on a local event's date is that row's closed flag.
        header = (*header, "closed")
        by_key = {(r[0], r[1]): (*r, 0) for r in rows}
        for t, s in zip(*np.nonzero(biz.closed), strict=True):
            key = (biz.date_str[t], st.ids[s])
            by_key[key] = (*by_key[key][:5], 1) if key in by_key else (*key, int(cal.holiday[t]), "Store closed", 0, 1)
        rows = list(by_key.values())
    rows.sort(key=lambda r: (r[0], r[1]))
    _write_text(landing / "calendar.csv", _csv_text(header, rows))


def true_effects(spec: GenerationSpec) -> pd.DataFrame:
    """The business's ground truth per item, for checking estimates against: ``item_id``, ``category``, the price
    ``elasticity`` of its demand and its ``promo_bump`` (the uplift while promoted, on top of the price cut)."""
    world_seed = np.random.SeedSequence(spec.seed).spawn(3)[0]
    biz = _build(spec, np.random.default_rng(world_seed))
    return pd.DataFrame(
        {
            "item_id": biz.items.ids,
            "category": biz.items.category,
            "elasticity": biz.elasticity.astype("float64"),
            "promo_bump": biz.promo_bump.astype("float64"),
        }
    )


def generate(
    landing: str | Path, spec: GenerationSpec, progress: Callable[[int, int], None] | None = None
) -> GenerationReport:
    """Writes the landing zone (creating dirs; existing sales files of the same names are overwritten), writes
    generation_report.json in the landing root and returns the report."""
    started = time.perf_counter()
    landing = Path(landing)
    sales_dir = landing / "sales"
    sales_dir.mkdir(parents=True, exist_ok=True)
    # Independent streams: the business does not change with the defect settings or the file format.
    world_seed, noise_seed, defect_seed = np.random.SeedSequence(spec.seed).spawn(3)
    biz = _build(spec, np.random.default_rng(world_seed))
    noise_rng = np.random.default_rng(noise_seed)
    plan, malformed_file, malformed = _plan_defects(biz, np.random.default_rng(defect_seed))
    _write_master(landing, biz)

    periods, n_series = spec.periods, len(biz.store_of)
    store_dict = pa.array(biz.stores.ids, pa.string())
    item_dict = pa.array(biz.items.ids, pa.string())
    block = max(1, _BLOCK_ELEMENTS // n_series)
    suffix = ".csv" if spec.fmt == "csv" else ".parquet"
    rows_written = 0
    for t0 in range(0, periods, block):
        t1 = min(periods, t0 + block)
        sales, cents, code = _draw_block(biz, t0, t1, noise_rng)
        for t in range(t0, t1):
            active = biz.active_item[t][biz.item_of]
            # Rows exist only for series inside their active span (a slice avoids copies when all are).
            rows: slice | np.ndarray = slice(None) if active.all() else np.flatnonzero(active)
            k = t - t0
            table = pa.table(
                [
                    _const_strings(biz.date_str[t], int(biz.n_rows[t])),
                    pa.DictionaryArray.from_arrays(pa.array(biz.store_of[rows]), store_dict),
                    pa.DictionaryArray.from_arrays(pa.array(biz.item_of[rows]), item_dict),
                    pa.array(sales[k][rows]),
                    _cents_to_decimal(cents[k][rows]),
                    pa.array(PROMO_DEPTHS[code[k][rows]]),
                ],
                names=list(SALES_COLUMNS),
            )
            path = sales_dir / f"{biz.date_str[t]}{suffix}"
            rows_written += _write_file(
                path,
                table,
                spec.fmt,
                plan.get(t),
                t,
                biz.date_str,
                malformed if t == malformed_file else [],
            )
            if t == periods - 1 and spec.inventory:
                _write_inventory(landing, biz, t, sales[k], rows, np.random.default_rng(spec.seed + 7))
            if progress is not None:
                progress(t + 1, periods)
        del sales, cents, code

    expected = dict.fromkeys(REASON_CODES, 0)
    defect_files: dict[str, set[str]] = {code: set() for code in REASON_CODES}
    for t, defects in plan.items():
        for dfx in defects:
            expected[dfx.kind] += 1
            defect_files[dfx.kind].add(f"{biz.date_str[t]}{suffix}")
    if malformed_file is not None:
        expected["malformed_row"] = len(malformed)
        defect_files["malformed_row"].add(f"{biz.date_str[malformed_file]}{suffix}")
    report = GenerationReport(
        landing=str(landing),
        series=n_series,
        periods=periods,
        frequency=spec.frequency,
        sales_files=periods,
        rows_written=rows_written,
        valid_rows=rows_written - sum(expected.values()),
        expected_quarantine=expected,
        defect_files={code: sorted(files) for code, files in defect_files.items()},
        malformed_file=None if malformed_file is None else f"{biz.date_str[malformed_file]}{suffix}",
        seconds=round(time.perf_counter() - started, 3),
    )
    _write_text(landing / "generation_report.json", json.dumps(report.to_dict(), indent=2) + "\n")
    return report
