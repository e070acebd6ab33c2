"""The synthetic pretraining corpus and its checkpoint: store and store × category totals of businesses simulated by
the project's retail generator (:func:`bi_pipeline.generate.simulate_totals`: yearly patterns, holidays and Easter on
moving dates, Christmas peaks, trends, price steps, promotions, launches and stock-outs), and
``init_from="synthetic"``: the checkpoint pretrained on it for a frequency and horizon, built on first use under
``$BI_PIPELINE_HOME/pretrained`` and reused (:mod:`bi_pipeline.forecasting.pretraining` trains it).

This module joins the generator and the model half; the model half itself never imports the generator.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bi_pipeline.forecasting.configuration import ARCHITECTURE, TrainConfig
from bi_pipeline.forecasting.pretraining import MANIFEST, default_config, pretrain
from bi_pipeline.forecasting.trainer import Progress
from bi_pipeline.generate import FREQUENCIES, GenerationSpec, simulate_totals
from bi_pipeline.storage import StoragePath, is_local, pull, push

if TYPE_CHECKING:
    from bi_pipeline.config import Settings

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


# ``init_from="synthetic"``: the checkpoint pretrained on the default corpus for the run's frequency and horizon.
SYNTHETIC = "synthetic"


SYNTHETIC_CORPUS: dict = {}  # CorpusSpec's defaults: 40 businesses x 20 stores, 260 weeks / 300 months / 730 days


# What fixes a checkpoint's shape (training.ARCHITECTURE, as TrainConfig names it), and its dropout.
_ARCHITECTURE_FIELDS = (
    *(name for name in ARCHITECTURE if name in {f.name for f in dataclasses.fields(TrainConfig)}),
    "members",
    "dropout",
)


def pretrain_synthetic(
    corpus: CorpusSpec,
    horizon: int,
    out: str | Path,
    config: TrainConfig | None = None,
    progress: Progress | None = None,
    corpus_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Pretrains on the synthetic corpus ``corpus`` (:func:`bi_pipeline.forecasting.pretraining.pretrain`); the
    manifest records the corpus's spec."""
    history = synthetic_corpus(corpus, corpus_progress)
    info = {**asdict(corpus), "periods": corpus.length}
    return pretrain(history, corpus.frequency, horizon, out, config, progress=progress, corpus=info)


def synthetic_checkpoint(
    frequency: str,
    horizon: int,
    config: TrainConfig,
    home: Path,
    progress: Progress | None = None,
    store: StoragePath | None = None,
) -> Path:
    """The default corpus's checkpoint for this frequency, horizon and architecture (taken from ``config``), under
    ``home/pretrained/``: pretrained the first time it is asked for (minutes on a CPU), then reused. The directory
    name carries a hash of everything that fixes it, so another setting gets its own checkpoint.

    With a remote ``store`` (``<storage root>/pretrained``), ``home/pretrained`` is a local copy: a checkpoint another
    machine pretrained is fetched from the store, and one pretrained here is stored there once it is complete."""
    corpus = CorpusSpec(frequency=frequency, **SYNTHETIC_CORPUS)
    # The corpus seed also seeds the training, as `bi-pipeline pretrain` does: both give the same checkpoint.
    architecture = {name: getattr(config, name) for name in _ARCHITECTURE_FIELDS}
    pre_config = default_config(**architecture, seed=corpus.seed, device=config.device)
    recipe = {"corpus": asdict(corpus), "horizon": horizon, "train_config": pre_config.to_dict() | {"device": None}}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    path = home / "pretrained" / f"synthetic-{frequency}-h{horizon}-{key}"
    if (path / MANIFEST).exists():
        return path
    stored = store / path.name if store is not None else None
    if stored is not None and (stored / MANIFEST).exists():
        return _fetch(stored, path)

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
        pretrain_synthetic(corpus, horizon, partial, pre_config, progress=report)
        if not (path / MANIFEST).exists():
            shutil.rmtree(path, ignore_errors=True)  # an interrupted copy without its manifest
            try:
                partial.rename(path)
            except OSError:
                if not (path / MANIFEST).exists():  # not another process's finished copy: a real failure
                    raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    if stored is not None and not (stored / MANIFEST).exists():
        # The manifest goes last: a store holding it holds the whole checkpoint.
        push(path, stored, skip=lambda name: name == MANIFEST)
        push(path, stored, skip=lambda name: name != MANIFEST)
    return path


def _fetch(stored: StoragePath, path: Path) -> Path:
    """A stored checkpoint copied beside ``path`` and moved into place (the same care as pretraining it here)."""
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        pull(stored, partial)
        if not (path / MANIFEST).exists():
            shutil.rmtree(path, ignore_errors=True)
            try:
                partial.rename(path)
            except OSError:
                if not (path / MANIFEST).exists():
                    raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return path


def resolve_init_from(
    config: TrainConfig,
    frequency: str,
    horizon: int,
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> TrainConfig:
    """``config`` with ``init_from="synthetic"`` replaced by the synthetic checkpoint's directory (built if missing,
    under the storage root of ``settings``, the environment's by default); any other value is returned as it is."""
    if config.init_from != SYNTHETIC:
        return config
    if settings is None:
        from bi_pipeline.config import Settings

        settings = Settings.from_env()
    root = settings.pretrained_dir
    home, store = (Path(root).parent, None) if is_local(root) else (settings.home, root)
    path = synthetic_checkpoint(frequency, horizon, config, home, progress, store)
    return dataclasses.replace(config, init_from=str(path))
