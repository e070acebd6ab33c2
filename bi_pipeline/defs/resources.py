"""Resources: the pipeline's settings and the Parquet IO manager that keeps asset values under the home."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from bi_pipeline.config import ForecastSettings, Settings
from bi_pipeline.state import atomic_write


class PipelineResource(dg.ConfigurableResource):
    """Where the landing zone is and how strict the cleaning is. Defaults come from the environment
    (docs/configuration.md)."""

    home: str
    landing: str
    frequency: str | None = Field(default=None, description="D, W or M; unset infers it from the file dates")
    allow_returns: bool = False
    max_bad_row_rate: float = 0.05
    price_min: float = 0.0
    price_max: float = 100_000.0
    implicit_zeros: bool = False
    settle_seconds: float = 2.0
    gx_landed_max_rows: int = 500_000
    sales_grain: str = Field(
        default="rows", description="rows: one row per date, store_id and item_id; transactions: lines summed per key"
    )
    week_start: str | None = Field(default=None, description="mon..sun; unset: the commonest weekday of the files")
    max_file_bytes: int = 1 << 30
    max_rows: int = 10_000_000
    max_columns: int = 500
    max_parquet_bytes: int = Field(default=4 << 30, description="uncompressed size of a Parquet sales file")
    max_line_bytes: int = Field(default=1 << 20, description="a longer line is quarantined as line_too_long")
    ingest_attempts: int = Field(default=3, description="runs requested for a file whose ingestion failed, in all")
    pii_columns: list[str] = Field(
        default_factory=lambda: ["description"], description="masked in every metadata preview and log line"
    )
    docs_port: int = Field(default=3001, description="`bi-pipeline docs` serves the GX Data Docs on this port")

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineResource:
        values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(Settings)}
        converted = {
            k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v for k, v in values.items()
        }
        return cls(**converted)

    def settings(self) -> Settings:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(Settings)}
        return Settings(
            **{**values, "home": Path(self.home), "landing": Path(self.landing), "pii_columns": tuple(self.pii_columns)}
        )


class ParquetIOManager(dg.ConfigurableIOManager):
    """DataFrames as Parquet: ``<base_dir>/<asset>/<partition>.parquet`` or ``<base_dir>/<asset>.parquet``.

    A run over many partitions (single-run backfill) hands over ``{partition_key: DataFrame}``; loading partitions
    always gives that mapping back. A partition the mapping leaves out keeps what is stored (``raw_sales`` for a
    period whose file is gone). Files are written to a temporary name, fsync'd and renamed, so a crash never leaves
    a half-written partition behind.
    """

    base_dir: str

    def _path(self, asset_key: dg.AssetKey, partition: str | None) -> Path:
        base = Path(self.base_dir).joinpath(*asset_key.path)
        return base / f"{partition}.parquet" if partition is not None else base.with_suffix(".parquet")

    @staticmethod
    def _write(frame: pd.DataFrame, path: Path) -> None:
        atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame | dict[str, pd.DataFrame]) -> None:
        if obj is None:
            return
        if context.has_asset_partitions:
            keys = context.asset_partition_keys
            frames = obj if isinstance(obj, dict) else {keys[0]: obj}
            if isinstance(obj, pd.DataFrame) and len(keys) != 1:
                raise dg.Failure(f"{context.asset_key.to_user_string()}: one DataFrame for {len(keys)} partitions")
            for key, frame in frames.items():
                self._write(frame, self._path(context.asset_key, key))
            rows = sum(len(f) for f in frames.values())
        else:
            self._write(obj, self._path(context.asset_key, None))
            rows = len(obj)
        context.add_output_metadata({"storage": dg.MetadataValue.path(str(self._path(context.asset_key, None).parent))})
        context.log.debug(f"wrote {rows} rows of {context.asset_key.to_user_string()}")

    def load_input(self, context: dg.InputContext) -> pd.DataFrame | dict[str, pd.DataFrame]:
        asset_key = context.asset_key
        if context.has_asset_partitions:
            keys = context.asset_partition_keys
            paths = {k: self._path(asset_key, k) for k in keys}
            missing = [k for k, p in paths.items() if not p.exists()]
            if missing:
                context.log.warning(
                    f"{asset_key.to_user_string()}: {len(missing)} partition(s) not materialized yet, skipped: "
                    + ", ".join(missing[:10])
                )
            # Always a mapping, for one partition or many, so asset code has one shape to handle.
            return {k: pd.read_parquet(p) for k, p in paths.items() if p.exists()}
        path = self._path(asset_key, None)
        if not path.exists():
            raise dg.Failure(f"{asset_key.to_user_string()} has not been materialized yet (no {path})")
        return pd.read_parquet(path)


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking and registry (own small resource: dagster-mlflow is a thin legacy wrapper). The default is a
    SQLite database under the home, artifacts next to it; a Postgres URI works the same way."""

    tracking_uri: str
    artifact_location: str
    experiment: str = "bi_pipeline"

    def tracker(self):
        from bi_pipeline.tracking import Tracker

        Path(self.artifact_location).mkdir(parents=True, exist_ok=True)
        return Tracker(self.tracking_uri, Path(self.artifact_location).as_uri(), self.experiment)


class ForecastingResource(dg.ConfigurableResource):
    """How the forecaster is trained and promoted; defaults from the environment (docs/configuration.md)."""

    horizon: int | None = Field(default=None, description="periods to forecast; unset: 28 daily, 13 weekly, 12 monthly")
    season_length: int | None = Field(default=None, description="MASE season; unset: 7 daily, 52 weekly, 12 monthly")
    members: int = Field(default=4, description="models averaged (different seeds)")
    epochs: int = 40
    max_windows_per_epoch: int = 8192
    pretrain_epochs: int = Field(default=0, description="masked-patch pretraining epochs before fine-tuning")
    loss_weighting: str = Field(
        default="equal", description="windows in the loss: equal (suits MASE), level or sqrt_level (by volume: WQL)"
    )
    mixup: float = Field(default=0.5, description="share of training windows mixed with another series, same dates")
    calibrate_level: bool = Field(default=True, description="fit a factor on the level on the validation periods")
    weight_average: float = Field(
        default=0.99, description="decay per step of the weights' moving average that training keeps (0: raw weights)"
    )
    recency_halflife: float = Field(
        default=10.0,
        description="with more windows than an epoch takes, one this many years older than the latest is drawn half "
        "as often (0: all alike)",
    )
    validation_horizons: float = Field(
        default=2.0,
        description="validation periods before the holdout (early stopping, calibrations): this many horizons, at most "
        "a fifth of the history",
    )
    calibrate_shape: bool = Field(
        default=False, description="fit a factor on the median path's swing around its mean on the validation periods"
    )
    calibrate_spread_power: bool = Field(
        default=True, description="the quantile spread factor follows each forecast's own interval width"
    )
    seasonal_profile: str = Field(
        default="off",
        description="each series' seasonal profile over its whole history as a known-future input: auto (on with "
        "several seasons of history), on, off",
    )
    calendar_effects: str = Field(
        default="easter",
        description="calendar effects as inputs: easter (the Easter windows), all (also the weekdays occurring five "
        "times in a month), off",
    )
    error_spread_windows: int = Field(
        default=5, description="each series' spread follows the model's errors on this many past forecasts (0: off)"
    )
    level_feedback_origins: int = Field(
        default=4, description="each series' level follows the model's errors from this many recent origins (0: off)"
    )
    init_from: str | None = Field(default=None, description="save_pretrained directory or hub id to start from")
    device: str = Field(default="auto", description="auto: CUDA (bf16 autocast) when present, else CPU")
    seed: int = 0
    promotion_margin: float = Field(default=0.0, description="share by which a challenger must beat the champion")
    ensemble: bool = Field(
        default=True, description="candidate is the transformer blended with LightGBM when validation favours it"
    )
    group_tolerance: float = Field(
        default=0.10, description="a store or item group (or an older window) regressing by more vetoes promotion"
    )
    incremental_epochs: int = Field(default=8, description="incremental update: most epochs")
    replay_ratio: float = Field(default=2.0, description="incremental update: older windows per new window")
    retrain_after_periods: int = Field(default=4, description="retrain sensor: new periods since the champion's data")
    degradation_threshold: float = Field(
        default=0.25, description="retrain sensor: live MASE worse than the champion's backtest by this share"
    )
    degradation_min_periods: int = Field(
        default=4, description="retrain sensor: scored periods of live accuracy needed before it can count as degraded"
    )
    checkpoint_dir: str

    @classmethod
    def from_settings(cls, settings: Settings, forecast: ForecastSettings) -> ForecastingResource:
        values = {f.name: getattr(forecast, f.name) for f in dataclasses.fields(ForecastSettings)}
        for name in ("mlflow_tracking_uri", "forecast_cron", "full_retrain_cron"):
            values.pop(name)
        return cls(checkpoint_dir=str(settings.checkpoint_dir), **values)

    def incremental_config(self):
        from bi_pipeline.continual import IncrementalConfig

        return IncrementalConfig(epochs=self.incremental_epochs, replay_ratio=self.replay_ratio)

    def train_config(self):
        from bi_pipeline.training import TrainConfig

        return TrainConfig(
            num_members=self.members,
            epochs=self.epochs,
            max_windows_per_epoch=self.max_windows_per_epoch,
            pretrain_epochs=self.pretrain_epochs,
            loss_weighting=self.loss_weighting,
            mixup=self.mixup,
            calibrate_level=self.calibrate_level,
            weight_average=self.weight_average,
            recency_halflife=self.recency_halflife,
            validation_horizons=self.validation_horizons,
            calibrate_shape=self.calibrate_shape,
            calibrate_spread_power=self.calibrate_spread_power,
            error_spread_windows=self.error_spread_windows,
            level_feedback_origins=self.level_feedback_origins,
            seasonal_profile=self.seasonal_profile,
            calendar_effects=self.calendar_effects,
            init_from=self.init_from,
            device=self.device,
            seed=self.seed,
        )
