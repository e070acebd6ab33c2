"""Reading landed files without losing anything and without trusting them (no Dagster).

- Limits are checked before the data is kept: bytes (before reading), columns (from the header or the Parquet
  schema), rows (as they are counted), Parquet's uncompressed size (from its metadata, and again while reading).
- A CSV is read in chunks of whole lines, so memory stays bounded by the rows kept. Files without quoted line
  breaks (nearly every export) go through Arrow's parser; a file whose quotes span lines goes through Python's csv
  module from that point on, which tracks physical line numbers exactly.
- ``\\n``, ``\\r\\n`` and a lone ``\\r`` each end a line (old spreadsheet exports end lines with ``\\r`` only).
- A line that cannot be a row (wrong field count, not UTF-8, longer than the line limit) is quarantined with its
  line number; only a file nothing can be read from is a file-level error. ``read_period`` never raises.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from bi_pipeline.contract import (
    CONTRACT_COLUMNS,
    SALES_DIR,
    SALES_OPTIONAL,
    SALES_REQUIRED,
    ContractError,
    RawRead,
    _inside,
    empty_quarantine,
    empty_raw_rows,
    file_issue,
    open_regular,
    quarantine_frame,
    sales_file_for_key,
    split_sales_name,
)

CHUNK_BYTES = 32 << 20
DETAIL_CHARS = 200  # raw text kept in a quarantine entry's detail
_BOM = b"\xef\xbb\xbf"
_LINES = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")
_CSV_FLUSH_ROWS = 200_000


@dataclass(frozen=True)
class Limits:
    """What a landed file may hold before it is rejected by name (docs/landing-zone.md, "Limits"; BI_PIPELINE_MAX_*)."""

    max_file_bytes: int = 1 << 30
    max_rows: int = 10_000_000
    max_columns: int = 500
    max_parquet_bytes: int = 4 << 30
    max_line_bytes: int = 1 << 20

    @classmethod
    def of(cls, settings) -> Limits:
        return cls(
            settings.max_file_bytes,
            settings.max_rows,
            settings.max_columns,
            settings.max_parquet_bytes,
            settings.max_line_bytes,
        )


def _column_name(name: str) -> str:
    """Contract columns match case-insensitively; other (covariate) columns keep the user's spelling."""
    stripped = name.strip()
    return stripped.lower() if stripped.lower() in CONTRACT_COLUMNS else stripped


def _normalise_header(names: list[str], rel: str, limits: Limits) -> list[str]:
    if len(names) > limits.max_columns:
        raise ContractError(
            rel,
            "too_many_columns",
            f"{len(names)} columns > {limits.max_columns} (BI_PIPELINE_MAX_COLUMNS)",
            row=1,
        )
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


@contextlib.contextmanager
def _field_limit(limit: int) -> Iterator[None]:
    """csv's field size limit (128 KiB by default) raised to the line limit while a file is read."""
    before = csv.field_size_limit()
    csv.field_size_limit(max(before, limit))
    try:
        yield
    finally:
        csv.field_size_limit(before)


def _too_many_rows(rel: str, limits: Limits) -> ContractError:
    return ContractError(rel, "too_many_rows", f"more than {limits.max_rows} rows (BI_PIPELINE_MAX_ROWS)")


def _issue(period: str, rel: str, line: int, reason: str, detail: str) -> dict:
    return {"period": period, "source_file": rel, "source_row": int(line), "reason": reason, "detail": detail}


def _long_line(length: int, text: str, limits: Limits) -> str:
    return f"{length} bytes > {limits.max_line_bytes} (BI_PIPELINE_MAX_LINE_BYTES): {text[:DETAIL_CHARS]}"


class _CsvFile:
    """State of one CSV being read: the header, the rows kept so far and the lines set aside."""

    def __init__(self, rel: str, period: str, limits: Limits) -> None:
        self.rel, self.period, self.limits = rel, period, limits
        self.names: list[str] = []
        self.tables: list[pa.Table] = []
        self.lines: list[np.ndarray] = []  # line number of each kept row, per table
        self.issues: list[dict] = []
        self.rows = 0
        self.line = 0  # physical lines consumed so far

    def keep(self, table: pa.Table, lines: np.ndarray) -> None:
        self.rows += table.num_rows
        if self.rows > self.limits.max_rows:
            raise _too_many_rows(self.rel, self.limits)
        if table.num_rows:
            self.tables.append(table)
            self.lines.append(lines.astype(np.int64))

    # -- fast path: every line is one record -------------------------------------------------------------------

    def fast_chunk(self, data: bytes) -> None:
        """Whole lines with no quoted line break: numbered with numpy, parsed by Arrow."""
        if data.count(b"\r") != data.count(b"\r\n"):
            data = _lone_cr_to_lf(data)
        breaks = data.count(b"\n")
        numbers = self.line + np.arange(1, breaks + 2, dtype=np.int64)  # of every line, 1-based
        self.line += breaks + (0 if data.endswith(b"\n") else 1)
        try:
            data.decode("utf-8")
            valid = True
        except UnicodeDecodeError:
            valid = False
        if not valid or (_line_lengths(data) > self.limits.max_line_bytes + 1).any():
            data, numbers = self._drop_lines(data, numbers)
        self._parse(data, numbers)

    def _line_problem(self, line: bytes) -> tuple[str, str] | None:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return "invalid_encoding", f"not UTF-8 at byte {exc.start}: {line[:DETAIL_CHARS]!r}"
        length = len(line.rstrip(b"\r"))
        if length > self.limits.max_line_bytes:
            return "line_too_long", _long_line(length, line[:DETAIL_CHARS].decode("utf-8"), self.limits)
        return None

    def _drop_lines(self, data: bytes, numbers: np.ndarray) -> tuple[bytes, np.ndarray]:
        """Lines that are not UTF-8 or over the line limit go to the quarantine; the rest keep their numbers."""
        kept, kept_numbers = [], []
        for number, line in zip(numbers, data.split(b"\n"), strict=True):
            problem = self._line_problem(line)
            if problem is None:
                kept.append(line)
                kept_numbers.append(number)
            else:
                self.issues.append(_issue(self.period, self.rel, number, *problem))
        return b"\n".join(kept), np.asarray(kept_numbers, dtype=np.int64)

    def _parse(self, data: bytes, numbers: np.ndarray) -> None:
        """Arrow over whole lines; ``numbers`` holds the line number of every line of ``data``."""
        buf = np.frombuffer(data, dtype=np.uint8)
        ends = np.flatnonzero(buf == 10)
        starts = np.concatenate(([0], ends + 1))
        lengths = np.concatenate((ends, [len(buf)])) - starts
        # A line holding only "\r" (of a "\r\n") is blank, as is an empty one; Arrow skips both.
        blank = lengths == 0
        single = np.flatnonzero(lengths == 1)
        blank[single[buf[starts[single]] == 13]] = True
        row_lines = numbers[~blank]
        if not len(row_lines):
            return
        bad: list[tuple[int, str, int, int]] = []

        def on_invalid(row: pacsv.InvalidRow) -> str:
            bad.append((row.number or 0, row.text, row.expected_columns, row.actual_columns))
            return "skip"

        try:
            table = pacsv.read_csv(
                io.BytesIO(data),
                # Single-threaded so that the invalid-row callback reports row numbers; one block per chunk.
                read_options=pacsv.ReadOptions(
                    use_threads=False, column_names=self.names, block_size=max(len(data) + 1, 1 << 20)
                ),
                parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
                convert_options=pacsv.ConvertOptions(
                    column_types={n: pa.string() for n in self.names},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
        except pa.ArrowInvalid as exc:
            raise ContractError(self.rel, "malformed_csv", f"cannot be parsed as CSV: {exc}") from None
        # Arrow numbers the non-blank rows it saw from 1.
        bad_index = np.asarray([b[0] - 1 for b in bad], dtype=np.int64)
        keep = np.ones(len(row_lines), dtype=bool)
        keep[bad_index[(bad_index >= 0) & (bad_index < len(row_lines))]] = False
        for (_, text, expected, actual), index in zip(bad, bad_index, strict=True):
            line = row_lines[index] if 0 <= index < len(row_lines) else 0
            detail = f"expected {expected} fields, found {actual}: {text[:DETAIL_CHARS]}"
            self.issues.append(_issue(self.period, self.rel, line, "malformed_row", detail))
        self.keep(table, row_lines[keep][: table.num_rows])

    # -- csv path: quotes that span lines -----------------------------------------------------------------------

    def csv_rest(self, chunks: Iterator[bytes]) -> None:
        """The rest of the file through Python's csv module (exact physical line numbers across quoted breaks)."""
        consumed: list[str] = []

        def lines() -> Iterator[str]:
            for chunk in chunks:
                for line in _LINES.findall(chunk.decode("utf-8", "surrogateescape")):
                    consumed.append(line)
                    yield line

        reader = csv.reader(lines(), strict=False)
        columns: list[list[str]] = [[] for _ in self.names]
        numbers: list[int] = []
        start = self.line
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise ContractError(self.rel, "malformed_csv", str(exc), row=start + 1) from None
            line = start + 1
            raw = "".join(consumed)
            consumed.clear()
            start = self.line + reader.line_num
            if not fields or (len(fields) == 1 and not fields[0] and not raw.strip("\r\n")):
                continue
            try:
                size = len(raw.rstrip("\r\n").encode("utf-8"))
            except UnicodeEncodeError:
                text = raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                self.issues.append(_issue(self.period, self.rel, line, "invalid_encoding", f"not UTF-8: {text[:80]}"))
                continue
            if size > self.limits.max_line_bytes:
                detail = _long_line(size, raw, self.limits)
                self.issues.append(_issue(self.period, self.rel, line, "line_too_long", detail))
                continue
            if len(fields) != len(self.names):
                detail = f"expected {len(self.names)} fields, found {len(fields)}: {raw.rstrip(chr(10) + chr(13))}"
                self.issues.append(_issue(self.period, self.rel, line, "malformed_row", detail[: DETAIL_CHARS + 40]))
                continue
            for column, value in zip(columns, fields, strict=True):
                column.append(value)
            numbers.append(line)
            if len(numbers) >= _CSV_FLUSH_ROWS:
                self._flush(columns, numbers)
        self._flush(columns, numbers)

    def _flush(self, columns: list[list[str]], numbers: list[int]) -> None:
        if numbers:
            table = pa.table([pa.array(c, type=pa.string()) for c in columns], names=self.names)
            self.keep(table, np.asarray(numbers, dtype=np.int64))
            for column in columns:
                column.clear()
            numbers.clear()


def _line_lengths(data: bytes) -> np.ndarray:
    """Length of every ``\\n``-separated line (the last one after a final break is empty)."""
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    return np.diff(np.concatenate(([-1], ends, [len(data)]))) - 1


def _lone_cr_to_lf(data: bytes) -> bytes:
    """A ``\\r`` not followed by ``\\n`` ends a line too."""
    buf = np.frombuffer(data, dtype=np.uint8).copy()
    cr = buf == 13
    following = np.concatenate((buf[1:] == 10, [False]))
    buf[cr & ~following] = 10
    return buf.tobytes()


def _quotes_span_lines(data: bytes) -> bool:
    """Whether some line of ``data`` holds an odd number of quote characters (a quoted line break, or a stray
    quote whose reading needs the csv module)."""
    if b'"' not in data:
        return False
    buf = np.frombuffer(data, dtype=np.uint8)
    quotes = np.flatnonzero(buf == 34)
    breaks = np.flatnonzero((buf == 10) | (buf == 13))
    per_line = np.bincount(np.searchsorted(breaks, quotes), minlength=len(breaks) + 1)
    return bool((per_line % 2).any())


def _line_chunks(handle, digest, first: bytes = b"") -> Iterator[bytes]:
    """The file in chunks of whole lines (hashing what is read). A ``\\r`` at a chunk's end is held back: it may be
    the first half of ``\\r\\n``."""
    carry = first
    while True:
        block = handle.read(CHUNK_BYTES)
        if not block:
            break
        digest.update(block)
        data = carry + block
        cut = max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1)) + 1
        if cut <= 0:
            carry = data
            continue
        yield data[:cut]
        carry = data[cut:]
    if carry:
        yield carry


def _split_header(chunk: bytes) -> tuple[bytes, bytes, int]:
    """(header line, the rest, line breaks used): the header is the first line."""
    match = re.search(rb"\r\n|\r|\n", chunk)
    if match is None:
        return chunk, b"", 0
    return chunk[: match.start()], chunk[match.end() :], 1


def _read_csv(handle, size: int, rel: str, period: str, limits: Limits) -> RawRead:
    digest = hashlib.sha256()
    chunks = _line_chunks(handle, digest)
    first = next(chunks, b"")
    if first.startswith(_BOM):
        first = first[len(_BOM) :]
    if not first.strip():
        raise ContractError(rel, "empty_file", "the file is empty")
    header, rest, used = _split_header(first)
    if len(header) > limits.max_line_bytes:
        raise ContractError(
            rel, "header_too_long", f"{len(header)} bytes > {limits.max_line_bytes} (BI_PIPELINE_MAX_LINE_BYTES)", 1
        )
    try:
        header_text = header.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError(rel, "invalid_encoding", f"header is not UTF-8: {exc}", row=1) from None
    state = _CsvFile(rel, period, limits)
    with _field_limit(limits.max_line_bytes + 1):
        names = next(csv.reader([header_text]), [])
        if not names:
            raise ContractError(rel, "empty_file", "the file has no header line", row=1)
        state.names = _normalise_header(names, rel, limits)
        state.line = used
        pending: Iterator[bytes] = iter([rest] if rest else [])
        for chunk in _chain(pending, chunks):
            if _quotes_span_lines(chunk):
                state.csv_rest(_chain(iter([chunk]), chunks))
                break
            state.fast_chunk(chunk)
    if not state.tables and not state.issues:
        raise ContractError(rel, "empty_file", "the file has a header but no rows", row=1)
    empty = pa.table([pa.array([], pa.string()) for _ in state.names], names=state.names)
    table = pa.concat_tables(state.tables) if state.tables else empty
    lines = np.concatenate(state.lines) if state.lines else np.empty(0, dtype=np.int64)
    issues = sorted(state.issues, key=lambda i: i["source_row"])
    return RawRead(_text_frame(table, rel, lines), quarantine_frame(issues), rel, digest.hexdigest())


def _chain(*iterators: Iterator[bytes]) -> Iterator[bytes]:
    for iterator in iterators:
        yield from iterator


def _text_frame(table: pa.Table, rel: str, row_lines: np.ndarray) -> pd.DataFrame:
    frame = table.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow")}.get)
    for column in SALES_OPTIONAL:
        if column not in frame:
            frame[column] = pd.Series("", index=frame.index, dtype=pd.StringDtype("pyarrow"))
    ordered = [*SALES_REQUIRED, *SALES_OPTIONAL]
    frame = frame[ordered + [c for c in frame.columns if c not in ordered]]
    frame["source_file"] = pd.Categorical.from_codes(np.zeros(len(frame), dtype=np.int8), categories=[rel])
    frame["source_row"] = row_lines.astype(np.int64)
    return frame


# --- Parquet -----------------------------------------------------------------------------------------------------


def _parquet_text(column: pa.ChunkedArray, name: str, rel: str) -> pa.ChunkedArray:
    """A Parquet column as text, as a CSV cell would hold it; nested types are refused by name."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = kind.value_type
    if pa.types.is_nested(kind):
        raise ContractError(
            rel, "unsupported_column_type", f"column {name!r} is {kind}: sales columns hold one value per row"
        )
    if pa.types.is_timestamp(kind):
        column = column.cast(pa.date32())
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        try:
            return column.cast(pa.string()).fill_null("")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ContractError(rel, "invalid_encoding", f"binary column {name!r} is not UTF-8 text: {exc}") from None
    try:
        return column.cast(pa.string()).fill_null("")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ContractError(
            rel, "unsupported_column_type", f"column {name!r} ({kind}) cannot be read as text: {exc}"
        ) from None


def _read_parquet(handle, rel: str, period: str, limits: Limits) -> RawRead:
    digest = hashlib.sha256()
    while block := handle.read(CHUNK_BYTES):
        digest.update(block)
    handle.seek(0)
    try:
        parquet = pq.ParquetFile(handle)
        meta = parquet.metadata
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise ContractError(rel, "malformed_parquet", f"cannot be read as Parquet: {exc}") from None
    names = _normalise_header(list(parquet.schema_arrow.names), rel, limits)
    if meta.num_rows > limits.max_rows:
        raise ContractError(rel, "too_many_rows", f"{meta.num_rows} rows > {limits.max_rows} (BI_PIPELINE_MAX_ROWS)")
    declared = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if declared > limits.max_parquet_bytes:
        raise ContractError(
            rel,
            "parquet_too_large",
            f"{declared} bytes uncompressed > {limits.max_parquet_bytes} (BI_PIPELINE_MAX_PARQUET_BYTES)",
        )
    tables, held = [], 0
    for group in range(meta.num_row_groups):
        try:
            part = parquet.read_row_group(group)
        except Exception as exc:
            raise ContractError(rel, "malformed_parquet", f"row group {group}: {exc}") from None
        # The metadata can understate: count what is actually decoded, one row group at a time.
        held += part.nbytes
        if held > limits.max_parquet_bytes:
            raise ContractError(
                rel,
                "parquet_too_large",
                f"more than {limits.max_parquet_bytes} bytes uncompressed by row group {group} "
                "(BI_PIPELINE_MAX_PARQUET_BYTES)",
            )
        part = part.rename_columns(names)
        tables.append(pa.table([_parquet_text(part.column(n), n, rel) for n in names], names=names))
    table = pa.concat_tables(tables) if tables else None
    if table is None or table.num_rows == 0:
        raise ContractError(rel, "empty_file", "the file has no rows")
    # Parquet has no lines: source_row is the 1-based row number, offset by one as for a CSV header.
    row_lines = np.arange(2, table.num_rows + 2, dtype=np.int64)
    return RawRead(_text_frame(table, rel, row_lines), empty_quarantine(), rel, digest.hexdigest())


@contextlib.contextmanager
def _open_within_limit(path: Path, rel: str, limits: Limits) -> Iterator[tuple]:
    """(binary handle, size) of a regular file no larger than the byte limit; errors name ``rel``."""
    try:
        fd = open_regular(path)
    except ContractError as exc:
        raise ContractError(rel, exc.rule, exc.message) from None
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limits.max_file_bytes:
            raise ContractError(
                rel, "file_too_large", f"{size} bytes > {limits.max_file_bytes} (BI_PIPELINE_MAX_FILE_BYTES)"
            )
        yield handle, size


# --- entry points ------------------------------------------------------------------------------------------------


def read_sales_file(path: Path, landing: Path, period: str | None = None, limits: Limits | None = None) -> RawRead:
    """Read one sales file as text. Raises ContractError only when nothing in the file can be read."""
    limits = limits or Limits()
    rel = path.relative_to(landing).as_posix() if _inside(path, landing) else path.name
    if not _inside(path, landing):
        raise ContractError(rel, "path_escape", "the file resolves outside the landing zone")
    key, suffix = split_sales_name(path.name)
    period = period or key
    with _open_within_limit(path, rel, limits) as (handle, size):
        if suffix == ".parquet":
            return _read_parquet(handle, rel, period, limits)
        return _read_csv(handle, size, rel, period, limits)


def read_period(
    landing: Path, key: str, limits: Limits | None = None, index: dict[str, list[Path]] | None = None
) -> RawRead:
    """The raw rows of one period, never raising: an unreadable file becomes a single file-level quarantine entry
    naming the file and the rule, so the other periods of a run still complete."""
    rel = f"{SALES_DIR}/{key}"
    try:
        path = sales_file_for_key(landing, key, index)
        rel = f"{SALES_DIR}/{path.name}"
        return read_sales_file(path, landing, period=key, limits=limits)
    except ContractError as exc:
        file = exc.file if exc.file.startswith(f"{SALES_DIR}/") else rel
        return RawRead(empty_raw_rows(), file_issue(key, file, exc.rule, exc.message, exc.row or 0), file, "")
    except MemoryError:
        detail = "ran out of memory reading it: lower BI_PIPELINE_MAX_FILE_BYTES / MAX_ROWS or split the file"
        return RawRead(empty_raw_rows(), file_issue(key, rel, "unreadable", detail), rel, "")
    except Exception as exc:  # anything else a hostile file provokes is that file's problem, not the run's
        detail = f"{type(exc).__name__}: {exc}"[:DETAIL_CHARS]
        return RawRead(empty_raw_rows(), file_issue(key, rel, "unreadable", detail), rel, "")


# --- master data ------------------------------------------------------------------------------------------------

MASTER_FILES = {
    "stores": ("stores.csv", "store_id"),
    "items": ("items.csv", "item_id"),
    "calendar": ("calendar.csv", "date"),
}


def read_master(landing: Path, name: str, limits: Limits | None = None) -> pd.DataFrame | None:
    """stores / items / calendar as landed (text); None when the optional file is absent."""
    limits = limits or Limits()
    filename, key = MASTER_FILES[name]
    path = landing / filename
    if not path.exists() and not path.is_symlink():
        return None
    if not _inside(path, landing):
        raise ContractError(filename, "path_escape", "the file resolves outside the landing zone")
    with _open_within_limit(path, filename, limits) as (handle, _):
        data = handle.read()
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        row = len(re.findall(rb"\r\n|\r|\n", data[: exc.start])) + 1
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
    if len(frame.columns) > limits.max_columns:
        raise ContractError(
            filename, "too_many_columns", f"{len(frame.columns)} > {limits.max_columns} (BI_PIPELINE_MAX_COLUMNS)", 1
        )
    frame.columns = [_column_name(c) for c in frame.columns]
    if key not in frame.columns:
        raise ContractError(filename, "missing_columns", f"missing required column {key!r}", row=1)
    frame.insert(len(frame.columns), "source_row", np.arange(2, len(frame) + 2))
    return frame
