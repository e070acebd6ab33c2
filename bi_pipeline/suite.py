"""`bi-pipeline bench accuracy`: the backtest over a declared list of data sets of different shapes, each model's
skill and WQL per set, and per half of the list the geometric mean of skill (as fev-bench aggregates), wins and
losses against the best baseline, coverage and seconds.

The list (:data:`SUITE`) holds the shared real sets (read from ``BI_PIPELINE_SHARED_DATA``, default
``../shared/data``; a set whose file is absent is skipped and said so) and businesses from the project's generator,
each with a fixed seed. Each set belongs to a half: ``choose`` (the sets the defaults were chosen on) or ``check``
(sets never used to choose them, reported as the check). docs/accuracy.md says which is which.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bi_pipeline.config import Settings
from bi_pipeline.forecasting.backtest import load_history, run_backtest
from bi_pipeline.forecasting.configuration import Progress, TrainConfig
from bi_pipeline.forecasting.interface import MODELS
from bi_pipeline.generate import GenerationSpec, generate
from bi_pipeline.importer import import_csv
from bi_pipeline.synthetic import resolve_init_from

HALVES = ("choose", "check")
BASELINES = ("seasonal_naive", "auto_ets", "lightgbm")


@dataclass(frozen=True)
class SuiteSet:
    """One data set of the suite: a shared file imported through ``import_csv`` or a generated business."""

    name: str
    half: str  # choose or check
    shape: str  # what it is, for the table and the docs
    horizon: int
    season_length: int | None = None
    spec: GenerationSpec | None = None  # a generated business
    totals: bool = False  # the generated items' sales summed to store totals
    shared: str | None = None  # a file under the shared data directory
    columns: dict = field(default_factory=dict)  # import_csv's column arguments
    last_periods: int | None = None  # only the latest periods of a long shared file
    target_seconds: float | None = None  # bench speed: the whole backtest's target on 2 cores


def _spec(**values) -> GenerationSpec:
    return GenerationSpec(defects=0, **values)


SUITE: tuple[SuiteSet, ...] = (
    SuiteSet(
        "walmart",
        "choose",
        "Walmart weekly store totals, 45 stores, holidays and CPI/fuel/temperature (real)",
        39,
        1,
        shared="walmart_store_sales/Walmart.csv",
        columns=dict(
            date_col="Date",
            store_col="Store",
            sales_col="Weekly_Sales",
            dayfirst=True,
            covariates=("Holiday_Flag", "Temperature", "Fuel_Price", "CPI", "Unemployment"),
        ),
    ),
    SuiteSet(
        "aus_retail",
        "choose",
        "Australian monthly turnover, 152 state × industry series, 37 years (real)",
        12,
        shared="aus_retail/aus_retail.csv.gz",
        columns=dict(date_col="Month", store_col="State", item_col="Industry", sales_col="Turnover"),
    ),
    SuiteSet(
        "weekly_store_totals",
        "choose",
        "weekly store totals, 30 stores, 3 years, holidays and events (generated)",
        13,
        spec=_spec(stores=30, items=40, periods=156, frequency="W", seed=11),
        totals=True,
    ),
    SuiteSet(
        "monthly_short",
        "choose",
        "monthly distributor × product, 300 series, 5 years, prices and discounts (generated)",
        12,
        spec=_spec(stores=10, items=30, periods=60, frequency="M", seed=12),
    ),
    SuiteSet(
        "store_item_daily",
        "check",
        "daily store × item unit sales, 500 series, the last two years (real)",
        28,
        shared="store_item_demand/train.csv.gz",
        columns=dict(date_col="date", store_col="store", item_col="item", sales_col="sales"),
        last_periods=730,
    ),
    SuiteSet(
        "daily_intermittent",
        "check",
        "daily item level, 160 series, 60% slow movers with many zeros (generated)",
        28,
        spec=_spec(stores=4, items=40, periods=548, frequency="D", seed=13, intermittent_item_share=0.6),
    ),
    SuiteSet(
        "weekly_lifecycle",
        "check",
        "weekly store × item, 180 series, 30% launched and 30% discontinued during the history (generated)",
        13,
        spec=_spec(
            stores=6, items=30, periods=156, frequency="W", seed=14, new_item_share=0.3, discontinued_item_share=0.3
        ),
    ),
    SuiteSet(
        "weekly_level_shifts",
        "check",
        "weekly store × item, 180 series, 40% with a lasting level shift (generated)",
        13,
        spec=_spec(stores=6, items=30, periods=156, frequency="W", seed=15, level_shift_share=0.4),
    ),
    SuiteSet(
        "daily_promotions_closures",
        "check",
        "daily store × item, 120 series, promotions and store closures announced in the calendar (generated)",
        28,
        spec=_spec(
            stores=8, items=15, periods=548, frequency="D", seed=16, closure_share=0.03, intermittent_item_share=0.1
        ),
    ),
)


# `bi-pipeline bench speed`: the whole backtest (every model, the ensemble's validation origins included) on the
# shapes whose runtime the project targets on 2 CPU cores.
SPEED: tuple[SuiteSet, ...] = (
    dataclasses.replace(SUITE[0], half="speed", target_seconds=120),
    SuiteSet(
        "weekly_3000",
        "speed",
        "weekly store × department, 2,970 series, under 3 years (generated)",
        39,
        spec=_spec(stores=45, items=66, periods=143, frequency="W", seed=21),
        target_seconds=480,
    ),
    SuiteSet(
        "monthly_350",
        "speed",
        "monthly distributor × product, 350 series, 5 years, prices and discounts (generated)",
        12,
        spec=_spec(stores=10, items=35, periods=60, frequency="M", seed=22),
        target_seconds=240,
    ),
)


def shared_data_dir() -> Path:
    return Path(os.environ.get("BI_PIPELINE_SHARED_DATA", "../shared/data"))


def prepare(entry: SuiteSet, workdir: Path) -> Path | None:
    """The set's landing zone under ``workdir`` (made once and reused); None when its shared file is absent."""
    landing = workdir / entry.name
    if (landing / "sales").exists():
        return landing
    if entry.shared:
        source = shared_data_dir() / entry.shared
        if not source.exists():
            return None
        if entry.last_periods:
            frame = pd.read_csv(source, dtype=str, keep_default_na=False)
            dates = frame[entry.columns["date_col"]]
            keep = sorted(dates.unique())[-entry.last_periods :]
            source = workdir / f"{entry.name}.csv"
            frame[dates.isin(keep)].to_csv(source, index=False)
        import_csv(source, landing, **entry.columns)
        return landing
    if entry.totals:
        raw = workdir / f"{entry.name}_items"
        generate(raw, entry.spec)
        sales = pd.concat(pd.read_csv(f) for f in sorted(glob.glob(str(raw / "sales" / "*.csv"))))
        totals = sales.groupby(["date", "store_id"], as_index=False)["sales"].sum()
        source = workdir / f"{entry.name}.csv"
        totals.to_csv(source, index=False)
        import_csv(source, landing, "date", "store_id", "sales")
        for master in ("stores.csv", "calendar.csv"):
            shutil.copy(raw / master, landing / master)
        return landing
    generate(landing, entry.spec)
    return landing


def run_suite(
    entries: tuple[SuiteSet, ...] = SUITE,
    workdir: Path | None = None,
    config: TrainConfig | None = None,
    say: Callable[[str], None] = print,
    train_progress: Progress | None = None,
) -> dict:
    """The backtest of every model on every set (one window, the default settings), and the aggregates."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="bi_pipeline_suite_"))
    workdir.mkdir(parents=True, exist_ok=True)
    sets, skipped = {}, {}
    for number, entry in enumerate(entries, start=1):
        say(f"[{number}/{len(entries)}] {entry.name} ({entry.half}): {entry.shape}")
        landing = prepare(entry, workdir)
        if landing is None:
            skipped[entry.name] = f"{shared_data_dir() / entry.shared} not found"
            say(f"  skipped: {skipped[entry.name]}")
            continue
        started = time.perf_counter()  # from reading the landing zone: generating a business is not timed
        settings = Settings.from_env(landing=landing.resolve(), home=workdir / f"{entry.name}_home")
        history, frequency, covariates = load_history(landing, settings)
        # `synthetic` names a checkpoint per frequency and horizon, built once under the environment's home (not the
        # set's, which each run makes anew); building it is timed apart from the backtest.
        pretraining = time.perf_counter()
        set_config = resolve_init_from(config, frequency, entry.horizon, progress=train_progress) if config else None
        pretraining = time.perf_counter() - pretraining
        result = run_backtest(
            history,
            frequency,
            entry.horizon,
            season_length=entry.season_length,
            covariates=covariates,
            progress=lambda line: say("  " + line),
            models=MODELS,
            train_config=set_config,
            train_progress=train_progress,
        )
        seconds = time.perf_counter() - started - pretraining
        result.update(name=entry.name, half=entry.half, shape=entry.shape, seconds=seconds)
        if config is not None and config.init_from:
            result.update(init_from=set_config.init_from, pretraining_seconds=pretraining)
        if entry.target_seconds:
            result.update(target_seconds=entry.target_seconds, within_target=result["seconds"] < entry.target_seconds)
        sets[entry.name] = with_skill(result)
        say("  " + summary_line(sets[entry.name]))
    return {
        "sets": sets,
        "skipped": skipped,
        "halves": {half: aggregate([s for s in sets.values() if s["half"] == half]) for half in HALVES},
        "all": aggregate(list(sets.values())),
        "transformer_config": (config or TrainConfig()).to_dict(),
    }


def with_skill(result: dict) -> dict:
    """The backtest result with each model's skill (MASE ÷ seasonal naive's) and the best baseline named."""
    models = result["models"]
    naive = models["seasonal_naive"]["MASE"]
    for values in models.values():
        values["skill"] = values["MASE"] / naive if naive else math.nan
    result["best_baseline"] = min(BASELINES, key=lambda m: models[m]["MASE"])
    return result


def summary_line(result: dict) -> str:
    models, best = result["models"], result["best_baseline"]
    return (
        f"skill: ensemble {models['ensemble']['skill']:.3f}, transformer {models['transformer']['skill']:.3f}, "
        f"best baseline {best} {models[best]['skill']:.3f}; ensemble WQL {models['ensemble']['WQL']:.4f}, "
        f"80% coverage {models['ensemble']['coverage_80']:.2f}; {result['seconds']:.0f} s"
        + (f" (and {result['pretraining_seconds']:.0f} s pretraining)" if result.get("pretraining_seconds") else "")
    )


def aggregate(results: list[dict]) -> dict:
    """Per model over the given sets: the geometric mean of skill, the mean WQL relative to seasonal naive's, the
    coverage range, and for the transformer and the ensemble the sets won and lost against the best baseline."""
    if not results:
        return {}
    out: dict = {"sets": [r["name"] for r in results], "seconds": round(sum(r["seconds"] for r in results), 1)}
    for model in MODELS:
        skills = np.array([r["models"][model]["skill"] for r in results])
        relative_wql = np.array([r["models"][model]["WQL"] / r["models"]["seasonal_naive"]["WQL"] for r in results])
        coverage = [r["models"][model]["coverage_80"] for r in results]
        out[model] = {
            "geomean_skill": float(np.exp(np.mean(np.log(skills)))),
            "geomean_relative_WQL": float(np.exp(np.mean(np.log(relative_wql)))),
            "coverage_80_min": float(min(coverage)),
            "coverage_80_max": float(max(coverage)),
        }
        if model in ("transformer", "ensemble"):
            wins = [r["name"] for r in results if r["models"][model]["MASE"] < r["models"][r["best_baseline"]]["MASE"]]
            out[model]["wins_against_best_baseline"] = wins
            out[model]["losses_against_best_baseline"] = [r["name"] for r in results if r["name"] not in wins]
    return out


def table(report: dict) -> str:
    """The report as markdown: a row per set and model, then the aggregate per half."""
    lines = [
        "| set | half | model | MASE | skill | RMSSE | WAPE | WQL | 80% coverage | fit s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in report["sets"].values():
        for model, m in result["models"].items():
            lines.append(
                f"| {result['name']} | {result['half']} | {model} | {m['MASE']:.3f} | {m['skill']:.3f} | "
                f"{m['RMSSE']:.3f} | {m['WAPE']:.3f} | {m['WQL']:.4f} | {m['coverage_80']:.2f} | "
                f"{m['fit_seconds']:.0f} |"
            )
    lines += [
        "",
        "| half | model | geometric mean skill | geometric mean WQL ÷ seasonal naive's | 80% coverage | wins |",
        "|---|---|---|---|---|---|",
    ]
    for half, values in [*report["halves"].items(), ("all", report["all"])]:
        for model in MODELS:
            if model not in values:
                continue
            m = values[model]
            wins = m.get("wins_against_best_baseline")
            won = f"{len(wins)} of {len(values['sets'])}" if wins is not None else ""
            lines.append(
                f"| {half} | {model} | {m['geomean_skill']:.3f} | {m['geomean_relative_WQL']:.3f} | "
                f"{m['coverage_80_min']:.2f}–{m['coverage_80_max']:.2f} | {won} |"
            )
    return "\n".join(lines)


def speed_table(report: dict) -> str:
    """`bench speed` as markdown: a row per set with the backtest's seconds against the target, and each model's
    (fit and forecast), and what choosing the ensemble took beyond fitting its members."""
    lines = [
        "| set | series | H | backtest s | target s | transformer s | LightGBM s | AutoETS s | choosing s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in report["sets"].values():
        m = result["models"]
        spent = {name: m[name]["fit_seconds"] + m[name]["predict_seconds"] for name in m}
        members = ("transformer", "lightgbm", "auto_ets")
        choosing = m["ensemble"]["fit_seconds"] - sum(m[name]["fit_seconds"] for name in members)
        lines.append(
            f"| {result['name']} | {result['series']} | {result['horizon']} | {result['seconds']:.0f} | "
            f"{result.get('target_seconds', 0):.0f} | {spent['transformer']:.0f} | "
            f"{spent['lightgbm']:.0f} | {spent['auto_ets']:.0f} | {choosing:.0f} |"
        )
    return "\n".join(lines)
