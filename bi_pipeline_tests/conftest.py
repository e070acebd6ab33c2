from __future__ import annotations

import os
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
