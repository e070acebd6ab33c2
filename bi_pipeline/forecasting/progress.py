"""What a training progress record says, as one line for a log or a terminal (every entry point reports alike)."""

from __future__ import annotations


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
