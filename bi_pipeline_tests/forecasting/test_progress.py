"""Training progress records read the same in the Dagster log and on a terminal."""

from __future__ import annotations

from bi_pipeline.forecasting.progress import describe


def test_each_stage_the_trainer_reports_reads_as_one_line():
    epoch = {"stage": "train", "epoch": 3, "epochs": 40, "train_loss": 0.5, "validation_loss": 0.25, "best": True}
    assert describe(epoch) == ("info", "epoch 3/40: train loss 0.5000, validation loss 0.2500 (best)")
    skipped = {"stage": "resume_skipped", "checkpoint": "/h/last.pt", "error": "ValueError: bad"}
    assert describe(skipped) == (
        "warning",
        "checkpoint /h/last.pt not resumed from, training from scratch: ValueError: bad",
    )
    calibrated = {"stage": "calibrate", "level_scale": 1.01, "spread_scale": 0.9, "spread_power": 0.5}
    calibrated["spread_reference"] = 0.25
    assert describe(calibrated) == (
        "info",
        "calibrated on validation: level ×1.01, quantile spread ×0.9 × (width / 0.25) ^ 0.5",
    )
    assert describe({"stage": "resume", "epoch": 7}) == ("info", "resuming from the checkpoint after epoch 7")
    assert describe({"stage": "something_else"}) is None
