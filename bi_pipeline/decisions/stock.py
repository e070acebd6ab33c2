"""Stock snapshots (no Dagster): ``inventory/<YYYY-MM-DD>.csv`` (or ``.parquet``) with ``store_id``, ``item_id``,
``on_hand`` and an optional ``on_order``, the stock at the end of the period the file is named after. Read as text,
checked row by row: good rows go on, bad ones are quarantined with the rule they broke and their values as landed, as
sales rows are."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bi_pipeline.contract import ContractError, open_regular

INVENTORY_DIR = "inventory"
REQUIRED = ("store_id", "item_id", "on_hand")
OPTIONAL = ("on_order",)
QUARANTINE_COLUMNS = ("period", "source_file", "source_row", "reason", "detail", *REQUIRED, *OPTIONAL)
# Rule names, as the quarantine's ``reason`` column gives them.
REASONS = ("missing_id", "on_hand_not_a_number", "negative_stock", "on_order_not_a_number", "duplicate_key")


@dataclass
class Snapshot:
    """One period's stock: the rows that passed every rule and the quarantined ones."""

    period: str
    stock: pd.DataFrame  # store_id, item_id, on_hand, on_order, period
    quarantine: pd.DataFrame  # QUARANTINE_COLUMNS

    @property
    def rows(self) -> int:
        return len(self.stock) + len(self.quarantine)


def read_snapshot(path: Path, landing: Path, period: str, max_bytes: int = 1 << 30) -> Snapshot:
    """The snapshot of ``period`` from ``path``. A file that cannot be a snapshot (too large, not a CSV, a required
    column missing) raises a :class:`ContractError` naming it; a bad row is quarantined with its reason."""
    rel = str(Path(path).resolve().relative_to(Path(landing).resolve()))
    fd = open_regular(Path(path))
    with os.fdopen(fd, "rb") as handle:
        if os.fstat(handle.fileno()).st_size > max_bytes:
            raise ContractError(rel, "file_too_large", f"over {max_bytes} bytes")
        try:
            if rel.lower().endswith(".parquet"):
                raw = pd.read_parquet(handle).astype("string").fillna("").astype(str)
            else:
                raw = pd.read_csv(handle, dtype=str, keep_default_na=False, skipinitialspace=True)
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError, OSError, ValueError) as exc:
            raise ContractError(rel, "unreadable", f"not a readable snapshot: {exc}") from None
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise ContractError(rel, "missing_column", f"a stock snapshot needs {', '.join(missing)}")
    if "on_order" not in raw.columns:
        raw["on_order"] = ""
    raw = raw[[*REQUIRED, *OPTIONAL]].apply(lambda c: c.str.strip())
    raw["source_row"] = range(2, len(raw) + 2)  # header = row 1
    on_hand = pd.to_numeric(raw["on_hand"], errors="coerce")
    on_order = pd.to_numeric(raw["on_order"].replace("", "0"), errors="coerce")
    reason = pd.Series("", index=raw.index)
    detail = pd.Series("", index=raw.index)
    rules = [
        ((raw["store_id"] == "") | (raw["item_id"] == ""), "missing_id", "store_id and item_id must not be empty"),
        (on_hand.isna(), "on_hand_not_a_number", "on_hand must be a number"),
        ((on_hand < 0) | (on_order < 0), "negative_stock", "on_hand and on_order must not be negative"),
        (on_order.isna(), "on_order_not_a_number", "on_order must be a number or empty"),
    ]
    for broken, name, text in rules:
        fresh = broken & (reason == "")
        reason[fresh], detail[fresh] = name, text
    keys = raw["store_id"] + "\x1f" + raw["item_id"]
    repeated = keys.duplicated(keep=False) & (reason == "")
    reason[repeated] = "duplicate_key"
    detail[repeated] = "more than one row for this store_id and item_id"
    bad = reason != ""
    quarantine = raw[bad].assign(period=period, source_file=rel, reason=reason[bad], detail=detail[bad])
    stock = pd.DataFrame(
        {
            "store_id": raw.loc[~bad, "store_id"],
            "item_id": raw.loc[~bad, "item_id"],
            "on_hand": on_hand[~bad].astype("float64"),
            "on_order": on_order[~bad].astype("float64"),
            "period": pd.Timestamp(period),
        }
    ).reset_index(drop=True)
    return Snapshot(period, stock, quarantine[list(QUARANTINE_COLUMNS)].reset_index(drop=True))
