"""A training run's configuration: :class:`TrainConfig` (the user-facing training settings and the recipe), what a
run returns, and the network's config it gives for a panel and horizon (with ``init_from``, the checkpoint's
architecture)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bi_pipeline.config import TrainingSettings
from bi_pipeline.forecasting.metrics import QUANTILES
from bi_pipeline.forecasting.modeling import BIForecaster, BIForecasterConfig
from bi_pipeline.forecasting.panel import DEFAULT_CONTEXT, DEFAULT_PATCH, Panel

# Training reports each stage (an epoch, a calibration, a resume) to such a callback: the Dagster log, or a bar.
Progress = Callable[[dict], None]


@dataclass
class TrainConfig(TrainingSettings):
    """A training run's recipe: the user-facing settings (:class:`bi_pipeline.config.TrainingSettings`, declared once
    there) and the recipe below, whose defaults are the measured product defaults (docs/accuracy.md, "Ablations").
    The recipe is not a user setting; ``bi-pipeline backtest --recipe NAME=VALUE`` changes it for an ablation."""

    context_length: int | None = None  # None: by frequency (56 daily, 52 weekly, 48 monthly)
    patch_length: int | None = None
    d_model: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    ffn_dim: int = 128
    dropout: float = 0.1
    patience: int = 6
    batch_size: int = 128
    learning_rate: float = 1e-3
    # With a decay per step, early stopping and the model kept read an exponential moving average of the weights;
    # 0: the raw weights. With recency sampling it made aus_retail better on both seeds and the earlier window.
    weight_average: float = 0.99
    lr_decay: float = 0.95  # per epoch: later epochs take smaller steps, so the result depends less on the last batch
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    # With more windows than an epoch takes, draw recent ones more often: a window this many years older than the
    # latest is half as likely to be drawn; 0: every window alike (aus_retail; Walmart's windows fit in one epoch).
    recency_halflife: float = 10.0
    validation_periods: int | None = None  # None: validation_horizons horizons, at most a fifth of the history
    validation_horizons: float = 2.0  # see panel.validation_length
    # Early stopping and the calibrations read at most this many validation windows (a fixed draw): a few thousand
    # series make hundreds of thousands, and each epoch would score them all. Walmart and aus_retail have fewer.
    max_validation_windows: int = 16384
    # Early stopping reads at most this many of them after every epoch (a fixed draw; the calibrations read them all):
    # at a few thousand series scoring 16384 windows took as long as the epoch's training.
    early_stopping_windows: int = 4096
    min_context: int | None = None  # None: two patches
    calibrate_level: bool = True  # fit a factor on the forecasts' level on the validation windows
    calibrate_spread_power: bool = True  # let the spread factor follow each forecast's own interval width
    # Let each series' spread follow the model's own past errors on it (feedback.past_error_ratio), from this many of
    # its latest forecasts; 0: off.
    error_spread_windows: int = 5
    # Let each series' level follow the model's own recent errors on it (feedback.recent_level_ratio), from this many
    # recent origins; 0: off.
    level_feedback_origins: int = 4
    # Where the context is shorter than a year (daily data), let each series' spread follow last year's level over
    # the horizon against its context's (feedback.seasonal_spread_ratio); False: off.
    seasonal_spread: bool = True
    mixup: float = 0.5  # share of each training batch replaced by mixtures of two series at the same dates

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    model: BIForecaster
    epochs_run: int
    best_epoch: int
    best_validation_loss: float
    history: list[dict]
    train_windows: int
    validation_windows: int
    seconds: float
    windows_per_second: float
    device: str
    validation_periods: int = 0
    resumed_from_epoch: int | None = None
    init_from: str | None = None  # the checkpoint it started from ("synthetic" resolved to its directory)
    processes: int = 1  # the data-parallel processes it trained in (bi_pipeline.forecasting.distributed)


# Fine-tuning keeps the checkpoint's architecture: these fields come from its config, not from TrainConfig.
ARCHITECTURE = (
    "context_length",
    "patch_length",
    "d_model",
    "num_hidden_layers",
    "num_attention_heads",
    "ffn_dim",
    "head_dim",
    "embedding_dim",
    "num_members",
)


def model_config(panel: Panel, horizon: int, config: TrainConfig) -> BIForecasterConfig:
    """The model's config for this panel and horizon; with ``init_from``, the architecture is the checkpoint's (a
    PatchTST backbone only carries over to the same context, patches and widths), the covariate and static layers
    follow the panel, and the dropout is the training's."""
    spec = panel.spec
    architecture = {
        "context_length": config.context_length or DEFAULT_CONTEXT[spec.frequency],
        "patch_length": config.patch_length or DEFAULT_PATCH[spec.frequency],
        "d_model": config.d_model,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "ffn_dim": config.ffn_dim,
        "num_members": config.members,
    }
    if config.init_from:
        source = BIForecasterConfig.from_pretrained(config.init_from)
        architecture = {name: getattr(source, name) for name in ARCHITECTURE}
    return BIForecasterConfig(
        horizon=horizon,
        dropout=config.dropout,
        **architecture,
        quantiles=QUANTILES,
        num_future_features=len(spec.future_names),
        static_cardinalities=spec.static_cardinalities,
        num_static_numeric=spec.static_numeric_count,
        feature_spec=spec.to_dict(),
        seasonal_spread=config.seasonal_spread,
    )


def load_model(source: str, config: BIForecasterConfig | None = None) -> BIForecaster:
    """A forecaster from a ``save_pretrained`` directory or hub id. With ``config``, layers whose shape differs
    (another horizon or covariate set) start fresh and the backbones' weights are kept: fine-tuning a checkpoint."""
    if config is None:
        return BIForecaster.from_pretrained(source)
    return BIForecaster.from_pretrained(source, config=config, ignore_mismatched_sizes=True)


def new_model(config: TrainConfig, model_cfg: BIForecasterConfig, device: torch.device) -> BIForecaster:
    model = load_model(config.init_from, model_cfg) if config.init_from else BIForecaster(model_cfg)
    return model.to(device)


def warm_config(initial_model: BIForecaster, horizon: int) -> BIForecasterConfig:
    """A warm start's model config: the trained model's, with its calibrations reset (they belong to the old weights:
    training sees raw quantiles, and they are fitted again after)."""
    if initial_model.config.horizon != horizon:
        raise ValueError(f"warm start: the model forecasts {initial_model.config.horizon} periods, not {horizon}")
    model_cfg = copy.deepcopy(initial_model.config)
    model_cfg.spread_scale, model_cfg.level_scale = 1.0, 1.0
    model_cfg.spread_power, model_cfg.spread_reference = 0.0, 1.0
    model_cfg.error_spread_power, model_cfg.error_spread_reference = 0.0, 1.0
    model_cfg.level_feedback_power = 0.0
    return model_cfg
