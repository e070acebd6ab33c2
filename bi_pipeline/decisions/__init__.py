"""From forecasts to decisions (no Dagster): the joint distribution of demand over several periods
(:mod:`~bi_pipeline.decisions.demand`), order-up-to levels, orders and the simulated inventory policy
(:mod:`~bi_pipeline.decisions.inventory`), and the tables BI tools read (:mod:`~bi_pipeline.decisions.warehouse`)."""
