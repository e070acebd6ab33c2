"""Settings and the one home directory where every piece of state lives.

Read from environment variables with defaults; the Dagster resources in ``defs/resources.py`` are built from
these so there is one place to look.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from bi_pipeline.evaluation import LOSS_WEIGHTINGS
from bi_pipeline.features import CALENDAR_EFFECTS, PROFILE_SETTINGS
from bi_pipeline.state import ensure_private_dir, sweep_temp_files

FREQUENCIES = ("D", "W", "M")
SALES_GRAINS = ("rows", "transactions")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _env_bool(name: str, default: bool) -> bool:
    value = (os.environ.get(name) or "").strip().lower()
    if not value:
        return default
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name}={os.environ[name]!r}: use 1/true/yes/on or 0/false/no/off")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value.strip().replace("_", ""))
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={value!r} is not a whole number") from exc


def _env_list(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = os.environ.get(name)
    if value is None:
        return default
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={value!r} is not a number") from exc


@dataclass(frozen=True)
class Settings:
    """What the data half of the pipeline needs to know; every field has an env var (docs/configuration.md)."""

    home: Path
    landing: Path
    # 'D', 'W' or 'M'; None means infer from the sales file dates.
    frequency: str | None = None
    # Negative sales are returns: quarantined unless allowed.
    allow_returns: bool = False
    # A partition whose share of quarantined rows exceeds this fails its blocking check.
    max_bad_row_rate: float = 0.05
    price_min: float = 0.0
    price_max: float = 100_000.0
    # A series' missing period inside its active span is a zero only when the landing zone says so.
    implicit_zeros: bool = False
    # Files modified more recently than this are assumed to be still being written.
    settle_seconds: float = 2.0
    # GX also validates the rows as landed (a warning check) for runs up to this many rows; bigger runs (backfills)
    # report the rules' counts there instead, since each GX suite costs about a second per million rows.
    gx_landed_max_rows: int = 500_000
    # What one row of a sales file is: "rows" (one row per date, store_id and item_id; another row for the same key
    # is a duplicate and quarantined) or "transactions" (many lines per key, summed: point-of-sale exports).
    sales_grain: str = "rows"
    # Weekly periods start on this weekday (mon..sun); None: the commonest weekday of the landed file dates.
    week_start: str | None = None
    # Limits checked before a sales file is read; a file over one is rejected by name (docs/landing-zone.md, "Limits").
    max_file_bytes: int = 1 << 30
    max_rows: int = 10_000_000
    max_columns: int = 500
    max_parquet_bytes: int = 4 << 30  # uncompressed, from the file's metadata and again while reading
    max_line_bytes: int = 1 << 20  # a longer line is quarantined as line_too_long, the rest of the file is read
    # A file whose ingestion run failed is requested this many times in all, then left until it changes.
    ingest_attempts: int = 3
    # Columns whose values are masked in every metadata preview and log line.
    pii_columns: tuple[str, ...] = ("description",)
    # Port of `bi-pipeline docs`, which serves the GX Data Docs on 127.0.0.1 (the check metadata links there).
    docs_port: int = 3001

    def __post_init__(self) -> None:
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
        if self.ingest_attempts < 1:
            raise ValueError(f"ingest_attempts must be at least 1, got {self.ingest_attempts}")
        object.__setattr__(self, "pii_columns", tuple(self.pii_columns))

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        home = Path(os.environ.get("BI_PIPELINE_HOME") or ".bi_pipeline").expanduser().resolve()
        landing_env = os.environ.get("BI_PIPELINE_LANDING")
        landing = Path(landing_env).expanduser().resolve() if landing_env else home / "landing"
        settings = cls(
            home=home,
            landing=landing,
            frequency=(os.environ.get("BI_PIPELINE_FREQUENCY") or None),
            allow_returns=_env_bool("BI_PIPELINE_ALLOW_RETURNS", False),
            max_bad_row_rate=_env_float("BI_PIPELINE_MAX_BAD_ROW_RATE", 0.05),
            price_min=_env_float("BI_PIPELINE_PRICE_MIN", 0.0),
            price_max=_env_float("BI_PIPELINE_PRICE_MAX", 100_000.0),
            implicit_zeros=_env_bool("BI_PIPELINE_IMPLICIT_ZEROS", False),
            settle_seconds=_env_float("BI_PIPELINE_SETTLE_SECONDS", 2.0),
            gx_landed_max_rows=int(_env_float("BI_PIPELINE_GX_LANDED_MAX_ROWS", 500_000)),
            sales_grain=_env_choice("BI_PIPELINE_SALES_GRAIN", "rows", SALES_GRAINS),
            week_start=(os.environ.get("BI_PIPELINE_WEEK_START") or "").strip().lower() or None,
            max_file_bytes=_env_int("BI_PIPELINE_MAX_FILE_BYTES", 1 << 30),
            max_rows=_env_int("BI_PIPELINE_MAX_ROWS", 10_000_000),
            max_columns=_env_int("BI_PIPELINE_MAX_COLUMNS", 500),
            max_parquet_bytes=_env_int("BI_PIPELINE_MAX_PARQUET_BYTES", 4 << 30),
            max_line_bytes=_env_int("BI_PIPELINE_MAX_LINE_BYTES", 1 << 20),
            ingest_attempts=_env_int("BI_PIPELINE_INGEST_ATTEMPTS", 3),
            pii_columns=_env_list("BI_PIPELINE_PII_COLUMNS", ("description",)),
            docs_port=_env_int("BI_PIPELINE_DOCS_PORT", 3001),
        )
        return replace(settings, **overrides) if overrides else settings

    # Everything below is derived from ``home`` so state never scatters across the working tree.
    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def asset_dir(self) -> Path:
        return self.home / "assets"

    @property
    def gx_dir(self) -> Path:
        return self.home / "gx"

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
    def checkpoint_dir(self) -> Path:
        return self.home / "checkpoints"


@dataclass(frozen=True)
class ForecastSettings:
    """What the model half of the pipeline needs to know; every field has an env var (docs/configuration.md)."""

    # Periods to forecast; None: 28 daily, 13 weekly, 12 monthly.
    horizon: int | None = None
    # Season length for MASE; None: 7 daily, 52 weekly, 12 monthly.
    season_length: int | None = None
    members: int = 4
    epochs: int = 40
    max_windows_per_epoch: int = 8192
    pretrain_epochs: int = 0
    # How much each window counts in the training loss: equal (suits MASE) or by volume (level, sqrt_level: WQL).
    loss_weighting: str = "equal"
    # Share of training windows mixed with another series over the same dates, and whether the forecasts' level is
    # calibrated on the validation periods (docs/accuracy.md: measured on Walmart and aus_retail).
    mixup: float = 0.5
    calibrate_level: bool = True
    # Decay per step of the moving average of the weights that validation reads and training keeps (0: raw weights).
    weight_average: float = 0.99
    # With more training windows than an epoch takes, recent ones are drawn more often: one this many years older
    # than the latest is half as likely (0: all alike; docs/accuracy.md: aus_retail).
    recency_halflife: float = 10.0
    # Validation periods (early stopping, calibrations): this many horizons, at most a fifth of the history.
    validation_horizons: float = 2.0
    # Whether the median path's swing around its mean is calibrated on the validation periods
    # (docs/accuracy.md: aus_retail).
    calibrate_shape: bool = False
    # Whether the quantile spread factor also follows each forecast's own interval width
    # (docs/accuracy.md: aus_retail).
    calibrate_spread_power: bool = True
    # Each series' long-history seasonal profile as a known-future input (docs/accuracy.md: aus_retail).
    seasonal_profile: str = "off"
    # Calendar effects among the inputs: easter, all (also monthly trading days), off
    # (docs/accuracy.md: Walmart, aus_retail).
    calendar_effects: str = "easter"
    # Each series' quantile spread follows the model's own errors on its latest forecasts, this many (0: off).
    error_spread_windows: int = 5
    # Each series' level follows the model's own errors on its forecasts from this many recent origins (0: off).
    level_feedback_origins: int = 4
    # A save_pretrained directory or hub id to fine-tune from instead of starting fresh.
    init_from: str | None = None
    device: str = "auto"
    seed: int = 0
    # A challenger must beat the champion's holdout MASE by at least this share to be promoted.
    promotion_margin: float = 0.0
    # Blend the transformer with LightGBM when the validation periods say the blend is better.
    ensemble: bool = True
    # A store or item group whose holdout MASE is worse than the champion's by more than this share vetoes promotion;
    # so does an older holdout window (the forgetting check).
    group_tolerance: float = 0.10
    # Incremental updates: most epochs, and older windows replayed per new window.
    incremental_epochs: int = 8
    replay_ratio: float = 2.0
    # The retrain sensor: an incremental training after this many new periods since the champion's data end, or
    # when live MASE is worse than the champion's backtest MASE by more than this share.
    retrain_after_periods: int = 4
    degradation_threshold: float = 0.25
    # Live accuracy counts as degraded only on at least this many scored periods of the champion's forecasts.
    degradation_min_periods: int = 4
    # Schedules (cron, UTC): forecasts refreshed from the champion; a full retrain from scratch.
    forecast_cron: str = "0 6 * * *"
    full_retrain_cron: str = "0 2 1 * *"
    # None: sqlite:///$BI_PIPELINE_HOME/mlflow.db with artifacts under $BI_PIPELINE_HOME/mlartifacts.
    mlflow_tracking_uri: str | None = None

    @classmethod
    def from_env(cls) -> ForecastSettings:
        def optional_int(name: str) -> int | None:
            value = os.environ.get(name)
            return int(_env_float(name, 0)) if value else None

        return cls(
            horizon=optional_int("BI_PIPELINE_HORIZON"),
            season_length=optional_int("BI_PIPELINE_SEASON_LENGTH"),
            members=int(_env_float("BI_PIPELINE_MEMBERS", 4)),
            epochs=int(_env_float("BI_PIPELINE_EPOCHS", 40)),
            max_windows_per_epoch=int(_env_float("BI_PIPELINE_MAX_WINDOWS_PER_EPOCH", 8192)),
            pretrain_epochs=int(_env_float("BI_PIPELINE_PRETRAIN_EPOCHS", 0)),
            loss_weighting=_env_choice("BI_PIPELINE_LOSS_WEIGHTING", "equal", LOSS_WEIGHTINGS),
            mixup=_env_float("BI_PIPELINE_MIXUP", 0.5),
            calibrate_level=_env_bool("BI_PIPELINE_CALIBRATE_LEVEL", True),
            weight_average=_env_float("BI_PIPELINE_WEIGHT_AVERAGE", 0.99),
            recency_halflife=_env_float("BI_PIPELINE_RECENCY_HALFLIFE", 10.0),
            validation_horizons=_env_float("BI_PIPELINE_VALIDATION_HORIZONS", 2.0),
            calibrate_shape=_env_bool("BI_PIPELINE_CALIBRATE_SHAPE", False),
            calibrate_spread_power=_env_bool("BI_PIPELINE_CALIBRATE_SPREAD_POWER", True),
            seasonal_profile=_env_choice("BI_PIPELINE_SEASONAL_PROFILE", "off", PROFILE_SETTINGS),
            calendar_effects=_env_choice("BI_PIPELINE_CALENDAR_EFFECTS", "easter", CALENDAR_EFFECTS),
            error_spread_windows=int(_env_float("BI_PIPELINE_ERROR_SPREAD_WINDOWS", 5)),
            level_feedback_origins=int(_env_float("BI_PIPELINE_LEVEL_FEEDBACK_ORIGINS", 4)),
            init_from=os.environ.get("BI_PIPELINE_INIT_FROM") or None,
            device=os.environ.get("BI_PIPELINE_DEVICE") or "auto",
            seed=int(_env_float("BI_PIPELINE_SEED", 0)),
            promotion_margin=_env_float("BI_PIPELINE_PROMOTION_MARGIN", 0.0),
            ensemble=_env_bool("BI_PIPELINE_ENSEMBLE", True),
            group_tolerance=_env_float("BI_PIPELINE_GROUP_TOLERANCE", 0.10),
            incremental_epochs=int(_env_float("BI_PIPELINE_INCREMENTAL_EPOCHS", 8)),
            replay_ratio=_env_float("BI_PIPELINE_REPLAY_RATIO", 2.0),
            retrain_after_periods=int(_env_float("BI_PIPELINE_RETRAIN_AFTER_PERIODS", 4)),
            degradation_threshold=_env_float("BI_PIPELINE_DEGRADATION_THRESHOLD", 0.25),
            degradation_min_periods=_env_int("BI_PIPELINE_DEGRADATION_MIN_PERIODS", 4),
            forecast_cron=os.environ.get("BI_PIPELINE_FORECAST_CRON") or "0 6 * * *",
            full_retrain_cron=os.environ.get("BI_PIPELINE_FULL_RETRAIN_CRON") or "0 2 1 * *",
            mlflow_tracking_uri=os.environ.get("BI_PIPELINE_MLFLOW_URI") or None,
        )


def _env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (os.environ.get(name) or default).strip()
    if value not in choices:
        raise ValueError(f"{name}={value!r}: choose one of {', '.join(choices)}")
    return value


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
    for folder in (settings.asset_dir, settings.state_dir, settings.home / "forecast_archive"):
        sweep_temp_files(folder)
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
