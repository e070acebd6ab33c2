"""Pretraining on the generator's synthetic corpus (no Dagster): the corpus, the checkpoint, fine-tuning from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bi_pipeline.cli import main
from bi_pipeline.forecasting.configuration import TrainConfig, load_model, model_config
from bi_pipeline.forecasting.features import fit_spec
from bi_pipeline.forecasting.modeling import BIForecaster
from bi_pipeline.forecasting.panel import build_panel
from bi_pipeline.forecasting.pretraining import MANIFEST, corpus_hash, default_config
from bi_pipeline.forecasting.trainer import train_forecaster
from bi_pipeline.generate import GenerationSpec, generate, simulate_totals
from bi_pipeline.synthetic import CorpusSpec, pretrain_synthetic, synthetic_corpus
from bi_pipeline_tests.forecasting.helpers import weekly_history

TINY_PRETRAIN = dict(
    d_model=16,
    ffn_dim=32,
    num_attention_heads=2,
    num_hidden_layers=1,
    members=2,
    context_length=24,
    epochs=2,
    max_windows_per_epoch=256,
    batch_size=64,
)


def test_simulated_totals_are_the_landing_zones_rows_summed(tmp_path):
    spec = GenerationSpec(stores=3, items=12, periods=30, frequency="W", seed=5, defects=0)
    generate(tmp_path / "landing", spec)
    landed = pd.concat(pd.read_csv(f) for f in sorted((tmp_path / "landing" / "sales").glob("*.csv")))
    items = pd.read_csv(tmp_path / "landing" / "items.csv")
    landed = landed.merge(items[["item_id", "category"]], on="item_id")
    dates, totals = simulate_totals(spec)

    assert list(np.datetime_as_string(dates)) == sorted(landed["date"].unique())
    by_store = landed.pivot_table(index="date", columns="store_id", values="sales", aggfunc="sum", fill_value=0)
    np.testing.assert_array_equal(totals["all"], by_store.to_numpy())
    assert set(totals) == {"all", *landed["category"].unique()}
    for category, frame in landed.groupby("category"):
        pivot = frame.pivot_table(index="date", columns="store_id", values="sales", aggfunc="sum", fill_value=0)
        pivot = pivot.reindex(index=by_store.index, columns=by_store.columns, fill_value=0)
        np.testing.assert_array_equal(totals[category], pivot.to_numpy(), err_msg=category)


def test_the_corpus_is_reproducible_and_holds_store_and_category_totals():
    spec = CorpusSpec(frequency="W", businesses=3, stores=2, items=10, periods=40, seed=3)
    corpus = synthetic_corpus(spec)
    assert list(corpus.columns) == ["store_id", "item_id", "date", "sales"]
    assert sorted(corpus["store_id"].unique()) == [f"B00{b}-S00{s}" for b in (1, 2, 3) for s in (1, 2)]
    assert (corpus.groupby(["store_id", "item_id"]).size() == 40).all()
    # Each store's total is the sum of its category totals, period by period.
    totals = corpus[corpus["item_id"] == "all"].set_index(["store_id", "date"])["sales"]
    parts = corpus[corpus["item_id"] != "all"].groupby(["store_id", "date"])["sales"].sum()
    pd.testing.assert_series_equal(totals.sort_index(), parts.sort_index(), check_names=False)
    # Businesses start on different dates (holidays fall on different periods).
    assert corpus.groupby(corpus["store_id"].str[:4])["date"].min().nunique() == 3

    again = synthetic_corpus(spec)
    pd.testing.assert_frame_equal(corpus, again)
    assert corpus_hash(corpus) == corpus_hash(again)
    assert corpus_hash(corpus) != corpus_hash(synthetic_corpus(CorpusSpec(**{**spec.__dict__, "seed": 4})))


def test_the_corpus_spec_names_a_bad_value():
    with pytest.raises(ValueError, match="frequency must be one of"):
        CorpusSpec(frequency="Q")
    with pytest.raises(ValueError, match="businesses must be at least 1"):
        CorpusSpec(businesses=0)


def test_pretraining_writes_a_checkpoint_that_fine_tuning_starts_from(tmp_path):
    corpus = CorpusSpec(frequency="W", businesses=2, stores=3, items=10, periods=80, seed=1)
    out = tmp_path / "pretrained"
    manifest = pretrain_synthetic(corpus, 8, out, default_config(**TINY_PRETRAIN))
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", MANIFEST}
    assert json.loads((out / MANIFEST).read_text()) == manifest
    assert manifest["corpus"]["periods"] == 80 and manifest["horizon"] == 8
    assert manifest["corpus_hash"] == corpus_hash(synthetic_corpus(corpus))
    assert manifest["corpus_series"] == synthetic_corpus(corpus).groupby(["store_id", "item_id"]).ngroups
    assert manifest["train_config"]["calibrate_level"] is False

    # The business has a holiday flag and a store attribute the corpus lacks, and asks for another context and
    # members: fine-tuning keeps the checkpoint's architecture and backbones, and learns those layers afresh.
    history = weekly_history(periods=90)
    panel = build_panel(history, fit_spec(history, "W"))
    config = TrainConfig(init_from=str(out), context_length=52, members=4, d_model=64)
    target = model_config(panel, 8, config)
    assert (target.context_length, target.num_members, target.d_model) == (24, 2, 16)
    # 6 yearly harmonics, 4 Easter effects (share and change), the holiday flag.
    assert target.num_future_features == len(panel.spec.future_names) == 11
    pretrained = BIForecaster.from_pretrained(out)
    loaded = load_model(str(out), target)
    for member, source in zip(loaded.members, pretrained.members, strict=True):
        for name, weight in source.backbone.state_dict().items():
            assert torch.equal(weight, member.backbone.state_dict()[name]), name
        assert torch.equal(source.direct.weight, member.direct.weight)
    tuned = train_forecaster(panel, 8, 81, TrainConfig(init_from=str(out), epochs=1, max_windows_per_epoch=128))
    assert tuned.model.config.context_length == 24 and tuned.epochs_run == 1


def test_pretraining_refuses_to_start_from_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="init_from must be empty"):
        pretrain_synthetic(CorpusSpec(businesses=1), 8, tmp_path, default_config(init_from=str(tmp_path)))


def test_pretrain_command_writes_the_checkpoint_and_its_manifest(tmp_path, capsys):
    out = tmp_path / "ckpt"
    args = ["pretrain", "--out", str(out), "--frequency", "M", "--horizon", "6", "--businesses", "1"]
    args += ["--stores", "2", "--items", "8", "--periods", "72", "--members", "1", "--epochs", "1"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(Path(out / MANIFEST).read_text())
    assert printed["corpus"]["frequency"] == "M" and printed["epochs_run"] == 1
    assert BIForecaster.from_pretrained(out).config.horizon == 6


def test_synthetic_init_pretrains_once_under_the_home_and_reuses_it(tmp_path, monkeypatch):
    from bi_pipeline import synthetic
    from bi_pipeline.forecasting import pretraining

    monkeypatch.setitem(synthetic.SYNTHETIC_CORPUS, "businesses", 1)
    monkeypatch.setitem(synthetic.SYNTHETIC_CORPUS, "stores", 3)
    monkeypatch.setitem(synthetic.SYNTHETIC_CORPUS, "items", 10)
    monkeypatch.setitem(synthetic.SYNTHETIC_CORPUS, "periods", 80)
    monkeypatch.setitem(pretraining.RECIPE, "epochs", 1)
    monkeypatch.setitem(pretraining.RECIPE, "max_windows_per_epoch", 128)
    monkeypatch.setenv("BI_PIPELINE_HOME", str(tmp_path))
    history = weekly_history(periods=90)
    panel = build_panel(history, fit_spec(history, "W"))
    records: list[dict] = []
    config = TrainConfig(
        init_from="synthetic",
        epochs=1,
        max_windows_per_epoch=128,
        **{
            k: v
            for k, v in TINY_PRETRAIN.items()
            if k in ("d_model", "ffn_dim", "num_attention_heads", "num_hidden_layers")
        },
    )
    # The trainer reads directories only: "synthetic" is resolved (built on first use) before it.
    with pytest.raises(ValueError, match="resolve it to its directory first"):
        train_forecaster(panel, 8, 81, config)
    trained = train_forecaster(panel, 8, 81, synthetic.resolve_init_from(config, "W", 8, progress=records.append))

    built = [r for r in records if r["stage"] == "pretrain_corpus"]
    assert [r["epoch"] for r in built] == [1]
    path = Path(built[0]["checkpoint"])
    assert path.parent == tmp_path / "pretrained" and path.name.startswith("synthetic-W-h8-")
    assert json.loads((path / MANIFEST).read_text())["corpus"]["businesses"] == 1
    assert trained.model.config.d_model == 16 and trained.init_from == str(path)
    assert not list((tmp_path / "pretrained").glob("*.partial"))

    # Asked again, the checkpoint is reused, not pretrained again; another architecture gets its own.
    again: list[dict] = []
    train_forecaster(panel, 8, 81, synthetic.resolve_init_from(config, "W", 8, progress=again.append))
    assert not [r for r in again if r["stage"] == "pretrain_corpus"]
    other = synthetic.resolve_init_from(TrainConfig(init_from="synthetic", **TINY_PRETRAIN), "W", 8)
    assert Path(other.init_from) != path and Path(other.init_from).parent == path.parent
    assert synthetic.resolve_init_from(TrainConfig(init_from="/some/dir"), "W", 8).init_from == "/some/dir"
