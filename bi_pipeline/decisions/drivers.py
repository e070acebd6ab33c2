"""Why demand moves (no Dagster): per category, the promotion uplift and the price elasticity, with intervals.

Estimated on the history by a Poisson regression with fixed effects, the standard demand model for count data:

    sales[s, t] ~ Poisson(exp(a[s] + g[c(s), t] + e[i(s)] · log price[s, t] + b[i(s)] · promoted[s, t]))

``a`` takes each series' level, ``g`` each category's period (its seasonality, holidays, events and trend), so what
is left to an item's two slopes is how its sales move with its own price and promotions against its category in the
same period. ``e`` is the item's price elasticity, ``exp(b) − 1`` its promotion uplift on top of the price cut. The
fixed effects are concentrated out (PPML: alternating closed-form updates of the effects, Newton steps on the slopes
with the part of the regressors the effects cannot explain); standard errors come from the Hessian, scaled by the
Pearson dispersion (sales are over-dispersed). A category's figure is the average of its items' true values,
estimated from their noisy estimates by random effects (:func:`shrunk_mean`). Uplifts are pooled as ``b``, where
their noise is symmetric: on the ``exp(b) − 1`` scale a low estimate has a smaller standard error than a high one,
and precision weights there would pull every category's average down.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from bi_pipeline.forecasting.metrics import SERIES

Z95 = 1.959964
MIN_PROMO_ROWS = 5  # an item with fewer promoted (or fewer unpromoted) rows gets no uplift of its own


def _group_sums(codes: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    return np.bincount(codes, values, minlength=size)


def _demean(x: np.ndarray, weights: np.ndarray, groups: list[tuple[np.ndarray, int]], sweeps: int = 20) -> np.ndarray:
    """``x`` (rows, columns) minus its weighted means within each set of groups, alternated until it settles: the
    part of each regressor the fixed effects cannot explain."""
    out = x.copy()
    for _ in range(sweeps):
        before = out.copy()
        for codes, size in groups:
            total = _group_sums(codes, weights, size)
            for k in range(out.shape[1]):
                mean = _group_sums(codes, weights * out[:, k], size) / np.maximum(total, 1e-300)
                out[:, k] -= mean[codes]
        if np.abs(out - before).max() < 1e-10:
            break
    return out


def fit_poisson(
    y: np.ndarray, x: np.ndarray, series: np.ndarray, cells: np.ndarray, iterations: int = 50
) -> tuple[np.ndarray, np.ndarray, float]:
    """Poisson regression of ``y`` on ``x`` with two sets of fixed effects (``series`` and ``cells`` codes): the
    slopes, their covariance (the Hessian's inverse) and the Pearson dispersion."""
    n_series, n_cells = series.max() + 1, cells.max() + 1
    beta = np.zeros(x.shape[1])
    a, g = np.zeros(n_series), np.zeros(n_cells)
    log_ys = np.log(np.maximum(_group_sums(series, y, n_series), 1e-300))
    log_yc = np.log(np.maximum(_group_sums(cells, y, n_cells), 1e-300))
    hessian = np.eye(len(beta))
    for _ in range(iterations):
        offset = x @ beta
        for _ in range(20):  # the fixed effects given the slopes: Poisson's closed-form updates, alternated
            a_before = a
            a = log_ys - np.log(_group_sums(series, np.exp(offset + g[cells]), n_series))
            g = log_yc - np.log(_group_sums(cells, np.exp(offset + a[series]), n_cells))
            if np.abs(a - a_before).max() < 1e-10:
                break
        mu = np.exp(offset + a[series] + g[cells])
        tilde = _demean(x, mu, [(series, n_series), (cells, n_cells)])
        hessian = (tilde * mu[:, None]).T @ tilde + 1e-9 * np.eye(len(beta))
        step = np.linalg.solve(hessian, tilde.T @ (y - mu))
        beta += np.clip(step, -1.0, 1.0)
        if np.abs(step).max() < 1e-7:
            break
    mu = np.exp(x @ beta + a[series] + g[cells])
    used = mu > 1e-9
    freedom = max(int(used.sum()) - n_series - n_cells - len(beta), 1)
    dispersion = float(np.sum((y[used] - mu[used]) ** 2 / mu[used]) / freedom)
    return beta, np.linalg.inv(hessian), dispersion


def _prepared(history: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    frame = history.dropna(subset=["sales", "price"])
    frame = frame[(frame["price"] > 0) & (frame["sales"] >= 0)]
    category = items.set_index(items["item_id"].astype(str))["category"].astype(str)
    category = category[~category.index.duplicated()]
    frame = frame.assign(item_id=frame["item_id"].astype(str), store_id=frame["store_id"].astype(str))
    frame = frame[frame["item_id"].isin(category.index)]
    return frame.assign(category=frame["item_id"].map(category))


def item_effects(history: pd.DataFrame, items: pd.DataFrame, iterations: int = 50) -> pd.DataFrame:
    """Per item: ``elasticity`` and ``uplift`` with standard errors, and the rows and promoted rows they rest on.
    ``history`` needs ``sales``, ``price`` and ``promo`` (promotion depth or flag; > 0 is promoted); ``items`` maps
    ``item_id`` to ``category``. Each category is fitted on its own (its periods' effects are its own)."""
    records = []
    for name, part in _prepared(history, items).groupby("category", sort=True):
        series, _ = pd.factorize(pd.MultiIndex.from_frame(part[SERIES]))
        cells, _ = pd.factorize(part["date"])
        item, names = pd.factorize(part["item_id"])
        promo = (part["promo"].fillna(0).to_numpy() > 0).astype(float)
        # Promotion depths and regular-price changes both move the price; the promotion's own slope is what a
        # promotion adds beyond its price cut.
        log_price = np.log(part["price"].to_numpy(dtype="float64"))
        promoted = _group_sums(item, promo, len(names))
        rows = _group_sums(item, np.ones(len(part)), len(names))
        with_uplift = (promoted >= MIN_PROMO_ROWS) & (rows - promoted >= MIN_PROMO_ROWS)
        columns, labels = [], []
        for i in range(len(names)):
            columns.append(np.where(item == i, log_price, 0.0))
            labels.append((i, "elasticity"))
            if with_uplift[i]:
                columns.append(np.where(item == i, promo, 0.0))
                labels.append((i, "uplift"))
        y = part["sales"].to_numpy(dtype="float64")
        beta, covariance, dispersion = fit_poisson(y, np.column_stack(columns), series, cells, iterations)
        scale = max(dispersion, 1.0)  # over-dispersed counts: wider intervals, never narrower
        found: dict[int, dict] = {i: {"elasticity": np.nan, "uplift": np.nan} for i in range(len(names))}
        for k, (i, measure) in enumerate(labels):
            se = float(np.sqrt(covariance[k, k] * scale))
            if measure == "elasticity":
                found[i].update(elasticity=beta[k], elasticity_se=se)
            else:  # uplift = exp(b) − 1; its standard error by the delta method
                found[i].update(uplift=np.exp(beta[k]) - 1.0, uplift_se=np.exp(beta[k]) * se)
        for i, values in found.items():
            records.append(
                {
                    "item_id": str(names[i]),
                    "category": name,
                    "elasticity": values["elasticity"],
                    "elasticity_se": values.get("elasticity_se", np.nan),
                    "uplift": values["uplift"],
                    "uplift_se": values.get("uplift_se", np.nan),
                    "rows": int(rows[i]),
                    "promoted_rows": int(promoted[i]),
                }
            )
    return pd.DataFrame(records)


def shrunk_mean(values: np.ndarray, se: np.ndarray) -> tuple[float, float, float]:
    """The average of items' true values from their noisy estimates (random effects): the spread between items
    (DerSimonian–Laird), each estimate pulled toward the category's mean as far as its noise warrants, and the mean
    of those; (average, its standard error, the between-item standard deviation)."""
    ok = np.isfinite(values) & np.isfinite(se) & (se > 0)
    values, se = values[ok], se[ok]
    if not len(values):
        return np.nan, np.nan, np.nan
    w = 1.0 / se**2
    fixed = float(np.sum(w * values) / np.sum(w))
    q = float(np.sum(w * (values - fixed) ** 2))
    denominator = float(np.sum(w) - np.sum(w**2) / np.sum(w))
    tau2 = max(0.0, (q - (len(values) - 1)) / denominator) if denominator > 0 else 0.0
    w_star = 1.0 / (se**2 + tau2)
    mu = float(np.sum(w_star * values) / np.sum(w_star))
    if tau2 == 0:
        return mu, float(np.sqrt(1.0 / np.sum(w_star))), 0.0
    shrunk = (values / se**2 + mu / tau2) / (1.0 / se**2 + 1.0 / tau2)
    posterior_var = 1.0 / (1.0 / se**2 + 1.0 / tau2)
    # The mean of the shrunk estimates; its variance: the items' posterior variances and the shared mean's.
    variance = float(np.sum(posterior_var) / len(values) ** 2 + 1.0 / np.sum(w_star))
    return float(shrunk.mean()), float(np.sqrt(variance)), float(np.sqrt(tau2))


def category_effects(effects: pd.DataFrame) -> pd.DataFrame:
    """Per category: the average elasticity and uplift of its items (:func:`shrunk_mean`), with 95% intervals. The
    uplift is pooled on the log scale, ``b = log(1 + uplift)``, and brought back as ``exp(b̄) − 1``: the typical
    item's uplift, a little under the items' arithmetic mean when they differ (measured against that mean, it erred
    +2% on average, docs/decisions.md)."""
    rows = []
    for name, group in effects.groupby("category", sort=True):
        row: dict = {"category": name, "items": len(group)}
        mean, se, spread = shrunk_mean(group["elasticity"].to_numpy(float), group["elasticity_se"].to_numpy(float))
        row.update(elasticity=mean, elasticity_low=mean - Z95 * se, elasticity_high=mean + Z95 * se)
        row["elasticity_item_spread"] = spread
        uplift = group["uplift"].to_numpy(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            log_uplift, log_se = np.log1p(uplift), group["uplift_se"].to_numpy(float) / (1.0 + uplift)
        mean, se, spread = shrunk_mean(log_uplift, log_se)
        row.update(
            uplift=float(np.expm1(mean)),
            uplift_low=float(np.expm1(mean - Z95 * se)),
            uplift_high=float(np.expm1(mean + Z95 * se)),
            uplift_item_spread=spread,  # between items, on the log scale
        )
        rows.append(row)
    return pd.DataFrame(rows)


def category_table(history: pd.DataFrame, items: pd.DataFrame | None) -> pd.DataFrame | None:
    """The per-category effects of a business, or None when its data cannot tell them (no ``price`` and ``promo``
    in the sales, or no ``category`` in items.csv)."""
    if items is None or "category" not in items.columns or not {"price", "promo"} <= set(history.columns):
        return None
    return category_effects(item_effects(history, items))


# --- why the forecast says what it says ---------------------------------------------------------------------------

PROMOTION_PRICE = ("promo", "price")
KEY_COLUMNS = ("store_id", "item_id", "date")
PARTS = ("level_trend", "seasonality", "calendar", "promotion_price")


def input_groups(future: pd.DataFrame) -> dict[str, list[str]]:
    """The known-future inputs of a forecast by group: ``calendar`` (holidays, events and every other planned
    covariate) and ``promotion_price`` (planned promotions and prices), each only when the future rows hold it."""
    columns = [c for c in future.columns if c not in KEY_COLUMNS]
    groups = {
        "calendar": [c for c in columns if c not in PROMOTION_PRICE],
        "promotion_price": [c for c in columns if c in PROMOTION_PRICE],
    }
    return {name: cols for name, cols in groups.items() if cols and future[cols].notna().any().any()}


def neutralised(future: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``future`` with ``columns`` as if nothing were planned: no event, no promotion, the price carried forward."""
    out = future.copy()
    for column in columns:
        if column == "price":
            out = out.drop(columns=column)
        else:
            out[column] = 0.0 if pd.api.types.is_numeric_dtype(out[column]) else np.nan
    return out


def shapley_medians(
    predict, future: pd.DataFrame, groups: dict[str, list[str]], published: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, dict]:
    """The median with every group of inputs neutralised (the base), and each group's Shapley share of the rest:
    ``predict(future) -> frame with q0.5`` is run once per subset of groups (2^k passes). Returns (frame of KEY_COLUMNS,
    ``median``, ``base`` and a column per group; the number of passes). ``published``, the forecast with every input as
    planned, saves its pass."""
    names = list(groups)
    k = len(names)
    medians: dict[frozenset, pd.Series] = {}
    keys = None
    passes = 0
    for size in range(k + 1):
        for subset in itertools.combinations(names, size):
            off = [c for n in names if n not in subset for c in groups[n]]
            if published is not None and size == k:
                out = published
            else:
                out = predict(neutralised(future, off))
                passes += 1
            out = out.astype({"store_id": str, "item_id": str})
            out = out.set_index(list(KEY_COLUMNS)).sort_index()
            keys = out.index if keys is None else keys
            medians[frozenset(subset)] = out["q0.5"].reindex(keys)
    frame = pd.DataFrame(index=keys)
    frame["median"] = medians[frozenset(names)]
    frame["base"] = medians[frozenset()]
    for name in names:
        share = pd.Series(0.0, index=keys)
        others = [n for n in names if n != name]
        for size in range(len(others) + 1):
            for subset in itertools.combinations(others, size):
                weight = math.factorial(size) * math.factorial(k - size - 1) / math.factorial(k)
                share += weight * (medians[frozenset((*subset, name))] - medians[frozenset(subset)])
        frame[name] = share
    return frame.reset_index(), {"passes": passes}


def seasonal_index(history: pd.DataFrame, season: int, steps: int) -> pd.DataFrame:
    """Each series' additive seasonal index for the ``steps`` periods after its history (classical decomposition:
    deviations from a centred moving average of one season, averaged by position over the last three seasons,
    centred to sum to zero); zero where the history is shorter than two seasons."""
    wide = history.pivot_table(index=SERIES, columns="date", values="sales", aggfunc="sum", observed=True)
    wide = wide.sort_index(axis=1)
    periods = wide.shape[1]
    index = pd.DataFrame(0.0, index=wide.index, columns=range(1, steps + 1))
    if season < 2 or periods < 2 * season:
        return index
    values = wide.to_numpy(dtype="float64")
    trend = pd.DataFrame(values).T.rolling(season, center=True, min_periods=season).mean()
    if season % 2 == 0:  # a 2×m moving average centres an even season
        trend = trend.rolling(2, min_periods=2).mean().shift(-1)
    deviation = values - trend.T.to_numpy()
    recent = deviation[:, max(0, periods - 3 * season - season // 2) :]
    offset = max(0, periods - 3 * season - season // 2)
    position = (np.arange(recent.shape[1]) + offset) % season
    profile = np.full((len(wide), season), np.nan)
    for p in range(season):
        columns = recent[:, position == p]
        if columns.size:
            profile[:, p] = np.nanmean(np.where(np.isfinite(columns), columns, np.nan), axis=1)
    profile = np.nan_to_num(profile - np.nanmean(profile, axis=1, keepdims=True))
    ahead = (periods + np.arange(steps)) % season
    index.loc[:, :] = profile[:, ahead]
    return index


def forecast_drivers(
    predict, history: pd.DataFrame, future: pd.DataFrame, season: int, published: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, dict]:
    """Per series and period of a forecast: the median split into ``level_trend`` and ``seasonality`` (the forecast
    with nothing planned: the part the series' seasonal index explains, and the rest), ``calendar`` and
    ``promotion_price`` (the Shapley shares of the planned inputs); the four add up to ``median``. ``published`` is
    the forecast with every input as planned, when it was made already."""
    groups = input_groups(future)
    frame, info = shapley_medians(predict, future, groups, published)
    for name in ("calendar", "promotion_price"):
        if name not in frame:
            frame[name] = 0.0
    frame = frame.sort_values(list(KEY_COLUMNS)).reset_index(drop=True)
    frame["step"] = frame.groupby(SERIES, observed=True).cumcount() + 1
    index = seasonal_index(history.astype({"store_id": str, "item_id": str}), season, int(frame["step"].max()))
    stacked = index.stack()
    stacked.index = stacked.index.set_names([*SERIES, "step"])
    lookup = frame.set_index([*SERIES, "step"]).index
    frame["seasonality"] = stacked.reindex(lookup).fillna(0.0).to_numpy()
    frame["level_trend"] = frame["base"] - frame["seasonality"]
    info["groups"] = {name: columns for name, columns in groups.items()}
    return frame[[*KEY_COLUMNS, "step", "median", *PARTS]], info


def treeshap_parts(contributions: pd.DataFrame, covariates: list[str]) -> pd.DataFrame:
    """LightGBM's TreeSHAP contributions (:func:`bi_pipeline.forecasting.lightgbm.median_contributions`) summed into
    the same parts as :func:`forecast_drivers`: lags, rolling means, statics and the expected value are level and
    trend; month and week are seasonality; the planned covariates and calendar effects (Easter) are calendar, but for
    promotion and price."""
    features = [c for c in contributions.columns if c not in KEY_COLUMNS]
    groups: dict[str, list[str]] = {part: [] for part in PARTS}
    for feature in features:
        if feature in PROMOTION_PRICE or feature.startswith(("price", "promo")):
            groups["promotion_price"].append(feature)
        elif feature in covariates or feature.startswith("easter"):
            groups["calendar"].append(feature)
        elif feature in ("month", "week", "dayofweek", "day", "quarter"):
            groups["seasonality"].append(feature)
        else:
            groups["level_trend"].append(feature)
    out = contributions[list(KEY_COLUMNS)].copy()
    for part, columns in groups.items():
        out[part] = contributions[columns].sum(axis=1) if columns else 0.0
    out["median"] = out[list(PARTS)].sum(axis=1)
    return out


def shares(parts: pd.DataFrame) -> dict[str, float]:
    """Each part's share of the whole forecast (summed over series and periods)."""
    total = float(parts["median"].sum())
    return {part: round(float(parts[part].sum()) / total, 4) if total else 0.0 for part in PARTS}
