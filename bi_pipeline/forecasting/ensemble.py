"""The deployable forecaster: the combination of the transformer, LightGBM and AutoETS that forecast best from
several validation origins before the holdout, with intervals calibrated per horizon step on the same forecasts
(no Dagster).

How the combination is chosen (:func:`select`), never on the holdout:

- **Origins.** The transformer's training targets end ``validation`` periods before the cutoff (its early-stopping
  stretch). Every member forecasts from :data:`VALIDATION_ORIGINS` origins spread over that stretch, each forecast
  scored on its periods up to the cutoff: LightGBM fitted up to the first origin and reading the newer lags with the
  same trees, AutoETS fitted up to the first origin and reading the newer periods with the same parameters at the
  later ones (as statsforecast's ``cross_validation(refit=False)`` does), the transformer from its own panel.
- **Weights.** Two weights per member on a simplex grid (steps of 0.1), as before for two: the point weights blend
  the medians and are chosen on MASE; the spread weights blend each member's distances from its own median and are
  chosen on WQL. Every vertex is a single model, so a business where AutoETS or LightGBM forecasts best gets that
  model alone, and the metadata says so (:attr:`Forecaster.kind`).
- **Intervals.** Per quarter of the horizon, one factor (1 or more) on the blend's distances from its median, chosen
  so that the validation forecasts of those steps cover their actuals as often as :data:`COVERAGE_TARGET` says
  (split conformal): where the members' intervals were too narrow for their own errors at that lead time, they are
  widened. Steps later than the validation stretch reaches take the factor of the latest quarter it does.

The transformer is always trained and always saved (an incremental update starts from it), even when its weights
are 0. A registered version is one directory: the transformer's ``save_pretrained`` files (safetensors),
``forecaster.json`` (weights, factors, season) and, when LightGBM has a weight, ``lightgbm/`` (its boosters in
LightGBM's text format and the JSON recipe around them). AutoETS is refitted on each history it forecasts from, so it
saves nothing. Loading unpickles nothing; versions saved with ``ensemble.json`` (the transformer and LightGBM only)
still load.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bi_pipeline.config import DecisionSettings
from bi_pipeline.decisions.demand import Dependence, fit_dependence
from bi_pipeline.decisions.inventory import series_parameters, tune_level_shift, tuning_sample
from bi_pipeline.forecasting.baselines import attach_actuals, forecasts_from_origins
from bi_pipeline.forecasting.interface import ForecastModel, Task
from bi_pipeline.forecasting.lightgbm import LightGBMModel, fit_lightgbm, predict_lightgbm
from bi_pipeline.forecasting.metrics import QUANTILES, SERIES, covered_share, mase_scales, quantile_column
from bi_pipeline.forecasting.modeling import BIForecaster
from bi_pipeline.forecasting.models import AutoETS, LightGBM, Transformer
from bi_pipeline.forecasting.transformer import floor_at_zero, forecast

MEMBERS = ("transformer", "lightgbm", "auto_ets")
FORECASTER_FILE = "forecaster.json"
ENSEMBLE_FILE = "ensemble.json"  # versions saved before AutoETS joined: the transformer's and LightGBM's weights
VALIDATION_ORIGINS = 3
WEIGHT_STEP = 0.1
# The validation coverage of the 80% interval the step factors aim at. A little above 0.8: the holdout lies further
# from the training data than the validation origins do, and aimed at 0.80 the choose half's holdouts covered 0.74
# (Walmart, weekly store totals). Widening only: a validation stretch is often calmer than the horizon (Walmart's 20
# weeks before the holidays it forecasts asked for factors of 0.75, which left 74% of the holdout inside).
COVERAGE_TARGET = 0.82
FACTOR_LIMITS = (1.0, 4.0)
STEP_GROUPS = 4
KEYS = ["store_id", "item_id", "date"]
COLUMNS = ["mean", *[quantile_column(q) for q in QUANTILES]]
QCOLS = COLUMNS[1:]
MEDIAN = QCOLS.index(quantile_column(0.5))
LEVELS = np.asarray(QUANTILES)


@dataclass
class Selection:
    """What :func:`select` chose and the validation scores it chose on."""

    weights: dict[str, float]
    spread_weights: dict[str, float]
    step_factors: list[float]
    origins: list[str] = field(default_factory=list)  # the validation origins' dates
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # per member and "combination": MASE, WQL
    rows: int = 0
    # Per member and "combination": how their validation errors move together across steps (decisions.demand).
    dependence: dict[str, Dependence] = field(default_factory=dict)
    calibrated: np.ndarray | None = field(default=None, repr=False)  # the combination's validation quantiles
    # Per member and "combination": validation forecasts with their actuals, of at most TUNING_SERIES series (in
    # memory only: the backtest tunes every model's order level on them).
    validation_rows: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)


class Forecaster(ForecastModel):
    """The ensemble, and what a registered version holds and the ``forecasts`` asset runs."""

    name = "ensemble"

    def __init__(
        self,
        transformer: BIForecaster | None = None,
        lightgbm: LightGBMModel | None = None,
        weights: dict[str, float] | None = None,
        spread_weights: dict[str, float] | None = None,
        step_factors: list[float] | None = None,
        season_length: int | None = None,
        parts: dict[str, ForecastModel] | None = None,
        dependence: Dependence | None = None,
    ) -> None:
        self.transformer, self.lightgbm = transformer, lightgbm  # the network and the boosters
        self.weights = _normalised(weights or {"transformer": 1.0})
        self.spread_weights = _normalised(spread_weights or self.weights)
        self.step_factors = [float(f) for f in step_factors or []]
        self.season_length = season_length
        # How the blend's errors move together across steps, for cumulative demand (1 between all: none fitted).
        self.dependence = dependence or Dependence()
        self.parts = parts  # the members fitted in this process (fit); a loaded version rebuilds its own
        self.selection: Selection | None = None
        self.info: dict = {}
        self.task = Task(self.frequency, self.horizon, season_length) if transformer is not None else None

    @property
    def members(self) -> list[str]:
        """The members with a weight, in :data:`MEMBERS` order."""
        return [m for m in MEMBERS if self.weights.get(m, 0.0) > 0 or self.spread_weights.get(m, 0.0) > 0]

    @property
    def kind(self) -> str:
        """The one member that forecasts alone, or ``ensemble``."""
        members = self.members
        return members[0] if len(members) == 1 else "ensemble"

    @property
    def weight(self) -> float:
        """The transformer's share of the blended median."""
        return self.weights.get("transformer", 0.0)

    @property
    def spread_share(self) -> float:
        """The transformer's share of the blended distances from the median."""
        return self.spread_weights.get("transformer", 0.0)

    @property
    def horizon(self) -> int:
        return int(self.transformer.config.horizon)

    @property
    def frequency(self) -> str:
        return self.transformer.config.feature_spec["frequency"]

    @property
    def nonnegative(self) -> bool:
        """The measure was never negative in the training range: no quantile may be."""
        return bool(self.transformer.config.feature_spec.get("nonnegative", False))

    def describe(self) -> str:
        """The members and their weights, e.g. ``transformer 0.6 + lightgbm 0.4`` or, when the spread weights differ,
        ``transformer 0.9 + lightgbm 0.1 (spread: transformer 0.6 + auto_ets 0.4)``."""

        def listed(table: dict[str, float]) -> str:
            return " + ".join(f"{m} {table[m]:.1f}" for m in MEMBERS if table.get(m, 0.0) > 0)

        point, spread = listed(self.weights), listed(self.spread_weights)
        return point if spread == point else f"{point} (spread: {spread})"

    def fit(self, train: pd.DataFrame, task: Task, future: pd.DataFrame | None = None) -> Forecaster:
        """Fits the members not fitted yet on ``train`` (the transformer, LightGBM), then chooses the weights and the
        interval factors on validation origins before its end (:func:`select`)."""
        parts = self.parts or {"transformer": Transformer(), "lightgbm": LightGBM(), "auto_ets": AutoETS()}
        transformer = parts["transformer"]
        if transformer.result is None:
            transformer.fit(train, task, future)
        for name, part in parts.items():
            fitted = part.model is not None if isinstance(part, LightGBM) else part.task is not None
            if name != "transformer" and not fitted:
                part.fit(train, task, future)
        started = time.perf_counter()
        selection = select(train, task, transformer, tuple(m for m in MEMBERS if m in parts))
        self.parts, self.task, self.selection = parts, task, selection
        self.weights, self.spread_weights = selection.weights, selection.spread_weights
        self.step_factors, self.season_length = selection.step_factors, task.season_length
        self.dependence = selection.dependence.get("combination", Dependence())
        self.transformer = transformer.network
        self.lightgbm = parts["lightgbm"].model if "lightgbm" in parts else None
        self.info.update(weight=self.weight, spread_weight=self.spread_share, members=self.describe())
        self.info["fit_seconds"] = sum(parts[m].info.get("fit_seconds", 0.0) for m in parts) + (
            time.perf_counter() - started
        )
        return self

    def deployable(self) -> Forecaster:
        """What a registered version holds: the transformer, LightGBM when it has a weight, and the choice."""
        lightgbm = self.lightgbm if "lightgbm" in self.members else None
        return Forecaster(
            self.transformer,
            lightgbm,
            self.weights,
            self.spread_weights,
            self.step_factors,
            self.season_length,
            dependence=self.dependence,
        )

    def _member(self, name: str) -> ForecastModel:
        if self.parts and name in self.parts:
            return self.parts[name]
        task = Task(self.frequency, self.horizon, self.season_length)
        if name == "transformer":
            return Transformer(network=self.transformer)
        if name == "lightgbm":
            if self.lightgbm is None:
                raise ValueError("this forecaster gives LightGBM a weight but holds no LightGBM model")
            return LightGBM(model=self.lightgbm, task=task)
        return AutoETS(task)

    def predict(
        self,
        history: pd.DataFrame,
        future: pd.DataFrame | None = None,
        made: dict[str, pd.DataFrame] | None = None,
    ) -> pd.DataFrame:
        """The members' forecasts for the ``horizon`` periods after ``history``'s last date, blended, with the
        intervals' step factors; for a non-negative measure any quantile still below zero is clipped and counted
        (``info["clipped_quantiles"]``). ``made`` holds members' forecasts of the same history already made (a
        backtest or a candidate scores each member alone first): those are blended as they are, not made again."""
        seconds, frames = 0.0, {}
        for name in self.members:
            member = self._member(name)
            frames[name] = made[name] if made and name in made else member.predict(history, future)
            seconds += member.info.get("predict_seconds", member.info.get("fit_seconds", 0.0))
        last = pd.Timestamp(history["date"].max())
        out = combine(frames, self.weights, self.spread_weights, last)
        out = apply_step_factors(out, self.step_factors, last, self.horizon)
        clipped = sum(int(frame.attrs.get("clipped_quantiles", 0)) for frame in frames.values())
        self.info["clipped_quantiles"] = clipped + (floor_at_zero(out) if self.nonnegative else 0)
        out.attrs["clipped_quantiles"] = self.info["clipped_quantiles"]
        self.info["predict_seconds"] = seconds
        return out

    def save(self, path: Path) -> None:
        path = Path(path)
        self.transformer.save_pretrained(path)
        if self.lightgbm is not None and "lightgbm" in self.members:
            self.lightgbm.save(path / "lightgbm")
        meta = {
            "kind": self.kind,
            "weights": self.weights,
            "spread_weights": self.spread_weights,
            "step_factors": self.step_factors,
            "season_length": self.season_length,
            "dependence": self.dependence.to_dict(),
        }
        (path / FORECASTER_FILE).write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, path: Path) -> Forecaster:
        path = Path(path)
        # Safetensors only: a pickled ``pytorch_model.bin`` put beside it is never read.
        transformer = BIForecaster.from_pretrained(path, use_safetensors=True)
        if (path / FORECASTER_FILE).exists():
            meta = json.loads((path / FORECASTER_FILE).read_text())
            weights, spread = meta["weights"], meta["spread_weights"]
            needs_lightgbm = weights.get("lightgbm", 0) > 0 or spread.get("lightgbm", 0) > 0
            lightgbm = LightGBMModel.load(path / "lightgbm") if needs_lightgbm else None
            return cls(
                transformer,
                lightgbm,
                weights,
                spread,
                meta.get("step_factors"),
                meta.get("season_length"),
                dependence=Dependence.from_dict(meta.get("dependence")),
            )
        if not (path / ENSEMBLE_FILE).exists():
            return cls(transformer)
        meta = json.loads((path / ENSEMBLE_FILE).read_text())
        weight = float(meta["transformer_weight"])
        spread = meta.get("spread_weight")  # versions saved before the spread weight blend both alike
        spread = weight if spread is None else float(spread)
        return cls(
            transformer,
            LightGBMModel.load(path / "lightgbm"),
            {"transformer": weight, "lightgbm": 1.0 - weight},
            {"transformer": spread, "lightgbm": 1.0 - spread},
        )


def saved_dependence(path: Path) -> Dependence:
    """The error dependence a registered version saved (none fitted: steps move together), read without loading
    its networks."""
    meta = Path(path) / FORECASTER_FILE
    return Dependence.from_dict(json.loads(meta.read_text()).get("dependence")) if meta.exists() else Dependence()


def _normalised(weights: dict[str, float]) -> dict[str, float]:
    total = sum(max(float(w), 0.0) for w in weights.values())
    if total <= 0:
        raise ValueError(f"weights {weights} give no member a share")
    return {m: round(max(float(w), 0.0) / total, 6) for m, w in weights.items() if w > 0}


def combine(
    frames: dict[str, pd.DataFrame],
    weights: dict[str, float],
    spread_weights: dict[str, float],
    last: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """The blend of the members' forecasts: the median is Σ weight·median, each quantile that median plus Σ
    spread weight·(the member's distance from its own median), and the point forecast the median. A row a member
    does not forecast (a series too new for it) is blended from the others, their weights renormalised. With
    ``last``, only dates after it are kept (the horizon after the history)."""
    names = list(frames)
    indexed = [frames[n].astype({"store_id": str, "item_id": str}).set_index(KEYS)[QCOLS] for n in names]
    index = indexed[0].index
    for frame in indexed[1:]:
        index = index.union(frame.index)
    if last is not None:
        index = index[index.get_level_values("date") > last]
    values = np.stack([f.reindex(index).to_numpy(dtype="float64") for f in indexed])  # (M, N, Q)
    present = ~np.isnan(values[..., MEDIAN])  # (M, N)
    values = np.nan_to_num(values)
    medians = values[..., MEDIAN]

    def shares(table: dict[str, float]) -> np.ndarray:
        raw = np.array([table.get(n, 0.0) for n in names])[:, None] * present
        total = raw.sum(0, keepdims=True)
        # A row none of the weighted members forecast takes the members present, alike.
        fallback = present / np.maximum(present.sum(0, keepdims=True), 1)
        return np.where(total > 0, raw / np.where(total > 0, total, 1.0), fallback)

    point, spread = shares(weights), shares(spread_weights)
    centre = (point * medians).sum(0)
    quantiles = centre[:, None] + (spread[..., None] * (values - medians[..., None])).sum(0)
    out = pd.DataFrame(np.sort(quantiles, axis=1), index=index, columns=QCOLS).reset_index()
    out.insert(3, "mean", centre)
    return out


def steps_after(dates: pd.Series, last: pd.Timestamp) -> np.ndarray:
    """Each date's step after ``last`` (1 = the first period after it), by the rank among the forecast dates."""
    grid = np.sort(pd.unique(dates[dates > last]))
    return np.searchsorted(grid, dates.to_numpy()) + 1


def step_groups(steps: np.ndarray, horizon: int, groups: int = STEP_GROUPS) -> np.ndarray:
    """The group (0 … groups − 1) of each step: equal parts of the horizon."""
    return np.minimum((np.asarray(steps) - 1) * groups // max(horizon, 1), groups - 1).clip(min=0)


def apply_step_factors(frame: pd.DataFrame, factors: list[float], last: pd.Timestamp, horizon: int) -> pd.DataFrame:
    """Each row's distances from its median times the factor of its step's group (:func:`step_groups`)."""
    if not factors or len(frame) == 0:
        return frame
    values = frame[QCOLS].to_numpy(dtype="float64")
    frame[QCOLS] = respread(values, steps_after(frame["date"], last), factors, horizon)
    return frame


def simplex(names: list[str], step: float = WEIGHT_STEP) -> list[dict[str, float]]:
    """Every weighting of ``names`` in steps of ``step`` that sums to 1."""
    units = round(1 / step)
    out = []
    for combo in itertools.product(range(units + 1), repeat=len(names)):
        if sum(combo) == units:
            out.append({n: c / units for n, c in zip(names, combo, strict=True) if c})
    return out


def validation_forecasts(
    train: pd.DataFrame,
    task: Task,
    transformer: Transformer,
    members: tuple[str, ...],
    origins: int = VALIDATION_ORIGINS,
) -> tuple[dict[str, pd.DataFrame], list[pd.Timestamp], pd.DataFrame]:
    """Each member's forecasts from the validation origins, their rows up to ``train``'s end, with ``origin`` and
    ``step`` columns; the origins' dates; the history before the first origin (what MASE is scaled by)."""
    result, panel, cutoff = transformer.result, transformer.panel, transformer.cutoff
    if result is None:
        raise RuntimeError("choosing the combination needs a transformer trained in this process")
    validation = int(result.validation_periods)
    first = cutoff - validation
    indices = sorted({first + (k * validation) // origins for k in range(origins)})
    dates = [pd.Timestamp(panel.dates[i]) for i in indices]
    end = pd.Timestamp(panel.dates[cutoff])
    inner = train[train["date"] <= dates[0]]
    lightgbm = None
    if "lightgbm" in members:
        lightgbm = fit_lightgbm(inner, task.horizon, task.frequency, list(task.covariates))
    statistical: list[pd.DataFrame] = []  # AutoETS's forecast from each origin
    if "auto_ets" in members:
        statistical = forecasts_from_origins(train, dates, task.horizon, task.frequency, task.season)
    frames: dict[str, list[pd.DataFrame]] = {m: [] for m in members}
    for k, (index, origin) in enumerate(zip(indices, dates, strict=True)):
        history = train[train["date"] <= origin]
        later = train[(train["date"] > origin)].drop(columns="sales")
        for name in members:
            if name == "transformer":
                out = forecast(transformer.network, panel, index)
            elif name == "lightgbm":
                # Only the steps up to the cutoff are scored: a recursive forecast's first steps do not depend on
                # how many follow, so the rest is not made.
                steps = min(task.horizon, cutoff - index)
                out = predict_lightgbm(lightgbm, history, steps, future=later, fitted=False)
            else:
                out = statistical[k]
            out = out.astype({"store_id": str, "item_id": str})
            out = out[(out["date"] > origin) & (out["date"] <= end)].copy()
            out["origin"] = origin
            out["step"] = steps_after(out["date"], origin)
            frames[name].append(out)
    return {m: pd.concat(f, ignore_index=True) for m, f in frames.items()}, dates, inner


def select(
    train: pd.DataFrame,
    task: Task,
    transformer: Transformer,
    members: tuple[str, ...] = MEMBERS,
    origins: int = VALIDATION_ORIGINS,
) -> Selection:
    """The point and spread weights and the per-step interval factors that forecast ``train``'s validation origins
    best (module docstring)."""
    frames, dates, inner = validation_forecasts(train, task, transformer, members, origins)
    keys = [*KEYS, "origin"]
    joined = None
    for name in members:
        part = frames[name][[*keys, "step", *QCOLS]].rename(columns={c: f"{name}:{c}" for c in QCOLS})
        joined = part if joined is None else joined.merge(part.drop(columns="step"), on=keys, how="inner")
    joined = attach_actuals(joined, train).dropna(subset=["sales"])
    scales = mase_scales(inner, task.season)
    series = pd.MultiIndex.from_frame(joined[SERIES])
    selection = choose(
        np.stack([joined[[f"{n}:{c}" for c in QCOLS]].to_numpy(dtype="float64") for n in members]),
        joined["sales"].to_numpy(dtype="float64"),
        series.map(scales.to_dict().get).to_numpy(dtype="float64"),
        pd.factorize(series)[0],
        joined["step"].to_numpy(),
        task.horizon,
        members,
        bool(transformer.network.config.feature_spec.get("nonnegative", False)),
    )
    selection.origins = [str(d.date()) for d in dates]
    floor = bool(transformer.network.config.feature_spec.get("nonnegative", False))
    rows = joined[[*SERIES, "origin", "step", "sales"]]
    forecasts = {name: rows.assign(**{c: joined[f"{name}:{c}"] for c in QCOLS}) for name in members}
    if selection.calibrated is not None:
        forecasts["combination"] = rows.assign(**dict(zip(QCOLS, selection.calibrated.T, strict=True)))
    selection.dependence = {name: fit_dependence(part, floor) for name, part in forecasts.items()}
    selection.validation_rows = {name: tuning_sample(part) for name, part in forecasts.items()}
    if "combination" in forecasts:
        # The orders asset reads the champion's level shift: tuned at the economics the settings give now and the
        # items' and stores' decision attributes the training data carries.
        sample = selection.validation_rows["combination"]
        attributes = train.drop_duplicates(SERIES).astype({"store_id": str, "item_id": str})
        parameters = series_parameters(sample[SERIES], task.frequency, DecisionSettings.from_env(), [attributes])
        dependence = selection.dependence["combination"]
        shift = tune_level_shift(sample, parameters, dependence, floor)
        selection.dependence["combination"] = dependence.with_shift(shift)
    return selection


def choose(
    values: np.ndarray,
    y: np.ndarray,
    scale: np.ndarray,
    series: np.ndarray,
    steps: np.ndarray,
    horizon: int,
    members: tuple[str, ...],
    nonnegative: bool = False,
) -> Selection:
    """The choice itself, on aligned validation rows: ``values`` (members, rows, quantiles), the actuals ``y``, each
    row's MASE scale and series code, and its step after its origin. Point weights by MASE, then spread weights by
    WQL with the point weights fixed, then the step factors; ties go to fewer members, then to the transformer."""
    medians = values[..., MEDIAN]
    usable = np.isfinite(scale) & (scale > 0)

    def point_loss(weights: np.ndarray) -> float:
        errors = np.abs(y - weights @ medians)[usable] / scale[usable]
        codes = series[usable]
        counts = np.bincount(codes)
        per_series = np.bincount(codes, errors)[counts > 0] / counts[counts > 0]
        return float(per_series.mean()) if len(per_series) else float("nan")

    def quantiles_of(point: np.ndarray, spread: np.ndarray) -> np.ndarray:
        out = (point @ medians)[:, None] + np.einsum("m,mnq->nq", spread, values - medians[..., None])
        return np.maximum(out, 0.0) if nonnegative else out

    def vector(table: dict[str, float]) -> np.ndarray:
        return np.array([table.get(n, 0.0) for n in members])

    def preference(table: dict[str, float]) -> tuple:
        return (len(table), -table.get("transformer", 0.0))

    grid = simplex(members)
    # Rounded so that weightings equal up to floating-point noise tie, and the tie-break decides.
    point_losses = [round(point_loss(vector(w)), 10) for w in grid]
    best = min(range(len(grid)), key=lambda i: (point_losses[i], preference(grid[i])))
    weights = grid[best]
    spread_losses = [round(wql(y, quantiles_of(vector(weights), vector(s))), 10) for s in grid]
    spread_best = min(range(len(grid)), key=lambda i: (spread_losses[i], grid[i] != weights, preference(grid[i])))
    spread_weights = grid[spread_best]
    blended = quantiles_of(vector(weights), vector(spread_weights))
    factors = fit_step_factors(blended, y, steps, horizon, nonnegative)
    scores = {}
    for alone, name in zip(np.eye(len(members)), members, strict=True):
        scores[name] = {"MASE": point_loss(alone), "WQL": wql(y, quantiles_of(alone, alone))}
    calibrated = respread(blended, steps, factors, horizon, nonnegative)
    scores["combination"] = {"MASE": point_losses[best], "WQL": wql(y, calibrated)}
    return Selection(weights, spread_weights, factors, [], scores, int(len(y)), calibrated=calibrated)


def wql(y: np.ndarray, quantiles: np.ndarray) -> float:
    """WQL of quantile rows (rows, :data:`QUANTILES`) against ``y`` (as in :mod:`bi_pipeline.forecasting.metrics`)."""
    diff = y[:, None] - quantiles
    loss = np.maximum(LEVELS * diff, (LEVELS - 1.0) * diff)
    return float(2.0 * loss.sum() / len(LEVELS) / max(float(np.abs(y).sum()), 1e-12))


def respread(
    quantiles: np.ndarray, steps: np.ndarray, factors: list[float], horizon: int, floor: bool = False
) -> np.ndarray:
    """Quantile rows with their distances from the median times the factor of each row's step group (and, with
    ``floor``, kept at or above zero)."""
    factor = np.asarray(factors)[step_groups(steps, horizon, len(factors))]
    median = quantiles[:, MEDIAN : MEDIAN + 1]
    out = median + (quantiles - median) * factor[:, None]
    return np.maximum(out, 0.0) if floor else out


def fit_step_factors(
    quantiles: np.ndarray, y: np.ndarray, steps: np.ndarray, horizon: int, floor: bool = False
) -> list[float]:
    """Per group of steps (:func:`step_groups`), the factor on the distances from the median that puts
    :data:`COVERAGE_TARGET` of the validation rows of those steps inside the 10–90% interval (split conformal: the
    quantile of each row's own needed factor), within :data:`FACTOR_LIMITS`. A group no validation forecast reaches
    takes the factor of the latest group before it that one does (1 if none).

    With ``floor`` (quantiles kept at or above zero) and actuals of zero, coverage is counted as the metrics count it,
    a zero on a point mass of the forecast by the share of that mass inside the interval
    (:func:`bi_pipeline.forecasting.metrics.covered_share`): the factor is then the least that reaches the target,
    found by bisection. Counted as inside, every zero at a lower quantile of zero would pass for covered, and a set of
    slow movers would keep intervals too narrow for its sales."""
    groups = step_groups(steps, horizon)
    needed = needed_factors(quantiles, y)
    factors: list[float] = []
    for group in range(STEP_GROUPS):
        rows = groups == group
        if not rows.any():
            factors.append(factors[-1] if factors else 1.0)
            continue
        if floor and (y[rows] <= 0).any():
            factor = tied_factor(quantiles[rows], y[rows])
        else:
            factor = float(np.quantile(needed[rows], COVERAGE_TARGET))
        factors.append(round(min(max(factor, FACTOR_LIMITS[0]), FACTOR_LIMITS[1]), 4))
    return factors


def tied_factor(quantiles: np.ndarray, y: np.ndarray, iterations: int = 30) -> float:
    """The least factor within :data:`FACTOR_LIMITS` whose floored intervals cover :data:`COVERAGE_TARGET` of ``y``
    with ties split (the upper limit when none does). Coverage grows with the factor (a zero's share of its point
    mass grows as more lower quantiles reach zero, up to the 90% level), so a bisection finds it."""

    def covered(factor: float) -> float:
        median = quantiles[:, MEDIAN : MEDIAN + 1]
        spread = np.maximum(median + (quantiles - median) * factor, 0.0)
        return float(covered_share(spread, y).mean())

    low, high = FACTOR_LIMITS
    if covered(low) >= COVERAGE_TARGET:
        return low
    if covered(high) < COVERAGE_TARGET:
        return high
    for _ in range(iterations):
        middle = (low + high) / 2
        low, high = (low, middle) if covered(middle) >= COVERAGE_TARGET else (middle, high)
    return high


def needed_factors(quantiles: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per row, the least factor on the distances from the median that puts ``y`` inside the 10–90% interval: its
    distance from the median over the interval's half-width on its side (0 at the median, infinite beside an interval
    of no width). The non-negative floor changes nothing: an actual of zero is inside once the lower end reaches zero,
    which is the same ratio."""
    median = quantiles[:, MEDIAN]
    below = median - quantiles[:, 0]
    above = quantiles[:, -1] - median
    gap = np.where(y < median, median - y, y - median)
    side = np.where(y < median, below, above)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(gap <= 0, 0.0, gap / side)
    return np.nan_to_num(ratio, nan=np.inf, posinf=np.inf)
