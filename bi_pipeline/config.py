"""Settings, each declared once, and the one home directory where every piece of state lives.

A setting is a field of :class:`Settings` (the data half), :class:`TrainingSettings` (how the transformer is trained)
or :class:`ForecastSettings` (forecasting, promotion and automation), declared with :func:`setting`: name, type,
default and a one-line help. Everything else is produced from those declarations: the environment variable
(``BI_PIPELINE_<NAME>``) and how it is read (:func:`from_env`), the Dagster resources' config
(``bi_pipeline/defs/resources.py``), the CLI flags (:func:`add_flags`, :func:`from_args`) and the table in
docs/configuration.md (:func:`markdown_table`; a test fails when the docs are stale). Every entry point reads the
environment the same way and flags override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bi_pipeline.state import ensure_private_dir, sweep_temp_files
from bi_pipeline.storage import StoragePath, is_local, storage_path

FREQUENCIES = ("D", "W", "M")
SALES_GRAINS = ("rows", "transactions")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CALENDAR_EFFECTS = ("easter", "all", "off")
PROFILE_SETTINGS = ("auto", "on", "off")
MONTH_TURN_SETTINGS = ("auto", "off")
EXECUTORS = ("multiprocess", "in_process", "celery")
PREFIX = "BI_PIPELINE_"


def setting(default: Any, help: str, *, choices: tuple[str, ...] = (), env: str | None = None) -> Any:
    """A setting's one declaration: its default, a one-line help and, for a text setting, the values it takes. The
    environment variable is ``BI_PIPELINE_<FIELD NAME>`` unless ``env`` names another."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices), "env": env})


def settings_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def env_name(f: dataclasses.Field) -> str:
    return f.metadata.get("env") or PREFIX + f.name.upper()


def flag_name(f: dataclasses.Field) -> str:
    return "--" + f.name.replace("_", "-")


def _base_type(cls: type, f: dataclasses.Field) -> tuple[type, bool]:
    """(the value's type, whether None is allowed), from the field's annotation."""
    hint = typing.get_type_hints(cls)[f.name]
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        return rest[0], len(rest) < len(args)
    return (tuple if typing.get_origin(hint) is tuple else hint), False


def parse_value(cls: type, f: dataclasses.Field, text: str, source: str) -> Any:
    """``text`` as the setting's type; a clear error names ``source`` (the variable or flag) and what it takes."""
    kind, optional = _base_type(cls, f)
    text = text.strip()
    if optional and text == "":
        return None
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError("use 1/true/yes/on or 0/false/no/off")
        if kind is int:
            return int(float(text.replace("_", ""))) if "e" in text.lower() else int(text.replace("_", ""))
        if kind is float:
            return float(text)
        if kind is tuple:
            return tuple(part.strip() for part in text.split(",") if part.strip())
        if kind is Path:
            return Path(text).expanduser()
        value = text.lower() if f.metadata["choices"] and text.lower() in f.metadata["choices"] else text
        if f.metadata["choices"] and value not in f.metadata["choices"]:
            raise ValueError(f"choose one of {', '.join(f.metadata['choices'])}")
        return value
    except ValueError as exc:
        raise ValueError(f"{source}={text!r}: {exc}") from None


def from_env(cls: type, environ: Mapping[str, str] | None = None, **overrides: Any) -> Any:
    """The settings of ``cls`` from the environment (an unset or empty variable keeps the default), then
    ``overrides``."""
    environ = os.environ if environ is None else environ
    values = {}
    for f in settings_fields(cls):
        raw = environ.get(env_name(f))
        if raw is not None and (raw.strip() or _base_type(cls, f)[0] is tuple):
            values[f.name] = parse_value(cls, f, raw, env_name(f))
    return cls(**{**values, **overrides})


def add_flags(parser: argparse.ArgumentParser, cls: type, only: tuple[str, ...] | None = None) -> None:
    """A flag per setting of ``cls`` (or those named in ``only``); a flag not given leaves the environment's value."""
    group = parser.add_argument_group(f"{cls.__name__} (each also BI_PIPELINE_<NAME>; docs/configuration.md)")
    for f in settings_fields(cls):
        if only is not None and f.name not in only:
            continue
        kind, _ = _base_type(cls, f)
        help_text = f.metadata["help"].replace("%", "%%")
        if kind is bool:
            group.add_argument(
                flag_name(f),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            group.add_argument(
                flag_name(f),
                dest=f.name,
                default=argparse.SUPPRESS,
                metavar=f.name.upper(),
                help=help_text,
                type=lambda text, f=f: parse_value(cls, f, text, flag_name(f)),
            )


def from_args(cls: type, args: argparse.Namespace, environ: Mapping[str, str] | None = None, **overrides: Any) -> Any:
    """The settings of ``cls``: the environment, then the flags given on the command line, then ``overrides``."""
    given = {f.name: getattr(args, f.name) for f in settings_fields(cls) if hasattr(args, f.name)}
    return from_env(cls, environ, **{**given, **overrides})


def markdown_table(cls: type) -> str:
    """The reference table of docs/configuration.md for ``cls``: variable, flag, default and help per setting."""
    rows = ["| variable | flag | default | what it does |", "|---|---|---|---|"]
    for f in settings_fields(cls):
        default = f.default
        shown = "unset" if default is None else ",".join(default) if isinstance(default, tuple) else str(default)
        choices = f" ({' / '.join(f.metadata['choices'])})" if f.metadata["choices"] else ""
        rows.append(f"| `{env_name(f)}` | `{flag_name(f)}` | `{shown}` | {f.metadata['help']}{choices} |")
    return "\n".join(rows)


@dataclass(frozen=True)
class Settings:
    """What the data half of the pipeline needs to know, where its state is stored and how its runs execute."""

    home: Path = setting(Path(".bi_pipeline"), "the one directory that holds every piece of state")
    landing: Path | None = setting(None, "the landing zone; unset: `$BI_PIPELINE_HOME/landing`")
    frequency: str | None = setting(None, "D, W or M; unset: inferred from the sales file dates", choices=FREQUENCIES)
    allow_returns: bool = setting(False, "negative sales are returns, kept; otherwise they are quarantined")
    max_bad_row_rate: float = setting(0.05, "a period whose share of quarantined rows is higher fails its check")
    price_min: float = setting(0.0, "lowest valid price")
    price_max: float = setting(100_000.0, "highest valid price")
    implicit_zeros: bool = setting(False, "a series' missing period inside its active span counts as zero sales")
    settle_seconds: float = setting(2.0, "files modified more recently are assumed to be still being written")
    gx_landed_max_rows: int = setting(
        500_000, "GX validates the rows as landed for runs up to this many rows; bigger runs report the rules' counts"
    )
    sales_grain: str = setting(
        "rows", "rows: one row per date, store_id and item_id; transactions: lines summed per key", choices=SALES_GRAINS
    )
    week_start: str | None = setting(
        None, "weekly periods start on this weekday; unset: the commonest weekday of the files", choices=WEEKDAYS
    )
    max_file_bytes: int = setting(1 << 30, "a larger sales file is rejected by name before it is read")
    max_rows: int = setting(10_000_000, "a sales file with more rows is rejected by name")
    max_columns: int = setting(500, "a sales file with more columns is rejected by name")
    max_parquet_bytes: int = setting(
        4 << 30, "uncompressed size of a Parquet sales file, checked before and while reading"
    )
    max_line_bytes: int = setting(
        1 << 20, "a longer line is quarantined as line_too_long; the rest of the file is read"
    )
    ingest_attempts: int = setting(3, "runs requested in all for a file whose ingestion failed")
    pii_columns: tuple[str, ...] = setting(("description",), "columns masked in every metadata preview and log line")
    docs_port: int = setting(3001, "`bi-pipeline docs` serves the GX Data Docs on 127.0.0.1 at this port")
    storage: str | None = setting(
        None,
        "root of asset values, the GX context and Data Docs, checkpoints and the forecast archive: a path or an "
        "fsspec URL (s3://…, gs://…, file://…); unset: $BI_PIPELINE_HOME",
    )
    executor: str = setting(
        "multiprocess",
        "how a run's steps execute: multiprocess (a process per step on this machine), in_process, or celery (steps "
        "queued to Celery workers)",
        choices=EXECUTORS,
    )
    celery_broker: str = setting("redis://127.0.0.1:6379/0", "the Celery broker when the executor is celery")
    celery_backend: str = setting("redis://127.0.0.1:6379/1", "the Celery result backend when the executor is celery")

    def __post_init__(self) -> None:
        home = Path(self.home).expanduser().resolve()
        object.__setattr__(self, "home", home)
        object.__setattr__(
            self, "landing", Path(self.landing).expanduser().resolve() if self.landing else home / "landing"
        )
        object.__setattr__(self, "pii_columns", tuple(self.pii_columns))
        if self.frequency is not None and self.frequency not in FREQUENCIES:
            raise ValueError(f"frequency must be one of {FREQUENCIES} or unset, got {self.frequency!r}")
        if not 0.0 <= self.max_bad_row_rate <= 1.0:
            raise ValueError(f"max_bad_row_rate must be within [0, 1], got {self.max_bad_row_rate}")
        if self.sales_grain not in SALES_GRAINS:
            raise ValueError(f"sales_grain must be one of {SALES_GRAINS}, got {self.sales_grain!r}")
        if self.week_start is not None and self.week_start not in WEEKDAYS:
            raise ValueError(f"week_start must be one of {', '.join(WEEKDAYS)} or unset, got {self.week_start!r}")
        for name in ("max_file_bytes", "max_rows", "max_columns", "max_parquet_bytes", "max_line_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.ingest_attempts < 1:
            raise ValueError(f"ingest_attempts must be at least 1, got {self.ingest_attempts}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        return from_env(cls, environ, **overrides)

    # Everything below is derived from ``home`` so state never scatters across the working tree.
    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def storage_root(self) -> StoragePath:
        """Asset values, the GX context and Data Docs, checkpoints and the forecast archive: the home, or
        ``BI_PIPELINE_STORAGE`` (a path or any fsspec URL; docs/production.md)."""
        return storage_path(self.storage) if self.storage else self.home

    @property
    def asset_dir(self) -> StoragePath:
        return self.storage_root / "assets"

    @property
    def gx_store(self) -> StoragePath:
        """The GX context and its Data Docs site as kept under the storage root."""
        return self.storage_root / "gx"

    @property
    def gx_dir(self) -> Path:
        """The GX file context GX works in: the stored one on a local root, else a local copy kept in step with
        :attr:`gx_store` (GX's file context needs a real directory)."""
        return Path(self.gx_store) if is_local(self.gx_store) else self.home / "gx"

    @property
    def archive_dir(self) -> StoragePath:
        """Every published forecast, by cutoff and model version (bi_pipeline.forecasting.live)."""
        return self.storage_root / "forecast_archive"

    @property
    def pretrained_dir(self) -> StoragePath:
        """Checkpoints pretrained on the generator's corpus (bi_pipeline.synthetic)."""
        return self.storage_root / "pretrained"

    @property
    def state_dir(self) -> Path:
        return self.home / "state"

    @property
    def manifest_path(self) -> Path:
        return self.state_dir / "ingested.json"

    @property
    def scan_state_path(self) -> Path:
        return self.state_dir / "landing_scan.json"

    @property
    def removals_path(self) -> Path:
        return self.state_dir / "removals.jsonl"

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def checkpoint_dir(self) -> StoragePath:
        return self.storage_root / "checkpoints"


@dataclass
class TrainingSettings:
    """How the transformer is trained; :class:`bi_pipeline.forecasting.configuration.TrainConfig` adds the recipe."""

    members: int = setting(4, "networks averaged, each from its own seed")
    epochs: int = setting(40, "most training epochs (early stopping usually ends sooner)")
    max_windows_per_epoch: int = setting(8192, "windows an epoch draws at most (recent ones more often)")
    calendar_effects: str = setting(
        "easter", "calendar effects as inputs: easter, all (also monthly trading days), off", choices=CALENDAR_EFFECTS
    )
    seasonal_profile: str = setting(
        "off",
        "each series' long-history seasonal profile as an input; helps fine-tuning from `synthetic` (docs/accuracy.md)",
        choices=PROFILE_SETTINGS,
    )
    month_turn: str = setting(
        "auto",
        "auto: weekly sales adjusted for where a week lies in its month, when the panel shows that effect "
        "(docs/model.md); off",
        choices=MONTH_TURN_SETTINGS,
    )
    init_from: str | None = setting(
        None, "a save_pretrained directory or hub id to fine-tune from; `synthetic`: the generator-corpus checkpoint"
    )
    device: str = setting("auto", "auto: CUDA with bf16 autocast when present, else every CPU core; or cpu, cuda:1, …")
    seed: int = setting(0, "seed of the first member (member k: seed + k)")
    processes: int = setting(
        1, "data-parallel training processes on this machine (one per GPU; on CPUs they share the cores); docs/model.md"
    )
    loader_workers: int = setting(0, "DataLoader worker processes per training process that gather the batches")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ForecastSettings:
    """Forecasting, promotion and automation."""

    horizon: int | None = setting(None, "periods to forecast; unset: 28 daily, 13 weekly, 12 monthly")
    season_length: int | None = setting(None, "MASE's season; unset: 7 daily, 52 weekly, 12 monthly")
    ensemble: bool = setting(True, "blend the transformer with LightGBM when the validation periods favour the blend")
    promotion_margin: float = setting(0.0, "share by which a challenger's holdout MASE must beat the champion's")
    group_tolerance: float = setting(
        0.10, "a store or item group (or the older window) regressing by more than this share vetoes promotion"
    )
    incremental_epochs: int = setting(8, "an incremental update's most epochs")
    replay_ratio: float = setting(2.0, "an incremental update's older windows replayed per new window")
    retrain_after_periods: int = setting(4, "retrain sensor: new periods since the champion's data end")
    degradation_threshold: float = setting(0.25, "retrain sensor: live MASE worse than the champion's by this share")
    degradation_min_periods: int = setting(4, "retrain sensor: scored periods of live accuracy needed to count")
    forecast_cron: str = setting("0 6 * * *", "forecasts refreshed from the champion (cron, UTC)")
    full_retrain_cron: str = setting("0 2 1 * *", "a full retrain from scratch (cron, UTC)")
    mlflow_tracking_uri: str | None = setting(
        None, "MLflow tracking URI; unset: sqlite:///$BI_PIPELINE_HOME/mlflow.db", env="BI_PIPELINE_MLFLOW_URI"
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ForecastSettings:
        return from_env(cls, environ, **overrides)


@dataclass(frozen=True)
class DecisionSettings:
    """Decisions: the economics of a series without its own attributes, and where the tables for BI tools go."""

    service_level: float = setting(
        0.95, "the order-up-to level's probability of covering demand for series without unit_price and unit_cost"
    )
    lead_time: int = setting(1, "periods from placing an order to receiving it (items' or stores' lead_time wins)")
    review_period: int = setting(1, "periods between orders (items' or stores' review_period wins)")
    holding_cost_rate: float = setting(0.25, "yearly cost of holding a unit, as a share of its unit_cost")
    pack_size: float = setting(1.0, "orders are whole packs of this many units (items' pack_size wins)")
    min_order: float = setting(0.0, "the least quantity an order may be (items' min_order wins)")
    alert_webhook: str | None = setting(
        None, "a URL: each alert not delivered before is POSTed there once, as JSON; unset: none are sent"
    )
    alert_periods: int = setting(1, "demand anomalies are looked for in this many of the latest landed periods")
    warehouse_url: str | None = setting(
        None,
        "where the tables for BI tools go: postgresql://… or duckdb:///path; unset: $BI_PIPELINE_HOME/warehouse.duckdb",
    )

    def __post_init__(self) -> None:
        if not 0.5 <= self.service_level < 1.0:
            raise ValueError(f"service_level must be within [0.5, 1), got {self.service_level}")
        if self.lead_time < 0 or self.review_period < 1:
            raise ValueError(f"lead_time must be ≥ 0 and review_period ≥ 1, got {self.lead_time}, {self.review_period}")
        if self.alert_periods < 1:
            raise ValueError(f"alert_periods must be at least 1, got {self.alert_periods}")
        if self.pack_size <= 0 or self.min_order < 0 or self.holding_cost_rate < 0:
            raise ValueError("pack_size must be positive; min_order and holding_cost_rate must not be negative")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> DecisionSettings:
        return from_env(cls, environ, **overrides)


SETTINGS_CLASSES = (Settings, TrainingSettings, ForecastSettings, DecisionSettings)
BEGIN, END = (
    "<!-- settings: generated by `bi-pipeline settings`; edit bi_pipeline/config.py -->",
    "<!-- settings: end -->",
)


def configuration_markdown() -> str:
    """The settings reference of docs/configuration.md, from the declarations (a test fails when the docs differ)."""
    sections = []
    for cls in SETTINGS_CLASSES:
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        sections.append(f"### {cls.__name__}\n\n{doc}\n\n{markdown_table(cls)}")
    return "\n\n".join([BEGIN, *sections, END])


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def prepare_dagster_home(settings: Settings) -> Path:
    """Point DAGSTER_HOME at ``$BI_PIPELINE_HOME/dagster`` and give it the project's dagster.yaml.

    The repository's dagster.yaml is the source of truth; it is copied only when the home has none yet (so a user's
    production edit, e.g. Postgres storage, is kept) or when the home copy is still an older project default.
    """
    # The home holds the business's data and models: readable by its user only when this creates it.
    ensure_private_dir(settings.home)
    # Temporary files a crashed writer left behind (old enough that no write in progress owns them).
    for folder in (settings.asset_dir, settings.state_dir, settings.archive_dir):
        if is_local(folder):
            sweep_temp_files(Path(folder))
    target = settings.dagster_home
    target.mkdir(parents=True, exist_ok=True)
    config = target / "dagster.yaml"
    source = repo_root() / "dagster.yaml"
    marker = "# bi_pipeline default"
    if source.exists():
        text = source.read_text()
        if not config.exists() or (config.read_text().startswith(marker) and config.read_text() != text):
            config.write_text(text)
    elif not config.exists():
        config.write_text(f"{marker}\ntelemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(target)
    return target
