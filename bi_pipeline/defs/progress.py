"""One progress reporter for every training an asset runs: each stage the trainer reports becomes a log line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bi_pipeline.forecasting.configuration import Progress


def describe(record: dict) -> tuple[str, str] | None:
    """(level, message) for a training progress record; None for records nobody needs to read."""
    stage = record.get("stage")
    if stage == "train":
        best = " (best)" if record["best"] else ""
        return "info", (
            f"epoch {record['epoch']}/{record['epochs']}: train loss {record['train_loss']:.4f}, "
            f"validation loss {record['validation_loss']:.4f}{best}"
        )
    if stage == "pretrain_corpus":
        return "info", (
            f"pretraining on the synthetic corpus (first use, then reused: {record['checkpoint']}), "
            f"epoch {record['epoch']}/{record['epochs']}: validation loss {record['loss']:.4f}"
        )
    if stage == "resume":
        return "info", f"resuming from the checkpoint after epoch {record['epoch']}"
    if stage == "resume_skipped":
        return (
            "warning",
            f"checkpoint {record['checkpoint']} not resumed from, training from scratch: {record['error']}",
        )
    if stage == "incremental_skipped":
        return "warning", f"incremental update not possible ({record['error']})"
    if stage == "calibrate":
        return "info", (
            f"calibrated on validation: level ×{record['level_scale']}, quantile spread ×{record['spread_scale']}"
            f" × (width / {record['spread_reference']:.4g}) ^ {record['spread_power']}"
        )
    if stage == "calibrate_level_feedback":
        return "info", (
            f"calibrated on validation: each series' level × (its recent actual / forecast ratio) ^ "
            f"{record['level_feedback_power']} over its last {record['level_feedback_origins']} origins"
        )
    if stage == "calibrate_error_spread":
        return "info", (
            f"calibrated on validation: each series' spread × (its past error ratio / "
            f"{record['error_spread_reference']:.4g}) ^ {record['error_spread_power']} over its last "
            f"{record['error_spread_windows']} forecasts; quantile spread now ×{record['spread_scale']:.4g}"
        )
    return None


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
