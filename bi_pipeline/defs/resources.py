"""Resources: the pipeline's settings and the Parquet IO manager that keeps asset values under the home."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from bi_pipeline.config import DecisionSettings, ForecastSettings, Settings, TrainingSettings, settings_fields
from bi_pipeline.state import atomic_write


def _config_type(hint: Any) -> Any:
    """The resource field's type for a setting's: paths as text, tuples as lists (what Dagster config holds)."""
    args = typing.get_args(hint)
    if type(None) in args:  # an optional setting: the same mapping for the type it takes
        (inner,) = [a for a in args if a is not type(None)]
        return _config_type(inner) | None
    if hint is Path:
        return str
    if typing.get_origin(hint) is tuple:
        return list[str]
    return hint


def settings_resource(name: str, doc: str, classes: tuple[type, ...], exclude: tuple[str, ...] = (), **extra: Any):
    """A ConfigurableResource whose fields are the settings of ``classes`` (each declared once in
    :mod:`bi_pipeline.config`, with its default and help as the field's description), plus ``extra`` fields
    (name: type, required)."""
    annotations: dict[str, Any] = dict(extra)
    namespace: dict[str, Any] = {"__module__": __name__, "__qualname__": name, "__doc__": doc}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in settings_fields(cls):
            if f.name in exclude:
                continue
            annotations[f.name] = _config_type(hints[f.name])
            default = list(f.default) if isinstance(f.default, tuple) else f.default
            default = str(default) if isinstance(default, Path) else default
            namespace[f.name] = Field(default=default, description=f.metadata["help"])
    namespace["__annotations__"] = annotations
    return type(name, (dg.ConfigurableResource,), namespace)


def _values(resource: dg.ConfigurableResource, cls: type) -> dict[str, Any]:
    values = {f.name: getattr(resource, f.name) for f in settings_fields(cls)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _from(cls: type, settings: Any, **extra: Any) -> dict[str, Any]:
    values = {f.name: getattr(settings, f.name) for f in settings_fields(cls)}
    converted = {
        k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v for k, v in values.items()
    }
    return {**converted, **extra}


_PipelineBase = settings_resource(
    "_PipelineBase", "Where the landing zone is and how strict the cleaning is (docs/configuration.md).", (Settings,)
)


class PipelineResource(_PipelineBase):
    """Where the landing zone is and how strict the cleaning is; defaults from the environment
    (docs/configuration.md)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineResource:
        return cls(**_from(Settings, settings))

    def settings(self) -> Settings:
        return Settings(**_values(self, Settings))


# Schedules and the tracking URI are read when the definitions are built, not by the assets.
_BUILD_TIME = ("forecast_cron", "full_retrain_cron", "mlflow_tracking_uri")
_ForecastingBase = settings_resource(
    "_ForecastingBase",
    "How the forecaster is trained and promoted (docs/configuration.md).",
    (TrainingSettings, ForecastSettings),
    exclude=_BUILD_TIME,
    checkpoint_dir=str,
)


class ForecastingResource(_ForecastingBase):
    """How the forecaster is trained and promoted; defaults from the environment (docs/configuration.md)."""

    recipe: dict[str, Any] = Field(
        default_factory=dict,
        description="training recipe values to change for an ablation (TrainConfig fields, e.g. mixup: 0); not a "
        "setting: the defaults are the measured ones (docs/accuracy.md)",
    )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        forecast: ForecastSettings,
        training: TrainingSettings | None = None,
        recipe: dict[str, Any] | None = None,
    ) -> ForecastingResource:
        values = {**_from(TrainingSettings, training or TrainingSettings()), **_from(ForecastSettings, forecast)}
        values = {k: v for k, v in values.items() if k not in _BUILD_TIME}
        return cls(checkpoint_dir=str(settings.checkpoint_dir), recipe=dict(recipe or {}), **values)

    def training(self) -> TrainingSettings:
        return TrainingSettings(**_values(self, TrainingSettings))

    def train_config(self, **overrides: Any):
        from bi_pipeline.forecasting.configuration import TrainConfig

        return TrainConfig(**{**self.training().to_dict(), **self.recipe, **overrides})

    def forecast_settings(self) -> ForecastSettings:
        values = {f.name: getattr(self, f.name) for f in settings_fields(ForecastSettings) if f.name not in _BUILD_TIME}
        return ForecastSettings(**values)


_DecisionBase = settings_resource(
    "_DecisionBase",
    "The economics orders are computed with and where the BI tables go (docs/configuration.md).",
    (DecisionSettings,),
)


class DecisionResource(_DecisionBase):
    """The economics orders are computed with and where the BI tables go; defaults from the environment
    (docs/configuration.md)."""

    @classmethod
    def from_settings(cls, decisions: DecisionSettings) -> DecisionResource:
        return cls(**_from(DecisionSettings, decisions))

    def economics(self) -> DecisionSettings:
        return DecisionSettings(**_values(self, DecisionSettings))


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
    SQLite database under the home, artifacts next to it; a Postgres URI works the same way. An MLflow server
    (``http(s)://``, e.g. ``mlflow server --backend-store-uri postgresql://… --serve-artifacts``) keeps the artifacts
    itself: the local artifact folder is not used."""

    tracking_uri: str
    artifact_location: str
    experiment: str = "bi_pipeline"

    def tracker(self):
        from bi_pipeline.forecasting.registry import Tracker, served

        if served(self.tracking_uri):
            return Tracker(self.tracking_uri, None, self.experiment)
        Path(self.artifact_location).mkdir(parents=True, exist_ok=True)
        return Tracker(self.tracking_uri, Path(self.artifact_location).as_uri(), self.experiment)
