from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from bi_pipeline.config import Settings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_file(*parts: str) -> Path:
    """A file of ../shared/data, or a clean skip where the shared data is not laid out."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


PG_HOST = os.environ.get("BI_PIPELINE_TEST_PG_HOST", "127.0.0.1")


@pytest.fixture
def postgres_url():
    """A fresh database on the machine's PostgreSQL (trust auth), dropped afterwards; a clean skip without one."""
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"bi_pipeline_test_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg2.connect(host=PG_HOST, user="postgres", dbname="postgres", connect_timeout=3)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_HOST}: {exc}")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@{PG_HOST}:5432/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    landing = tmp_path / "landing"
    (landing / "sales").mkdir(parents=True)
    return Settings(home=tmp_path / "home", landing=landing, settle_seconds=0.0)


def write_sales(landing: Path, key: str, body: str | bytes, suffix: str = ".csv", age_seconds: float = 60.0) -> Path:
    """Land a sales file whose modification time is in the past (so the sensor treats it as complete)."""
    path = landing / "sales" / f"{key}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body.encode() if isinstance(body, str) else body)
    past = path.stat().st_mtime - age_seconds
    os.utime(path, (past, past))
    return path
