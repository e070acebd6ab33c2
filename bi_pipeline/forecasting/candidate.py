"""From an integrated history to a trained forecaster, its holdout score and its forecasts (no Dagster).

The model that is scored is the model that is deployed: training reads targets up to ``len(dates) - horizon`` only
(and holds out a validation stretch before that for early stopping); the last ``horizon`` periods are the holdout on
which challenger and champion are compared. Forecasts then use every period as context.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bi_pipeline.forecasting.baselines import attach_actuals, statistical_forecast
from bi_pipeline.forecasting.configuration import TrainConfig
from bi_pipeline.forecasting.ensemble import Forecaster, Selection
from bi_pipeline.forecasting.interface import Task
from bi_pipeline.forecasting.metrics import SERIES, score
from bi_pipeline.forecasting.modeling import BIForecaster
from bi_pipeline.forecasting.models import AutoETS, LightGBM, Transformer
from bi_pipeline.privacy import redact_uri

if TYPE_CHECKING:
    from bi_pipeline.forecasting.registry import Tracker


@dataclass
class Trained:
    """A transformer trained on all but the last ``horizon`` periods, and its scores on them."""

    model: Transformer
    holdout: pd.DataFrame  # holdout forecasts with the actual sales
    scores: dict[str, float]
    lineage: dict

    @property
    def result(self):
        return self.model.result

    @property
    def panel(self):
        return self.model.panel

    @property
    def cutoff(self) -> int:
        return self.model.cutoff


def data_hash(history: pd.DataFrame) -> str:
    frame = history[[*SERIES, "date", "sales"]].astype({"store_id": str, "item_id": str})
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def split_holdout(history: pd.DataFrame, horizon: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    dates = np.sort(history["date"].unique())
    if len(dates) <= horizon + 2:
        raise ValueError(f"{len(dates)} periods of history are too few for a holdout of {horizon}")
    cutoff = dates[-horizon - 1]
    return history[history["date"] <= cutoff], history[history["date"] > cutoff]


def train_with_holdout(
    history: pd.DataFrame,
    frequency: str,
    horizon: int,
    season_length: int,
    config: TrainConfig | None = None,
    checkpoint_dir: Path | None = None,
    progress: Callable[[dict], None] | None = None,
) -> Trained:
    """Train on everything but the last ``horizon`` periods and score on them."""
    train, test = split_holdout(history, horizon)
    task = Task(frequency, horizon, season_length)
    model = Transformer(config, checkpoint_dir=checkpoint_dir, progress=progress).fit(train, task, test)
    holdout = attach_actuals(model.predict(train, test), test)
    lineage = lineage_of(history, pd.Timestamp(train["date"].max()), horizon)
    return Trained(model, holdout, score(holdout, train, season_length), lineage)


def lineage_of(history: pd.DataFrame, training_end: pd.Timestamp, horizon: int) -> dict:
    """What a model was trained on, for MLflow: period range, training end, holdout, size and a data hash."""
    return {
        "first_period": str(pd.Timestamp(history["date"].min()).date()),
        "last_period": str(pd.Timestamp(history["date"].max()).date()),
        "training_end": str(pd.Timestamp(training_end).date()),
        "holdout_periods": horizon,
        "periods": int(history["date"].nunique()),
        "series": int(history.groupby(SERIES, observed=True).ngroups),
        "rows": len(history),
        "data_hash": data_hash(history),
    }


def as_forecaster(model: Forecaster | BIForecaster) -> Forecaster:
    """A network alone is the transformer-only deployable."""
    return model if isinstance(model, Forecaster) else Forecaster(model)


def holdout_forecast(
    model: Forecaster | BIForecaster, history: pd.DataFrame, back: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(forecasts, train, test) of a saved model on the ``horizon`` periods ending ``back`` periods before the last
    of ``history``, with its own encodings (and, for an ensemble, its own LightGBM reading the newer lags)."""
    model = as_forecaster(model)
    if back:
        dates = np.sort(history["date"].unique())
        history = history[history["date"] <= dates[-1 - back]]
    train, test = split_holdout(history, model.horizon)
    return model.predict(train, test.drop(columns="sales")), train, test


def holdout_score(model: Forecaster | BIForecaster, history: pd.DataFrame, season_length: int) -> dict[str, float]:
    """A saved model's metrics on the last ``horizon`` periods of ``history``: how the champion is scored on the
    challenger's holdout."""
    out, train, test = holdout_forecast(model, history)
    return score(attach_actuals(out, test), train, season_length)


@dataclass
class Candidate:
    """The model a training proposes for champion, and the holdout forecasts of its members."""

    model: Forecaster
    # Holdout forecasts (no actuals): each member alone, and "ensemble", the combination chosen on validation.
    holdout: dict[str, pd.DataFrame]
    scores: dict[str, dict[str, float]]
    validation: pd.DataFrame  # the transformer's forecasts of its validation periods
    # Seasonal naive's metrics on the same holdout: the floor a candidate must beat to be promoted (Tracker.decide).
    seasonal_naive: dict[str, float] = field(default_factory=dict)
    selection: Selection | None = None  # what the combination was chosen on (None: the transformer alone)

    @property
    def kind(self) -> str:
        return self.model.kind

    @property
    def weight(self) -> float:
        return self.model.weight

    @property
    def spread_weight(self) -> float:
        return self.model.spread_share

    @property
    def own_key(self) -> str:
        """The key of the candidate's own forecasts in :attr:`holdout` and :attr:`scores`."""
        return "ensemble" if "ensemble" in self.holdout else "transformer"

    @property
    def own_scores(self) -> dict[str, float]:
        return self.scores[self.own_key]


def make_candidate(transformer: Transformer, history: pd.DataFrame, task: Task, ensemble: bool = True) -> Candidate:
    """LightGBM and AutoETS beside the transformer on its training periods, and the combination of the three that
    forecast best from the validation origins before the cutoff (:func:`bi_pipeline.forecasting.ensemble.select`):
    one of them alone or a blend, whichever won there. With ``ensemble`` off, the transformer alone. Seasonal naive is
    scored on the same holdout too: the promotion floor."""
    cutoff_date = transformer.panel.dates[transformer.cutoff]
    train, test = history[history["date"] <= cutoff_date], history[history["date"] > cutoff_date]
    future = test.drop(columns="sales")
    holdout = {"transformer": transformer.holdout_forecast()}
    own = transformer.validation_forecast()
    naive = statistical_forecast(train, task.horizon, task.frequency, task.season, names=("seasonal_naive",))
    floor = score(attach_actuals(naive["seasonal_naive"], test), train, task.season)
    if not ensemble:
        scores = {"transformer": score(attach_actuals(holdout["transformer"], test), train, task.season)}
        return Candidate(Forecaster(transformer.network), holdout, scores, own, seasonal_naive=floor)
    parts = {"transformer": transformer, "lightgbm": LightGBM().fit(train, task, future), "auto_ets": AutoETS(task)}
    chosen = Forecaster(parts=parts).fit(train, task, future)
    for name in ("lightgbm", "auto_ets"):
        holdout[name] = parts[name].predict(train, future)
    holdout["ensemble"] = chosen.predict(train, future, made=holdout)
    scores = {name: score(attach_actuals(frame, test), train, task.season) for name, frame in holdout.items()}
    return Candidate(chosen.deployable(), holdout, scores, own, floor, chosen.selection)


def load_champion(tracker: Tracker, version: str, warn: Callable[[str], None]) -> Forecaster | None:
    """The champion's model, or None when it cannot be read: whatever the error (a corrupt or tampered file, a
    version saved in a format no longer loaded, a download failing), ``warn`` gets the version and the error and the
    training goes on, the challenger judged against seasonal naive alone."""
    try:
        return Forecaster.load(tracker.model_dir(version))
    except Exception as exc:  # any failure to read it means the same: there is no champion to compare with
        # An MLflow error can name the tracking or artifact store URI: never with its credentials.
        warn(
            f"champion v{version} could not be loaded ({type(exc).__name__}: {redact_uri(str(exc))}); the challenger "
            "is judged against seasonal naive alone"
        )
        return None


def future_covariates(calendar: pd.DataFrame | None, history: pd.DataFrame, horizon: int, freq: str) -> pd.DataFrame:
    """Known-future rows for the ``horizon`` periods after the history: the calendar's planned holidays and events
    (general rows for every store, store rows for theirs). Prices carry forward inside the panel; promotions not
    planned in the calendar count as none."""
    keys = history[SERIES].astype(str).drop_duplicates()
    last = pd.Timestamp(history["date"].max())
    dates = pd.date_range(last, periods=horizon + 1, freq=freq)[1:]
    grid = keys.merge(pd.DataFrame({"date": dates}), how="cross")
    if calendar is None or calendar.empty:
        return grid
    calendar = calendar.copy()
    calendar["date"] = pd.to_datetime(calendar["date"])
    columns = [c for c in calendar.columns if c not in ("date", "store_id", "source_row")]
    # calendar.csv as landed is text: a general row's store_id is empty, not missing.
    store = (
        calendar["store_id"].astype("string").str.strip().replace("", pd.NA)
        if "store_id" in calendar
        else pd.Series(pd.NA, index=calendar.index, dtype="string")
    )
    general = calendar[store.isna()][["date", *columns]].drop_duplicates("date")
    out = grid.merge(general, on="date", how="left")
    specific = calendar[store.notna()].assign(store_id=store[store.notna()].astype(str))
    if not specific.empty:
        specific = specific[["store_id", "date", *columns]].drop_duplicates(["store_id", "date"])
        out = out.merge(specific, on=["store_id", "date"], how="left", suffixes=("", "_store"))
        for c in columns:
            out[c] = out[f"{c}_store"].combine_first(out[c])
            out = out.drop(columns=f"{c}_store")
    for c in columns:
        text = out[c].astype("string").str.strip().replace("", pd.NA)
        converted = pd.to_numeric(text, errors="coerce")
        out[c] = converted.astype("float64") if converted.notna().any() or text.isna().all() else text.astype(object)
    return out


def forecast_latest(
    model: Forecaster | BIForecaster, history: pd.DataFrame, future: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Forecasts for the ``horizon`` periods after the last date of ``history``, for every series active at that
    date, from a saved model and its own encodings (:func:`not_forecast` lists the others, with the reason)."""
    out = as_forecaster(model).predict(history, future)
    last = pd.Timestamp(history["date"].max())
    ends = history.groupby(SERIES, observed=True)["date"].max().reset_index()
    active = ends[ends["date"] == last][SERIES].astype(str)
    clipped = out.attrs.get("clipped_quantiles", 0)
    out = out.merge(active, on=SERIES, how="inner")
    out["cutoff"] = last
    out.attrs["clipped_quantiles"] = clipped
    return out


def model_input(history: pd.DataFrame, future: pd.DataFrame | None = None) -> pd.DataFrame:
    """One frame for the registered model's ``predict``: the history's rows, then the known-future rows (the
    periods after the history's last, ``sales`` empty, their planned covariates)."""
    frame = history.reset_index(drop=True)
    if future is not None and not future.empty:
        ahead = future.drop(columns="sales", errors="ignore").assign(sales=np.nan)
        ahead = ahead.dropna(axis=1, how="all")  # an all-empty column would only blur the history's types
        frame = pd.concat([frame.astype({k: str for k in SERIES}), ahead.astype({k: str for k in SERIES})])
    # Plain string ids and values (not categorical), numbers as float64: one schema whether or not future rows are
    # given (an empty future cell turns an integer column into floats).
    frame = frame.reset_index(drop=True).astype({"store_id": str, "item_id": str, "sales": "float64"})
    for column in frame.select_dtypes("category").columns:
        frame[column] = frame[column].astype(object)
    for column in frame.select_dtypes(include=["integer", "floating"]).columns:
        frame[column] = frame[column].astype("float64")
    return frame


EXAMPLE_SERIES = 2


def input_example(model: Forecaster | BIForecaster, history: pd.DataFrame, horizon: int) -> tuple:
    """A small input for the registered model's ``predict`` and what the model returns for it: the history of the
    :data:`EXAMPLE_SERIES` longest-running series active at the last period, up to ``horizon`` periods before it, and
    those periods as known-future rows (:func:`model_input`)."""
    spans = history.groupby(SERIES, observed=True)["date"].agg(["min", "max"])
    spans = spans[spans["max"] == spans["max"].max()].sort_values("min", kind="stable")
    active = spans.index[:EXAMPLE_SERIES]
    part = history[pd.MultiIndex.from_frame(history[SERIES]).isin(active)]
    dates = np.sort(part["date"].unique())
    cut = dates[max(len(dates) - horizon - 1, 0)]
    frame = model_input(part[part["date"] <= cut], part[part["date"] > cut])
    return frame, forecast_latest(model, *split_model_input(frame))


def split_model_input(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """:func:`model_input`'s frame back as (history, future): the rows up to the last period with sales, and the
    rows after it with the columns they carry (None when there are none)."""
    if "sales" not in frame.columns or "date" not in frame.columns:
        raise ValueError("the model's input needs 'date' and 'sales' columns (model_input makes it)")
    frame = frame.assign(date=pd.to_datetime(frame["date"]))
    last = frame.loc[frame["sales"].notna(), "date"].max()
    if pd.isna(last):
        raise ValueError("the model's input has no row with sales: there is no history to forecast from")
    history = frame[frame["date"] <= last].reset_index(drop=True)
    ahead = frame[frame["date"] > last].drop(columns="sales")
    if ahead.empty:
        return history, None
    ahead = ahead.dropna(axis=1, how="all").reset_index(drop=True)
    return history, ahead


def not_forecast(history: pd.DataFrame, forecasts: pd.DataFrame) -> pd.DataFrame:
    """Each series of ``history`` without a forecast, and why: ``ended`` (its last landed period is before the
    history's last, so it is not active: a discontinued item, a closed store) or ``no forecast from the model`` (an
    active series the model returned nothing for)."""
    last = pd.Timestamp(history["date"].max())
    ends = history.groupby(SERIES, observed=True)["date"].max().reset_index().astype({"store_id": str, "item_id": str})
    done = forecasts[SERIES].astype(str).drop_duplicates()
    missing = ends.merge(done, on=SERIES, how="left", indicator=True)
    missing = missing[missing["_merge"] == "left_only"].drop(columns="_merge")
    ended = missing["date"] < last
    missing["last_period"] = missing.pop("date").dt.date.astype(str)
    missing["reason"] = np.where(
        ended,
        "ended: its last landed period is " + missing["last_period"] + ", before " + str(last.date()),
        "no forecast from the model",
    )
    return missing.reset_index(drop=True)
