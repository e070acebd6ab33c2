"""`bi-pipeline bench scale`: the pipeline's stages at a chosen scale (M5: 30,490 series x 1,941 days), seconds and
peak RSS per stage, on this machine.

Each stage runs in a process of its own that reads its input from Parquet and writes its output, as each asset's
step does in a run (a step process per asset), so a stage's peak RSS is what its step needs:

- ``ingest``: landing zone -> integrated_sales as `bench ingest` runs it (the generator in a child process of its
  own), then the integrated view written to Parquet as the IO manager writes it;
- ``features``: the ``features`` asset's value from the integrated view (spec fitted on the training range, the
  panel, the long frame), written to Parquet;
- ``train``: the ``forecaster``'s panel from the features (holdout hidden), then one training epoch of the default
  recipe and the calibration and feedback fits that follow it (reported apart);
- ``forecast``: every series forecast at the holdout origin with the trained model.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from bi_pipeline.storage import read_parquet, write_file, write_parquet


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


def _write(frame: pd.DataFrame, path: Path) -> float:
    started = time.perf_counter()
    write_file(path, lambda handle: write_parquet(frame, handle))
    return round(time.perf_counter() - started, 2)


def _stage_ingest(work: Path, series: int, periods: int, frequency: str) -> dict:
    from bi_pipeline.bench import bench_ingest

    held: list = []
    result = bench_ingest(
        series, periods, frequency, workdir=work / "ingest", on_integrated=lambda f, q: held.extend([f, q])
    )
    integrated, freq = held
    held.clear()
    write_seconds = _write(integrated, work / "integrated_sales.parquet")
    shutil.rmtree(work / "ingest", ignore_errors=True)  # the generated landing zone
    return {
        "seconds": result["landing_to_integrated_seconds"],
        "collect": result["seconds"]["collect"],
        "validate": result["seconds"]["validate"],
        "clean": result["seconds"]["clean"],
        "integrate": result["seconds"]["integrate"],
        "write_seconds": write_seconds,
        "rows_landed": result["rows"],
        "integrated_rows": result["integrated_rows"],
        "rows_per_second": result["rows_per_second"]["landing_to_integrated"],
        "frequency": freq,
        "generate_seconds": result["seconds"]["generate"],
        "generate_peak_rss_mb": result["generate_peak_rss_mb"],
    }


def _stage_features(work: Path, horizon: int | None) -> dict:
    from bi_pipeline.config import TrainingSettings
    from bi_pipeline.forecasting.configuration import TrainConfig
    from bi_pipeline.forecasting.features import fit_spec
    from bi_pipeline.forecasting.interface import DEFAULT_HORIZON
    from bi_pipeline.forecasting.panel import build_panel, panel_frame, validation_length

    started = time.perf_counter()
    integrated = read_parquet(work / "integrated_sales.parquet")
    read_seconds = time.perf_counter() - started
    freq = json.loads((work / "ingest.json").read_text())["frequency"]
    horizon = horizon or DEFAULT_HORIZON[freq]
    config = TrainConfig(**TrainingSettings().to_dict())
    started = time.perf_counter()
    # What the features asset does (bi_pipeline/defs/forecasting.py), with the default settings.
    dates = np.sort(integrated["date"].unique())
    cutoff_date = pd.Timestamp(dates[-horizon - 1])
    spec = fit_spec(integrated[integrated["date"] <= cutoff_date], freq)
    panel = build_panel(integrated, spec, reference_end=cutoff_date)
    cutoff = int(panel.dates.get_loc(cutoff_date))
    history_len = int(np.median(cutoff + 1 - panel.first))
    validation = validation_length(horizon, history_len, config.validation_horizons)
    frame = panel_frame(panel, split_at={"validation": cutoff + 1 - validation, "test": cutoff + 1})
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 2),
        "read_seconds": round(read_seconds, 2),
        "write_seconds": _write(frame, work / "features.parquet"),
        "rows": len(frame),
        "columns": len(frame.columns),
        "series": int(panel.series),
        "periods": len(panel.dates),
        "horizon": horizon,
        "frame_mb": round(frame.memory_usage(deep=False).sum() / 2**20, 1),
        "panel_future_mb": round(panel.future.nbytes / 2**20, 1),
    }


def _stage_train(work: Path) -> dict:
    import torch

    from bi_pipeline.config import TrainingSettings
    from bi_pipeline.forecasting.configuration import TrainConfig
    from bi_pipeline.forecasting.panel import panel_from_frame, split_of
    from bi_pipeline.forecasting.trainer import train_forecaster

    started = time.perf_counter()
    features = read_parquet(work / "features.parquet")
    split = split_of(features)
    # What the forecaster asset trains on: the features' panel with the holdout hidden.
    panel = panel_from_frame(features, upto=split.cutoff)
    del features
    read_seconds = time.perf_counter() - started
    config = TrainConfig(
        **{**TrainingSettings().to_dict(), "epochs": 1, "validation_periods": split.validation_periods}
    )
    epoch: dict = {}

    def on_progress(event: dict) -> None:
        if event.get("stage") == "train":
            epoch.update(event)

    cutoff = int(panel.dates.get_loc(split.cutoff))
    result = train_forecaster(panel, split.horizon, cutoff, config, progress=on_progress)
    result.model.save_pretrained(work / "model")
    return {
        "seconds": round(result.seconds, 2),
        "read_seconds": round(read_seconds, 2),
        "epoch_seconds": epoch.get("seconds"),
        "windows": epoch.get("windows"),
        "windows_per_second": round(result.windows_per_second, 1),
        "besides_epoch_seconds": round(result.seconds - (epoch.get("seconds") or 0.0), 2),
        "train_windows": result.train_windows,
        "validation_windows": result.validation_windows,
        "members": config.members,
        "parameters": int(sum(p.numel() for p in result.model.parameters())),
        "context_length": int(result.model.config.context_length),
        "device": result.device,
        "torch_threads": torch.get_num_threads(),
    }


def _stage_forecast(work: Path, batch_size: int) -> dict:
    from bi_pipeline.forecasting.configuration import load_model
    from bi_pipeline.forecasting.device import choose_device
    from bi_pipeline.forecasting.panel import panel_from_frame, split_of
    from bi_pipeline.forecasting.transformer import forecast

    started = time.perf_counter()
    features = read_parquet(work / "features.parquet")
    split = split_of(features)
    panel = panel_from_frame(features)
    del features
    model = load_model(str(work / "model")).to(choose_device("auto")).eval()
    read_seconds = time.perf_counter() - started
    started = time.perf_counter()
    out = forecast(model, panel, int(panel.dates.get_loc(split.cutoff)), batch_size=batch_size)
    seconds = time.perf_counter() - started
    series = int(out[["store_id", "item_id"]].drop_duplicates().shape[0])
    return {
        "seconds": round(seconds, 2),
        "read_seconds": round(read_seconds, 2),
        "series": series,
        "rows": len(out),
        "series_per_second": round(series / seconds, 1),
    }


def _run(stage: str, work: str, args: tuple, out: str) -> None:
    stages = {"ingest": _stage_ingest, "features": _stage_features, "train": _stage_train, "forecast": _stage_forecast}
    record = stages[stage](Path(work), *args)
    record["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    Path(out).write_text(json.dumps(record))


def _in_child(stage: str, work: Path, *args) -> dict:
    out = work / f"{stage}.json"
    started = time.perf_counter()
    child = mp.get_context("spawn").Process(target=_run, args=(stage, str(work), args, str(out)))
    child.start()
    child.join()
    if child.exitcode != 0:
        killed = " (killed: out of memory?)" if child.exitcode == -9 else ""
        raise RuntimeError(f"bench scale: the {stage} stage failed with exit code {child.exitcode}{killed}")
    record = json.loads(out.read_text())
    record["process_seconds"] = round(time.perf_counter() - started, 2)
    return record


def bench_scale(
    series: int,
    periods: int,
    frequency: str = "D",
    horizon: int | None = None,
    workdir: Path | None = None,
    batch_size: int = 1024,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Every stage from the landing zone to the forecast of every series, at ``series`` x ``periods``, each in a
    process of its own (see the module's docstring)."""
    import torch

    say = progress or (lambda message: None)
    work = Path(tempfile.mkdtemp(prefix="bi_pipeline_scale_", dir=workdir))
    try:
        say(f"ingest: generating and ingesting {series:,} series x {periods:,} periods")
        stages = {"ingest": _in_child("ingest", work, series, periods, frequency)}
        say("features: the spec on the training range, the panel and the long frame, written to Parquet")
        stages["features"] = _in_child("features", work, horizon)
        say("train: one epoch of the default recipe, then the calibrations and feedback")
        stages["train"] = _in_child("train", work)
        say("forecast: every series at the holdout origin")
        stages["forecast"] = _in_child("forecast", work, batch_size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ingest, features, train = stages["ingest"], stages["features"], stages["train"]
    return {
        "benchmark": "scale",
        "series": features["series"],
        "periods": features["periods"],
        "frequency": ingest["frequency"],
        "horizon": features["horizon"],
        "rows_landed": ingest["rows_landed"],
        "integrated_rows": ingest["integrated_rows"],
        "stages": stages,
        "total_seconds": round(sum(s["process_seconds"] for s in stages.values()), 1),
        "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values()),
        "model": {k: train[k] for k in ("members", "parameters", "context_length", "device")},
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "torch_threads": train["torch_threads"],
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }
