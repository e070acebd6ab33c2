"""Training progress in the Dagster log: each stage the trainer reports becomes a log line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bi_pipeline.forecasting.configuration import Progress
from bi_pipeline.forecasting.progress import describe


def training_reporter(log: Any, checkpoints: Path | None = None) -> Progress:
    """A progress callback writing to a Dagster (or any ``logging``-like) log."""

    def report(record: dict) -> None:
        described = describe(record)
        if described is not None:
            level, message = described
            if record.get("stage") == "resume" and checkpoints is not None:
                message += f" ({checkpoints})"
            getattr(log, level)(message)

    return report
