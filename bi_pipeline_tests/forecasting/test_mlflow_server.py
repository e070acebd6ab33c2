"""MLflow as a service: a real `mlflow server` on PostgreSQL with served artifacts, started by the test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from bi_pipeline.defs.resources import MLflowResource
from bi_pipeline.forecasting.candidate import forecast_latest, input_example, train_with_holdout
from bi_pipeline.forecasting.ensemble import Forecaster
from bi_pipeline.forecasting.registry import CHALLENGER, CHAMPION, MODEL_NAME
from bi_pipeline_tests.forecasting.helpers import tiny, weekly_history


@pytest.fixture
def mlflow_server(postgres_url, tmp_path):
    """`mlflow server` on a free port, tracking in a fresh PostgreSQL database, artifacts served from a folder."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    artifacts = tmp_path / "served"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres_url, "--serve-artifacts"]
    command += ["--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = (tmp_path / "server.log").open("w")
    # Its own process group: the server starts workers and job consumers, all stopped together afterwards.
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    started = (tmp_path / "server.log").read_text()[-2000:]
                    raise RuntimeError(f"mlflow server did not start: {started}") from None
                time.sleep(0.5)
        yield uri, artifacts
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_the_registry_on_an_mlflow_server_promotes_and_serves_the_champion(mlflow_server, tmp_path):
    uri, artifacts = mlflow_server
    history = weekly_history(series=2, periods=60)
    trained = train_with_holdout(history, "W", horizon=4, season_length=52, config=tiny(epochs=1))
    model = Forecaster(trained.result.model)
    model.save(tmp_path / "model")
    # The resource picks the server's artifact store: the local folder it is given stays unused.
    unused = tmp_path / "local_artifacts"
    tracker = MLflowResource(tracking_uri=uri, artifact_location=str(unused)).tracker()
    example = input_example(model, history, 4)
    _, first = tracker.log_training(tmp_path / "model", {}, [], {"MASE": 0.8}, {}, example=example)
    assert tracker.decide(first, 0.8, None, floor_score=1.0).promoted
    _, second = tracker.log_training(tmp_path / "model", {}, [], {"MASE": 0.9}, {}, example=example)
    # The promotion rules are the same: a worse challenger stays challenger.
    assert not tracker.decide(second, 0.9, 0.8, floor_score=1.0).promoted
    assert tracker.alias_version(CHAMPION) == first and tracker.alias_version(CHALLENGER) == second
    assert not unused.exists()
    # The model's files went through the server into its artifact folder, and come back through it.
    assert any(p.name == "MLmodel" for p in artifacts.rglob("*"))
    assert Forecaster.load(tracker.model_dir(first)).kind == model.kind
    loaded = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{CHAMPION}")
    pd.testing.assert_frame_equal(loaded.predict(history), forecast_latest(model, history))
    assert loaded.metadata.signature is not None and Path(loaded.metadata.saved_input_example_info["artifact_path"])
