"""The registered forecaster as an MLflow pyfunc, logged as code (MLflow's models-from-code): MLflow copies this file
into the model and runs it when the model is loaded, so no pickled Python object is stored or read. The model's
files are the ``model`` artifact: the ``save_pretrained`` directory that
:meth:`bi_pipeline.forecasting.ensemble.Forecaster.load` reads
(safetensors, and LightGBM's text format for an ensemble).

``mlflow.pyfunc.load_model(uri).predict(history)``: quantile forecasts after the last date of ``history`` (an
integrated-sales frame: store_id, item_id, date, sales and the covariates the model was trained with).
"""

from __future__ import annotations

import mlflow
import pandas as pd


class ForecasterPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from bi_pipeline.forecasting.ensemble import Forecaster

        self.model = Forecaster.load(context.artifacts["model"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from bi_pipeline.forecasting.candidate import forecast_latest

        return forecast_latest(self.model, model_input)


mlflow.models.set_model(ForecasterPyfunc())
