"""Pretraining the forecaster on a synthetic corpus from the project's own retail generator (no Dagster).

A small business has little history (45 stores, a few years) to learn what retail series do in general. As
ForecastPFN and Chronos' KernelSynth do with synthetic data, :func:`pretrain` trains the forecaster on thousands of
store and store × category totals of simulated businesses (:func:`bi_pipeline.generate.simulate_totals`: yearly
patterns, holidays and Easter on moving dates, Christmas peaks, trends, price steps, promotions, launches and
stock-outs) and saves a ``save_pretrained`` checkpoint that training starts from (``TrainConfig.init_from``,
``BI_PIPELINE_INIT_FROM``, ``bi-pipeline backtest --init-from``). The layers that depend on the business's own
covariates start fresh when fine-tuning; the backbone and the forecast head carry over.

Reproducible: the corpus and the training are fixed by their seeds, and the checkpoint directory holds
``pretraining.json`` (corpus spec, corpus hash, training config, validation loss, seconds, versions).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bi_pipeline.features import build_panel, fit_spec
from bi_pipeline.generate import FREQUENCIES, GenerationSpec, simulate_totals
from bi_pipeline.training import ARCHITECTURE, Progress, TrainConfig, train_forecaster

MANIFEST = "pretraining.json"
# Five years weekly, 25 monthly, two daily: several yearly cycles per series at every frequency.
DEFAULT_PERIODS = {"D": 730, "W": 260, "M": 300}
# Simulated businesses start on different dates, so holidays and Easter fall on different periods of the year.
_FIRST_START = np.datetime64("1995-01-02")  # a Monday
_START_WEEKS = 52 * 20


@dataclass(frozen=True)
class CorpusSpec:
    """Which synthetic businesses make up the corpus: ``businesses`` × ``stores`` store totals plus the store ×
    category totals (up to four categories), each ``periods`` long."""

    frequency: str = "W"
    businesses: int = 40
    stores: int = 20
    items: int = 60
    periods: int | None = None  # None: by frequency (DEFAULT_PERIODS)
    seed: int = 7

    def __post_init__(self) -> None:
        if self.frequency not in FREQUENCIES:
            raise ValueError(f"frequency must be one of {FREQUENCIES}, got {self.frequency!r}")
        for name in ("businesses", "stores", "items"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def length(self) -> int:
        return self.periods or DEFAULT_PERIODS[self.frequency]


def synthetic_corpus(spec: CorpusSpec, progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """The corpus as a long frame (``store_id``, ``item_id``, ``date``, ``sales``): ``store_id`` names the business
    and store (``B001-S007``), ``item_id`` the level (``all`` or a category)."""
    frames = []
    children = np.random.SeedSequence(spec.seed).spawn(spec.businesses)
    for number, child in enumerate(children, start=1):
        rng = np.random.default_rng(child)
        start = str(_FIRST_START + 7 * int(rng.integers(0, _START_WEEKS)))
        business = GenerationSpec(
            stores=spec.stores,
            items=spec.items,
            periods=spec.length,
            frequency=spec.frequency,
            start=start,
            seed=int(rng.integers(2**31)),
            defects=0,
        )
        dates, totals = simulate_totals(business)
        stores = [f"B{number:03d}-S{s + 1:03d}" for s in range(spec.stores)]
        for level, values in totals.items():
            frames.append(
                pd.DataFrame(
                    {
                        "store_id": np.repeat(stores, len(dates)),
                        "item_id": level,
                        "date": np.tile(pd.DatetimeIndex(dates), spec.stores),
                        "sales": values.T.reshape(-1),
                    }
                )
            )
        if progress is not None:
            progress(number, spec.businesses)
    return pd.concat(frames, ignore_index=True)


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
    "seasonal_profile": "off",  # the corpus is built without it; the fine-tuning adds it as a fresh input
    "recency_halflife": 0.0,  # the corpus's years are all alike: no reason to draw its recent windows more often
}


def default_config(**overrides) -> TrainConfig:
    return TrainConfig(**{**RECIPE, **overrides})


def pretrain(
    corpus: CorpusSpec,
    horizon: int,
    out: str | Path,
    config: TrainConfig | None = None,
    progress: Progress | None = None,
    corpus_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Trains the forecaster on the synthetic corpus (early stopping on its last ``horizon`` periods), saves it to
    ``out`` with ``save_pretrained`` and returns the manifest written beside it."""
    config = config or default_config()
    if config.init_from:
        raise ValueError("pretraining starts from fresh weights: init_from must be empty")
    started = time.perf_counter()
    history = synthetic_corpus(corpus, corpus_progress)
    spec = fit_spec(history, corpus.frequency, covariates=[], use_static=False)
    panel = build_panel(history, spec)
    result = train_forecaster(panel, horizon, len(panel.dates) - 1, config, progress=progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result.model.save_pretrained(out)
    manifest = {
        "corpus": {**asdict(corpus), "periods": corpus.length},
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


# ``init_from="synthetic"``: the checkpoint pretrained on the default corpus for the run's frequency and horizon.
SYNTHETIC = "synthetic"
SYNTHETIC_CORPUS: dict = {}  # CorpusSpec's defaults: 40 businesses x 20 stores, 260 weeks / 300 months / 730 days
# What fixes a checkpoint's shape (training.ARCHITECTURE, as TrainConfig names it), and its dropout.
_ARCHITECTURE_FIELDS = (
    *(name for name in ARCHITECTURE if name in {f.name for f in dataclasses.fields(TrainConfig)}),
    "dropout",
)


def synthetic_checkpoint(
    frequency: str, horizon: int, config: TrainConfig, home: Path, progress: Progress | None = None
) -> Path:
    """The default corpus's checkpoint for this frequency, horizon and architecture (taken from ``config``), under
    ``home/pretrained/``: pretrained the first time it is asked for (minutes on a CPU), then reused. The directory
    name carries a hash of everything that fixes it, so another setting gets its own checkpoint."""
    corpus = CorpusSpec(frequency=frequency, **SYNTHETIC_CORPUS)
    # The corpus seed also seeds the training, as `bi-pipeline pretrain` does: both give the same checkpoint.
    architecture = {name: getattr(config, name) for name in _ARCHITECTURE_FIELDS}
    pre_config = default_config(**architecture, seed=corpus.seed, device=config.device)
    recipe = {"corpus": asdict(corpus), "horizon": horizon, "train_config": pre_config.to_dict() | {"device": None}}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    path = home / "pretrained" / f"synthetic-{frequency}-h{horizon}-{key}"
    if (path / MANIFEST).exists():
        return path

    def report(record: dict) -> None:
        if progress and record.get("stage") == "train":
            progress(
                {
                    "stage": "pretrain_corpus",
                    "epoch": record["epoch"],
                    "epochs": record["epochs"],
                    "loss": record["validation_loss"],
                    "checkpoint": str(path),
                }
            )

    # Written aside under a name of its own and moved into place, so an interrupted pretraining is never taken for a
    # finished one and two processes pretraining at once never write into the same directory.
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        pretrain(corpus, horizon, partial, pre_config, progress=report)
        if not (path / MANIFEST).exists():
            shutil.rmtree(path, ignore_errors=True)  # an interrupted copy without its manifest
            try:
                partial.rename(path)
            except OSError:
                if not (path / MANIFEST).exists():  # not another process's finished copy: a real failure
                    raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return path


def resolve_init_from(
    config: TrainConfig, frequency: str, horizon: int, home: Path | None = None, progress: Progress | None = None
) -> TrainConfig:
    """``config`` with ``init_from="synthetic"`` replaced by the synthetic checkpoint's directory (built if missing,
    under ``$BI_PIPELINE_HOME``); any other value is returned as it is."""
    if config.init_from != SYNTHETIC:
        return config
    if home is None:
        from bi_pipeline.config import Settings

        home = Settings.from_env().home
    path = synthetic_checkpoint(frequency, horizon, config, home, progress)
    return dataclasses.replace(config, init_from=str(path))
