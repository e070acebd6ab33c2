"""Small data and a small recipe the forecasting tests share."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bi_pipeline.forecasting.configuration import TrainConfig


def weekly_history(series: int = 6, periods: int = 90, seed: int = 0) -> pd.DataFrame:
    """Seasonal weekly series of different sizes with a holiday flag that lifts sales, and a store attribute."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2021-01-04", periods=periods, freq="W-MON")
    holiday = (dates.isocalendar().week.to_numpy() % 13 == 0).astype("float32")
    frames = []
    for i in range(series):
        level = 10.0 * (i + 1)
        season = 1 + 0.3 * np.sin(2 * np.pi * np.arange(periods) / 52.0 + i)
        sales = level * season * (1 + 0.5 * holiday) + rng.normal(0, 0.5, periods)
        frames.append(
            pd.DataFrame(
                {
                    "date": dates,
                    "store_id": f"S{i % 3}",
                    "item_id": f"I{i}",
                    "sales": sales.astype("float32"),
                    "observed": True,
                    "format": "big" if i % 3 == 0 else "small",
                    "holiday": holiday,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


TINY = dict(d_model=16, ffn_dim=32, num_attention_heads=2, num_hidden_layers=1, max_windows_per_epoch=256)


def tiny(**overrides) -> TrainConfig:
    values = {**TINY, "members": 1, "epochs": 4, "patience": 100, "batch_size": 64, **overrides}
    return TrainConfig(**values)


def short_monthly_panel(seed: int = 0, series: int = 60, periods: int = 48) -> pd.DataFrame:
    """Four years of distributor × product months in four shapes, a quarter each: smooth seasonal series of very
    different sizes, flat contract volumes repeating one value (a MAD of 0), intermittent orders (a median of 0) and
    products launched in the last two years; a price and a discount per row."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2019-01-01", periods=periods, freq="MS")
    t = np.arange(periods)
    frames = []
    for i in range(series):
        season = 1 + 0.25 * np.sin(2 * np.pi * t / 12 + i)
        kind = i % 4
        if kind == 0:
            sales = 200.0 * (i + 1) * season * np.exp(rng.normal(0, 0.05, periods))
        elif kind == 1:
            sales = np.full(periods, 5000.0 * (1 + i % 3))
            sales[rng.choice(periods, 4, replace=False)] *= rng.uniform(0.5, 1.5, 4)
        elif kind == 2:
            sales = (rng.poisson(0.6, periods) * rng.integers(1, 40, periods)).astype("float64")
        else:
            sales = 300.0 * season * np.exp(rng.normal(0, 0.1, periods))
            sales[: periods - int(rng.integers(18, 30))] = np.nan
        frame = pd.DataFrame(
            {
                "date": dates,
                "store_id": f"D{i % 7}",
                "item_id": f"P{i}",
                "sales": sales,
                "observed": True,
                "price": rng.uniform(5, 6, periods),
                "discount": rng.choice([0, 0, 0, 0.1, 0.2], periods),
            }
        )
        frames.append(frame.dropna(subset=["sales"]))
    return pd.concat(frames, ignore_index=True)
