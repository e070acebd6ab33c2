"""The landing-zone contract: what files users drop, how they are named, and which of them are ready to ingest.

```
<landing>/
  sales/<YYYY-MM-DD>.csv|.parquet   one file per period; date, store_id, item_id, sales [, price, promo, extra...]
  stores.csv                        store_id + attributes                       (optional)
  items.csv                         item_id + attributes [, description]        (optional)
  calendar.csv                      date [, store_id] + known-in-advance covariates (optional)
```
A sales file is named after its period, and period dates lie on one grid: every day (D), one weekday (W) or the
first of each month (M). Only regular files are read (no FIFOs, sockets or devices; a link is followed only to a
regular file inside the landing zone), and only once they are complete: unchanged across two scans and, for a CSV,
ending with a line break (a Parquet file with its footer). Raw values are kept as text (``raw_sales``) so that a
value which fails a rule reaches the quarantine exactly as it landed; every row carries its ``source_file`` and
``source_row`` (1-based line number, header = line 1). Reading lives in ``bi_pipeline.readers``.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
import re
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

SALES_DIR = "sales"
SALES_REQUIRED = ("date", "store_id", "item_id", "sales")
SALES_OPTIONAL = ("price", "promo")
SALES_SUFFIXES = (".csv", ".parquet")
SOURCE_COLUMNS = ("source_file", "source_row")
CONTRACT_COLUMNS = frozenset((*SALES_REQUIRED, *SALES_OPTIONAL, "description"))
# Columns of the quarantine table: raw values as landed plus where they came from and why they were set aside.
QUARANTINE_COLUMNS = (
    "period",
    "source_file",
    "source_row",
    "reason",
    "detail",
    *SALES_REQUIRED,
    *SALES_OPTIONAL,
)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_KEY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Names used by editors, browsers and copy tools while a file is still being written.
_IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", ".filepart", ".inprogress")
_COMPRESSED_SUFFIXES = (".gz", ".zip", ".bz2", ".xz", ".zst", ".7z")
_PARQUET_MAGIC = b"PAR1"


class ContractError(ValueError):
    """A landed file breaks the contract. Names the file, the row (when there is one) and the rule."""

    def __init__(self, file: str, rule: str, message: str, row: int | None = None) -> None:
        self.file = file
        self.rule = rule
        self.row = row
        self.message = message
        where = f"{file}" + (f", row {row}" if row is not None else "")
        super().__init__(f"{where}: rule '{rule}': {message}")


@dataclass(frozen=True)
class LandedFile:
    key: str  # partition key: the period date, YYYY-MM-DD
    path: Path
    relpath: str  # relative to the landing root, e.g. "sales/2024-01-07.csv"
    sha256: str
    size: int
    mtime: float


@dataclass
class ScanResult:
    ready: list[LandedFile] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # "sales/x.csv: why"; looked at again next time
    rejected: list[ContractError] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # content removed on purpose (bi-pipeline remove-period)
    # What this scan saw of each file, for the next scan: {relpath: {inode, size, mtime_ns[, sha256]}}.
    seen: dict[str, dict] = field(default_factory=dict)
    grid: PeriodGrid | None = None


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def parse_period_key(key: str, file: str | None = None) -> date:
    """The period date a sales file is named after; a ContractError for anything else."""
    file = file or key
    if not _KEY_RE.match(key):
        raise ContractError(file, "file_name_not_a_date", f"sales files must be named YYYY-MM-DD, got {key!r}")
    try:
        return date.fromisoformat(key)
    except ValueError as exc:
        raise ContractError(file, "file_name_not_a_date", f"{key!r} is not a calendar date: {exc}") from None


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def open_regular(path: Path) -> int:
    """A read-only descriptor of a regular file, never blocking and never following a link at open time.

    A link is resolved first (so one inside the landing zone still works) and the resolved path opened with
    O_NOFOLLOW; O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer forever.
    """
    resolved = os.path.realpath(path)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(resolved, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ContractError(str(path), "not_a_regular_file", f"{_kind(info.st_mode)} is not read")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def split_sales_name(name: str) -> tuple[str, str]:
    """(key, lower-case suffix) of a sales file name: ``2024-01-08.CSV`` -> ("2024-01-08", ".csv")."""
    lower = name.lower()
    for suffix in SALES_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)], suffix
    stem, dot, ext = name.rpartition(".")
    return (stem, f".{ext.lower()}") if dot else (name, "")


def sales_index(landing: Path) -> dict[str, list[Path]]:
    """{period key: sales files named after it}, one directory listing for a whole run (suffix case ignored)."""
    sales_dir = landing / SALES_DIR
    index: dict[str, list[Path]] = collections.defaultdict(list)
    if sales_dir.is_dir():
        for entry in sorted(os.scandir(sales_dir), key=lambda e: e.name):
            key, suffix = split_sales_name(entry.name)
            if suffix in SALES_SUFFIXES:
                index[key].append(Path(entry.path))
    return dict(index)


def sales_file_for_key(landing: Path, key: str, index: dict[str, list[Path]] | None = None) -> Path:
    """The one sales file landed for a period. Refuses keys and links that would lead outside the landing zone."""
    parse_period_key(key, file=f"{SALES_DIR}/{key}")
    found = (sales_index(landing) if index is None else index).get(key, [])
    if not found:
        raise ContractError(
            f"{SALES_DIR}/{key}", "file_missing", f"no sales file for period {key} in {landing / SALES_DIR}"
        )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ContractError(f"{SALES_DIR}/{key}", "duplicate_period", f"more than one file for {key}: {names}")
    path = found[0]
    if not _inside(path, landing):
        raise ContractError(f"{SALES_DIR}/{path.name}", "path_escape", "the file resolves outside the landing zone")
    return path


# --- frequency, periods and the period grid ----------------------------------------------------------------------


def infer_frequency(period_dates: Iterable[date | str], default: str = "D") -> str:
    """'D', 'W' or 'M' from the period dates. Most dates on the first of the month: monthly; most on one weekday:
    weekly; otherwise the commonest gap between dates (so missing periods, and a stray file off the grid, do not
    decide it)."""
    dates = sorted({d if isinstance(d, date) else date.fromisoformat(d) for d in period_dates})
    if len(dates) < 2:
        return default
    firsts = [d for d in dates if d.day == 1]
    if len(firsts) >= 2 and 2 * len(firsts) >= len(dates):
        return "M"
    weekday, count = collections.Counter(d.weekday() for d in dates).most_common(1)[0]
    if count >= 2 and 2 * count >= len(dates):
        same = np.array([d for d in dates if d.weekday() == weekday], dtype="datetime64[D]")
        if np.median(np.diff(same).astype(int)) < 28:
            return "W"
    gaps = np.diff(np.array(dates, dtype="datetime64[D]")).astype(int)
    values, counts = np.unique(gaps, return_counts=True)
    common = values[counts == counts.max()]
    # Monthly gaps are 28..31 days: count them as one kind before picking the commonest.
    monthly = (gaps >= 28) & (gaps <= 31)
    gap = 30 if monthly.sum() > counts.max() else int(common.min())
    if gap == 1:
        return "D"
    if gap == 7:
        return "W"
    if 28 <= gap <= 31:
        return "M"
    raise ValueError(
        f"cannot infer the frequency from period dates {dates[0]} .. {dates[-1]} (commonest gap {gap} days); "
        "set BI_PIPELINE_FREQUENCY to D, W or M"
    )


def period_start(day: date, frequency: str) -> date:
    return day.replace(day=1) if frequency == "M" else day


def next_period(day: date, frequency: str) -> date:
    if frequency == "D":
        return day + timedelta(days=1)
    if frequency == "W":
        return day + timedelta(days=7)
    start = day.replace(day=1)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def period_bounds(key: date, frequency: str) -> tuple[date, date]:
    """[start, end) of the period a sales file covers: the day, the 7 days from the file date, or its month."""
    start = period_start(key, frequency)
    return start, next_period(start, frequency)


def period_range(first: date, last: date, frequency: str) -> list[date]:
    out, day = [], period_start(first, frequency)
    while day <= last:
        out.append(day)
        day = next_period(day, frequency)
    return out


@dataclass(frozen=True)
class PeriodGrid:
    """The dates sales files may be named after: every day, one weekday, or the first of each month."""

    frequency: str
    weekday: int = 0  # weekly grids: Monday = 0

    def floor(self, day: date) -> date:
        """The grid date at or before ``day``."""
        if self.frequency == "M":
            return day.replace(day=1)
        if self.frequency == "W":
            return day - timedelta(days=(day.weekday() - self.weekday) % 7)
        return day

    def on_grid(self, day: date) -> bool:
        return self.floor(day) == day

    def describe(self) -> str:
        if self.frequency == "M":
            return "monthly periods are named by their first day"
        if self.frequency == "W":
            return f"weekly periods start on {WEEKDAYS[self.weekday].capitalize()}"
        return "daily periods"

    def off_grid_error(self, day: date, file: str) -> ContractError:
        before = self.floor(day)
        after = next_period(before, self.frequency)
        return ContractError(
            file,
            "off_grid_date",
            f"{day} is not a period date ({self.describe()}); expected {before} or {after}. "
            "Rename the file to its period's date (a period holds one file)",
        )


def infer_grid(period_dates: Iterable[date | str], frequency: str | None = None, week_start: str | None = None):
    """The grid of a landing zone: the configured or inferred frequency; for weekly data the configured weekday or
    the commonest weekday of the dates (ties: the earliest date's)."""
    dates = sorted({d if isinstance(d, date) else date.fromisoformat(d) for d in period_dates})
    frequency = frequency or infer_frequency(dates)
    if frequency != "W":
        return PeriodGrid(frequency)
    if week_start:
        return PeriodGrid("W", WEEKDAYS.index(week_start.lower()[:3]))
    if not dates:
        return PeriodGrid("W", 0)
    counts = collections.Counter(d.weekday() for d in dates)
    top = max(counts.values())
    return PeriodGrid("W", next(d.weekday() for d in dates if counts[d.weekday()] == top))


# --- scanning the landing zone -----------------------------------------------------------------------------------


def _observe(fd: int) -> dict:
    info = os.fstat(fd)
    return {"inode": int(info.st_ino), "size": int(info.st_size), "mtime_ns": int(info.st_mtime_ns)}


def _same(a: dict | None, b: dict) -> bool:
    return a is not None and all(a.get(k) == b[k] for k in ("inode", "size", "mtime_ns"))


def _incomplete(fd: int, size: int, suffix: str) -> str | None:
    """Why a file does not look complete (None when it does): a CSV ends with a line break, Parquet with its footer."""
    if size == 0:
        return "is empty (still being written?)"
    if suffix == ".csv":
        last = os.pread(fd, 1, size - 1)
        return None if last in (b"\n", b"\r") else "does not end with a line break (still being written?)"
    head, tail = os.pread(fd, 4, 0), os.pread(fd, 4, max(size - 4, 0))
    return None if head == tail == _PARQUET_MAGIC else "has no Parquet footer yet (still being written?)"


def _hash_fd(fd: int, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    offset = 0
    while block := os.pread(fd, chunk, offset):
        digest.update(block)
        offset += len(block)
    return digest.hexdigest()


def scan_sales_dir(
    landing: Path,
    settle_seconds: float = 2.0,
    now: float | None = None,
    *,
    previous: dict[str, dict] | None = None,
    assume_complete: bool = False,
    known_keys: Iterable[str] = (),
    frequency: str | None = None,
    week_start: str | None = None,
    removed: dict[str, dict] | None = None,
    subdir: str = SALES_DIR,
) -> ScanResult:
    """List the sales files that are ready to ingest, those still being written and those that break the contract.

    A file is ready when it is complete: ``previous`` (what the last scan saw, ``ScanResult.seen``) shows the same
    size, mtime and inode, it was not modified in the last ``settle_seconds``, and it ends as a complete file does.
    ``assume_complete`` skips those checks (scripted drops of finished files). A hash in ``previous`` for the same
    (inode, size, mtime) is reused rather than read again. Period dates must lie on the grid of the landing zone,
    inferred from these files and ``known_keys`` (periods already ingested). Content in ``removed``
    (``relpath@sha256``) was removed on purpose and is not offered again. Never raises for a bad file: the sensor
    that calls this must keep running whatever lands.
    """
    result = ScanResult()
    sales_dir = landing / subdir
    if not sales_dir.is_dir():
        return result
    now = time.time() if now is None else now
    previous = previous or {}
    by_key: dict[str, list[tuple[Path, str]]] = {}
    for entry in sorted(os.scandir(sales_dir), key=lambda e: e.name):
        name = entry.name
        rel = f"{subdir}/{name}"
        path = Path(entry.path)
        if name.startswith((".", "~")) or name.lower().endswith(_IN_PROGRESS_SUFFIXES):
            result.pending.append(f"{rel}: temporary name (rename it when complete)")
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                if not _inside(path, landing):
                    raise ContractError(rel, "path_escape", "the file resolves outside the landing zone")
                info = os.stat(path)
        except ContractError as exc:
            result.rejected.append(exc)
            continue
        except OSError as exc:  # a dangling link, or the entry vanished
            result.rejected.append(ContractError(rel, "unreadable", str(exc)))
            continue
        if not stat.S_ISREG(info.st_mode):
            result.rejected.append(ContractError(rel, "not_a_regular_file", f"{_kind(info.st_mode)} is not read"))
            continue
        key, suffix = split_sales_name(name)
        if suffix not in SALES_SUFFIXES:
            hint = (
                f"compressed files are not read: decompress it into {subdir}/ as .csv or .parquet"
                if suffix in _COMPRESSED_SUFFIXES
                else f"expected one of {', '.join(SALES_SUFFIXES)}"
            )
            result.rejected.append(ContractError(rel, "unsupported_format", f"{suffix or 'no suffix'}: {hint}"))
            continue
        try:
            parse_period_key(key, file=rel)
        except ContractError as exc:
            result.rejected.append(exc)
            continue
        by_key.setdefault(key, []).append((path, suffix))

    keys = [*by_key, *known_keys]
    try:
        result.grid = infer_grid(keys, frequency, week_start)
    except ValueError:
        result.grid = None  # no grid to check yet; the stages that need the frequency say so by name
    for key, paths in sorted(by_key.items()):
        if len(paths) > 1:
            names = ", ".join(p.name for p, _ in paths)
            result.rejected.append(
                ContractError(f"{subdir}/{key}", "duplicate_period", f"more than one file for {key}: {names}")
            )
            continue
        path, suffix = paths[0]
        rel = f"{subdir}/{path.name}"
        if result.grid is not None and not result.grid.on_grid(date.fromisoformat(key)):
            result.rejected.append(result.grid.off_grid_error(date.fromisoformat(key), rel))
            continue
        try:
            fd = open_regular(path)
        except ContractError as exc:
            result.rejected.append(ContractError(rel, exc.rule, exc.message))
            continue
        except OSError as exc:  # vanished or unreadable between listing and reading
            result.rejected.append(ContractError(rel, "unreadable", str(exc)))
            continue
        try:
            seen = _observe(fd)
            before = previous.get(rel)
            result.seen[rel] = dict(seen)
            if not assume_complete:
                if not _same(before, seen):
                    result.pending.append(f"{rel}: new or changed since the last scan")
                    continue
                if now - seen["mtime_ns"] / 1e9 < settle_seconds:
                    result.pending.append(f"{rel}: modified in the last {settle_seconds:g} s")
                    continue
                problem = _incomplete(fd, seen["size"], suffix)
                if problem:
                    result.pending.append(f"{rel}: {problem}")
                    continue
            digest = before["sha256"] if _same(before, seen) and before.get("sha256") else _hash_fd(fd)
            result.seen[rel]["sha256"] = digest
        except OSError as exc:
            result.rejected.append(ContractError(rel, "unreadable", str(exc)))
            continue
        finally:
            os.close(fd)
        if removed and f"{rel}@{digest}" in removed:
            entry = removed[f"{rel}@{digest}"]
            result.removed.append(
                f"{rel}: period {entry.get('period')} removed on purpose by {entry.get('by')} at {entry.get('at')} "
                f"({entry.get('reason')}); land changed content to ingest it again"
            )
            continue
        result.ready.append(LandedFile(key, path, rel, digest, seen["size"], seen["mtime_ns"] / 1e9))
    return result


STABILITY_PENDING = ("new or changed since the last scan", "modified in the last")


def scan_until_stable(
    landing: Path,
    settle_seconds: float,
    previous: dict[str, dict] | None = None,
    assume_complete: bool = False,
    **kwargs,
) -> ScanResult:
    """A scan and, when some file was new, changed or just modified, a second one ``settle_seconds`` later (at least
    1 s), as the sensor's next tick would: what the CLI uses so that a file still growing, or copied with an old
    mtime, is not read half-written."""
    first = scan_sales_dir(landing, settle_seconds, previous=previous, assume_complete=assume_complete, **kwargs)
    if assume_complete or not any(any(s in p for s in STABILITY_PENDING) for p in first.pending):
        return first
    time.sleep(max(settle_seconds, 1.0))
    return scan_sales_dir(landing, settle_seconds, previous=first.seen, **kwargs)


# --- the quarantine and the raw rows -----------------------------------------------------------------------------


@dataclass
class RawRead:
    """One sales file as landed: every row as text, plus the lines that could not be read as rows."""

    rows: pd.DataFrame  # SALES_REQUIRED + SALES_OPTIONAL + extras (str) + source_file + source_row
    issues: pd.DataFrame  # QUARANTINE_COLUMNS; reason malformed_row / invalid_encoding / file-level rules
    relpath: str = ""
    sha256: str = ""  # of the bytes actually read, so the manifest never records a file we did not see


@functools.cache
def _empty_quarantine() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="string") for c in QUARANTINE_COLUMNS})
    frame["source_row"] = frame["source_row"].astype("int64")
    return frame


def empty_quarantine() -> pd.DataFrame:
    # Built once: most periods of a large backfill have nothing to quarantine.
    return _empty_quarantine().copy(deep=False)


def quarantine_frame(records: list[dict]) -> pd.DataFrame:
    if not records:
        return empty_quarantine()
    frame = pd.DataFrame.from_records(records)
    for column in QUARANTINE_COLUMNS:
        if column not in frame:
            frame[column] = ""
    frame = frame[list(QUARANTINE_COLUMNS)]
    for column in QUARANTINE_COLUMNS:
        if column != "source_row":
            frame[column] = frame[column].fillna("").astype(str).astype("string")
    frame["source_row"] = frame["source_row"].astype("int64")
    return frame


def file_issue(period: str, rel: str, rule: str, message: str, row: int = 0) -> pd.DataFrame:
    """A quarantine entry for a whole file that cannot be read (row 0 when no line is to blame)."""
    return quarantine_frame(
        [{"period": period, "source_file": rel, "source_row": row, "reason": rule, "detail": message}]
    )


def empty_raw_rows() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=pd.StringDtype("pyarrow")) for c in (*SALES_REQUIRED, *SALES_OPTIONAL)})
    frame["source_file"] = pd.Categorical([])
    frame["source_row"] = pd.Series(dtype=np.int64)
    return frame


READ_ERROR_COLUMNS = ("read_error", "read_detail")


def raw_frame(read: RawRead) -> pd.DataFrame:
    """One table of everything a file held: parsed rows plus, as rows with ``read_error`` set, lines or files that
    could not be read. This is what ``raw_sales`` stores, so nothing that landed is missing from it."""
    rows = read.rows.copy()
    text = pd.StringDtype("pyarrow")
    rows["read_error"] = pd.Series("", index=rows.index, dtype=text)
    rows["read_detail"] = pd.Series("", index=rows.index, dtype=text)
    if len(read.issues):
        issues = pd.DataFrame({c: read.issues[c].astype(text) for c in (*SALES_REQUIRED, *SALES_OPTIONAL)})
        issues["source_file"] = read.issues["source_file"].astype(str).to_numpy()
        issues["source_row"] = read.issues["source_row"].to_numpy(dtype=np.int64)
        issues["read_error"] = read.issues["reason"].astype(text).to_numpy()
        issues["read_detail"] = read.issues["detail"].astype(text).to_numpy()
        rows = pd.concat([rows, issues], ignore_index=True)
        rows = rows.sort_values("source_row", kind="stable").reset_index(drop=True)
    rows["source_file"] = rows["source_file"].astype(str).astype("category")
    # Which content the rows came from, stored with the partition (the manifest can be rebuilt from it).
    rows.attrs["source_sha256"] = read.sha256
    rows.attrs["source_file"] = read.relpath
    return rows


def split_raw(frame: pd.DataFrame, period: str) -> RawRead:
    """Inverse of ``raw_frame``: readable rows and the quarantine entries for what could not be read."""
    if "read_error" not in frame.columns:
        return RawRead(rows=frame, issues=empty_quarantine())
    bad = (frame["read_error"].astype(str) != "").to_numpy()
    rows = frame.loc[~bad].drop(columns=list(READ_ERROR_COLUMNS)).reset_index(drop=True)
    if not bad.any():
        return RawRead(rows=rows, issues=empty_quarantine())
    failed = frame.loc[bad]
    records = [
        {
            "period": period,
            "source_file": str(r.source_file),
            "source_row": int(r.source_row),
            "reason": str(r.read_error),
            "detail": str(r.read_detail),
            **{c: str(getattr(r, c)) for c in (*SALES_REQUIRED, *SALES_OPTIONAL)},
        }
        for r in failed.itertuples(index=False)
    ]
    return RawRead(rows=rows, issues=quarantine_frame(records))
