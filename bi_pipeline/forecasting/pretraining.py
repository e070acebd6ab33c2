"""Pretraining the forecaster on a corpus of other series (no Dagster).

A small business has little history (45 stores, a few years) to learn what retail series do in general. As
ForecastPFN and Chronos' KernelSynth do with synthetic data, :func:`pretrain` trains the forecaster on thousands of
series (the default corpus: store and store × category totals of simulated businesses, built by
:mod:`bi_pipeline.synthetic`) and saves a ``save_pretrained`` checkpoint that training starts from
(``TrainConfig.init_from``, ``BI_PIPELINE_INIT_FROM``). The layers that depend on the business's own covariates start
fresh when fine-tuning; the backbone and the forecast head carry over.

Reproducible: the checkpoint directory holds ``pretraining.json`` (corpus, corpus hash, training config, validation
loss, seconds, versions).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bi_pipeline.forecasting.configuration import TrainConfig
from bi_pipeline.forecasting.features import fit_spec
from bi_pipeline.forecasting.panel import build_panel
from bi_pipeline.forecasting.trainer import Progress, train_forecaster

MANIFEST = "pretraining.json"


def corpus_hash(corpus: pd.DataFrame) -> str:
    digest = hashlib.sha256(pd.util.hash_pandas_object(corpus, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


# Pretraining's recipe: more windows per epoch (the corpus is large), patience 4; no level, width, error-spread or
# level-feedback calibration (the fine-tuning calibrates afresh on the business's own validation periods).
RECIPE = {
    "epochs": 15,
    "patience": 4,
    "max_windows_per_epoch": 16384,
    "calibrate_level": False,
    "calibrate_spread_power": False,
    "error_spread_windows": 0,
    "level_feedback_origins": 0,
    "seasonal_spread": False,
    "seasonal_profile": "off",  # the corpus is built without it; the fine-tuning adds it as a fresh input
    "recency_halflife": 0.0,  # the corpus's years are all alike: no reason to draw its recent windows more often
}


def default_config(**overrides) -> TrainConfig:
    return TrainConfig(**{**RECIPE, **overrides})


def pretrain(
    history: pd.DataFrame,
    frequency: str,
    horizon: int,
    out: str | Path,
    config: TrainConfig | None = None,
    progress: Progress | None = None,
    corpus: dict | None = None,
) -> dict:
    """Trains the forecaster on a corpus of series (``store_id``, ``item_id``, ``date``, ``sales``; early stopping on
    its last ``horizon`` periods), saves it to ``out`` with ``save_pretrained`` and returns the manifest written
    beside it, which records ``corpus`` (what the corpus is: its generator's spec, or its source)."""
    config = config or default_config()
    if config.init_from:
        raise ValueError("pretraining starts from fresh weights: init_from must be empty")
    started = time.perf_counter()
    spec = fit_spec(history, frequency, covariates=[], use_static=False)
    panel = build_panel(history, spec)
    result = train_forecaster(panel, horizon, len(panel.dates) - 1, config, progress=progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result.model.save_pretrained(out)
    manifest = {
        "corpus": corpus or {},
        "corpus_series": int(panel.series),
        "corpus_rows": len(history),
        "corpus_hash": corpus_hash(history),
        "horizon": horizon,
        "train_config": config.to_dict(),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "validation_loss": result.best_validation_loss,
        "train_windows": result.train_windows,
        "seconds": round(time.perf_counter() - started, 1),
        "device": result.device,
        "versions": _versions(),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__}
