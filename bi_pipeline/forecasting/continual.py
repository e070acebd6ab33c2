"""Continual learning without Dagster: incremental updates, the promotion gate, and the replay benchmark.

An incremental update warm-starts from the champion's transformer (its architecture and its feature encodings are
kept) at a lower learning rate, for a short schedule with early stopping on the usual validation stretch, on the
windows whose targets reach the periods the champion has not learnt yet, mixed with a replay sample of older windows
stratified by store and item group, so that what the model knew about older periods is rehearsed, not forgotten.

A challenger is promoted only when it beats the champion's primary metric on the same holdout by the margin, no store
or item group regresses past the tolerance, and it is not worse than the champion on an older holdout window by more
than the tolerance (the forgetting check).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bi_pipeline.forecasting.baselines import attach_actuals
from bi_pipeline.forecasting.configuration import TrainConfig, TrainResult
from bi_pipeline.forecasting.features import FeatureSpec, fit_spec, seasonal_profile_lag
from bi_pipeline.forecasting.live import LiveEvidence
from bi_pipeline.forecasting.metrics import SERIES, mase, mase_scales
from bi_pipeline.forecasting.modeling import BIForecaster
from bi_pipeline.forecasting.panel import Panel, Windows, build_panel, validation_length
from bi_pipeline.forecasting.trainer import train_forecaster
from bi_pipeline.forecasting.transformer import forecast

ITEM_GROUP_COLUMNS = ("category", "department", "item_group", "family")


@dataclass
class IncrementalConfig:
    """How an incremental update differs from a full training (the rest comes from the full TrainConfig)."""

    learning_rate_factor: float = 0.3  # of the full training's learning rate
    epochs: int = 8
    patience: int = 2
    replay_ratio: float = 2.0  # older windows replayed per new window (bench continual: 2 forgets less than 1)
    max_windows_per_epoch: int = 4096

    def train_config(self, base: TrainConfig) -> TrainConfig:
        return dataclasses.replace(
            base,
            learning_rate=base.learning_rate * self.learning_rate_factor,
            epochs=self.epochs,
            patience=self.patience,
            max_windows_per_epoch=self.max_windows_per_epoch,
            init_from=None,
        )


def series_groups(history: pd.DataFrame) -> pd.DataFrame:
    """store_id, item_id and two group labels per series: ``store`` and ``item_group`` (the item's category or
    department when the items master has one, else the item itself)."""
    keys = history[SERIES].astype(str).drop_duplicates().reset_index(drop=True)
    column = next((c for c in ITEM_GROUP_COLUMNS if c in history.columns), None)
    if column is None:
        return keys.assign(store=keys["store_id"], item_group=keys["item_id"])
    first = history.astype({"store_id": str, "item_id": str}).drop_duplicates(SERIES)[[*SERIES, column]]
    out = keys.merge(first, on=SERIES, how="left")
    return out.assign(store=out["store_id"], item_group=out[column].astype(str)).drop(columns=column)


def _strata(panel: Panel, groups: pd.DataFrame | None) -> np.ndarray:
    """A stratum label per panel series: store × item group."""
    keys = panel.keys[SERIES].astype(str)
    if groups is None:
        return (keys["store_id"]).to_numpy()
    merged = keys.merge(groups, on=SERIES, how="left")
    return (merged["store"].fillna(keys["store_id"]) + "|" + merged["item_group"].fillna("")).to_numpy()


def incremental_filter(
    panel: Panel,
    horizon: int,
    new_from: int,
    replay_ratio: float = 2.0,
    groups: pd.DataFrame | None = None,
    seed: int = 0,
) -> Callable[[Windows], Windows]:
    """A window filter for :func:`~bi_pipeline.forecasting.trainer.train_forecaster`: every window whose targets
    reach date index ``new_from`` or later (what the champion has not learnt), plus ``replay_ratio`` times as many
    older windows, sampled in proportion to each store × item-group stratum's share of the older windows (at least
    one each)."""
    strata = _strata(panel, groups)

    def select(windows: Windows) -> Windows:
        reaches_new = windows.start + horizon - 1 >= new_from
        new_idx, old_idx = np.flatnonzero(reaches_new), np.flatnonzero(~reaches_new)
        budget = int(round(replay_ratio * len(new_idx)))
        chosen = [new_idx]
        if budget > 0 and len(old_idx):
            rng = np.random.default_rng(seed)
            labels = strata[windows.series[old_idx]]
            unique, counts = np.unique(labels, return_counts=True)
            quota = np.maximum(1, np.round(budget * counts / counts.sum())).astype(int)
            for label, take in zip(unique, quota, strict=True):
                members = old_idx[labels == label]
                chosen.append(rng.choice(members, size=min(take, len(members)), replace=False))
        idx = np.sort(np.concatenate(chosen))
        return Windows(windows.series[idx], windows.start[idx], windows.step_begin, windows.step_end)

    return select


def update_forecaster(
    champion: BIForecaster,
    panel: Panel,
    horizon: int,
    cutoff: int,
    base: TrainConfig,
    incremental: IncrementalConfig | None = None,
    groups: pd.DataFrame | None = None,
    checkpoint_dir=None,
    progress=None,
) -> TrainResult:
    """An incremental update of ``champion`` on ``panel`` (built with the champion's feature spec) up to ``cutoff``."""
    incremental = incremental or IncrementalConfig()
    end = champion.config.training_targets_end
    if not end:
        raise ValueError("the champion does not record the last period it learnt: run a full retrain")
    new_from = int(np.searchsorted(panel.dates, pd.Timestamp(end), side="right"))
    if new_from > cutoff:
        raise ValueError(f"no new periods to learn: the champion learnt up to {end}")
    window_filter = incremental_filter(panel, horizon, new_from, incremental.replay_ratio, groups, base.seed)
    return train_forecaster(
        panel,
        horizon,
        cutoff,
        incremental.train_config(base),
        checkpoint_dir=checkpoint_dir,
        progress=progress,
        initial_model=champion,
        window_filter=window_filter,
    )


# ---- the promotion gate -------------------------------------------------------------------------------------------


def group_mase(
    forecasts: pd.DataFrame, test: pd.DataFrame, train: pd.DataFrame, season_length: int, groups: pd.DataFrame
) -> pd.DataFrame:
    """MASE per store and per item group: columns family (store / item_group), group, MASE."""
    scored = attach_actuals(forecasts, test).dropna(subset=["sales"]).merge(groups, on=SERIES, how="left")
    scales = mase_scales(train, season_length)
    rows = []
    for family in ("store", "item_group"):
        for label, part in scored.groupby(family):
            rows.append({"family": family, "group": str(label), "MASE": mase(part, scales)})
    return pd.DataFrame(rows, columns=["family", "group", "MASE"])


@dataclass
class GateResult:
    vetoes: list[str]
    regressions: pd.DataFrame  # the groups past the tolerance: family, group, champion, challenger, change
    older: dict[str, float]  # the older window's MASE: challenger, champion
    compared: pd.DataFrame  # every group compared

    @property
    def passed(self) -> bool:
        return not self.vetoes


def promotion_gate(
    challenger_groups: pd.DataFrame,
    champion_groups: pd.DataFrame,
    challenger_older: float | None,
    champion_older: float | None,
    tolerance: float,
) -> GateResult:
    """Vetoes beyond the primary metric: a store or item group whose MASE is worse than the champion's by more than
    ``tolerance`` (relative), or an older holdout window on which the challenger is worse by more than it."""
    both = champion_groups.merge(challenger_groups, on=["family", "group"], suffixes=("_champion", "_challenger"))
    both = both.rename(columns={"MASE_champion": "champion", "MASE_challenger": "challenger"})
    both["change"] = both["challenger"] / both["champion"].where(both["champion"] > 0) - 1.0
    worse = both[both["change"] > tolerance].sort_values("change", ascending=False)
    vetoes = []
    if len(worse):
        named = ", ".join(f"{r.family} {r.group} +{r.change:.1%}" for r in worse.head(5).itertuples())
        vetoes.append(f"{len(worse)} group(s) regress past the {tolerance:.0%} tolerance: {named}")
    older = {}
    if challenger_older is not None and champion_older is not None:
        older = {"challenger": float(challenger_older), "champion": float(champion_older)}
        if champion_older > 0 and challenger_older > champion_older * (1.0 + tolerance):
            vetoes.append(
                f"forgetting: older-window MASE {challenger_older:.4f} vs the champion's {champion_older:.4f}"
            )
    return GateResult(vetoes, worse.reset_index(drop=True), older, both.reset_index(drop=True))


# ---- the replay benchmark -----------------------------------------------------------------------------------------


def _panel_upto(history: pd.DataFrame, end: pd.Timestamp, spec: FeatureSpec, horizon: int) -> tuple[Panel, int]:
    """A panel of the periods up to ``end`` with room for ``horizon`` forecast steps (covariates of the later
    periods where the history has them: known-future features)."""
    past, after = history[history["date"] <= end], history[history["date"] > end]
    panel = build_panel(past, spec, future=after, horizon=horizon, reference_end=end)
    return panel, int(panel.dates.get_loc(end))


def _live_mase(
    model: BIForecaster, panel: Panel, origin: int, history: pd.DataFrame, season_length: int, end: pd.Timestamp
) -> float:
    """MASE of the forecasts made at ``origin`` against the actuals that later landed."""
    later = history[history["date"] > end]
    scored = attach_actuals(forecast(model, panel, origin), later).dropna(subset=["sales"])
    return mase(scored, mase_scales(history[history["date"] <= end], season_length))


def replay_benchmark(
    history: pd.DataFrame,
    frequency: str,
    start_periods: int,
    horizon: int,
    season_length: int,
    base: TrainConfig,
    incremental: IncrementalConfig | None = None,
    step: int = 1,
    steps: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Replays ``history`` period by period from its first ``start_periods``: at each step a full retrain from
    scratch and an incremental update of the previous incremental model, both forecasting the next ``horizon``
    periods, scored on the actuals that land afterwards. Forgetting: the MASE on an older window the first model
    learnt (forecast from its origin), of the first model, of the last incremental model and of the last full
    retrain."""
    incremental = incremental or IncrementalConfig()
    dates = np.sort(history["date"].unique())
    ends = list(range(start_periods - 1, len(dates) - 1, step))
    if steps is not None:
        ends = ends[: steps + 1]
    if len(ends) < 2:
        raise ValueError(f"{len(dates)} periods leave no replay steps after the first {start_periods}")
    groups = series_groups(history)
    first_end = pd.Timestamp(dates[ends[0]])
    # The older window: the ``horizon`` periods before the first model's validation stretch, whose targets the first
    # model learnt. Its MASE after the updates vs before them is what the updates forgot (or learnt) of the past.
    validation = base.validation_periods or validation_length(horizon, start_periods, base.validation_horizons)
    older_origin_index = ends[0] - validation - horizon
    if older_origin_index < 1:
        raise ValueError(f"{start_periods} starting periods leave no older window before the validation stretch")
    older_origin = pd.Timestamp(dates[older_origin_index])

    def older_mase(model: BIForecaster) -> float:
        past = history[history["date"] <= first_end]
        panel, origin = _panel_upto(past, older_origin, FeatureSpec.from_dict(model.config.feature_spec), horizon)
        return _live_mase(model, panel, origin, past, season_length, older_origin)

    rows = []
    current: BIForecaster | None = None
    forgetting_before = None
    for index, end_idx in enumerate(ends):
        end = pd.Timestamp(dates[end_idx])
        upto = history[history["date"] <= end]
        lag = seasonal_profile_lag(base.seasonal_profile, frequency, horizon, upto)
        spec = fit_spec(
            upto, frequency, profile_lag=lag, calendar_effects=base.calendar_effects, month_turn=base.month_turn
        )
        panel, cutoff = _panel_upto(history, end, spec, horizon)
        started = time.perf_counter()
        full = train_forecaster(panel, horizon, cutoff, base)
        full_seconds = time.perf_counter() - started
        row = {"step": index, "last_period": str(end.date()), "full_seconds": round(full_seconds, 4)}
        if current is None:
            current = full.model
            forgetting_before = older_mase(current)
            row.update(incremental_seconds=None, full_MASE=None, incremental_MASE=None)
        else:
            panel_c, cutoff_c = _panel_upto(history, end, FeatureSpec.from_dict(current.config.feature_spec), horizon)
            started = time.perf_counter()
            updated = update_forecaster(current, panel_c, horizon, cutoff_c, base, incremental, groups)
            row["incremental_seconds"] = round(time.perf_counter() - started, 4)
            current = updated.model
            row["full_MASE"] = _live_mase(full.model, panel, cutoff, history, season_length, end)
            row["incremental_MASE"] = _live_mase(current, panel_c, cutoff_c, history, season_length, end)
            row["incremental_windows"] = updated.train_windows
            row["full_windows"] = full.train_windows
        rows.append(row)
        if progress:
            progress(
                f"step {index}/{len(ends) - 1} to {row['last_period']}: full {row['full_seconds']} s"
                + (
                    f", incremental {row['incremental_seconds']} s; MASE full {row['full_MASE']:.3f}, "
                    f"incremental {row['incremental_MASE']:.3f}"
                    if row["incremental_seconds"] is not None
                    else " (initial model)"
                )
            )
    scored = [r for r in rows if r["incremental_seconds"] is not None]
    full_mase = float(np.mean([r["full_MASE"] for r in scored]))
    inc_mase = float(np.mean([r["incremental_MASE"] for r in scored]))
    full_s = float(np.mean([r["full_seconds"] for r in scored]))
    inc_s = float(np.mean([r["incremental_seconds"] for r in scored]))
    forgetting_after = older_mase(current)
    full_after = older_mase(full.model)
    return {
        "frequency": frequency,
        "horizon": horizon,
        "season_length": season_length,
        "start_periods": start_periods,
        "step": step,
        "updates": len(scored),
        "series": int(history.groupby(SERIES, observed=True).ngroups),
        "full_retrain": {"mean_seconds": round(full_s, 4), "MASE": round(full_mase, 4)},
        "incremental": {"mean_seconds": round(inc_s, 4), "MASE": round(inc_mase, 4)},
        "time_ratio": round(inc_s / full_s, 4),
        "mase_ratio": round(inc_mase / full_mase, 4),
        "forgetting": {
            "older_window": f"{pd.Timestamp(dates[older_origin_index + 1]).date()}.."
            f"{pd.Timestamp(dates[older_origin_index + horizon]).date()}",
            "MASE_before": round(forgetting_before, 4),
            "MASE_after": round(forgetting_after, 4),
            "full_retrain_MASE_after": round(full_after, 4),
        },
        "train_config": base.to_dict(),
        "incremental_config": dataclasses.asdict(incremental),
        "steps": rows,
    }


# ---- when to retrain ----------------------------------------------------------------------------------------------


@dataclass
class RetrainRequest:
    mode: str  # full | incremental
    trigger: str  # no_champion | new_periods | accuracy
    reason: str


def retrain_decision(
    champion: str | None,
    new_periods: int,
    after_periods: int,
    live: LiveEvidence | None = None,
    champion_mase: float | None = None,
    threshold: float = 0.25,
    min_periods: int = 4,
) -> RetrainRequest | None:
    """What the retrain sensor asks for: a first full training when there is no champion; an incremental one when
    ``after_periods`` periods have landed since the champion's data, or when the champion's own live accuracy is
    worse than its backtest MASE by more than ``threshold`` on the evidence: at least ``min_periods`` scored periods,
    and worse even at two standard errors below the live mean (one good or bad week is noise, not a trend);
    otherwise nothing."""
    if champion is None:
        return RetrainRequest("full", "no_champion", "no champion yet: first training")
    if new_periods >= after_periods:
        return RetrainRequest(
            "incremental",
            "new_periods",
            f"{new_periods} new period(s) since champion v{champion}'s data (threshold {after_periods})",
        )
    if live is None or not champion_mase or live.version != champion or new_periods == 0:
        return None
    limit = champion_mase * (1.0 + threshold)
    if live.periods >= min_periods and live.lower_bound() > limit:
        return RetrainRequest(
            "incremental",
            "accuracy",
            f"{live.describe()} is worse than its backtest MASE {champion_mase:.3f} by more than {threshold:.0%} "
            f"(at least {live.lower_bound():.3f} > {limit:.3f})",
        )
    return None
