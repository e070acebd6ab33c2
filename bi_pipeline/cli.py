"""`bi-pipeline`: what users do outside the Dagster UI.

bi-pipeline demo                      generate demo data and run every stage end to end
bi-pipeline run [--complete]          run every stage on what is in the landing zone
bi-pipeline remove-period YYYY-MM-DD --reason TEXT   remove an ingested period on purpose (recorded)
bi-pipeline state rebuild             rebuild the state files under $BI_PIPELINE_HOME/state
bi-pipeline docs                      serve the GX Data Docs on http://127.0.0.1:$BI_PIPELINE_DOCS_PORT
bi-pipeline generate --landing DIR    write a synthetic retail business into a landing zone
bi-pipeline import-csv FILE --to DIR --date COL --store COL [--item COL] --sales COL [...]
bi-pipeline backtest --data DIR --horizon H [--season-length M] [--windows W] [--out FILE.json]
bi-pipeline pretrain --frequency W --horizon H --out DIR   pretrain on a synthetic corpus (a checkpoint)
bi-pipeline bench ingest --series N --periods P --out FILE.json
bi-pipeline bench scale --out m5_scale.json     (M5 scale: 30,490 series x 1,941 days, every stage)
bi-pipeline bench continual --data DIR --start-periods S --step 1 --out FILE.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

from bi_pipeline.config import (
    FREQUENCIES,
    DecisionSettings,
    ForecastSettings,
    Settings,
    TrainingSettings,
    add_flags,
    from_args,
    from_env,
)
from bi_pipeline.forecasting.interface import DEFAULT_HORIZON, MODELS
from bi_pipeline.state import ensure_private_dir


def _progress(label: str):
    """A tqdm progress bar on stderr, as ``update(done, total)``: redrawn in place on a terminal, sparse in logs."""
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=label, file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 30.0)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def _epoch_bar(label: str):
    """A training progress callback drawing a tqdm bar over the epochs, the validation loss beside it; a new bar for
    each training (each member set, window or model)."""
    from tqdm import tqdm

    bar = None

    def report(record: dict) -> None:
        nonlocal bar
        if record.get("stage") != "train":
            return
        if bar is None or record["epoch"] <= bar.n:
            if bar is not None:
                bar.close()
            bar = tqdm(total=record["epochs"], desc=label, unit="epoch", file=sys.stderr)
        bar.update(record["epoch"] - bar.n)
        bar.set_postfix(validation_loss=f"{record['validation_loss']:.4f}")

    return report


def _say(message: str) -> None:
    """A line on stderr that does not break a progress bar being drawn."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def _add_generation_args(parser: argparse.ArgumentParser, defaults: dict) -> None:
    parser.add_argument("--stores", type=int, default=defaults["stores"])
    parser.add_argument("--items", type=int, default=defaults["items"], help="items per store")
    parser.add_argument("--periods", type=int, default=defaults["periods"])
    parser.add_argument("--frequency", choices=FREQUENCIES, default=defaults["frequency"])
    parser.add_argument("--start", default=defaults["start"], help="first period date (YYYY-MM-DD)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--defects", type=int, default=3, help="instances of each defect type (0: clean data)")
    parser.add_argument("--format", dest="fmt", choices=("csv", "parquet"), default="csv")
    parser.add_argument(
        "--inventory",
        action=argparse.BooleanOptionalAction,
        default=defaults.get("inventory", False),
        help="a stock snapshot for the last period in inventory/ (the demo's default)",
    )


DEMO_DEFAULTS = {
    "stores": 10,
    "items": 30,
    "periods": 156,
    "frequency": "W",
    "start": "2022-01-03",
    "inventory": True,
}


def _spec(args: argparse.Namespace):
    from bi_pipeline.generate import GenerationSpec

    return GenerationSpec(
        stores=args.stores,
        items=args.items,
        periods=args.periods,
        frequency=args.frequency,
        start=args.start,
        seed=args.seed,
        defects=args.defects,
        fmt=args.fmt,
        inventory=args.inventory,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    from bi_pipeline.generate import generate

    settings = Settings.from_env()
    if not args.landing:
        ensure_private_dir(settings.home)
    landing = Path(args.landing).resolve() if args.landing else settings.landing
    report = generate(landing, _spec(args), progress=_progress("generate"))
    print(json.dumps(report.to_dict(), indent=2))
    return 0


def _indented(text: object, lines: int | None = None) -> str:
    """A metadata table (markdown) under its summary line, its first ``lines`` lines."""
    return "\n".join("    " + line for line in str(text).splitlines()[:lines])


def _print_summary(summary, settings: Settings) -> None:
    print()
    print(f"run {summary.run_id}: {'succeeded' if summary.success else 'FAILED'} over {summary.partitions} period(s)")
    for message in summary.rejected_files:
        print(f"  not ingested: {message}")
    for message in summary.pending_files:
        print(f"  waiting (not complete yet): {message}")
    for name in ("raw_sales", "clean_sales", "sales_quarantine", "integrated_sales"):
        meta = summary.materialized.get(name)
        if meta:
            extra = f", by reason {meta['by_reason']}" if "by_reason" in meta else ""
            series = f", {meta['series']} series" if "series" in meta else ""
            print(f"  {name:<17} {meta.get('rows', '?')} rows{series}{extra}")
    for name, check in sorted(summary.checks.items()):
        verdict = "passed" if check["passed"] else ("FAILED" if check.get("severity") == "ERROR" else "warning")
        description = str(check["description"]).replace("\n", "\n" + " " * 8)
        print(f"  check {name:<45} {verdict}: {description}")
    if summary.error:
        print(f"  error: {summary.error}")
    trained = summary.materialized.get("forecaster")
    if trained:
        print(
            f"  forecaster        model v{trained['model_version']} {trained['decision']}"
            f" ({trained['decision_reason']}); {trained['model_kind']} ({trained['members']});"
            f" holdout MASE {trained['holdout_MASE']:.3f}, WQL {trained['holdout_WQL']:.3f}; {trained['device']},"
            f" {trained['training_seconds']} s"
        )
        print(f"  MLflow            {trained['mlflow_ui']}")
    published = summary.materialized.get("forecasts")
    if published:
        reasons = published.get("not_forecast_by_reason") or {}
        why = f" ({', '.join(f'{count} {reason}' for reason, count in reasons.items())})" if reasons else ""
        print(
            f"  forecasts         {published['series']} series x {published['horizon']} periods after "
            f"{published['cutoff']} from champion v{published['model_version']}; "
            f"{published.get('series_not_forecast', 0)} series not forecast{why}, each with its reason in the "
            f"metadata; {published.get('clipped_negative_values', 0)} negative values clipped at 0"
        )
    compared = summary.materialized.get("backtest")
    if compared:
        print("  backtest on the holdout:\n" + _indented(compared["comparison"]))
    ordered = summary.materialized.get("orders")
    if ordered:
        print(
            f"  orders            order-up-to levels for {ordered['series']} series from v{ordered['model_version']} "
            f"({ordered['dependence']}); the largest:"
        )
        print(_indented(ordered["largest"]))
    raised = summary.materialized.get("alerts")
    if raised:
        kinds = ", ".join(f"{n} {k}" for k, n in (raised.get("by_kind") or {}).items() if n) or "none"
        print(f"  alerts            {raised['alerts']} ({raised['high_severity']} high severity): {kinds}; the top:")
        print(_indented(raised["top"], 12))
    explained = summary.materialized.get("drivers")
    if explained:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in (explained.get("share_of_forecast") or {}).items())
        second = explained.get("lightgbm_treeshap_share")
        beside = ", ".join(f"{k} {v:.0%}" for k, v in second.items()) if isinstance(second, dict) else second
        print(f"  drivers           the forecast's median by part: {shares} (LightGBM's TreeSHAP: {beside})")
        print("    per category, price elasticity and promotion uplift with 95% intervals:")
        print(_indented(explained["category_effects"], 12))
    reported = summary.materialized.get("insights")
    if reported:
        print(f"  insights report   {reported['path']} (open it in a browser)")
    tables = summary.materialized.get("bi_tables")
    if tables:
        print(
            f"  BI tables         {tables['forecasts_rows']} forecast rows, {tables['orders_rows']} order rows, "
            f"{tables['drivers_rows']} driver rows and {tables['alerts_rows']} alerts in {tables['warehouse']} "
            "(docs/decisions.md: pointing a BI tool at them)"
        )
    from bi_pipeline.docs_site import docs_url, site_dir

    if (site_dir(settings.gx_dir) / "index.html").exists():
        print(f"  GX Data Docs: {docs_url(settings)} (serve them with `bi-pipeline docs`)")
    print(f"  assets stored under {settings.asset_dir}")
    print(
        "\nOpen the Dagster UI on this instance with `make ui` (dagster dev -w workspace.yaml), then http://127.0.0.1:3000"
    )


def cmd_run(args: argparse.Namespace) -> int:
    from bi_pipeline.defs.runner import run_pipeline

    settings = Settings.from_env()
    summary = run_pipeline(settings, assume_complete=args.complete, progress=_progress("runs"))
    _print_summary(summary, settings)
    return 0 if summary.success else 1


def cmd_remove_period(args: argparse.Namespace) -> int:
    from bi_pipeline.defs.runner import remove_period

    result = remove_period(Settings.from_env(), args.period, args.reason, rebuild=not args.no_rebuild)
    print(json.dumps(result, indent=2))
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    from bi_pipeline.docs_site import DocsNotBuilt, serve_docs
    from bi_pipeline.expectations import Validator

    settings = Settings.from_env()
    port = args.port or settings.docs_port
    Validator.for_settings(settings).pull()  # with a remote storage root: the site as the workers last stored it
    try:
        serve_docs(settings.gx_dir, port)
    except DocsNotBuilt as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    from bi_pipeline.defs.runner import rebuild_state

    print(json.dumps(rebuild_state(Settings.from_env()), indent=2))
    return 0


# The demo trains a smaller ensemble for fewer epochs than the product default, so it finishes in minutes; a
# BI_PIPELINE_ variable set for one of these still wins.
DEMO_TRAINING = {"members": 2, "epochs": 15, "max_windows_per_epoch": 4096}


def cmd_demo(args: argparse.Namespace) -> int:
    from bi_pipeline.defs.runner import run_pipeline
    from bi_pipeline.generate import generate

    settings = Settings.from_env()
    if args.fresh and settings.home.exists():
        shutil.rmtree(settings.home)
    ensure_private_dir(settings.home)
    print(f"home: {settings.home}\nlanding zone: {settings.landing}")
    report = generate(settings.landing, _spec(args), progress=_progress("generate"))
    print(
        f"generated {report.rows_written} rows in {report.sales_files} files "
        f"({report.series} series x {report.periods} periods, {report.frequency}); injected defects: "
        + ", ".join(f"{k}={v}" for k, v in sorted(report.expected_quarantine.items()) if v)
    )
    defaults = {k: v for k, v in DEMO_TRAINING.items() if not os.environ.get(f"BI_PIPELINE_{k.upper()}")}
    training = from_env(TrainingSettings, **defaults)
    print("demo training budget: " + ", ".join(f"{k}={getattr(training, k)}" for k in DEMO_TRAINING))
    # The generator wrote every file completely just now: no need to wait for a second scan.
    summary = run_pipeline(settings, assume_complete=True, training=training, progress=_progress("runs"))
    _print_summary(summary, settings)
    found = summary.materialized.get("sales_quarantine", {}).get("by_reason", {})
    expected = {k: v for k, v in report.expected_quarantine.items() if v}
    print(f"\nquarantine matches the injected defects: {found == expected}")
    return 0 if summary.success and found == expected else 1


def cmd_ui(args: argparse.Namespace) -> int:
    """`dagster dev` on the instance under $BI_PIPELINE_HOME, so the UI shows what `demo`/`run` materialized."""
    from bi_pipeline.config import prepare_dagster_home, repo_root

    settings = Settings.from_env()
    prepare_dagster_home(settings)
    workspace = repo_root() / "workspace.yaml"
    command = [
        str(Path(sys.executable).with_name("dagster")),
        "dev",
        "-w",
        str(workspace),
        "-p",
        str(args.port),
    ]
    print(f"DAGSTER_HOME={os.environ['DAGSTER_HOME']} {' '.join(command)}")
    os.chdir(repo_root())
    os.execv(command[0], command)
    return 0


def cmd_import_csv(args: argparse.Namespace) -> int:
    from bi_pipeline.importer import import_csv

    covariates = [c for value in (args.covariates or []) for c in value.split(",") if c]
    result = import_csv(
        Path(args.file),
        Path(args.to),
        date_col=args.date,
        store_col=args.store,
        item_col=args.item,
        sales_col=args.sales,
        dayfirst=args.dayfirst,
        covariates=covariates,
        price_col=args.price,
        promo_col=args.promo,
        date_format=args.date_format,
        frequency=args.frequency,
    )
    print(json.dumps(result, indent=2))
    return 0


def _save_json(result: dict, out: str | None) -> None:
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")


def _write_json(result: dict, out: str | None, shown: dict | None = None) -> int:
    """Print ``shown`` (default: the whole result) as JSON, write the result to ``out`` when given; exit code 0."""
    print(json.dumps(result if shown is None else shown, indent=2))
    _save_json(result, out)
    return 0


def _recipe(pairs: list[str]) -> dict:
    """``--recipe NAME=VALUE`` pairs as TrainConfig recipe values (ablations), typed as the recipe declares them."""
    from bi_pipeline.forecasting.configuration import TrainConfig

    settings = {f.name for f in dataclasses.fields(TrainingSettings)}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig) if f.name not in settings}
    recipe = {}
    for pair in pairs:
        name, _, text = pair.partition("=")
        if name not in fields:
            raise SystemExit(f"--recipe {pair}: not a recipe value; choose from {', '.join(sorted(fields))}")
        default = fields[name].default
        try:
            if isinstance(default, bool):
                if text.lower() not in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
                    raise ValueError("use 1/true/yes/on or 0/false/no/off")
                recipe[name] = text.lower() in {"1", "true", "yes", "on"}
            else:
                recipe[name] = (int if default is None else type(default))(text)
        except ValueError as exc:
            raise SystemExit(f"--recipe {pair}: {exc}") from None
    return recipe


# The economics the backtest's decisions section simulates (docs/decisions.md).
DECISION_FLAGS = ("service_level", "lead_time", "review_period", "holding_cost_rate")


def cmd_backtest(args: argparse.Namespace) -> int:
    from bi_pipeline.forecasting.backtest import load_history, run_backtest, table
    from bi_pipeline.forecasting.configuration import TrainConfig
    from bi_pipeline.synthetic import resolve_init_from

    landing = Path(args.data).resolve()
    history, frequency, covariates = load_history(landing, report=lambda text: print(text, file=sys.stderr))
    print(
        f"{landing}: {history.groupby(['store_id', 'item_id'], observed=True).ngroups} series, frequency {frequency}",
        file=sys.stderr,
    )
    # The same settings the assets read (BI_PIPELINE_*), the flags given overriding them.
    training, forecast = from_args(TrainingSettings, args), from_args(ForecastSettings, args)
    horizon = forecast.horizon or DEFAULT_HORIZON[frequency]
    config = TrainConfig(**training.to_dict(), **_recipe(args.recipe))
    config = resolve_init_from(config, frequency, horizon, progress=_pretrain_reporter())
    result = run_backtest(
        history,
        frequency,
        horizon,
        season_length=forecast.season_length,
        windows=args.windows,
        covariates=covariates,
        progress=_say,
        models=tuple(args.models),
        train_config=config,
        train_progress=_epoch_bar("transformer"),
        economics=from_args(DecisionSettings, args),
    )
    print(table(result))
    if "decisions" in result:
        from bi_pipeline.decisions.evaluation import decisions_table

        print(decisions_table(result["decisions"]))
    _save_json(result, args.out)
    return 0


def _pretrain_reporter():
    """Progress of a synthetic-corpus pretraining started by ``init_from=synthetic`` (first use only)."""
    from bi_pipeline.forecasting.progress import describe

    def report(record: dict) -> None:
        if record.get("stage") == "pretrain_corpus":
            _say(describe(record)[1])

    return report


def cmd_settings(args: argparse.Namespace) -> int:
    from bi_pipeline.config import configuration_markdown

    print(configuration_markdown())
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from bi_pipeline.forecasting.pretraining import default_config
    from bi_pipeline.synthetic import CorpusSpec, pretrain_synthetic

    corpus = CorpusSpec(**{f.name: getattr(args, f.name) for f in dataclasses.fields(CorpusSpec)})
    training = from_args(TrainingSettings, args, epochs=args.epochs, seed=args.seed)
    config = default_config(
        members=training.members, epochs=training.epochs, seed=training.seed, device=training.device
    )

    manifest = pretrain_synthetic(
        corpus,
        args.horizon,
        args.out,
        config,
        progress=_epoch_bar("pretrain"),
        corpus_progress=_progress("synthetic corpus"),
    )
    print(json.dumps(manifest, indent=2))
    print(f"checkpoint: {Path(args.out).resolve()} (use it with BI_PIPELINE_INIT_FROM or --init-from)", file=sys.stderr)
    return 0


def cmd_bench_forecaster(args: argparse.Namespace) -> int:
    from bi_pipeline.bench import bench_forecaster

    result = bench_forecaster(
        series=args.series,
        periods=args.periods,
        frequency=args.frequency,
        horizon=args.horizon,
        epochs=args.epochs,
        members=args.members,
        max_windows_per_epoch=args.max_windows,
        batch_size=args.batch_size,
        device=from_args(TrainingSettings, args).device,
        processes=tuple(args.processes),
        workers=args.workers,
    )
    return _write_json(result, args.out)


def cmd_bench_continual(args: argparse.Namespace) -> int:
    from bi_pipeline.forecasting.backtest import load_history
    from bi_pipeline.forecasting.configuration import TrainConfig
    from bi_pipeline.forecasting.continual import IncrementalConfig, replay_benchmark
    from bi_pipeline.forecasting.metrics import season_length_for

    landing = Path(args.data).resolve()
    history, frequency, _ = load_history(landing)
    training, forecast = from_args(TrainingSettings, args), from_args(ForecastSettings, args)
    horizon = forecast.horizon or DEFAULT_HORIZON[frequency]
    season = season_length_for(frequency, args.start_periods, forecast.season_length)
    result = replay_benchmark(
        history,
        frequency,
        args.start_periods,
        horizon,
        season,
        TrainConfig(**training.to_dict()),
        IncrementalConfig(epochs=forecast.incremental_epochs, replay_ratio=forecast.replay_ratio),
        step=args.step,
        steps=args.steps,
        progress=lambda message: print(message, file=sys.stderr, flush=True),
    )
    result["data"] = str(landing)
    return _write_json(result, args.out, {k: v for k, v in result.items() if k not in ("steps", "train_config")})


def cmd_bench_accuracy(args: argparse.Namespace) -> int:
    from bi_pipeline.forecasting.configuration import TrainConfig
    from bi_pipeline.suite import SUITE, run_suite, table

    names = {entry.name for entry in SUITE}
    unknown = sorted(set(args.sets or ()) - names)
    if unknown:
        raise ValueError(f"unknown set(s) {', '.join(unknown)}: choose from {', '.join(sorted(names))}")
    entries = tuple(
        e for e in SUITE if (not args.sets or e.name in args.sets) and (not args.half or e.half == args.half)
    )
    training = from_args(TrainingSettings, args)
    config = TrainConfig(**training.to_dict(), **_recipe(args.recipe))
    workdir = Path(args.workdir) if args.workdir else None
    report = run_suite(entries, workdir, config, say=_say, train_progress=_epoch_bar("transformer"))
    print(table(report))
    _save_json(report, args.out)
    return 0


def cmd_bench_speed(args: argparse.Namespace) -> int:
    from bi_pipeline.suite import SPEED, run_suite, speed_table

    entries = tuple(e for e in SPEED if not args.sets or e.name in args.sets)
    workdir = Path(args.workdir) if args.workdir else None
    report = run_suite(entries, workdir, say=_say, train_progress=_epoch_bar("transformer"))
    report["cpu_count"] = os.cpu_count()
    print(speed_table(report))
    _save_json(report, args.out)
    return 0


def cmd_bench_drivers(args: argparse.Namespace) -> int:
    from bi_pipeline.bench import bench_drivers

    result = bench_drivers(seeds=tuple(args.seeds), progress=_say)
    return _write_json(result, args.out, shown={k: result[k] for k in ("seeds", "by_shape", "overall")})


def cmd_bench_ingest(args: argparse.Namespace) -> int:
    from bi_pipeline.bench import bench_ingest

    result = bench_ingest(
        series=args.series,
        periods=args.periods,
        frequency=args.frequency,
        workdir=Path(args.workdir) if args.workdir else None,
        keep=args.keep,
        gx_landed_max_rows=args.gx_landed_max_rows,
        progress=_progress,
    )
    return _write_json(result, args.out)


def cmd_bench_scale(args: argparse.Namespace) -> int:
    from bi_pipeline.bench_scale import bench_scale

    result = bench_scale(
        series=args.series,
        periods=args.periods,
        frequency=args.frequency,
        horizon=args.horizon,
        workdir=Path(args.workdir) if args.workdir else None,
        progress=_say,
    )
    return _write_json(result, args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bi-pipeline", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="generate demo data into the landing zone and run every stage end to end")
    _add_generation_args(demo, DEMO_DEFAULTS)
    demo.add_argument("--fresh", action="store_true", help="delete $BI_PIPELINE_HOME first")
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run every stage on the files in the landing zone")
    run.add_argument(
        "--complete",
        action="store_true",
        help="take the files as complete (a scripted drop that wrote them all): no second scan, no end-of-file check",
    )
    run.set_defaults(func=cmd_run)

    remove = sub.add_parser("remove-period", help="remove an ingested period on purpose; recorded with who and why")
    remove.add_argument("period", help="the period's date, YYYY-MM-DD")
    remove.add_argument("--reason", required=True, help="why (recorded in $BI_PIPELINE_HOME/state/removals.jsonl)")
    remove.add_argument("--no-rebuild", action="store_true", help="do not rebuild the integrated view now")
    remove.set_defaults(func=cmd_remove_period)

    docs = sub.add_parser("docs", help="serve the GX Data Docs on 127.0.0.1 (the checks' data_docs links)")
    docs.add_argument("--port", type=int, help="default: BI_PIPELINE_DOCS_PORT (3001)")
    docs.set_defaults(func=cmd_docs)

    state = sub.add_parser("state", help="the state files under $BI_PIPELINE_HOME/state")
    state.add_argument("action", choices=("rebuild",), help="rebuild: ingested.json from the stored raw_sales")
    state.set_defaults(func=cmd_state)

    ui = sub.add_parser("ui", help="start the Dagster UI (dagster dev) on this home's instance")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=cmd_ui)

    gen = sub.add_parser("generate", help="write a synthetic retail business into a landing zone")
    gen.add_argument("--landing", help="landing zone directory (default: $BI_PIPELINE_LANDING)")
    _add_generation_args(gen, DEMO_DEFAULTS)
    gen.set_defaults(func=cmd_generate)

    imp = sub.add_parser("import-csv", help="turn one big sales export into the landing-zone contract")
    imp.add_argument("file")
    imp.add_argument("--to", required=True, help="landing zone directory to write")
    imp.add_argument("--date", required=True, help="date column")
    imp.add_argument("--store", required=True, help="store column")
    imp.add_argument("--item", help="item column (omit for store totals: item_id becomes 'all')")
    imp.add_argument("--sales", required=True, help="sales column (units or money)")
    imp.add_argument("--price", help="price column")
    imp.add_argument("--promo", help="promotion column (flag or depth)")
    imp.add_argument("--dayfirst", action="store_true", help="dates are day-first (05-02-2010 is 5 February)")
    imp.add_argument("--date-format", help="explicit strptime format, e.g. %%d-%%m-%%Y")
    imp.add_argument("--frequency", choices=FREQUENCIES, help="default: inferred from the dates")
    imp.add_argument("--covariates", nargs="+", metavar="COL", help="columns known in advance -> calendar.csv")
    imp.set_defaults(func=cmd_import_csv)

    backtest = sub.add_parser("backtest", help="rolling-origin backtest of the models on a landing zone")
    backtest.add_argument("--data", required=True, help="a landing zone in the contract")
    backtest.add_argument("--windows", type=int, default=1)
    backtest.add_argument("--out", help="write the JSON here too")
    backtest.add_argument(
        "--models", nargs="+", default=list(MODELS), choices=MODELS, help="default: all, the ensemble included"
    )
    backtest.add_argument(
        "--recipe",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="transformer: change a recipe value for an ablation (docs/accuracy.md), e.g. weight_average=0",
    )
    add_flags(backtest, ForecastSettings, only=("horizon", "season_length"))
    add_flags(backtest, TrainingSettings)
    add_flags(backtest, DecisionSettings, only=DECISION_FLAGS)
    backtest.set_defaults(func=cmd_backtest)

    listing = sub.add_parser("settings", help="print every setting (variable, flag, default, help) as markdown")
    listing.set_defaults(func=cmd_settings)

    pre = sub.add_parser(
        "pretrain", help="pretrain the forecaster on a synthetic corpus from the generator; writes a checkpoint"
    )
    pre.add_argument("--out", required=True, help="checkpoint directory to write (save_pretrained + pretraining.json)")
    pre.add_argument("--frequency", choices=FREQUENCIES, default="W")
    pre.add_argument("--horizon", type=int, required=True, help="periods forecast (the business's horizon)")
    pre.add_argument("--businesses", type=int, default=40, help="simulated businesses in the corpus")
    pre.add_argument("--stores", type=int, default=20, help="stores per business")
    pre.add_argument("--items", type=int, default=60, help="items per store (summed into store and category totals)")
    pre.add_argument("--periods", type=int, help="periods per series (default 730 daily, 260 weekly, 300 monthly)")
    pre.add_argument("--epochs", type=int, default=15, help="most epochs (early stopping)")
    pre.add_argument("--seed", type=int, default=7, help="fixes the corpus and the training")
    add_flags(pre, TrainingSettings, only=("members", "device"))
    pre.set_defaults(func=cmd_pretrain)

    bench = sub.add_parser("bench", help="benchmarks that write JSON")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    ingest = bench_sub.add_parser(
        "ingest", help="landing zone -> integrated_sales: seconds per stage, rows/s, peak RSS"
    )
    ingest.add_argument("--series", type=int, default=1000)
    ingest.add_argument("--periods", type=int, default=1000)
    ingest.add_argument("--frequency", choices=FREQUENCIES, default="D")
    ingest.add_argument("--out", help="write the JSON here too")
    ingest.add_argument("--workdir", help="where to generate (default: a temporary directory)")
    ingest.add_argument("--keep", action="store_true", help="keep the generated landing zone")
    ingest.add_argument(
        "--gx-landed-max-rows",
        type=int,
        help="GX-validate the landed rows of chunks up to this size (default: BI_PIPELINE_GX_LANDED_MAX_ROWS)",
    )
    ingest.set_defaults(func=cmd_bench_ingest)
    scale = bench_sub.add_parser(
        "scale", help="landing zone -> features -> one training epoch -> every series forecast: seconds, peak RSS"
    )
    scale.add_argument("--series", type=int, default=30490, help="series (default: M5's 30,490)")
    scale.add_argument("--periods", type=int, default=1941, help="periods (default: M5's 1,941 days)")
    scale.add_argument("--frequency", choices=FREQUENCIES, default="D")
    scale.add_argument("--horizon", type=int, help="periods forecast (default: 28 daily, 13 weekly, 12 monthly)")
    scale.add_argument("--workdir", help="where to generate (default: a temporary directory, removed)")
    scale.add_argument("--out", help="write the JSON here too")
    scale.set_defaults(func=cmd_bench_scale)
    fc = bench_sub.add_parser("forecaster", help="training windows/s and inference series/s of the forecaster")
    fc.add_argument("--series", type=int, default=300)
    fc.add_argument("--periods", type=int, default=156)
    fc.add_argument("--frequency", choices=FREQUENCIES, default="W")
    fc.add_argument("--horizon", type=int, default=13)
    fc.add_argument("--epochs", type=int, default=3)
    fc.add_argument("--members", type=int, default=1)
    fc.add_argument("--max-windows", type=int, default=4096, help="training windows per epoch")
    fc.add_argument("--batch-size", type=int, default=128, help="the global batch, shared out among the processes")
    fc.add_argument(
        "--processes",
        type=int,
        nargs="+",
        default=[1],
        help="train once per count of data-parallel processes (e.g. 1 2) and report windows/s for each",
    )
    fc.add_argument("--workers", type=int, default=0, help="DataLoader workers per process that gather the batches")
    add_flags(fc, TrainingSettings, only=("device",))
    fc.add_argument("--out", help="write the JSON here too")
    fc.set_defaults(func=cmd_bench_forecaster)
    cont = bench_sub.add_parser(
        "continual", help="replay a landing zone period by period: incremental updates vs full retrains"
    )
    cont.add_argument("--data", required=True, help="a landing zone in the contract")
    cont.add_argument("--start-periods", type=int, required=True, help="periods landed before the first model")
    cont.add_argument("--step", type=int, default=1, help="periods landed between updates")
    cont.add_argument("--steps", type=int, help="updates to replay (default: until the data ends)")
    add_flags(cont, ForecastSettings, only=("horizon", "season_length", "incremental_epochs", "replay_ratio"))
    add_flags(cont, TrainingSettings, only=("members", "epochs", "seed", "device"))
    cont.add_argument("--out", help="write the JSON here too")
    cont.set_defaults(func=cmd_bench_continual)
    acc = bench_sub.add_parser(
        "accuracy", help="the backtest over the suite of data sets: skill, WQL, coverage per set and per half"
    )
    acc.add_argument("--sets", nargs="+", metavar="NAME", help="only these sets (default: all of the suite)")
    acc.add_argument("--half", choices=("choose", "check"), help="only the sets of one half")
    acc.add_argument("--workdir", help="where the landing zones are made and kept (default: a temporary directory)")
    acc.add_argument("--recipe", action="append", default=[], metavar="NAME=VALUE", help="a recipe value (ablation)")
    add_flags(acc, TrainingSettings)
    acc.add_argument("--out", help="write the JSON here too")
    acc.set_defaults(func=cmd_bench_accuracy)
    drv = bench_sub.add_parser(
        "drivers", help="category price elasticity and promotion uplift recovered on generated businesses vs truth"
    )
    drv.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6], help="one business per seed and shape")
    drv.add_argument("--out", help="write the JSON here too")
    drv.set_defaults(func=cmd_bench_drivers)
    speed = bench_sub.add_parser(
        "speed", help="the whole backtest's seconds on Walmart, 2,970 weekly and 350 monthly series, against targets"
    )
    speed.add_argument("--sets", nargs="+", choices=("walmart", "weekly_3000", "monthly_350"), metavar="NAME")
    speed.add_argument("--workdir", help="where the landing zones are made and kept (default: a temporary directory)")
    speed.add_argument("--out", help="write the JSON here too")
    speed.set_defaults(func=cmd_bench_speed)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    from bi_pipeline.state import StateError

    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, StateError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
