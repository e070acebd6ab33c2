"""What the pipeline does with models, as plain functions the assets only call (no Dagster): train a candidate and
promote it only when it is better, forecast from the champion, score live accuracy. Tested directly
(bi_pipeline_tests/test_usecases.py) with a local MLflow store.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bi_pipeline.forecasting.baselines import attach_actuals
from bi_pipeline.forecasting.calendar import pandas_freq
from bi_pipeline.forecasting.candidate import (
    Candidate,
    forecast_latest,
    future_covariates,
    holdout_forecast,
    input_example,
    lineage_of,
    load_champion,
    make_candidate,
    not_forecast,
)
from bi_pipeline.forecasting.configuration import Progress, TrainConfig
from bi_pipeline.forecasting.continual import (
    GateResult,
    IncrementalConfig,
    group_mase,
    promotion_gate,
    series_groups,
    update_forecaster,
)
from bi_pipeline.forecasting.ensemble import Forecaster
from bi_pipeline.forecasting.features import FeatureSpec, fit_spec
from bi_pipeline.forecasting.interface import Task
from bi_pipeline.forecasting.live import LiveEvidence, archive_forecasts, live_accuracy, live_evidence, load_archive
from bi_pipeline.forecasting.metrics import score
from bi_pipeline.forecasting.models import Transformer
from bi_pipeline.forecasting.panel import Panel, build_panel
from bi_pipeline.forecasting.registry import CHAMPION, Decision, Tracker
from bi_pipeline.privacy import redact_uri

Log = Callable[[str], None]
LOGGER = logging.getLogger(__name__)


@dataclass
class Promotion:
    """How a candidate is judged: the settings of :class:`bi_pipeline.config.ForecastSettings` it reads."""

    ensemble: bool = True
    margin: float = 0.0
    group_tolerance: float = 0.10
    incremental: IncrementalConfig = field(default_factory=IncrementalConfig)


@dataclass
class TrainingOutcome:
    """What one training did: the model, its candidate and scores, and the promotion decision."""

    transformer: Transformer
    candidate: Candidate
    mode: str  # full or incremental
    version: str
    run_id: str
    decision: Decision
    champion_version: str | None
    champion_scores: dict[str, float] | None
    gate: GateResult | None
    params: dict

    @property
    def floor(self) -> float:
        return float(self.candidate.seasonal_naive.get("MASE", math.nan))


def train_and_promote(
    history: pd.DataFrame,
    panel: Panel,
    cutoff: int,
    task: Task,
    config: TrainConfig,
    tracker: Tracker,
    work_dir: Path,
    promotion: Promotion | None = None,
    mode: str = "full",
    reason: str = "manual",
    run_name: str | None = None,
    checkpoint_dir: Path | None = None,
    progress: Progress | None = None,
    log: Log = LOGGER.info,
    warn: Log = LOGGER.warning,
) -> TrainingOutcome:
    """Train the transformer on ``panel`` up to ``cutoff`` (from scratch, or ``incremental`` from the champion on the
    new periods and a replay sample), build the candidate (with LightGBM when the validation periods favour the
    blend), score it on the holdout after ``cutoff``, log and register it in MLflow as ``challenger``, and promote it
    to ``champion`` only if its holdout MASE is finite and beats seasonal naive's on the same holdout and the current
    champion's by the margin with no store or item group (nor the older window) regressing past the tolerance.
    ``work_dir`` holds the saved model until MLflow has its copy."""
    if mode not in ("full", "incremental"):
        raise ValueError(f"training mode {mode!r}: use full or incremental")
    promotion = promotion or Promotion()
    champion_version = tracker.alias_version(CHAMPION)
    # An unreadable champion is not a reason to stop training: it cannot be warm-started from or compared with.
    champion = load_champion(tracker, champion_version, warn) if champion_version else None
    cutoff_date = panel.dates[cutoff]
    transformer = None
    if mode == "incremental":
        if champion is None:
            warn("incremental training requested but there is no champion yet: training from scratch")
        else:
            transformer = _incremental(
                champion, history, cutoff_date, task, config, promotion, checkpoint_dir, progress
            )
            if transformer is None:
                warn("incremental update not possible: training from scratch")
            else:
                log(
                    f"incremental update of champion v{champion_version}: {transformer.result.train_windows} windows "
                    f"(new periods after {champion.transformer.config.training_targets_end} and a replay sample)"
                )
    if transformer is None:
        mode = "full"
        transformer = Transformer(config, checkpoint_dir=checkpoint_dir, progress=progress)
        transformer.fit_panel(panel, cutoff, task)
    candidate = make_candidate(transformer, history, task, ensemble=promotion.ensemble)
    for name, values in {**candidate.scores, "seasonal_naive": candidate.seasonal_naive}.items():
        log(f"holdout {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    params = training_params(transformer, candidate, task, config, mode, reason, champion_version)
    lineage = {**lineage_of(history, cutoff_date, task.horizon), "dagster_run_id": run_name or ""}
    model_dir = Path(work_dir) / (run_name or "model")  # one per run: two trainings never write the same one
    try:
        candidate.model.save(model_dir)
        run_id, version = tracker.log_training(
            model_dir,
            params,
            transformer.result.history,
            candidate.own_scores,
            lineage,
            run_name=run_name,
            components=candidate.scores,
            version_tags={"kind": candidate.kind, "transformer_weight": candidate.weight, "mode": mode},
            example=_example(candidate.model, history, task.horizon, warn),
        )
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)  # the registered copy lives in MLflow's artifact store
    champion_scores, gate = None, None
    if champion is not None:
        try:
            champion_scores, gate = compare_with_champion(candidate, champion, history, task, promotion.group_tolerance)
        except Exception as exc:  # whatever fails, the challenger is judged against seasonal naive alone
            warn(
                f"champion v{champion_version} could not be scored on this holdout "
                f"({type(exc).__name__}: {redact_uri(str(exc))})"
            )
    decision = tracker.decide(
        version,
        candidate.own_scores["MASE"],
        champion_scores["MASE"] if champion_scores else None,
        floor_score=float(candidate.seasonal_naive.get("MASE", math.nan)),
        margin=promotion.margin,
        vetoes=gate.vetoes if gate else None,
    )
    if gate is not None:
        _log_gate(tracker, version, champion_version, champion_scores, candidate, promotion, gate, decision)
    log(
        f"model version {version} ({candidate.kind}): "
        f"{'promoted to champion' if decision.promoted else 'kept as challenger'} — {decision.reason}"
    )
    return TrainingOutcome(
        transformer, candidate, mode, version, run_id, decision, champion_version, champion_scores, gate, params
    )


def _incremental(
    champion: Forecaster,
    history: pd.DataFrame,
    cutoff_date: pd.Timestamp,
    task: Task,
    config: TrainConfig,
    promotion: Promotion,
    checkpoint_dir: Path | None,
    progress: Progress | None,
) -> Transformer | None:
    """The champion's transformer updated on the new periods with its own encodings; None when it cannot be."""
    spec = FeatureSpec.from_dict(champion.transformer.config.feature_spec)
    panel = build_panel(history, spec, reference_end=cutoff_date)
    cutoff = int(panel.dates.get_loc(cutoff_date))
    try:
        result = update_forecaster(
            champion.transformer,
            panel,
            task.horizon,
            cutoff,
            config,
            promotion.incremental,
            series_groups(history),
            checkpoint_dir=checkpoint_dir,
            progress=progress,
        )
    except ValueError as exc:
        if progress:
            progress({"stage": "incremental_skipped", "error": str(exc)})
        return None
    model = Transformer(config, checkpoint_dir=checkpoint_dir, progress=progress)
    model.task, model.result, model.network, model.panel, model.cutoff = task, result, result.model, panel, cutoff
    return model


def training_params(
    transformer: Transformer,
    candidate: Candidate,
    task: Task,
    config: TrainConfig,
    mode: str,
    reason: str,
    warm_from: str | None,
) -> dict:
    """The MLflow parameters of a training: its recipe, how it started, and what it fitted."""
    result, model_cfg = transformer.result, transformer.network.config
    fitted = (
        "spread_scale",
        "level_scale",
        "spread_power",
        "spread_reference",
        "error_spread_power",
        "error_spread_reference",
        "error_spread_windows",
        "level_feedback_power",
        "level_feedback_origins",
    )
    return {
        **config.to_dict(),
        "init_from": result.init_from or "",
        "mode": mode,
        "reason": reason,
        "warm_start_from": (warm_from or "") if mode == "incremental" else "",
        "horizon": task.horizon,
        "frequency": task.frequency,
        "season_length": task.season,
        "kind": candidate.kind,
        "transformer_weight": candidate.weight,
        "transformer_spread_weight": candidate.spread_weight,
        "train_windows": result.train_windows,
        "validation_windows": result.validation_windows,
        "best_epoch": result.best_epoch,
        "device": result.device,
        **{name: getattr(model_cfg, name) for name in fitted},
        "future_features": ",".join(transformer.panel.spec.future_names),
        "lightgbm_covariates": ",".join(task.covariates) if "lightgbm" in candidate.model.members else "",
        "members": candidate.model.describe(),
        "spread_weights": ", ".join(f"{m} {w:.1f}" for m, w in candidate.model.spread_weights.items()),
        "interval_step_factors": ", ".join(f"{f:.2f}" for f in candidate.model.step_factors),
    }


def compare_with_champion(
    candidate: Candidate, champion: Forecaster, history: pd.DataFrame, task: Task, tolerance: float
) -> tuple[dict[str, float], GateResult]:
    """The champion's holdout scores (with its own encodings and parts), and the promotion gate: per store and item
    group on the holdout, and both models on the older window before it (the forgetting check)."""
    season = task.season
    champion_fc, train, test = holdout_forecast(champion, history)
    champion_scores = score(attach_actuals(champion_fc, test), train, season)
    groups = series_groups(history)
    challenger_groups = group_mase(candidate.holdout[candidate.own_key], test, train, season, groups)
    champion_groups = group_mase(champion_fc, test, train, season, groups)
    older = {}
    if history["date"].nunique() > 3 * task.horizon + 2:
        for name, model in (("challenger", candidate.model), ("champion", champion)):
            fc, old_train, old_test = holdout_forecast(model, history, back=task.horizon)
            older[name] = score(attach_actuals(fc, old_test), old_train, season)["MASE"]
    gate = promotion_gate(challenger_groups, champion_groups, older.get("challenger"), older.get("champion"), tolerance)
    return champion_scores, gate


def _log_gate(
    tracker: Tracker,
    version: str,
    champion_version: str | None,
    champion_scores: dict | None,
    candidate: Candidate,
    promotion: Promotion,
    gate: GateResult,
    decision: Decision,
) -> None:
    """The numbers behind the decision, beside the run: every group compared, the vetoes, the older window."""
    run_of_version = tracker.run_of(version)
    if gate.older:
        tracker.client.log_metric(run_of_version, "older_window_MASE", gate.older["challenger"])
        tracker.client.log_metric(run_of_version, "champion_older_window_MASE", gate.older["champion"])
    tracker.client.log_dict(
        run_of_version,
        {
            "champion_version": champion_version,
            "champion_holdout": champion_scores,
            "challenger_holdout": candidate.own_scores,
            "seasonal_naive_holdout": candidate.seasonal_naive,
            "margin": promotion.margin,
            "group_tolerance": promotion.group_tolerance,
            "vetoes": gate.vetoes,
            "older_window_MASE": gate.older,
            "groups": gate.compared.to_dict(orient="records"),
            "decision": "promoted" if decision.promoted else "kept",
            "reason": decision.reason,
        },
        "promotion_gate.json",
    )


@dataclass
class Publication:
    """Forecasts from the champion, archived for live accuracy."""

    forecasts: pd.DataFrame
    model: Forecaster
    version: str
    archived: Path
    not_forecast: pd.DataFrame  # every series of the history without a forecast, with the reason

    @property
    def clipped_quantiles(self) -> int:
        """Forecast values of a non-negative measure that were still below zero and were clipped (a last guard)."""
        return int(self.forecasts.attrs.get("clipped_quantiles", 0))


class NoChampion(RuntimeError):
    """There is no champion model to forecast from yet."""


def _example(model: Forecaster, history: pd.DataFrame, horizon: int, warn: Log) -> tuple | None:
    """The registered model's input example and output; a training is registered without one rather than lost."""
    try:
        return input_example(model, history, horizon)
    except Exception as exc:
        warn(f"the model is registered without an input example or signature ({type(exc).__name__}: {exc})")
        return None


def publish_forecasts(
    history: pd.DataFrame, calendar: pd.DataFrame | None, tracker: Tracker, archive: Path
) -> Publication:
    """Forecasts for the horizon after the last landed period from the champion, for every active series, archived
    under ``archive`` by model version and cutoff."""
    version = tracker.alias_version(CHAMPION)
    if version is None:
        raise NoChampion(
            "no champion model yet: materialize `forecaster` first. A training becomes champion only when its holdout "
            "MASE is finite and beats seasonal naive's; the forecaster's `decision_reason` says why one was not"
        )
    model = Forecaster.load(tracker.model_dir(version))
    future = future_covariates(calendar, history, model.horizon, pandas_freq(history, model.frequency))
    out = forecast_latest(model, history, future)
    out["model_version"] = version
    return Publication(out, model, version, archive_forecasts(archive, out), not_forecast(history, out))


@dataclass
class LiveReport:
    """Every publication scored on the actuals landed since, and the champion's evidence for the retrain sensor."""

    table: pd.DataFrame
    champion_version: str | None
    champion_mase: float | None
    evidence: LiveEvidence | None

    @property
    def scored(self) -> pd.DataFrame:
        return self.table[self.table["scored_periods"] > 0]


def live_report(history: pd.DataFrame, archive: Path, tracker: Tracker, season_length: int) -> LiveReport:
    """Live accuracy: each archived publication scored on the periods with actuals so far, the champion's backtest
    MASE and the evidence on its own publications (what the retrain sensor judges degradation on)."""
    frames = load_archive(archive)
    table = live_accuracy(frames, history, season_length)
    champion = tracker.alias_version(CHAMPION)
    champion_mase = tracker.holdout_metrics(champion).get("MASE") if champion else None
    evidence = live_evidence(frames, history, season_length, champion) if champion else None
    return LiveReport(table, champion, float(champion_mase) if champion_mase is not None else None, evidence)


def lightgbm_covariates(history: pd.DataFrame, cutoff_date: pd.Timestamp, frequency: str) -> tuple[str, ...]:
    """LightGBM's covariates: every numeric covariate of the training range, continuous ones included."""
    train = history[history["date"] <= cutoff_date]
    return tuple(fit_spec(train, frequency, continuous_covariates=True).covariates)
