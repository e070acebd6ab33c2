"""The registered forecaster as an MLflow pyfunc, logged as code (MLflow's models-from-code): MLflow copies this file
into the model and runs it when the model is loaded, so no pickled Python object is stored or read. The model's
files are the ``model`` artifact: the ``save_pretrained`` directory that
:meth:`bi_pipeline.forecasting.ensemble.Forecaster.load` reads
(safetensors, and LightGBM's text format for an ensemble).

``mlflow.pyfunc.load_model(uri).predict(frame)``: quantile forecasts after the last period with sales, the same the
``forecasts`` asset publishes. ``frame`` (:func:`bi_pipeline.forecasting.candidate.model_input`) holds the history
(an integrated-sales frame: store_id, item_id, date, sales and the covariates the model was trained with) and, after
it, the known-future rows: ``sales`` empty and the planned covariates (holidays, events, promotions). The logged model
carries this package's code, pinned requirements, a signature and an input example, so loading it needs the tracking
URI and those requirements, not this project installed.
"""

from __future__ import annotations

import mlflow
import pandas as pd


class ForecasterPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from bi_pipeline.forecasting.ensemble import Forecaster

        self.model = Forecaster.load(context.artifacts["model"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from bi_pipeline.forecasting.candidate import forecast_latest, split_model_input

        history, future = split_model_input(model_input)
        return forecast_latest(self.model, history, future)


mlflow.models.set_model(ForecasterPyfunc())
