"""The model half: from an integrated history to trained, tracked, promoted forecasters and their forecasts.

No module here imports Dagster, ``bi_pipeline.defs`` or the demo generator; the assets in ``bi_pipeline/defs`` call
the use cases in :mod:`bi_pipeline.forecasting.usecases`. The package is laid out by concern (docs/architecture.md):

- ``metrics``: MASE, WAPE, WQL, coverage, bias;
- ``calendar``, ``features``, ``panel``: encodings and the array panel the transformer reads;
- ``modeling``: the transformer (config, network, loss), as transformers' ``modeling_*`` files are;
- ``device``, ``sampling``, ``checkpoint``, ``trainer``: the training loop and what it needs;
- ``calibration``, ``feedback``, ``inference``, ``transformer``: calibrating and forecasting with a trained network;
- ``pretraining``: training on a corpus of other series and saving the checkpoint;
- ``baselines``, ``lightgbm``, ``ensemble``: the reference models and the blend;
- ``interface``: the one model interface every model implements;
- ``candidate``, ``continual``, ``registry``, ``live``, ``backtest``, ``usecases``: what the pipeline does with them.
"""
