"""The landing-zone contract: what files users drop, how they are named, and how they are read without losing anything.

```
<landing>/
  sales/<YYYY-MM-DD>.csv|.parquet   one file per period; date, store_id, item_id, sales [, price, promo, extra...]
  stores.csv                        store_id + attributes                       (optional)
  items.csv                         item_id + attributes [, description]        (optional)
  calendar.csv                      date [, store_id] + known-in-advance covariates (optional)
```
Raw values are kept as text (``raw_sales``) so that a value which fails a rule reaches the quarantine exactly as it
landed; every row carries its ``source_file`` and ``source_row`` (1-based line number, header = line 1).
"""

from __future__ import annotations

import csv
import fcntl
import functools
import hashlib
import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

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

_KEY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Names used by editors, browsers and copy tools while a file is still being written.
_IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", ".filepart", ".inprogress")


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
    pending: list[str] = field(default_factory=list)  # still being written; looked at again next time
    rejected: list[ContractError] = field(default_factory=list)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
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


def sales_file_for_key(landing: Path, key: str) -> Path:
    """The one sales file landed for a period. Refuses keys and links that would lead outside the landing zone."""
    parse_period_key(key, file=f"{SALES_DIR}/{key}")
    sales_dir = landing / SALES_DIR
    candidates = [sales_dir / f"{key}{suffix}" for suffix in SALES_SUFFIXES]
    found = [p for p in candidates if p.exists()]
    if not found:
        raise ContractError(f"{SALES_DIR}/{key}", "file_missing", f"no sales file for period {key} in {sales_dir}")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ContractError(f"{SALES_DIR}/{key}", "duplicate_period", f"more than one file for {key}: {names}")
    path = found[0]
    if not _inside(path, landing):
        raise ContractError(f"{SALES_DIR}/{path.name}", "path_escape", "the file resolves outside the landing zone")
    return path


def scan_sales_dir(landing: Path, settle_seconds: float = 2.0, now: float | None = None) -> ScanResult:
    """List the sales files that are ready to ingest, those still being written and those that break the contract.

    Never raises for a bad file: the sensor that calls this must keep running whatever lands.
    """
    result = ScanResult()
    sales_dir = landing / SALES_DIR
    if not sales_dir.is_dir():
        return result
    now = time.time() if now is None else now
    by_key: dict[str, list[Path]] = {}
    for path in sorted(sales_dir.iterdir()):
        name = path.name
        rel = f"{SALES_DIR}/{name}"
        if name.startswith((".", "~")) or name.lower().endswith(_IN_PROGRESS_SUFFIXES):
            result.pending.append(rel)
            continue
        if not _inside(path, landing):
            result.rejected.append(ContractError(rel, "path_escape", "the file resolves outside the landing zone"))
            continue
        if path.is_dir():
            result.rejected.append(ContractError(rel, "not_a_file", "folders inside sales/ are not read"))
            continue
        suffix = path.suffix.lower()
        if suffix not in SALES_SUFFIXES:
            result.rejected.append(
                ContractError(rel, "unsupported_format", f"expected one of {SALES_SUFFIXES}, got {suffix or 'none'}")
            )
            continue
        try:
            parse_period_key(path.stem, file=rel)
        except ContractError as exc:
            result.rejected.append(exc)
            continue
        by_key.setdefault(path.stem, []).append(path)
    for key, paths in sorted(by_key.items()):
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            result.rejected.append(
                ContractError(f"{SALES_DIR}/{key}", "duplicate_period", f"more than one file for {key}: {names}")
            )
            continue
        path = paths[0]
        try:
            stat = path.stat()
            if now - stat.st_mtime < settle_seconds:
                result.pending.append(f"{SALES_DIR}/{path.name}")
                continue
            digest = file_sha256(path)
        except OSError as exc:  # vanished or unreadable between listing and reading
            result.rejected.append(ContractError(f"{SALES_DIR}/{path.name}", "unreadable", str(exc)))
            continue
        result.ready.append(LandedFile(key, path, f"{SALES_DIR}/{path.name}", digest, stat.st_size, stat.st_mtime))
    return result


# --- frequency and periods -------------------------------------------------------------------------------------


def infer_frequency(period_dates: list[date] | list[str], default: str = "D") -> str:
    """'D', 'W' or 'M' from the spacing of the period dates: the commonest gap, so missing periods do not matter."""
    dates = sorted({d if isinstance(d, date) else date.fromisoformat(d) for d in period_dates})
    if len(dates) < 2:
        return default
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


# --- reading sales files ---------------------------------------------------------------------------------------


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


def _column_name(name: str) -> str:
    """Contract columns match case-insensitively; other (covariate) columns keep the user's spelling."""
    stripped = name.strip()
    return stripped.lower() if stripped.lower() in CONTRACT_COLUMNS else stripped


def _normalise_header(names: list[str], rel: str) -> list[str]:
    normalised = [_column_name(n) for n in names]
    seen: set[str] = set()
    for n in normalised:
        if n in seen:
            raise ContractError(rel, "duplicate_column", f"column {n!r} appears more than once", row=1)
        seen.add(n)
    missing = [c for c in SALES_REQUIRED if c not in seen]
    if missing:
        raise ContractError(
            rel,
            "missing_columns",
            f"missing required column(s) {', '.join(missing)}; found {', '.join(normalised) or 'none'}",
            row=1,
        )
    return normalised


def _line_starts(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """1-based numbers and lengths of every line (vectorised: files can hold millions of rows)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buf == 10)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [len(buf)]))
    lengths = ends - starts
    # A line holding only '\r' is blank too.
    cr_only = (lengths == 1) & (buf[np.minimum(starts, len(buf) - 1)] == 13) if len(buf) else lengths == 0
    nonblank = (lengths > 0) & ~cr_only
    numbers = np.arange(1, len(starts) + 1)
    return numbers[nonblank], lengths


def _decode_lines(data: bytes, period: str, rel: str) -> tuple[bytes, np.ndarray | None, list[dict]]:
    """UTF-8 text of the file; lines that are not UTF-8 go to the quarantine instead of failing the file."""
    try:
        data.decode("utf-8")
        return data, None, []
    except UnicodeDecodeError:
        pass
    lines = data.split(b"\n")
    kept, numbers, issues = [], [], []
    for number, line in enumerate(lines, start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            if number == 1:
                raise ContractError(rel, "invalid_encoding", f"header is not UTF-8: {exc}", row=1) from None
            issues.append(
                {
                    "period": period,
                    "source_file": rel,
                    "source_row": number,
                    "reason": "invalid_encoding",
                    "detail": f"not UTF-8 at byte {exc.start}: {line[:200]!r}",
                }
            )
            continue
        kept.append(line)
        numbers.append(number)
    return b"\n".join(kept), np.asarray(numbers, dtype=np.int64), issues


def read_sales_file(path: Path, landing: Path, period: str | None = None) -> RawRead:
    """Read one sales file as text. Raises ContractError only when nothing in the file can be read."""
    rel = path.relative_to(landing).as_posix() if _inside(path, landing) else path.name
    if not _inside(path, landing):
        raise ContractError(rel, "path_escape", "the file resolves outside the landing zone")
    period = period or path.stem
    if path.suffix.lower() == ".parquet":
        return _read_parquet(path, rel, period)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.strip():
        raise ContractError(rel, "empty_file", "the file is empty")
    data, original_numbers, issues = _decode_lines(data, period, rel)
    nonblank_lines, _ = _line_starts(data)
    header_end = data.find(b"\n")
    header_bytes = data if header_end < 0 else data[:header_end]
    header_rows = list(csv.reader(io.StringIO(header_bytes.decode("utf-8").rstrip("\r"))))
    if not header_rows:
        raise ContractError(rel, "empty_file", "the file has no header line")
    names = _normalise_header(header_rows[0], rel)
    bad: list[tuple[int, str, int, int]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad.append((row.number or 0, row.text, row.expected_columns, row.actual_columns))
        return "skip"

    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            # Single-threaded so that the invalid-row callback reports row numbers.
            read_options=pacsv.ReadOptions(use_threads=False, skip_rows=1, column_names=names, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        raise ContractError(rel, "malformed_csv", f"cannot be parsed as CSV: {exc}") from None
    if table.num_rows == 0 and not bad:
        raise ContractError(rel, "empty_file", "the file has a header but no rows", row=1)
    # pyarrow numbers non-blank rows from 1 with the header counted, so data row k (0-based) is number k + 2.
    data_lines = nonblank_lines[1:]
    bad_index = np.asarray([b[0] - 2 for b in bad], dtype=np.int64)
    keep = np.ones(len(data_lines), dtype=bool)
    if len(bad_index):
        keep[bad_index[(bad_index >= 0) & (bad_index < len(data_lines))]] = False
    row_lines = data_lines[keep][: table.num_rows]
    bad_lines = data_lines[bad_index] if len(bad_index) else np.empty(0, dtype=np.int64)
    if original_numbers is not None:  # lines dropped for bad encoding shift the numbering
        row_lines = original_numbers[row_lines - 1]
        bad_lines = original_numbers[bad_lines - 1] if len(bad_lines) else bad_lines
    for (_, text, expected, actual), line in zip(bad, bad_lines, strict=True):
        issues.append(
            {
                "period": period,
                "source_file": rel,
                "source_row": int(line),
                "reason": "malformed_row",
                "detail": f"expected {expected} fields, found {actual}: {text[:200]}",
            }
        )
    rows = _text_frame(table, rel, row_lines)
    return RawRead(rows=rows, issues=quarantine_frame(issues), relpath=rel, sha256=digest)


def _text_frame(table: pa.Table, rel: str, row_lines: np.ndarray) -> pd.DataFrame:
    frame = table.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow")}.get)
    for column in SALES_OPTIONAL:
        if column not in frame:
            frame[column] = pd.Series("", index=frame.index, dtype=pd.StringDtype("pyarrow"))
    ordered = [*SALES_REQUIRED, *SALES_OPTIONAL]
    frame = frame[ordered + [c for c in frame.columns if c not in ordered]]
    frame["source_file"] = pd.Categorical([rel] * len(frame)) if len(frame) else pd.Categorical([])
    frame["source_row"] = row_lines.astype(np.int64)
    return frame


def _read_parquet(path: Path, rel: str, period: str) -> RawRead:
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise ContractError(rel, "malformed_parquet", f"cannot be read as Parquet: {exc}") from None
    names = _normalise_header(list(table.column_names), rel)
    table = table.rename_columns(names)
    columns = []
    for name in names:
        column = table.column(name)
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.date32())
        columns.append(column.cast(pa.string()).fill_null(""))
    table = pa.table(columns, names=names)
    if table.num_rows == 0:
        raise ContractError(rel, "empty_file", "the file has no rows")
    # Parquet has no lines: source_row is the 1-based row number, offset by one as for a CSV header.
    row_lines = np.arange(2, table.num_rows + 2, dtype=np.int64)
    return RawRead(
        rows=_text_frame(table, rel, row_lines),
        issues=empty_quarantine(),
        relpath=rel,
        sha256=file_sha256(path),
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


def read_period(landing: Path, key: str) -> RawRead:
    """The raw rows of one period, never raising: an unreadable file becomes a single file-level quarantine entry."""
    rel = f"{SALES_DIR}/{key}"
    try:
        path = sales_file_for_key(landing, key)
        rel = f"{SALES_DIR}/{path.name}"
        return read_sales_file(path, landing, period=key)
    except ContractError as exc:
        issue = file_issue(key, exc.file or rel, exc.rule, exc.message, exc.row or 0)
        path = next((p for p in (landing / f"{exc.file}",) if p.is_file() and _inside(p, landing)), None)
        return RawRead(rows=empty_raw_rows(), issues=issue, relpath=exc.file, sha256=file_sha256(path) if path else "")
    except OSError as exc:
        return RawRead(rows=empty_raw_rows(), issues=file_issue(key, rel, "unreadable", str(exc)), relpath=rel)


# --- ingestion manifest -----------------------------------------------------------------------------------------
# Which file content each period was last ingested from. The sensor starts from it when it has no cursor, so files
# ingested by `bi-pipeline demo`/`run` are not requested again when the UI starts.


def load_manifest(path: Path) -> dict[str, str]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def update_manifest(path: Path, entries: dict[str, str]) -> None:
    """Merge {relpath: sha256} under a file lock (runs may finish at the same time); atomic replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / f"{path.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = load_manifest(path)
        current.update({k: v for k, v in entries.items() if k and v})
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(current, sort_keys=True, indent=0))
        os.replace(tmp, path)


# --- master data ------------------------------------------------------------------------------------------------

MASTER_FILES = {
    "stores": ("stores.csv", "store_id"),
    "items": ("items.csv", "item_id"),
    "calendar": ("calendar.csv", "date"),
}


def read_master(landing: Path, name: str) -> pd.DataFrame | None:
    """stores / items / calendar as landed (text); None when the optional file is absent."""
    filename, key = MASTER_FILES[name]
    path = landing / filename
    if not path.exists():
        return None
    if not _inside(path, landing):
        raise ContractError(filename, "path_escape", "the file resolves outside the landing zone")
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        row = data[: exc.start].count(b"\n") + 1
        raise ContractError(filename, "invalid_encoding", f"not UTF-8 at byte {exc.start}", row=row) from None
    if not text.strip():
        raise ContractError(filename, "empty_file", "the file is empty")
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, on_bad_lines="error")
    except pd.errors.ParserError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise ContractError(
            filename, "malformed_csv", str(exc).strip(), row=int(match.group(1)) if match else None
        ) from None
    frame.columns = [_column_name(c) for c in frame.columns]
    if key not in frame.columns:
        raise ContractError(filename, "missing_columns", f"missing required column {key!r}", row=1)
    frame.insert(len(frame.columns), "source_row", np.arange(2, len(frame) + 2))
    return frame
