"""Quality rules for landed sales: each row is kept or quarantined with exactly one reason code.

The rules run vectorised in pandas (they decide which rows are kept); the same rules are declared as Great
Expectations suites in ``bi_pipeline.expectations`` and validated on the rows before and after cleaning, so the
GX report and the quarantine agree.

Duplicate rule (docs/landing-zone.md): among rows that pass every other rule, exact copies of a row (same key and
same values) keep the first occurrence; rows that share (date, store_id, item_id) but disagree on a value keep the
last occurrence in the file (a later line corrects an earlier one) and quarantine the earlier ones. A landing zone
that declares the transactions grain (``BI_PIPELINE_SALES_GRAIN=transactions``) has many lines per key by design:
there is no duplicate rule, and integration sums the lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bi_pipeline.config import Settings
from bi_pipeline.contract import (
    SALES_OPTIONAL,
    SALES_REQUIRED,
    SOURCE_COLUMNS,
    empty_quarantine,
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
    "line_too_long": "the line is longer than BI_PIPELINE_MAX_LINE_BYTES",
    "malformed_csv": "the file cannot be parsed as CSV",
    "malformed_parquet": "the file cannot be read as Parquet",
    "unsupported_column_type": "a Parquet column holds lists, structs or other non-scalar values",
    "missing_columns": "a required column is missing",
    "duplicate_column": "a column name appears twice",
    "header_too_long": "the header line is longer than BI_PIPELINE_MAX_LINE_BYTES",
    "too_many_columns": "more columns than BI_PIPELINE_MAX_COLUMNS",
    "too_many_rows": "more rows than BI_PIPELINE_MAX_ROWS",
    "file_too_large": "more bytes than BI_PIPELINE_MAX_FILE_BYTES",
    "parquet_too_large": "more uncompressed bytes than BI_PIPELINE_MAX_PARQUET_BYTES",
    "empty_file": "the file holds no rows",
    "file_missing": "the partition's file is gone from the landing zone and was never ingested",
    "duplicate_period": "two files (.csv and .parquet) for one period",
    "path_escape": "the file resolves outside the landing zone",
    "not_a_regular_file": "a FIFO, socket, device or folder where a file was expected",
    "unreadable": "the file cannot be opened or read",
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


# Reason codes as small integers while rules run (0 = row kept); the order is the priority order.
_CODES = ["", *ROW_RULES, *DUPLICATE_RULES]
_CODE = {name: i for i, name in enumerate(_CODES)}
_NUMBER = r"^[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][+-]?[0-9]+)?$"
_ISO_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ].*)?$"


def text_array(series: pd.Series) -> pa.Array:
    """The column as an Arrow string array, trimmed, nulls as empty strings (Arrow kernels: no Python loop)."""
    return pc.utf8_trim_whitespace(_concat_text([series.to_frame(name="text")], "text"))


def _concat_text(frames: list[pd.DataFrame], column: str) -> pa.Array:
    """One column of many frames as one Arrow string array (nulls as empty strings; absent column: empty)."""
    chunks: list[pa.Array] = []
    for frame in frames:
        if column in frame.columns:
            values = frame[column].array
            if hasattr(values, "__arrow_array__"):  # Arrow-backed strings: no copy
                chunk = values.__arrow_array__()
            else:
                chunk = pa.array(np.asarray(values, dtype=object), from_pandas=True)
        else:
            chunk = pa.nulls(len(frame), type=pa.string())
        chunks.extend(chunk.chunks if isinstance(chunk, pa.ChunkedArray) else [chunk])
    if not chunks:
        return pa.array([], type=pa.string())
    # One cast for the whole column rather than one per period (pandas may hand over large_string or nulls).
    kinds = {c.type for c in chunks}
    target = next(iter(kinds)) if len(kinds) == 1 else pa.large_string()
    if len(kinds) > 1:
        chunks = [c.cast(target) for c in chunks]
    combined = pa.chunked_array(chunks, type=target).combine_chunks()
    if combined.type != pa.string():
        combined = combined.cast(pa.string())
    return combined.fill_null("")


def _concat_categorical(frames: list[pd.DataFrame], column: str) -> pd.Categorical:
    """A low-cardinality column (the source file) of many frames, without a string per row."""
    categories: dict[str, int] = {}
    codes = []
    for frame in frames:
        values = frame[column].array
        if not isinstance(values, pd.Categorical):
            values = pd.Categorical(np.asarray(values, dtype=object))
        mapping = np.array([categories.setdefault(str(c), len(categories)) for c in values.categories] or [0])
        own = values.codes
        codes.append(
            mapping[own] if len(mapping) == 1 or own.min(initial=0) >= 0 else np.where(own < 0, -1, mapping[own])
        )
    all_codes = np.concatenate(codes) if codes else np.array([], dtype=np.int64)
    return pd.Categorical.from_codes(all_codes, categories=list(categories))


def _blank(text: pa.Array) -> np.ndarray:
    return pc.equal(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False)


def number_array(text: pa.Array) -> np.ndarray:
    """Finite numbers as float64; NaN where the text is blank or not a number ('inf', '12a', '1,5')."""
    valid = pc.match_substring_regex(text, _NUMBER)
    numbers = pc.cast(pc.if_else(valid, text, pa.scalar(None, pa.string())), pa.float64())
    return numbers.to_numpy(zero_copy_only=False).copy()  # writable: callers fill blanks


def date_array(text: pa.Array) -> np.ndarray:
    """ISO dates (a time part after 'T' or a space is allowed) as datetime64[D]; NaT otherwise (e.g. 2023-02-30)."""
    shaped = pc.match_substring_regex(text, _ISO_DATE)
    head = pc.if_else(shaped, pc.utf8_slice_codeunits(text, 0, 10), pa.scalar(None, pa.string()))
    # Dates repeat (a file holds one period): parse each distinct value once.
    encoded = pc.dictionary_encode(head)
    distinct = encoded.dictionary
    parsed = pc.strptime(distinct, format="%Y-%m-%d", unit="s", error_is_null=True)
    # strptime rolls impossible days over (2023-02-30 -> 03-02); a date must print back as it was written.
    valid = pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), distinct)
    parsed = pc.if_else(valid, parsed, pa.scalar(None, parsed.type))
    days = pc.cast(parsed, pa.date32()).to_numpy(zero_copy_only=False).astype("datetime64[D]")
    indices = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    out = np.append(days, np.datetime64("NaT", "D"))[np.where(indices < 0, len(days), indices)]
    return out.astype("datetime64[D]")


_TRUE = ("true", "t", "yes", "y")
_FALSE = ("false", "f", "no", "n")


def flag_array(text: pa.Array) -> np.ndarray | None:
    """1.0 / 0.0 where every non-blank value is a boolean word (true/false, yes/no, t/f, y/n, any case), NaN where
    blank; None when some value is not one (the column is not a flag)."""
    lower = pc.utf8_lower(pc.utf8_trim_whitespace(text))
    blank = pc.equal(pc.utf8_length(lower), 0)
    truthy = pc.is_in(lower, value_set=pa.array(_TRUE))
    falsy = pc.is_in(lower, value_set=pa.array(_FALSE))
    if not pc.all(pc.or_(blank, pc.or_(truthy, falsy))).as_py() or pc.all(blank).as_py():
        return None
    out = np.where(truthy.to_numpy(zero_copy_only=False), 1.0, 0.0)
    out[blank.to_numpy(zero_copy_only=False)] = np.nan
    return out


def typed_text(values: pd.Series) -> pd.Series:
    """A text column of master data or the calendar typed as the model reads it: numbers (booleans as 1/0 flags)
    when every non-blank value is one, text otherwise (blank -> missing)."""
    arrow = text_array(values)
    numbers = number_array(arrow)
    blank = _blank(arrow)
    if not np.isnan(numbers[~blank]).any():
        return pd.Series(numbers, index=values.index)
    flags = flag_array(arrow)
    if flags is not None:
        return pd.Series(flags, index=values.index)
    text = pd.Series(arrow.to_pylist(), index=values.index, dtype=object)
    return text.where(~blank, None)


def parse_dates(series: pd.Series) -> np.ndarray:
    """ISO dates of a text column as datetime64[D]; NaT where the text is not a date."""
    return date_array(text_array(series))


def period_end(period: np.ndarray, frequency: str) -> np.ndarray:
    """Exclusive end of each period (datetime64[D]) for period start dates."""
    if frequency == "D":
        return period + np.timedelta64(1, "D")
    if frequency == "W":
        return period + np.timedelta64(7, "D")
    return (period.astype("datetime64[M]") + np.timedelta64(1, "M")).astype("datetime64[D]")


def period_start_array(period: np.ndarray, frequency: str) -> np.ndarray:
    return period.astype("datetime64[M]").astype("datetime64[D]") if frequency == "M" else period


def categorical_array(text: pa.Array) -> pd.Categorical:
    encoded = pc.dictionary_encode(text)
    return pd.Categorical.from_codes(encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary.to_pylist())


@dataclass
class CleanBatch:
    """The per-period results plus the typed values of every row of the batch (what GX validates)."""

    results: dict[str, CleanResult]
    period: np.ndarray  # datetime64[D] per row
    dates: np.ndarray  # datetime64[D], NaT where unreadable
    store: pd.Categorical
    item: pd.Categorical
    sales: np.ndarray  # float64, NaN where unreadable
    price: np.ndarray
    kept: np.ndarray  # bool: the row went to clean_sales


def clean_periods(
    batch: Mapping[str, tuple[pd.DataFrame, pd.DataFrame | None]],
    frequency: str,
    settings: Settings,
    known_stores: set[str] | None = None,
    known_items: set[str] | None = None,
) -> dict[str, CleanResult]:
    """The rules over many periods at once (see ``clean_batch``): {period: (raw text rows, reader issues)}."""
    return clean_batch(batch, frequency, settings, known_stores, known_items).results


def clean_batch(
    batch: Mapping[str, tuple[pd.DataFrame, pd.DataFrame | None]],
    frequency: str,
    settings: Settings,
    known_stores: set[str] | None = None,
    known_items: set[str] | None = None,
) -> CleanBatch:
    """Apply the rules to many periods in one vectorised pass: {period: (raw text rows, reader issues)}.

    One pass over a whole backfill is what makes a million rows take about a second rather than a minute of
    per-period overhead. Rows of different periods can never be duplicates of each other (dates must fall inside
    their own period), so judging duplicates over the batch is the same as judging them per file.
    """
    keys = list(batch)
    frames = [batch[k][0] for k in keys]
    sizes = np.array([len(f) for f in frames], dtype=np.int64)
    n = int(sizes.sum())
    period = np.repeat(np.array([np.datetime64(k, "D") for k in keys], dtype="datetime64[D]"), sizes)
    reason = np.zeros(n, dtype=np.int8)
    # Columns straight from each frame's Arrow arrays: a pandas concat of many small frames costs more than the rules.
    names = list(dict.fromkeys(c for f in frames for c in f.columns))
    landed = {c: _concat_text(frames, c) for c in names if c not in SOURCE_COLUMNS}
    source_file = _concat_categorical(frames, "source_file")
    source_row = np.concatenate([f["source_row"].to_numpy(dtype=np.int64) for f in frames]) if n else np.array([])

    def flag(mask: np.ndarray, code: str) -> None:
        reason[mask & (reason == 0)] = _CODE[code]

    text = {c: pc.utf8_trim_whitespace(landed[c]) for c in (*SALES_REQUIRED, *SALES_OPTIONAL)}
    flag(_blank(text["date"]) | _blank(text["store_id"]) | _blank(text["item_id"]), "missing_key")
    dates = date_array(text["date"])
    flag(np.isnat(dates), "unparseable_date")
    start = period_start_array(period, frequency)
    inside = (dates >= start) & (dates < period_end(start, frequency))
    flag(~np.isnat(dates) & ~inside, "date_outside_period")
    flag(_blank(text["sales"]), "sales_missing")
    sales = number_array(text["sales"])
    flag(np.isnan(sales), "sales_not_numeric")
    if not settings.allow_returns:
        flag(sales < 0, "sales_negative")
    if known_stores is not None:
        known = pc.is_in(text["store_id"], value_set=pa.array(sorted(known_stores), type=pa.string()))
        flag(~known.to_numpy(zero_copy_only=False), "unknown_store")
    if known_items is not None:
        known = pc.is_in(text["item_id"], value_set=pa.array(sorted(known_items), type=pa.string()))
        flag(~known.to_numpy(zero_copy_only=False), "unknown_item")
    price = number_array(text["price"])
    flag(~_blank(text["price"]) & np.isnan(price), "price_not_numeric")
    flag(~np.isnan(price) & ((price < settings.price_min) | (price > settings.price_max)), "price_out_of_range")
    promo_blank = _blank(text["promo"])
    promo = number_array(text["promo"])
    flag(~promo_blank & np.isnan(promo), "promo_not_numeric")
    promo[promo_blank] = 0.0

    store = categorical_array(text["store_id"])
    item = categorical_array(text["item_id"])
    extras: dict[str, np.ndarray | pd.Categorical] = {}
    for column in [c for c in landed if c not in (*SALES_REQUIRED, *SALES_OPTIONAL)]:
        values = pc.utf8_trim_whitespace(landed[column])
        numbers = number_array(values)
        # A numeric extra stays numeric, a boolean one becomes a 1/0 flag; anything else is carried as text.
        if not np.isnan(numbers[~_blank(values)]).any():
            extras[column] = numbers
        else:
            flags = flag_array(values)
            extras[column] = flags if flags is not None else categorical_array(values)

    # Duplicates are judged among rows that pass every other rule, on the typed values; a transactions export has
    # many lines per key by design, and they are summed downstream.
    ok = reason == 0
    if ok.any() and settings.sales_grain != "transactions":
        typed = pd.DataFrame(
            {
                "date": dates.view("int64"),
                "store": store.codes,
                "item": item.codes,
                "sales": sales,
                "price": price,
                "promo": promo,
                **{c: (v.codes if isinstance(v, pd.Categorical) else v) for c, v in extras.items()},
            }
        )
        candidates = typed[ok]
        exact = candidates.duplicated(keep="first").to_numpy()
        reason[np.flatnonzero(ok)[exact]] = _CODE["duplicate_exact"]
        ok = reason == 0
        conflict = typed[ok].duplicated(subset=["date", "store", "item"], keep="last").to_numpy()
        reason[np.flatnonzero(ok)[conflict]] = _CODE["duplicate_conflict"]
        ok = reason == 0

    clean = pd.DataFrame(
        {
            "period": period[ok].astype("datetime64[ns]"),
            "date": dates[ok].astype("datetime64[ns]"),
            "store_id": store[ok].remove_unused_categories(),
            "item_id": item[ok].remove_unused_categories(),
            "sales": sales[ok].astype("float32"),
            "price": price[ok].astype("float32"),
            "promo": promo[ok].astype("float32"),
        }
    )
    for column, values in extras.items():
        clean[column] = values[ok].remove_unused_categories() if isinstance(values, pd.Categorical) else values[ok]
    clean["source_file"] = source_file[ok].remove_unused_categories()
    clean["source_row"] = source_row[ok]

    bad = np.flatnonzero(~ok)
    # Built column-wise: a file in the wrong date format can send a million rows here at once.
    text_type = pd.StringDtype()
    bad_codes = reason[bad]
    row_quarantine = pd.DataFrame(
        {
            "period": pd.array(np.datetime_as_string(period[bad], unit="D"), dtype=text_type),
            "source_file": pd.array(np.asarray(source_file.take(bad), dtype=object), dtype=text_type),
            "source_row": source_row[bad].astype(np.int64),
            "reason": pd.array(np.array(_CODES, dtype=object)[bad_codes], dtype=text_type),
            "detail": pd.array(
                np.array([REASONS.get(c, "") for c in _CODES], dtype=object)[bad_codes], dtype=text_type
            ),
            # Exactly as landed, whitespace included.
            **{c: pd.array(landed[c].take(pa.array(bad, type=pa.int64())).to_pylist(), dtype=text_type) for c in text},
        }
    )

    # Split back into periods: rows were concatenated period by period, so each period is one contiguous block.
    bounds = np.concatenate(([0], np.cumsum(sizes)))
    # One shared empty quarantine for the (many) periods with nothing set aside; nothing downstream mutates it.
    empty = empty_quarantine()
    kept_before = np.concatenate(([0], np.cumsum(ok)))
    bad_bounds = np.searchsorted(bad, bounds)
    results: dict[str, CleanResult] = {}
    for i, key in enumerate(keys):
        lo, hi = kept_before[bounds[i]], kept_before[bounds[i + 1]]
        issues = batch[key][1]
        parts = [issues] if issues is not None and len(issues) else []
        if bad_bounds[i] < bad_bounds[i + 1]:
            parts.append(row_quarantine.iloc[bad_bounds[i] : bad_bounds[i + 1]])
        quarantine = (
            (pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True))
            if parts
            else empty
        )
        if len(parts) > 1:
            quarantine = quarantine.sort_values("source_row", kind="stable").reset_index(drop=True)
        results[key] = CleanResult(
            clean=clean.iloc[lo:hi],
            quarantine=quarantine,
            rows_in=int(sizes[i]) + (len(issues) if issues is not None else 0),
            reason_counts=_count_reasons(quarantine) if len(quarantine) else {},
        )
    return CleanBatch(results, period, dates, store, item, sales, price, ok)


def _count_reasons(quarantine: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in quarantine["reason"].astype(str).value_counts(sort=False).items()}


def clean_period(
    raw: pd.DataFrame,
    period: str,
    frequency: str,
    settings: Settings,
    known_stores: set[str] | None = None,
    known_items: set[str] | None = None,
    issues: pd.DataFrame | None = None,
) -> CleanResult:
    """The rules for one period's raw text rows; ``issues`` are lines the reader already set aside."""
    return clean_periods({period: (raw, issues)}, frequency, settings, known_stores, known_items)[period]


def known_ids(master: pd.DataFrame | None, key: str) -> set[str] | None:
    """The ids a master file declares; None (no check) when the file was not landed."""
    if master is None:
        return None
    return set(master[key].astype(str).str.strip())


def stored_period_rates(
    clean: Mapping[str, pd.DataFrame], quarantine: Mapping[str, pd.DataFrame]
) -> dict[str, CleanResult]:
    """Each stored period's kept and quarantined rows as results the gate reads (the rows read are their sum)."""
    out = {}
    for key in sorted(set(clean) | set(quarantine)):
        kept = clean.get(key)
        bad = quarantine.get(key)
        bad = bad if bad is not None else empty_quarantine()
        rows_in = (len(kept) if kept is not None else 0) + len(bad)
        counts = _count_reasons(bad) if len(bad) else {}
        out[key] = CleanResult(kept if kept is not None else pd.DataFrame(), bad, rows_in, counts)
    return out


def summarize_rejections(results: dict[str, CleanResult], threshold: float) -> list[str]:
    """One line per partition over the bad-row threshold, naming the file and the rules broken."""
    lines = []
    for key, result in sorted(results.items()):
        if result.bad_row_rate > threshold:
            files = sorted(set(result.quarantine["source_file"].astype(str))) or [f"sales/{key}"]
            rules = ", ".join(f"{r} ({n})" for r, n in sorted(result.reason_counts.items(), key=lambda kv: -kv[1]))
            line = (
                f"{', '.join(files)}: {result.bad_rows} of {result.rows_in} rows quarantined "
                f"({result.bad_row_rate:.1%} > {threshold:.1%}); rules broken: {rules}"
            )
            repeats = sum(result.reason_counts.get(r, 0) for r in DUPLICATE_RULES)
            if 2 * repeats >= result.bad_rows:
                # Mostly repeated keys: a transaction-level export, not a broken file.
                line += (
                    ". Many lines share a date, store_id and item_id: if the file lists transactions, set "
                    "BI_PIPELINE_SALES_GRAIN=transactions or aggregate it with `bi-pipeline import-csv`"
                )
            lines.append(line)
    return lines
