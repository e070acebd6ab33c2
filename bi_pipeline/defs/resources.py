"""Resources: the pipeline's settings and the Parquet IO manager that keeps asset values under the storage root."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from dagster._core.storage.upath_io_manager import escape_dotdot_segments, escape_leading_slash
from pydantic import Field

from bi_pipeline.config import DecisionSettings, ForecastSettings, Settings, TrainingSettings, settings_fields
from bi_pipeline.storage import read_parquet, storage_path, write_file, write_parquet


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


def _defaulting_to(cls: type, values: dict[str, Any]) -> type:
    """``cls`` with ``values`` (the environment's settings) as its fields' defaults. Run config that sets some fields of
    a resource (the Launchpad, a sensor's request) fills the others from the defaults of the resource's class: with the
    declared defaults, a run launched with only ``landing`` would have run with the default home."""
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}
    for name, field in cls.model_fields.items():
        if name in values:
            annotations[name] = field.annotation
            namespace[name] = Field(default=values[name], description=field.description)
    namespace["__annotations__"] = annotations
    return type(cls.__name__, (cls,), namespace)


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
        return _defaulting_to(cls, _from(Settings, settings))()

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
        values |= {"checkpoint_dir": str(settings.checkpoint_dir), "recipe": dict(recipe or {})}
        return _defaulting_to(cls, values)()

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
        return _defaulting_to(cls, _from(DecisionSettings, decisions))()

    def economics(self) -> DecisionSettings:
        return DecisionSettings(**_values(self, DecisionSettings))


class ParquetStore(dg.UPathIOManager):
    """DataFrames as Parquet under a storage root (a path or any fsspec URL): ``<root>/<asset>/<partition>.parquet``
    or ``<root>/<asset>.parquet``.

    A run over many partitions (single-run backfill) hands over ``{partition_key: DataFrame}``; loading partitions
    always gives that mapping back, leaving out (with a warning) partitions not materialized yet. A partition the
    mapping leaves out keeps what is stored (``raw_sales`` for a period whose file is gone). On a local disk files
    are written to a temporary name, fsync'd and renamed, so a crash never leaves a half-written partition behind;
    on an object store each file is one ``put``.
    """

    extension = ".parquet"

    def make_safe_partition_path(self, base_path, partition: str):
        # Partition keys are dates; escaping `..` keeps any key inside the asset's folder on a real filesystem too.
        return base_path / escape_dotdot_segments(escape_leading_slash(partition))

    def dump_to_path(self, context: dg.OutputContext, obj: pd.DataFrame, path) -> None:
        write_file(path, lambda handle: write_parquet(obj, handle))

    def load_from_path(self, context: dg.InputContext, path) -> pd.DataFrame:
        return read_parquet(path)

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame | dict[str, pd.DataFrame] | None) -> None:
        if obj is None:
            return
        name = context.asset_key.to_user_string()
        if context.has_asset_partitions and (isinstance(obj, dict) or len(context.asset_partition_keys) != 1):
            if not isinstance(obj, dict):
                raise dg.Failure(f"{name}: one DataFrame for {len(context.asset_partition_keys)} partitions")
            paths = self._get_paths_for_partitions(context)
            for key, frame in obj.items():
                self.dump_to_path(context, frame, paths[key])
            rows = sum(len(f) for f in obj.values())
            context.add_output_metadata({"path": dg.MetadataValue.path(str(self._get_path_without_extension(context)))})
        else:
            super().handle_output(context, obj)
            rows = len(obj)
        context.log.debug(f"wrote {rows} rows of {name}")

    def load_input(self, context: dg.InputContext) -> pd.DataFrame | dict[str, pd.DataFrame]:
        if context.has_asset_key and context.has_asset_partitions and not context.asset_partition_keys:
            return {}  # no partition yet (no stock snapshot landed): an empty mapping, not None
        return super().load_input(context)

    def load_partitions(self, context: dg.InputContext) -> dict[str, pd.DataFrame]:
        # Always a mapping, for one partition or many, so asset code has one shape to handle.
        frames, missing = {}, []
        for key, path in self._get_paths_for_partitions(context).items():
            try:
                frames[key] = self.load_from_path(context, path)
            except FileNotFoundError:
                missing.append(key)
        if missing:
            context.log.warning(
                f"{context.asset_key.to_user_string()}: {len(missing)} partition(s) not materialized yet, skipped: "
                + ", ".join(missing[:10])
            )
        return frames

    def _load_single_input(self, path, context: dg.InputContext) -> pd.DataFrame:
        try:
            return self.load_from_path(context, path)
        except FileNotFoundError:
            raise dg.Failure(
                f"{context.asset_key.to_user_string()} has not been materialized yet (no {path})"
            ) from None


class ParquetIOManager(dg.ConfigurableIOManagerFactory):
    """Asset values as Parquet under ``base_dir``: a local path or any fsspec URL (``BI_PIPELINE_STORAGE``)."""

    base_dir: str

    def create_io_manager(self, context: dg.InitResourceContext) -> ParquetStore:
        return ParquetStore(base_path=storage_path(self.base_dir))


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
