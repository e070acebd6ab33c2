"""Dagster wiring: one module per stage. The logic lives in the plain-Python modules of ``bi_pipeline``."""
