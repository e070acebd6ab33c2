"""Tables BI tools read (no Dagster): each publication's forecasts and orders written to a SQL database with a stable
schema, an embedded DuckDB file by default or PostgreSQL.

Every row carries the ``cutoff`` (the last period the forecast saw) and the ``model_version`` that made it. A write
replaces the rows of the publications it holds (the same cutoff and model version) and nothing else, in one
transaction: writing a publication twice leaves one copy, and earlier publications stay for comparison. The schemas
are :data:`TABLES` (docs/decisions.md lists them); a column a frame lacks is an error naming it, a column the schema
lacks is not written.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from bi_pipeline.forecasting.metrics import QUANTILES, quantile_column

KEYS = ("cutoff", "model_version")
_QUANTILE_COLUMNS = {f"p{round(q * 100):02d}": "DOUBLE PRECISION" for q in QUANTILES}
# Column name -> SQL type, in the order the tables hold them. The forecast's q0.1 … q0.9 are p10 … p90 here.
TABLES: dict[str, dict[str, str]] = {
    "forecasts": {
        "cutoff": "DATE",
        "model_version": "TEXT",
        "store_id": "TEXT",
        "item_id": "TEXT",
        "date": "DATE",
        "mean": "DOUBLE PRECISION",
        **_QUANTILE_COLUMNS,
    },
    "orders": {
        "cutoff": "DATE",
        "model_version": "TEXT",
        "store_id": "TEXT",
        "item_id": "TEXT",
        "first_period": "DATE",
        "lead_time": "INTEGER",
        "review_period": "INTEGER",
        "protection_periods": "INTEGER",
        "critical_ratio": "DOUBLE PRECISION",
        "economics": "TEXT",
        "demand_p10": "DOUBLE PRECISION",
        "demand_p50": "DOUBLE PRECISION",
        "demand_p90": "DOUBLE PRECISION",
        "order_up_to": "DOUBLE PRECISION",
        "lead_time_demand_p50": "DOUBLE PRECISION",
        "on_hand": "DOUBLE PRECISION",
        "on_order": "DOUBLE PRECISION",
        "order_quantity": "DOUBLE PRECISION",
    },
    "drivers": {
        "cutoff": "DATE",
        "model_version": "TEXT",
        "store_id": "TEXT",
        "item_id": "TEXT",
        "date": "DATE",
        "step": "INTEGER",
        "median": "DOUBLE PRECISION",
        "level_trend": "DOUBLE PRECISION",
        "seasonality": "DOUBLE PRECISION",
        "calendar": "DOUBLE PRECISION",
        "promotion_price": "DOUBLE PRECISION",
    },
    # One row per publication, scored on the actuals landed since (forecast_accuracy); rewritten as they land.
    "live_accuracy": {
        "cutoff": "DATE",
        "model_version": "TEXT",
        "published_periods": "INTEGER",
        "scored_periods": "INTEGER",
        "series": "INTEGER",
        "MASE": "DOUBLE PRECISION",
        "WAPE": "DOUBLE PRECISION",
        "WQL": "DOUBLE PRECISION",
        "coverage_80": "DOUBLE PRECISION",
        "bias": "DOUBLE PRECISION",
    },
    "alerts": {
        "cutoff": "DATE",
        "model_version": "TEXT",
        "alert_id": "TEXT",
        "kind": "TEXT",
        "severity": "TEXT",
        "store_id": "TEXT",
        "item_id": "TEXT",
        "period": "DATE",
        "forecast_cutoff": "DATE",
        "forecast_version": "TEXT",
        "actual": "DOUBLE PRECISION",
        "expected": "DOUBLE PRECISION",
        "low": "DOUBLE PRECISION",
        "high": "DOUBLE PRECISION",
        "units": "DOUBLE PRECISION",
        "money": "DOUBLE PRECISION",
        "message": "TEXT",
    },
}
_RENAMES = {quantile_column(q): f"p{round(q * 100):02d}" for q in QUANTILES}


class WarehouseError(ValueError):
    """A frame that does not fit its table, or a URL this module cannot write to."""


def default_url(home: Path) -> str:
    return f"duckdb:///{Path(home) / 'warehouse.duckdb'}"


def conform(table: str, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with exactly the table's columns, in its order and types (dates as dates, ids as text)."""
    if table not in TABLES:
        raise WarehouseError(f"no table {table!r}: the tables are {', '.join(TABLES)}")
    schema = TABLES[table]
    frame = frame.rename(columns=_RENAMES)
    missing = [c for c in schema if c not in frame.columns]
    if missing:
        raise WarehouseError(f"table {table}: the rows lack column(s) {', '.join(missing)}")
    if frame[list(KEYS)].isna().any().any():
        raise WarehouseError(f"table {table}: every row needs a cutoff and a model_version")
    out = pd.DataFrame(index=frame.index)
    for column, kind in schema.items():
        values = frame[column]
        if kind == "DATE":
            values = pd.to_datetime(values).dt.date.astype(object).where(values.notna(), None)
        elif kind == "TEXT":
            values = values.astype(object).where(values.notna(), None).map(lambda v: v if v is None else str(v))
        elif kind == "INTEGER":
            values = pd.to_numeric(values).astype("int64")
        else:
            values = pd.to_numeric(values).astype("float64")
        out[column] = values
    return out.reset_index(drop=True)


class Warehouse:
    """One database: ``duckdb:///<path>`` (the file is made on first write) or ``postgresql://…``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.scheme = urlparse(url).scheme.split("+")[0]
        if self.scheme not in ("duckdb", "postgresql", "postgres"):
            raise WarehouseError(f"warehouse URL {url!r}: use duckdb:///path/to/file.duckdb or postgresql://…")

    @property
    def path(self) -> Path:
        return Path(self.url.split("duckdb:///", 1)[1]) if self.scheme == "duckdb" else Path()

    def _create(self, table: str) -> str:
        columns = ", ".join(f'"{c}" {t}' for c, t in TABLES[table].items())
        return f'CREATE TABLE IF NOT EXISTS "{table}" ({columns})'

    def write(self, table: str, frame: pd.DataFrame, publication: dict | None = None) -> int:
        """Replaces the rows of the publications in ``frame`` (cutoff, model_version) with ``frame``'s, and those of
        ``publication`` (a cutoff and model version) even when ``frame`` is empty; the rows written."""
        rows = conform(table, frame)
        publications = set(rows[list(KEYS)].drop_duplicates().itertuples(index=False, name=None))
        if publication is not None:
            publications.add((pd.Timestamp(publication["cutoff"]).date(), str(publication["model_version"])))
        delete = f'DELETE FROM "{table}" WHERE "cutoff" = ? AND "model_version" = ?'
        if self.scheme == "duckdb":
            import duckdb

            self.path.parent.mkdir(parents=True, exist_ok=True)
            with duckdb.connect(str(self.path)) as connection:
                connection.begin()
                try:
                    connection.execute(self._create(table))
                    for cutoff, version in publications:
                        connection.execute(delete, [cutoff, version])
                    connection.register("incoming", rows)
                    names = ", ".join(f'"{c}"' for c in rows.columns)
                    connection.execute(f'INSERT INTO "{table}" ({names}) SELECT {names} FROM incoming')
                    connection.unregister("incoming")
                    connection.commit()
                except BaseException:
                    connection.rollback()
                    raise
            return len(rows)
        import sqlalchemy as sa

        engine = sa.create_engine(self.url)
        try:
            with engine.begin() as connection:  # one transaction: a failed write leaves the table as it was
                connection.execute(sa.text(self._create(table)))
                for cutoff, version in publications:
                    connection.execute(
                        sa.text(f'DELETE FROM "{table}" WHERE "cutoff" = :c AND "model_version" = :v'),
                        {"c": cutoff, "v": version},
                    )
                rows.to_sql(table, connection, if_exists="append", index=False, method="multi", chunksize=2000)
        finally:
            engine.dispose()
        return len(rows)

    def read(self, table: str) -> pd.DataFrame:
        """The table's rows, in the order of its keys and ids (for tests and the CLI)."""
        order = ", ".join(
            f'"{c}"' for c in TABLES[table] if c in ("cutoff", "model_version", "store_id", "item_id", "date")
        )
        query = f'SELECT * FROM "{table}" ORDER BY {order}'
        if self.scheme == "duckdb":
            import duckdb

            with duckdb.connect(str(self.path), read_only=True) as connection:
                return connection.execute(query).df()
        import sqlalchemy as sa

        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as connection:
                return pd.read_sql(sa.text(query), connection)
        finally:
            engine.dispose()
