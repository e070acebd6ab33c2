"""`bi-pipeline bench ingest`: landing zone -> integrated_sales at a chosen scale, seconds per stage and peak RSS.

It runs the same core functions the assets call (contract reading, quality rules, GX suites, integration) on chunks
of periods as a single-run backfill does, without Dagster's per-step bookkeeping. The generator runs in a child
process so that the reported peak RSS is the ingestion's own.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pandas as pd

from bi_pipeline.config import Settings
from bi_pipeline.contract import infer_frequency, sales_index, scan_sales_dir
from bi_pipeline.quality import clean_batch, known_ids
from bi_pipeline.readers import Limits, read_master, read_period


def _rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # kilobytes on Linux


def _generate_child(landing: str, spec_kwargs: dict, out: str) -> None:
    from bi_pipeline.generate import GenerationSpec, generate

    report = generate(Path(landing), GenerationSpec(**spec_kwargs))
    Path(out).write_text(json.dumps(report.to_dict()))


def split_series(series: int) -> tuple[int, int]:
    """(stores, items) for a series count: 10 stores like M5 (30,490 = 10 x 3,049) once there are enough series."""
    stores = 10 if series >= 100 else max(1, min(series, 3))
    return stores, max(1, series // stores)


def bench_ingest(
    series: int,
    periods: int,
    frequency: str = "D",
    workdir: Path | None = None,
    keep: bool = False,
    gx_landed_max_rows: int | None = None,
    progress: Callable[[str], Callable[[int, int], None]] | None = None,
    chunk_rows: int = 2_000_000,
    on_integrated: Callable[[pd.DataFrame, str], None] | None = None,
) -> dict:
    """Landing zone -> integrated_sales on generated data (see the module's docstring); ``on_integrated`` is handed
    the integrated frame and its frequency (what ``bench scale`` goes on from)."""
    from bi_pipeline.expectations import Validator, batch_validation_frames, validate_sales
    from bi_pipeline.integration import integrate

    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="bi_pipeline_bench_"))
    landing, home = root / "landing", root / "home"
    stores, items = split_series(series)
    spec = {"stores": stores, "items": items, "periods": periods, "frequency": frequency, "defects": 3, "seed": 7}
    timings: dict[str, float] = {}

    started = time.perf_counter()
    report_path = root / "generation_report.json"
    root.mkdir(parents=True, exist_ok=True)
    child = mp.get_context("spawn").Process(target=_generate_child, args=(str(landing), spec, str(report_path)))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"generation failed with exit code {child.exitcode}")
    timings["generate"] = time.perf_counter() - started
    report = json.loads(report_path.read_text())
    generate_rss = _rss_mb(resource.RUSAGE_CHILDREN)

    settings = Settings(home=home, landing=landing, frequency=frequency)
    if gx_landed_max_rows is not None:
        settings = replace(settings, gx_landed_max_rows=gx_landed_max_rows)
    validator = Validator(settings.gx_dir, data_docs=False)
    # A one-off cost (importing GX, creating its context) is not throughput: pay it before the clock starts.
    validator.context  # noqa: B018
    scan = scan_sales_dir(landing, settle_seconds=0, assume_complete=True)
    limits, index = Limits.of(settings), sales_index(landing)
    keys = sorted(f.key for f in scan.ready)
    freq = infer_frequency(keys, default=frequency)
    stores_df, items_df = read_master(landing, "stores"), read_master(landing, "items")
    calendar_df = read_master(landing, "calendar")
    known_stores, known_items = known_ids(stores_df, "store_id"), known_ids(items_df, "item_id")

    collect = clean = validate = 0.0
    rows_in = 0
    gx_rows = {"raw": 0, "clean": 0}
    clean_frames: list[pd.DataFrame] = []
    quarantine_frames: list[pd.DataFrame] = []
    batch: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
    batch_rows = 0
    bar = progress("ingest") if progress else None

    def process_batch() -> None:
        """One chunk of periods as a single-run backfill handles them: GX on the rows as landed, the rules, GX on
        the result."""
        nonlocal clean, validate, batch_rows
        if not batch:
            return
        t = time.perf_counter()
        cleaned = clean_batch(batch, freq, settings, known_stores, known_items)
        results = cleaned.results
        clean += time.perf_counter() - t
        # As clean_sales does: GX on the kept rows always (the gate), on the landed rows up to the configured size.
        t = time.perf_counter()
        landed, kept = batch_validation_frames(cleaned, freq, known_stores, known_items, settings.gx_landed_max_rows)
        if len(landed) <= settings.gx_landed_max_rows:
            validate_sales(validator, "landed_sales", landed, settings)
            gx_rows["raw"] += len(landed)
        validate_sales(validator, "clean_sales", kept, settings)
        gx_rows["clean"] += len(kept)
        del landed, kept
        validate += time.perf_counter() - t
        del cleaned
        cleaned = [r.clean for r in results.values()]
        # Integration needs only these; dropping the lineage columns keeps M5 scale within memory.
        clean_frames.extend(f[["date", "store_id", "item_id", "sales", "price", "promo"]] for f in cleaned)
        quarantine_frames.extend(r.quarantine for r in results.values() if len(r.quarantine))
        batch.clear()
        batch_rows = 0

    for i, key in enumerate(keys, start=1):
        t = time.perf_counter()
        read = read_period(landing, key, limits, index)
        collect += time.perf_counter() - t
        rows_in += len(read.rows) + len(read.issues)
        batch[key] = (read.rows, read.issues)
        batch_rows += len(read.rows)
        if batch_rows >= chunk_rows:
            process_batch()
        if bar:
            bar(i, len(keys))
    process_batch()

    t = time.perf_counter()
    quarantine = pd.concat(quarantine_frames, ignore_index=True) if quarantine_frames else None
    integrated = integrate(
        clean_frames,
        freq,
        keys,
        stores=stores_df,
        items=items_df,
        calendar=calendar_df,
        quarantined=quarantine,
        release=True,
    )
    timings["integrate"] = time.perf_counter() - t
    timings.update({"collect": collect, "validate": validate, "clean": clean})
    quarantined = {k: int(v) for k, v in quarantine["reason"].value_counts().items()} if quarantine is not None else {}
    expected = {k: v for k, v in report["expected_quarantine"].items() if v}

    ingest_seconds = collect + validate + clean + timings["integrate"]
    vci = validate + clean + timings["integrate"]
    result = {
        "benchmark": "ingest",
        "rows": rows_in,
        "series": report["series"],
        "periods": len(keys),
        "frequency": freq,
        "integrated_rows": len(integrated),
        "integrated_memory_mb": round(integrated.memory_usage(deep=True).sum() / 2**20, 1),
        "gx_rows_validated": gx_rows,
        "chunk_rows": chunk_rows,
        "gx_landed_max_rows": settings.gx_landed_max_rows,
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "landing_to_integrated_seconds": round(ingest_seconds, 2),
        "rows_per_second": {
            "collect": round(rows_in / collect) if collect else None,
            "validate": round(rows_in / validate) if validate else None,
            "clean": round(rows_in / clean) if clean else None,
            "integrate": round(rows_in / timings["integrate"]) if timings["integrate"] else None,
            "validate_clean_integrate": round(rows_in / vci) if vci else None,
            "landing_to_integrated": round(rows_in / ingest_seconds) if ingest_seconds else None,
        },
        "peak_rss_mb": round(_rss_mb(), 1),
        "generate_peak_rss_mb": round(generate_rss, 1),
        "quarantine_matches_injected": quarantined == expected,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "pandas": pd.__version__},
    }
    if on_integrated is not None:
        on_integrated(integrated, freq)
    if not keep and not workdir:
        shutil.rmtree(root, ignore_errors=True)
    return result


def bare_patchtst_windows_per_second(
    panel, model_config, cutoff: int, device, batch_size: int, windows: int, passes: int = 2
) -> float:
    """Training windows/s of a bare PatchTST loop (Hugging Face's backbone, a linear head over the flattened patch
    embeddings, MAE on the context-scaled target, Adam) over the panel's training windows: batches gathered the same
    way, the same context, patch and width as the forecaster; the first batch is a warm-up."""
    import numpy as np
    import torch
    from transformers import PatchTSTModel

    from bi_pipeline.forecasting.device import autocast, to_device
    from bi_pipeline.forecasting.panel import make_windows
    from bi_pipeline.forecasting.sampling import batches, gather_windows

    torch.manual_seed(0)
    backbone = PatchTSTModel(model_config.backbone_config()).to(device)
    head = torch.nn.Linear(model_config.d_model * model_config.num_patches, model_config.horizon).to(device)
    optimizer = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=1e-3)
    train = make_windows(panel, model_config.patch_length, None, cutoff, 0, cutoff + 1)
    rng = np.random.default_rng(0)
    chosen = rng.permutation(len(train))[:windows]
    seen, started = 0, None
    for _ in range(passes):
        for idx in batches(len(chosen), batch_size, rng):
            sel = chosen[idx]
            batch = to_device(gather_windows(panel, train, sel, model_config), device)
            past, observed = batch["past_values"], batch["past_observed"].float()
            scale = ((past.abs() * observed).sum(1, keepdim=True) / observed.sum(1, keepdim=True).clamp(min=1)).clamp(
                min=1e-6
            )
            with autocast(device):
                hidden = backbone(past_values=(past / scale).unsqueeze(-1)).last_hidden_state
                prediction = head(hidden.flatten(1)).float()
            mask = batch["mask"].float()
            loss = ((prediction - batch["target"] / scale).abs() * mask).sum() / mask.sum().clamp(min=1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if started is None:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()  # after the warm-up batch
                continue
            seen += len(sel)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started if started is not None else 0.0
    return seen / elapsed if elapsed else float("nan")


def _throughput(result, seconds: float) -> dict:
    """A training run's windows/s, all epochs and after the first (warm), and its wall time with the processes'
    start."""
    later = result.history[1:] or result.history
    warm = sum(r["windows"] for r in later) / max(sum(r["seconds"] for r in later), 1e-9)
    return {
        "train_windows_per_second": round(result.windows_per_second, 1),
        "warm_train_windows_per_second": round(warm, 1),
        "train_seconds": round(seconds, 2),
        "epochs": result.epochs_run,
    }


def bench_forecaster(
    series: int = 300,
    periods: int = 156,
    frequency: str = "W",
    horizon: int = 13,
    epochs: int = 3,
    members: int = 1,
    max_windows_per_epoch: int = 4096,
    batch_size: int = 128,
    device: str = "auto",
    workdir: Path | None = None,
    processes: tuple[int, ...] = (1,),
    workers: int = 0,
) -> dict:
    """Training throughput (windows/s) and inference speed (series/s) of the forecaster on generated data, with the
    device, its precision (bf16 autocast on CUDA) and peak memory. Training runs once per count of data-parallel
    ``processes`` (the same global batch), each with ``workers`` DataLoader workers a process; the figures outside
    ``by_processes`` are the first count's."""
    import torch

    from bi_pipeline.forecasting.backtest import load_history
    from bi_pipeline.forecasting.configuration import TrainConfig
    from bi_pipeline.forecasting.device import choose_device
    from bi_pipeline.forecasting.distributed import train_distributed
    from bi_pipeline.forecasting.features import fit_spec
    from bi_pipeline.forecasting.panel import build_panel
    from bi_pipeline.forecasting.transformer import forecast
    from bi_pipeline.generate import GenerationSpec, generate

    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="bi_pipeline_bench_fc_"))
    stores, items = split_series(series)
    landing = root / "landing"
    generate(landing, GenerationSpec(stores=stores, items=items, periods=periods, frequency=frequency, defects=0))
    history, freq, covariates = load_history(landing, Settings(home=root / "home", landing=landing))
    spec = fit_spec(history, freq, covariates)
    panel = build_panel(history, spec, horizon=horizon)
    origin = len(panel.dates) - horizon - 1
    config = TrainConfig(
        members=members,
        epochs=epochs,
        patience=epochs + 1,
        max_windows_per_epoch=max_windows_per_epoch,
        batch_size=batch_size,
        device=device,
    )
    if not processes or min(processes) < 1:
        raise ValueError(f"processes: counts of at least 1, not {processes}")
    runs = {}
    for count in processes:
        started = time.perf_counter()
        run = train_distributed(panel, horizon, origin, config, processes=count, workers=workers)
        runs[count] = (run, time.perf_counter() - started)
    result, train_seconds = runs[processes[0]]
    by_processes = {str(count): _throughput(run, seconds) for count, (run, seconds) in runs.items()}
    reference = by_processes[str(processes[0])]["warm_train_windows_per_second"]
    for figures in by_processes.values():
        # Against the first count: with 1 first, the speed-up of N processes over one.
        figures["warm_vs_first"] = round(figures["warm_train_windows_per_second"] / reference, 3) if reference else None
    forecast(result.model, panel, origin)  # warm-up
    started = time.perf_counter()
    out = forecast(result.model, panel, origin)
    predict_seconds = time.perf_counter() - started
    chosen = choose_device(device)
    warm = by_processes[str(processes[0])]["warm_train_windows_per_second"]
    bare = bare_patchtst_windows_per_second(
        panel, result.model.config, origin, chosen, batch_size, max_windows_per_epoch
    )
    if not workdir:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "benchmark": "forecaster",
        "series": panel.series,
        "periods": len(panel.dates) - horizon,
        "frequency": freq,
        "horizon": horizon,
        "members": members,
        "epochs": result.epochs_run,
        "parameters": int(sum(p.numel() for p in result.model.parameters())),
        "device": str(chosen),
        "precision": "bf16 autocast" if chosen.type == "cuda" else "fp32",
        "torch_threads": torch.get_num_threads(),
        "train_windows_per_second": round(result.windows_per_second, 1),
        # After the first epoch, which also pays for the device's start (CUDA context, kernel selection).
        "warm_train_windows_per_second": warm,
        "batch_size": batch_size,
        "loader_workers": workers,
        # Per count of data-parallel processes (one global batch of batch_size shared out): training windows/s of
        # them all together, and the warm figure over the first count's.
        "by_processes": by_processes,
        # The same windows through a bare PatchTST (one backbone, a linear head, MAE, Adam) on the same device, its
        # first batch not timed: what the pipeline's own training costs on top (members, quantile head, mixup, weight
        # average).
        "bare_patchtst_windows_per_second": round(bare, 1),
        # Per network, warm against warm: each of the pipeline's windows trains every member.
        "pipeline_vs_bare": round(warm * members / bare, 3) if bare else None,
        "train_seconds": round(train_seconds, 2),
        "inference_series_per_second": round(len(out) / horizon / predict_seconds, 1),
        "inference_seconds": round(predict_seconds, 3),
        "peak_rss_mb": round(_rss_mb(), 1),
        "gpu_peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if chosen.type == "cuda" else None,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }


# The businesses `bench drivers` recovers effects on: (stores, items, weeks), several seeds each.
DRIVER_SHAPES = ((10, 30, 156), (20, 40, 104), (5, 60, 156))


def bench_drivers(
    shapes: tuple[tuple[int, int, int], ...] = DRIVER_SHAPES,
    seeds: tuple[int, ...] = (1, 2, 3, 4, 5, 6),
    workdir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Per generated business (weekly, no defects, a seed each), the category elasticity and promotion uplift the
    drivers estimate against the generator's truth: each category's relative error, whether its 95% interval holds
    the truth, whether the sign is right; and the aggregates per shape and overall."""
    from bi_pipeline.decisions.drivers import category_effects, item_effects
    from bi_pipeline.forecasting.backtest import load_history
    from bi_pipeline.generate import GenerationSpec, generate, true_effects

    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for stores, items, periods in shapes:
            for seed in seeds:
                spec = GenerationSpec(stores=stores, items=items, periods=periods, frequency="W", defects=0, seed=seed)
                landing = Path(tmp) / f"{stores}x{items}x{periods}_{seed}"
                generate(landing, spec)
                history, _, _ = load_history(landing)
                master = pd.read_csv(landing / "items.csv", dtype=str)
                started = time.perf_counter()
                found = category_effects(item_effects(history, master)).set_index("category")
                seconds = time.perf_counter() - started
                truth = true_effects(spec).groupby("category")[["elasticity", "promo_bump"]].mean()
                for category, row in found.join(truth, rsuffix="_true").iterrows():
                    rows.append(
                        {
                            "shape": f"{stores}x{items}x{periods}",
                            "seed": seed,
                            "category": category,
                            "items": int(row["items"]),
                            "elasticity": row["elasticity"],
                            "elasticity_true": row["elasticity_true"],
                            "elasticity_error": row["elasticity"] / row["elasticity_true"] - 1.0,
                            "elasticity_covered": bool(
                                row["elasticity_low"] <= row["elasticity_true"] <= row["elasticity_high"]
                            ),
                            "uplift": row["uplift"],
                            "uplift_true": row["promo_bump"],
                            "uplift_error": row["uplift"] / row["promo_bump"] - 1.0,
                            "uplift_covered": bool(row["uplift_low"] <= row["promo_bump"] <= row["uplift_high"]),
                            "signs_right": bool(row["elasticity"] < 0 and row["uplift"] > 0),
                            "seconds": seconds,
                        }
                    )
                if progress:
                    progress(f"{stores}x{items}x{periods} seed {seed}: {len(found)} categories in {seconds:.1f} s")
    frame = pd.DataFrame(rows)

    def summary(part: pd.DataFrame) -> dict:
        out: dict = {"categories": len(part)}
        for measure in ("elasticity", "uplift"):
            error = part[f"{measure}_error"].abs()
            out[f"{measure}_mean_abs_error"] = round(float(error.mean()), 4)
            out[f"{measure}_within_20pct"] = round(float((error <= 0.2).mean()), 4)
            out[f"{measure}_interval_coverage"] = round(float(part[f"{measure}_covered"].mean()), 4)
        out["signs_right"] = round(float(part["signs_right"].mean()), 4)
        return out

    return {
        "seeds": list(seeds),
        "by_shape": {shape: summary(part) for shape, part in frame.groupby("shape", sort=False)},
        "overall": summary(frame),
        "categories": frame.round(4).to_dict(orient="records"),
    }
