"""What the pipeline shows about the data and its connections: PII masked, credentials never rendered (no Dagster).

Every metadata preview and log line that can hold landed values goes through these helpers: free-text and other
PII columns (``BI_PIPELINE_PII_COLUMNS``, ``description`` by default) are masked, raw line text is truncated, and
URIs lose their user name and password.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pandas as pd

MASK = "***"
# Raw landed text shown in a warning or a metadata preview: enough to recognise the line, not a copy of it.
RAW_TEXT_LIMIT = 80
_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/@\s]+)@")
_PASSWORD_PARAM = re.compile(r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key)=([^&\s;]+)")


def redact_uri(text: str) -> str:
    """A URI (or any text holding URIs) without credentials: ``postgresql://bi:s3cret@db/x`` -> ``postgresql://***@db/x``;
    ``?password=…`` parameters masked too."""
    text = _CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{MASK}@", str(text))
    return _PASSWORD_PARAM.sub(lambda m: f"{m.group(1)}={MASK}", text)


def truncate(text: object, limit: int = RAW_TEXT_LIMIT) -> str:
    """Raw landed text cut to ``limit`` characters, saying how much was left out."""
    value = str(text)
    if len(value) <= limit:
        return value
    return f"{value[:limit]}… ({len(value) - limit} more characters)"


def pii_columns_in(frame: pd.DataFrame, pii_columns: Iterable[str]) -> list[str]:
    """The frame's columns named as PII (case-insensitive, as contract columns match)."""
    wanted = {c.strip().lower() for c in pii_columns if c.strip()}
    return [c for c in frame.columns if str(c).strip().lower() in wanted]


def mask_frame(frame: pd.DataFrame, pii_columns: Iterable[str]) -> pd.DataFrame:
    """A copy for display with every PII column's non-empty values replaced by ``***``."""
    columns = pii_columns_in(frame, pii_columns)
    if not columns:
        return frame
    out = frame.copy()
    for column in columns:
        values = out[column].astype("string")
        out[column] = values.where(values.isna() | (values.str.strip() == ""), MASK).astype(object)
    return out


def preview_markdown(frame: pd.DataFrame, pii_columns: Iterable[str], rows: int = 10) -> str:
    """The first rows as a markdown table, PII masked: what every metadata preview shows."""
    return mask_frame(frame.head(rows), pii_columns).to_markdown(index=False)
