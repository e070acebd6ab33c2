"""MLflow tracking and the model registry (no Dagster).

Each training is an MLflow run: parameters, a metric per epoch, the holdout ("backtest") metrics, data lineage (period
range and a hash of the training data), and the model as a pyfunc wrapping the ``save_pretrained`` directory, logged
as code (:mod:`bi_pipeline.forecasting.pyfunc`): nothing in it is pickled. The run's model is registered as
``bi_pipeline_forecaster``; the new version gets the alias ``challenger`` and becomes ``champion`` only when its
holdout score is finite, beats seasonal naive's on the same holdout (the floor) and beats the current champion's there.
The champion it replaces keeps the alias ``previous_champion`` for rollback. Every decision is written to the
version's tags and the run.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.types import DataType
from mlflow.types.schema import ColSpec, Schema

MODEL_NAME = "bi_pipeline_forecaster"
EXPERIMENT = "bi_pipeline"
CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous_champion"


# The pyfunc is logged as code (models-from-code): MLflow stores this file, not a pickled PythonModel, and this
# package beside it (code_paths), so that loading the model needs its requirements, not this project installed.
MODEL_CODE = Path(__file__).with_name("pyfunc.py")
PACKAGE_DIR = Path(__file__).resolve().parents[1]
# What loading and running the model imports, pinned to the installed versions in its requirements.
MODEL_PACKAGES = (
    "mlflow",
    "torch",
    "transformers",
    "safetensors",
    "numpy",
    "pandas",
    "pyarrow",
    "lightgbm",
    "mlforecast",
    "statsforecast",
    "scipy",
)


def served(tracking_uri: str) -> bool:
    """Whether ``tracking_uri`` is an MLflow server, which stores (and serves) the artifacts itself."""
    return tracking_uri.split("://", 1)[0].lower() in ("http", "https")


def model_signature(model_input: pd.DataFrame, output: pd.DataFrame) -> ModelSignature:
    """The logged model's signature from an example: every input column typed, only the series keys and the date
    required (a history without a store's attributes, or future rows with only their planned covariates, is valid)."""
    inferred = infer_signature(model_input, output)
    required = ("store_id", "item_id", "date")
    # Numbers as double: a history's float32 or integer column meets float64 (and empty cells) in the future rows.
    numeric = (DataType.float, DataType.integer, DataType.long)
    inputs = Schema(
        [
            ColSpec(DataType.double if c.type in numeric else c.type, c.name, required=c.name in required)
            for c in inferred.inputs.inputs
        ]
    )
    return ModelSignature(inputs=inputs, outputs=inferred.outputs)


def model_requirements() -> list[str]:
    """The logged model's pip requirements, pinned. Given explicitly: inferring them, MLflow imports the model in a
    subprocess, about 15 s per training here."""
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for name in MODEL_PACKAGES:
        try:
            pinned.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return pinned


@dataclass
class Decision:
    promoted: bool
    reason: str
    challenger_version: str
    challenger_score: float
    champion_version: str | None
    champion_score: float | None
    metric: str
    floor_score: float | None = None  # seasonal naive's score on the same holdout


class Tracker:
    """The MLflow calls the pipeline makes, over one tracking URI (SQLite under the home by default, or Postgres)."""

    def __init__(self, tracking_uri: str, artifact_location: str | None = None, experiment: str = EXPERIMENT) -> None:
        self.tracking_uri = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifact_location)
        else:
            self.experiment_id = found.experiment_id

    def log_training(
        self,
        model_dir: Path,
        params: dict,
        epochs: list[dict],
        metrics: dict[str, float],
        lineage: dict,
        run_name: str | None = None,
        components: dict[str, dict[str, float]] | None = None,
        version_tags: dict[str, str] | None = None,
        example: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    ) -> tuple[str, str]:
        """One MLflow run for a training; returns (run_id, registered version). ``metrics`` are the registered
        model's holdout metrics; ``components`` the same per part (transformer, lightgbm, ensemble). ``example``:
        an input for the model's ``predict`` and what the model returned for it, logged as its input example and
        signature (MLflow also runs the logged model on it, and warns if that fails)."""
        with mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name) as run:
            mlflow.log_params({k: _param(v) for k, v in params.items()})
            mlflow.set_tags({f"lineage.{k}": _param(v) for k, v in lineage.items()})
            for record in epochs:
                step = int(record["epoch"])
                phase = record.get("phase", "fit")
                for key in ("train_loss", "validation_loss"):
                    value = record.get(key)
                    if value is not None and math.isfinite(value):
                        mlflow.log_metric(f"{phase}_{key}", float(value), step=step)
            mlflow.log_metrics({f"holdout_{k}": float(v) for k, v in metrics.items() if _finite(v)})
            for name, values in (components or {}).items():
                mlflow.log_metrics({f"{name}_holdout_{k}": float(v) for k, v in values.items() if _finite(v)})
            mlflow.log_dict(lineage, "lineage.json")
            signature = model_signature(*example) if example is not None else None
            info = mlflow.pyfunc.log_model(
                name="forecaster",
                python_model=str(MODEL_CODE),
                artifacts={"model": str(model_dir)},
                code_paths=[str(PACKAGE_DIR)],
                registered_model_name=MODEL_NAME,
                pip_requirements=model_requirements(),
                signature=signature,
                input_example=example[0] if example is not None else None,
            )
            version = str(info.registered_model_version)
        self.client.set_registered_model_alias(MODEL_NAME, CHALLENGER, version)
        self.client.set_model_version_tag(MODEL_NAME, version, "holdout_metrics", json.dumps(metrics))
        for key, value in (version_tags or {}).items():
            self.client.set_model_version_tag(MODEL_NAME, version, key, _param(value))
        return run.info.run_id, version

    def alias_version(self, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(MODEL_NAME, alias).version)
        except MlflowException:
            return None

    def holdout_metrics(self, version: str) -> dict[str, float]:
        """The holdout ("backtest") metrics a version was registered with."""
        tags = self.client.get_model_version(MODEL_NAME, version).tags
        return json.loads(tags.get("holdout_metrics", "{}"))

    def lineage(self, version: str) -> dict[str, str]:
        """The data lineage tags of the run that trained a version (period range, periods, data hash, …)."""
        tags = self.client.get_run(self.run_of(version)).data.tags
        return {k.removeprefix("lineage."): v for k, v in tags.items() if k.startswith("lineage.")}

    def run_of(self, version: str) -> str:
        return self.client.get_model_version(MODEL_NAME, version).run_id

    def model_dir(self, version: str) -> Path:
        """The directory of a registered version (``save_pretrained`` files, and LightGBM for an ensemble),
        downloaded from the artifact store; :meth:`bi_pipeline.forecasting.ensemble.Forecaster.load` reads it."""
        target = Path(tempfile.mkdtemp(prefix=f"bi_forecaster_v{version}_"))
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL_NAME}/{version}", dst_path=str(target))
        found = sorted(Path(path).rglob("config.json"))
        found = [p for p in found if (p.parent / "model.safetensors").exists()]
        if not found:
            raise FileNotFoundError(f"version {version} of {MODEL_NAME} has no save_pretrained directory")
        return found[0].parent

    def decide(
        self,
        version: str,
        challenger_score: float,
        champion_score: float | None,
        floor_score: float,
        metric: str = "MASE",
        margin: float = 0.0,
        vetoes: list[str] | None = None,
    ) -> Decision:
        """Promote ``version`` to champion when its score (lower is better) is finite, strictly beats the floor
        (``floor_score``: seasonal naive's score on the same holdout) and, when there is a champion that could be
        scored on that holdout, beats the champion's score by at least ``margin`` (relative) with nothing vetoing it
        (a store or item group regressing, forgetting: :func:`~bi_pipeline.forecasting.continual.promotion_gate`).
        With no champion, or one that could not be scored, the floor alone decides. Logged on the version and its
        run."""
        champion = self.alias_version(CHAMPION)
        scored = champion is not None and champion_score is not None and _finite(champion_score)
        beats_floor = _finite(challenger_score) and _finite(floor_score) and challenger_score < floor_score
        floor_text = f"seasonal naive's {floor_score:.4f}" if _finite(floor_score) else "seasonal naive (not scored)"
        if not _finite(challenger_score):
            promoted, reason = False, f"{metric} {challenger_score} is not finite: never promoted"
        elif not scored:
            situation = "no champion yet"
            if champion is not None:
                situation = f"champion v{champion} could not be scored on this holdout"
            promoted = beats_floor
            verdict = "beats" if beats_floor else "does not beat"
            reason = f"{situation}; {metric} {challenger_score:.4f} {verdict} {floor_text}"
        elif challenger_score <= champion_score * (1.0 - margin) and challenger_score < champion_score:
            reason = f"{metric} {challenger_score:.4f} beats champion v{champion}'s {champion_score:.4f}"
            if not beats_floor:
                promoted = False
                reason += f" but not {floor_text}"
            else:
                promoted = not vetoes
                if vetoes:
                    reason += " but is vetoed: " + "; ".join(vetoes)
        else:
            promoted = False
            reason = f"{metric} {challenger_score:.4f} does not beat champion v{champion}'s {champion_score:.4f}"
            if margin:
                reason += f" by the {margin:.1%} margin"
        decision = Decision(promoted, reason, version, challenger_score, champion, champion_score, metric, floor_score)
        if promoted:
            if champion is not None and champion != version:
                self.client.set_registered_model_alias(MODEL_NAME, PREVIOUS, champion)
            self.client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
        self.client.set_model_version_tag(MODEL_NAME, version, "decision", "promoted" if promoted else "kept")
        self.client.set_model_version_tag(MODEL_NAME, version, "decision_reason", reason)
        run_id = self.run_of(version)
        self.client.set_tag(run_id, "decision", "promoted" if promoted else "kept")
        self.client.set_tag(run_id, "decision_reason", reason)
        if scored:
            self.client.log_metric(run_id, f"champion_holdout_{metric}", float(champion_score))
        if _finite(floor_score):
            self.client.log_metric(run_id, f"seasonal_naive_holdout_{metric}", float(floor_score))
        return decision


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _param(value) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text[:500]
